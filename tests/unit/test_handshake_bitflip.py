"""Single-bit flips of handshake datagrams are rejected or ignored, never fatal or silent.

For every flip a fresh handshake runs in memory with the flipped datagram put on the wire in
place of the original (so the sender's retransmission has to repair the loss), and the run
must end with both sides holding *identical* keys: no exception escapes, no side completes
with keys the other does not have, and a tampered datagram never ends a handshake.

Which bits: every bit of every datagram's 18-byte fragment header and of the 10 bytes that
follow it in each message's first fragment (version, suite, indices), every bit of a
COOKIE_REPLY, and a stride of the remaining payload bits (every 127th bit, starting at a
different phase per datagram so the datagrams together cover many phases). A sweep of every
payload bit would be ~180,000 handshakes (~10 minutes of CPU); this sample is ~4,400
handshakes (~15 s of CPU on one core). The payload bits are all covered by the same two
mechanisms (transcript hash into the handshake keys, AEAD tag), which the stride exercises in
every field.
"""

from __future__ import annotations

from collections import Counter

import pytest

from tests.protocol_helpers import HandshakeLink, config_for, node
from x0tta6bl4.protocol.constants import COOKIE_REPLY_SIZE, FRAGMENT_HEADER_SIZE

PAYLOAD_STRIDE = 127
FIRST_FRAGMENT_HEAD = 10  # version, suite, sender index, receiver index

_ALICE = config_for(node("alice"))
_BOB = config_for(node("bob"))


def _flip(datagram: bytes, bit: int) -> bytes:
    data = bytearray(datagram)
    data[bit // 8] ^= 0x80 >> (bit % 8)
    return bytes(data)


def _bits_to_flip(datagram: bytes, phase: int) -> list[int]:
    n_bits = len(datagram) * 8
    head = FRAGMENT_HEADER_SIZE + (FIRST_FRAGMENT_HEAD if datagram[13:15] == b"\0\0" else 0)
    head_bits = min(n_bits, (head + datagram[17] if len(datagram) > 17 else head) * 8)
    return [*range(head_bits), *range(head_bits + phase % PAYLOAD_STRIDE, n_bits, PAYLOAD_STRIDE)]


def _clean_run() -> dict[str, list[bytes]]:
    seen: dict[str, list[bytes]] = {"i2r": [], "r2i": []}

    def record(direction: str, n: int, datagram: bytes) -> list[bytes]:
        if n == len(seen[direction]):
            seen[direction].append(datagram)
        return [datagram]

    link = HandshakeLink.create(_ALICE, _BOB, validated=False)  # the cookie round trip too
    link.run(tamper=record)
    assert link.completed() is not None
    return seen


def _run_with_flip(direction: str, index: int, bit: int) -> str:
    def tamper(d: str, n: int, datagram: bytes) -> list[bytes]:
        if d == direction and n == index:
            return [_flip(datagram, bit)]
        return [datagram]

    link = HandshakeLink.create(_ALICE, _BOB, validated=False)
    link.run(tamper=tamper)
    done = link.completed()
    assert done is not None, (direction, index, bit, link.failures())
    ini, res = done
    assert ini.keys.send_key == res.keys.recv_key, (direction, index, bit)
    assert ini.keys.recv_key == res.keys.send_key, (direction, index, bit)
    assert ini.keys.handshake_hash == res.keys.handshake_hash
    drops = link.initiator.dropped + link.listener.dropped
    for responder in link.responders.values():
        drops += responder.dropped
    return "dropped" if drops else "ignored"


CLEAN = _clean_run()


@pytest.mark.slow
@pytest.mark.parametrize(
    ("direction", "index"),
    [("i2r", i) for i in range(len(CLEAN["i2r"]))] + [("r2i", i) for i in range(len(CLEAN["r2i"]))],
)
def test_every_header_bit_and_sampled_payload_bits(direction: str, index: int) -> None:
    datagram = CLEAN[direction][index]
    outcomes: Counter[str] = Counter()
    for bit in _bits_to_flip(datagram, phase=index * 7 + len(direction)):
        outcomes[_run_with_flip(direction, index, bit)] += 1
    assert sum(outcomes.values()) >= FRAGMENT_HEADER_SIZE * 8


@pytest.mark.slow
def test_every_bit_of_a_cookie_reply() -> None:
    outcomes: Counter[str] = Counter()
    for bit in range(COOKIE_REPLY_SIZE * 8):
        # The first two datagrams the responder side sends are COOKIE_REPLYs.
        assert len(CLEAN["r2i"][0]) == COOKIE_REPLY_SIZE
        outcomes[_run_with_flip("r2i", 0, bit)] += 1
    assert sum(outcomes.values()) == COOKIE_REPLY_SIZE * 8
