"""Protocol constants.

Specification constants are part of the wire protocol: a compatible implementation must use
the same values. Implementation constants are this implementation's choices (limits, timers)
and may differ between implementations without breaking interoperability.
"""

from __future__ import annotations

import enum

__all__ = [
    "COOKIE_REPLY_SIZE",
    "COOKIE_ROTATION_INTERVAL",
    "COOKIE_SECRET_SIZE",
    "COOKIE_SIZE",
    "FINISH_CLEAR_SIZE",
    "FRAGMENT_HEADER_SIZE",
    "HANDSHAKE_GIVE_UP_AFTER",
    "INITIAL_RETRANSMIT_TIMEOUT",
    "INIT_MESSAGE_SIZE",
    "KNOWN_RESPONDER_BURST",
    "KNOWN_RESPONDER_RATE",
    "MAX_ADDRESS_SIZE",
    "MAX_CERTIFICATE_SIZE",
    "MAX_DATAGRAM_SIZE",
    "MAX_HANDSHAKE_MESSAGE_SIZE",
    "MAX_PARTIAL_MESSAGES",
    "MAX_PENDING_INITS",
    "MAX_RESPONDERS",
    "MAX_RETRANSMIT_TIMEOUT",
    "MAX_TRACKED_SOURCES",
    "NONCE_SIZE",
    "PROTOCOL_VERSION",
    "REASSEMBLY_TIMEOUT",
    "RESEND_MIN_INTERVAL",
    "RESPONDER_BURST",
    "RESPONDER_RATE",
    "RESP_CLEAR_SIZE",
    "SOURCE_RESPONDER_BURST",
    "SOURCE_RESPONDER_RATE",
    "UNDER_LOAD_THRESHOLD",
    "MessageType",
]

# --- specification constants -----------------------------------------------------------------

#: Version byte carried by every handshake message.
PROTOCOL_VERSION = 1

#: No datagram of the protocol is larger than this (IPv6 minimum MTU minus headroom).
MAX_DATAGRAM_SIZE = 1200


class MessageType(enum.IntEnum):
    """First byte of every datagram."""

    HANDSHAKE_INIT = 1
    HANDSHAKE_RESP = 2
    HANDSHAKE_FINISH = 3
    TRANSPORT = 4
    COOKIE_REPLY = 5


#: Size of the random nonce in INIT and RESP.
NONCE_SIZE = 32

#: Size of a cookie (a truncated HMAC-SHA-256).
COOKIE_SIZE = 16

#: type u8 ‖ sender index u32 ‖ receiver index u32 ‖ message seq u16 ‖ total length u16 ‖
#: fragment offset u16 ‖ fragment length u16 ‖ cookie length u8.
FRAGMENT_HEADER_SIZE = 18

#: version u8 ‖ suite u8 ‖ sender index u32 ‖ nonce[32] ‖ ML-KEM-768 ek[1184] ‖ X25519[32].
INIT_MESSAGE_SIZE = 1 + 1 + 4 + NONCE_SIZE + 1184 + 32

#: version u8 ‖ suite u8 ‖ sender index u32 ‖ receiver index u32 ‖ nonce[32] ‖
#: ML-KEM-768 ciphertext[1088] ‖ X25519[32]; the AEAD ciphertext follows.
RESP_CLEAR_SIZE = 1 + 1 + 4 + 4 + NONCE_SIZE + 1088 + 32

#: version u8 ‖ suite u8 ‖ sender index u32 ‖ receiver index u32; the AEAD ciphertext follows.
FINISH_CLEAR_SIZE = 1 + 1 + 4 + 4

#: type u8 ‖ receiver index u32 ‖ cookie[16].
COOKIE_REPLY_SIZE = 1 + 4 + COOKIE_SIZE

#: Largest reassembled handshake message accepted (RESP with a 5.5 KB certificate is ~10 KB).
MAX_HANDSHAKE_MESSAGE_SIZE = 16 * 1024

#: Largest certificate (DER) carried in RESP or FINISH.
MAX_CERTIFICATE_SIZE = 8 * 1024

# --- implementation constants ----------------------------------------------------------------

#: First retransmission of an unanswered flight (seconds); doubles on every retransmission.
INITIAL_RETRANSMIT_TIMEOUT = 0.2

#: Cap of the retransmission backoff (seconds).
MAX_RETRANSMIT_TIMEOUT = 2.0

#: A handshake that has not completed (or, for the initiator, been confirmed) this many
#: seconds after it started fails with reason ``timeout`` (``not_confirmed``).
HANDSHAKE_GIVE_UP_AFTER = 10.0

#: A partially reassembled message is discarded this many seconds after its first fragment
#: arrived. New bytes do not extend it (a sender trickling bytes cannot hold a buffer longer).
REASSEMBLY_TIMEOUT = 3.0

#: Partially reassembled messages held at once per peer (per machine, per address for INIT).
MAX_PARTIAL_MESSAGES = 4

#: Addresses with a partially reassembled INIT at a listener; when full, the address whose
#: partial INIT is the oldest is evicted to make room.
MAX_PENDING_INITS = 1024

#: Responder machines a listener holds at once (waiting for FINISH, or completed and answering
#: retransmitted FINISHes); when full, the oldest is aborted to make room.
MAX_RESPONDERS = 256

#: A responder re-sends its RESP flight at most this often when INIT is retransmitted; the
#: same interval limits keepalive requests after completion and the initiator's cookie echoes.
RESEND_MIN_INTERVAL = 0.1

#: The listener's cookie secret rotates this often (seconds); the previous one stays valid.
COOKIE_ROTATION_INTERVAL = 120.0

#: Size of the listener's random cookie secret (bytes; the HMAC-SHA-256 key).
COOKIE_SECRET_SIZE = 32

#: Largest opaque address (bytes) an owner may hand to the listener (its length is one byte
#: of the cookie MAC input).
MAX_ADDRESS_SIZE = 255

#: CPU budget for new responders (each costs an ML-KEM encapsulation and an ML-DSA-65
#: signature, about 1.5 ms): a token bucket of this many per second over all sources (≈ 3 %
#: of a core; a node with 100 links rekeying every 120 s needs about one per second) ...
RESPONDER_RATE = 20.0

#: ... holding at most this many tokens (a burst of handshakes after a restart).
RESPONDER_BURST = 50

#: Addresses the owner vouches for (the node: the address of a peer it has a channel with,
#: e.g. a neighbour restarting on its endpoint) draw from a bucket of their own first, of
#: this many per second, so that strangers spending the shared budget do not keep them out ...
KNOWN_RESPONDER_RATE = 10.0

#: ... holding at most this many tokens.
KNOWN_RESPONDER_BURST = 10

#: Under load, each source (owner-chosen: the IP address for UDP) gets new responders from
#: its own token bucket of this many per second ...
SOURCE_RESPONDER_RATE = 2.0

#: ... holding at most this many tokens.
SOURCE_RESPONDER_BURST = 4

#: Per-source token buckets are kept in a fixed-size table; the least recently used entry is
#: evicted when it is full (an evicted source starts again with a full bucket).
MAX_TRACKED_SOURCES = 4096

#: A listener with this many responders waiting for FINISH plus partially reassembled INITs
#: is "under load": new responders are then also limited per source.
UNDER_LOAD_THRESHOLD = 32


# === transport session (protocol/session.py, keypairs.py, replay.py, frames.py) ===============
# WireGuard's timers are the reference (Donenfeld, "WireGuard: Next Generation Kernel Network
# Tunnel", section 6.1, and wireguard-go device/constants.go).

# --- transport: specification constants ------------------------------------------------------

#: ``type(1) ‖ receiver_index(u32) ‖ counter(u64)``; also the AEAD associated data.
TRANSPORT_HEADER_SIZE = 13

#: Default largest transport datagram (UDP payload): IPv4 Ethernet MTU 1500 − 20 (IPv4) − 8
#: (UDP). The handshake's :data:`MAX_DATAGRAM_SIZE` (1200) bounds handshake fragments only.
MAX_TRANSPORT_DATAGRAM_SIZE = 1472

#: The largest UDP payload over IPv4; no configuration may exceed it.
MAX_UDP_PAYLOAD_SIZE = 65507

#: Start a new handshake once a keypair has sent this many packets (WireGuard: 2^60).
REKEY_AFTER_MESSAGES = 2**60

#: Never send or accept a counter at or above this value (WireGuard: 2^64 − 2^13 − 1).
REJECT_AFTER_MESSAGES = 2**64 - 2**13 - 1

#: Seconds after its creation that the initiator of a keypair starts a rekey (WireGuard: 120).
REKEY_AFTER_TIME = 120.0

#: Seconds after its creation that a keypair is neither used nor accepted (WireGuard: 180).
REJECT_AFTER_TIME = 180.0

#: Seconds after receiving data with nothing sent back before an empty keepalive packet is
#: sent (WireGuard's passive keepalive: 10).
KEEPALIVE_TIMEOUT = 10.0

# --- transport: implementation constants -----------------------------------------------------

#: The responder of a keypair starts a rekey only this long after the initiator would have
#: (``REKEY_AFTER_TIME + RESPONDER_REKEY_DELAY``), so that the two sides almost never start
#: handshakes at the same time. WireGuard gets the same effect by letting only the initiator
#: rekey on time; this delay is WireGuard's REKEY_TIMEOUT (5 s) plus KEEPALIVE_TIMEOUT.
RESPONDER_REKEY_DELAY = 15.0

#: 64-bit blocks in the replay window ring (wireguard-go replay/: 128 blocks).
REPLAY_RING_BLOCKS = 128

#: Packets behind the highest counter seen that are still accepted: (128 − 1) × 64 = 8128.
REPLAY_WINDOW_SIZE = (REPLAY_RING_BLOCKS - 1) * 64

__all__ += [
    "KEEPALIVE_TIMEOUT",
    "MAX_TRANSPORT_DATAGRAM_SIZE",
    "MAX_UDP_PAYLOAD_SIZE",
    "REJECT_AFTER_MESSAGES",
    "REJECT_AFTER_TIME",
    "REKEY_AFTER_MESSAGES",
    "REKEY_AFTER_TIME",
    "REPLAY_RING_BLOCKS",
    "REPLAY_WINDOW_SIZE",
    "RESPONDER_REKEY_DELAY",
    "TRANSPORT_HEADER_SIZE",
]
