"""The sans-IO SIGMA handshake: :class:`InitiatorHandshake` and :class:`ResponderHandshake`.

Each machine is driven like aioquic's ``QuicConnection``: feed it ``receive_datagram(data,
now)`` and ``handle_timer(now)`` (when ``now`` reaches ``get_timer()``), then collect
``datagrams_to_send()`` and ``next_event()``. It never reads a clock or touches a socket.
Responders are normally made by :class:`~x0tta6bl4.protocol.listener.HandshakeListener`,
which applies the cookie defence first.

Rules of the state machines (``docs/protocol.md`` draws them)::

    initiator                                  responder
    ---------                                  ---------
    WAIT_RESP    --valid RESP--> WAIT_CONFIRM  (made from a valid INIT, RESP sent)
                 emits HandshakeCompleted      WAIT_FINISH --valid FINISH--> COMPLETED
    WAIT_RESP    --COOKIE_REPLY--> WAIT_RESP               emits HandshakeCompleted
                 (INIT re-sent with the cookie) WAIT_FINISH --INIT again--> WAIT_FINISH
    WAIT_CONFIRM --confirm()--> CONFIRMED                  (RESP re-sent, rate-limited)
    WAIT_RESP    --deadline--> FAILED timeout  COMPLETED  --same FINISH--> COMPLETED
    WAIT_CONFIRM --deadline--> FAILED                      emits FinishRetransmitted
                               not_confirmed   WAIT_FINISH --deadline--> FAILED timeout
    any          --authentication fails--> FAILED  COMPLETED --deadline--> CLOSED
    any          --abort()--> FAILED aborted

The initiator retransmits its unanswered flights (INIT, FINISH) with exponential backoff.
The responder has no retransmission timer: it re-sends RESP only when INIT arrives again
(at most once per ``RESEND_MIN_INTERVAL``), so everything it sends answers something it
received (docs/protocol.md, "Anti-amplification").

Error contract (Nebula-like): a datagram that is malformed, misaddressed, a duplicate, or does
not decrypt raises :class:`~x0tta6bl4.protocol.errors.RemoteProtocolError` internally; the
machine drops it and counts it in :attr:`dropped` under the error's ``reason`` — a single
bad datagram never ends a handshake. Only authentication failures end it (certificate
rejected by ``verify_peer``, a transcript signature that does not verify, ``authorize``
refusing the peer, an unexpected peer), with a :class:`~x0tta6bl4.protocol.events.HandshakeFailed`
event; afterwards :attr:`failed` is True and the machine ignores all input. Calling the API
wrongly raises :class:`~x0tta6bl4.protocol.errors.LocalProtocolError`.
"""

from __future__ import annotations

import enum
import hashlib
import hmac
import secrets
from collections import Counter, deque
from collections.abc import Callable
from dataclasses import dataclass

from x0tta6bl4.crypto.errors import CryptoError, DecryptError, InvalidKeyError
from x0tta6bl4.crypto.pqsvid import PeerIdentity
from x0tta6bl4.crypto.suite import (
    HybridKemKeyPair,
    SignatureContext,
    SigningKey,
    hybrid_encapsulate,
    verify_signature,
)
from x0tta6bl4.protocol.constants import (
    FINISH_CLEAR_SIZE,
    HANDSHAKE_GIVE_UP_AFTER,
    INITIAL_RETRANSMIT_TIMEOUT,
    MAX_PARTIAL_MESSAGES,
    MAX_RETRANSMIT_TIMEOUT,
    NONCE_SIZE,
    REASSEMBLY_TIMEOUT,
    RESEND_MIN_INTERVAL,
    RESP_CLEAR_SIZE,
    MessageType,
)
from x0tta6bl4.protocol.errors import DropReason, LocalProtocolError, RemoteProtocolError
from x0tta6bl4.protocol.events import (
    Event,
    FinishRetransmitted,
    HandshakeCompleted,
    HandshakeErrorCode,
    HandshakeFailed,
)
from x0tta6bl4.protocol.fragments import Fragment, Reassembler, fragment_message, parse_fragment
from x0tta6bl4.protocol.keys import TransportKeys
from x0tta6bl4.protocol.messages import (
    AuthPayload,
    CookieReply,
    FinishMessage,
    InitMessage,
    RespMessage,
)
from x0tta6bl4.protocol.schedule import (
    HandshakeTrafficKeys,
    Transcript,
    derive_handshake_keys,
    derive_transport_keys,
    handshake_secret,
)
from x0tta6bl4.protocol.timers import Backoff

__all__ = [
    "Credential",
    "HandshakeConfig",
    "HandshakeState",
    "InitiatorHandshake",
    "ResponderHandshake",
    "random_index",
]

_MAX_INDEX = 0xFFFFFFFF


def random_index() -> int:
    """A random non-zero u32 handshake index."""
    while True:
        index = secrets.randbits(32)
        if index:
            return index


class HandshakeState(enum.Enum):
    WAIT_RESP = "wait_resp"  #: initiator: INIT sent
    WAIT_CONFIRM = "wait_confirm"  #: initiator: FINISH sent, keys handed out
    CONFIRMED = "confirmed"  #: initiator: the owner confirmed the keys work
    WAIT_FINISH = "wait_finish"  #: responder: RESP sent
    COMPLETED = "completed"  #: responder: FINISH accepted; answers duplicates until deadline
    CLOSED = "closed"  #: responder: past the deadline after completion
    FAILED = "failed"  #: no usable keys (HandshakeFailed was emitted)


_DONE = frozenset({HandshakeState.CONFIRMED, HandshakeState.CLOSED, HandshakeState.FAILED})


@dataclass(frozen=True, slots=True)
class Credential:
    """Our PQ X.509-SVID (DER) and the ML-DSA-65 key it certifies."""

    cert_der: bytes
    signing_key: SigningKey

    def __post_init__(self) -> None:
        # The raw public key is embedded in the certificate's SubjectPublicKeyInfo.
        if self.signing_key.public_bytes not in self.cert_der:
            raise LocalProtocolError("the certificate does not carry the signing key")

    def __repr__(self) -> str:
        return f"Credential(cert={len(self.cert_der)} bytes, key={self.signing_key!r})"


@dataclass(frozen=True, slots=True)
class HandshakeConfig:
    """What a handshake machine needs besides ``now``; share one between machines.

    ``verify_peer`` turns a certificate (DER) into a verified identity or raises a
    :class:`~x0tta6bl4.crypto.errors.CryptoError` (the caller closes over the trust bundle and
    the wall clock, e.g. ``lambda der: verify_svid(der, bundle, time.time())``).
    ``authorize`` then decides whether that identity may link with us.
    """

    credential: Credential
    verify_peer: Callable[[bytes], PeerIdentity]
    authorize: Callable[[PeerIdentity], bool]
    initial_rto: float = INITIAL_RETRANSMIT_TIMEOUT
    max_rto: float = MAX_RETRANSMIT_TIMEOUT
    give_up_after: float = HANDSHAKE_GIVE_UP_AFTER
    reassembly_timeout: float = REASSEMBLY_TIMEOUT
    max_partial_messages: int = MAX_PARTIAL_MESSAGES

    def __post_init__(self) -> None:
        if not 0 < self.initial_rto <= self.max_rto:
            raise LocalProtocolError("need 0 < initial_rto <= max_rto")
        if self.give_up_after <= 0 or self.reassembly_timeout <= 0:
            raise LocalProtocolError("timeouts must be positive")
        if self.max_partial_messages <= 0:
            raise LocalProtocolError("max_partial_messages must be positive")


def _check_index(index: int) -> int:
    if not 0 < index <= _MAX_INDEX:
        raise LocalProtocolError("a handshake index is a non-zero u32")
    return index


class _Handshake:
    """Machinery shared by both roles: timers, flights, reassembly, events, authentication."""

    is_initiator: bool = False

    def __init__(self, config: HandshakeConfig, now: float, local_index: int) -> None:
        self._config = config
        self._local_index = _check_index(local_index)
        self._remote_index = 0
        self._state = HandshakeState.FAILED  # set by the subclass once the first flight exists
        self._deadline = now + config.give_up_after
        self._backoff = Backoff(initial=config.initial_rto, maximum=config.max_rto)
        self._reassembler = Reassembler(
            max_partials=config.max_partial_messages, timeout=config.reassembly_timeout
        )
        self._transcript = Transcript()
        self._flight: list[bytes] = []
        self._outbox: list[bytes] = []
        self._events: deque[Event] = deque()
        self._peer: PeerIdentity | None = None
        #: Datagrams dropped, by :attr:`RemoteProtocolError.reason`.
        self.dropped: Counter[DropReason] = Counter()
        #: Flights sent again (by timer or on a peer's retransmission).
        self.retransmissions = 0

    # --- public API ---------------------------------------------------------------------------

    @property
    def local_index(self) -> int:
        """Our u32 index: the peer addresses handshake and transport packets to it."""
        return self._local_index

    @property
    def remote_index(self) -> int:
        """The peer's index (0 until the initiator has accepted RESP)."""
        return self._remote_index

    @property
    def state(self) -> HandshakeState:
        return self._state

    @property
    def failed(self) -> bool:
        """True once the handshake ended without usable keys; it ignores all input then."""
        return self._state is HandshakeState.FAILED

    @property
    def done(self) -> bool:
        """True when the machine needs no more input or timers (the owner may drop it)."""
        return self._state in _DONE

    @property
    def peer(self) -> PeerIdentity | None:
        """The authenticated peer, once its certificate and signature were accepted."""
        return self._peer

    def receive_datagram(self, data: bytes, now: float) -> None:
        """Process one datagram addressed to this handshake. Never raises for bad input."""
        if self.done:
            self.dropped[DropReason.CLOSED] += 1
            return
        try:
            self._receive(data, now)
        except RemoteProtocolError as exc:
            self.dropped[exc.reason] += 1

    def handle_timer(self, now: float) -> None:
        """Run timers that are due: give-up deadline, retransmission, reassembly expiry."""
        if self.done:
            return
        if now >= self._deadline:
            self._on_deadline()
            return
        self._reassembler.expire(now)
        if self._backoff.due(now):
            self._outbox.extend(self._flight)
            self.retransmissions += 1
            self._backoff.back_off(now)

    def get_timer(self) -> float | None:
        """The next time :meth:`handle_timer` must be called, or None."""
        if self.done:
            return None
        timer = self._deadline
        for other in (self._backoff.deadline, self._reassembler.next_deadline()):
            if other is not None and other < timer:
                timer = other
        return timer

    def datagrams_to_send(self) -> list[bytes]:
        """Datagrams to send to the peer now, oldest first (the queue is emptied)."""
        out, self._outbox = self._outbox, []
        return out

    def next_event(self) -> Event | None:
        """The next pending event, or None."""
        return self._events.popleft() if self._events else None

    def abort(self) -> None:
        """Give up now (emits ``HandshakeFailed(aborted)``); no-op once done."""
        if not self.done:
            self._fail(HandshakeErrorCode.ABORTED)

    # --- helpers ------------------------------------------------------------------------------

    def _receive(self, data: bytes, now: float) -> None:
        raise NotImplementedError

    def _on_deadline(self) -> None:
        raise NotImplementedError

    def _send_flight(self, datagrams: list[bytes], now: float, *, retransmit: bool = True) -> None:
        """Send a flight; with ``retransmit`` it is sent again on the backoff timer."""
        self._flight = datagrams
        self._outbox.extend(datagrams)
        if retransmit:
            self._backoff.arm(now)
        else:
            self._backoff.disarm()

    def _stop_flight(self) -> None:
        self._flight = []
        self._backoff.disarm()
        self._reassembler.clear()

    def _fail(self, code: HandshakeErrorCode) -> None:
        self._state = HandshakeState.FAILED
        self._stop_flight()
        self._outbox = []
        self._events.append(HandshakeFailed(error_code=code, reason=code.reason))

    def _authenticate(
        self, payload: AuthPayload, signed: bytes, context: SignatureContext
    ) -> PeerIdentity | None:
        """Verify the peer's certificate, its signature over ``signed``, then authorize it.

        On failure the handshake fails and None is returned.
        """
        try:
            identity = self._config.verify_peer(payload.certificate)
        except (CryptoError, RemoteProtocolError):
            self._fail(HandshakeErrorCode.CERTIFICATE_REJECTED)
            return None
        try:
            verify_signature(identity.public_key, context, signed, payload.signature)
        except CryptoError:
            self._fail(HandshakeErrorCode.BAD_SIGNATURE)
            return None
        if not self._config.authorize(identity):
            self._fail(HandshakeErrorCode.UNAUTHORIZED)
            return None
        return identity

    def _fragments(self, msg_type: MessageType, message: bytes, cookie: bytes = b"") -> list[bytes]:
        return fragment_message(
            msg_type,
            message,
            sender_index=self._local_index,
            receiver_index=self._remote_index,
            cookie=cookie,
        )


class InitiatorHandshake(_Handshake):
    """The side that sends INIT. Sends it on construction (see :meth:`datagrams_to_send`).

    ``expected_node_id``, when given, is the node ID the initiator meant to reach: a responder
    with another node ID fails the handshake (``unexpected_peer``).
    """

    is_initiator = True

    def __init__(
        self,
        config: HandshakeConfig,
        now: float,
        *,
        local_index: int | None = None,
        expected_node_id: str | None = None,
    ) -> None:
        super().__init__(config, now, random_index() if local_index is None else local_index)
        self._expected_node_id = expected_node_id
        self._kem: HybridKemKeyPair | None = HybridKemKeyPair()
        self._init = InitMessage(
            sender_index=self._local_index,
            nonce=secrets.token_bytes(NONCE_SIZE),
            share=self._kem.share,
        ).encode()
        self._transcript.add(self._init)
        self._cookie = b""
        self._cookie_at = float("-inf")
        self._state = HandshakeState.WAIT_RESP
        self._send_flight(self._fragments(MessageType.HANDSHAKE_INIT, self._init), now)

    def confirm(self, now: float) -> None:
        """The first transport packet under the new keys arrived: stop retransmitting FINISH.

        Idempotent once confirmed; a :class:`LocalProtocolError` before completion or after
        failure.
        """
        del now  # part of the API for symmetry; confirmation needs no clock
        if self._state is HandshakeState.CONFIRMED:
            return
        if self._state is not HandshakeState.WAIT_CONFIRM:
            raise LocalProtocolError(f"cannot confirm a handshake in state {self._state.value}")
        self._state = HandshakeState.CONFIRMED
        self._stop_flight()

    def _on_deadline(self) -> None:
        if self._state is HandshakeState.WAIT_CONFIRM:
            self._fail(HandshakeErrorCode.NOT_CONFIRMED)
        else:
            self._fail(HandshakeErrorCode.TIMEOUT)

    def _receive(self, data: bytes, now: float) -> None:
        if data[:1] == bytes([MessageType.COOKIE_REPLY]):
            self._on_cookie(CookieReply.parse(data), now)
            return
        fragment = parse_fragment(data)
        if fragment.receiver_index != self._local_index:
            raise RemoteProtocolError(DropReason.UNKNOWN_INDEX, "fragment is not addressed to us")
        if fragment.msg_type != MessageType.HANDSHAKE_RESP:
            raise RemoteProtocolError(DropReason.UNEXPECTED_MESSAGE, "initiator expects RESP")
        if self._state is not HandshakeState.WAIT_RESP:
            raise RemoteProtocolError(DropReason.DUPLICATE, "RESP was already accepted")
        message = self._reassembler.add(fragment, now)
        if message is not None:
            self._on_resp(message, fragment.sender_index, now)

    def _on_cookie(self, reply: CookieReply, now: float) -> None:
        if reply.receiver_index != self._local_index:
            raise RemoteProtocolError(
                DropReason.UNKNOWN_INDEX, "cookie reply is not addressed to us"
            )
        if self._state is not HandshakeState.WAIT_RESP:
            raise RemoteProtocolError(DropReason.UNEXPECTED_MESSAGE, "cookie reply after RESP")
        if reply.cookie == self._cookie:
            return  # the listener answers every INIT fragment: the same cookie again is normal
        if now - self._cookie_at < RESEND_MIN_INTERVAL:
            raise RemoteProtocolError(DropReason.RATE_LIMITED, "cookie replies arrive too fast")
        self._cookie = reply.cookie
        self._cookie_at = now
        self._send_flight(
            self._fragments(MessageType.HANDSHAKE_INIT, self._init, self._cookie), now
        )

    def _on_resp(self, message: bytes, fragment_sender: int, now: float) -> None:
        resp = RespMessage.parse(message)
        if resp.sender_index != fragment_sender:
            raise RemoteProtocolError(
                DropReason.INDEX_MISMATCH, "RESP indices differ from its fragments"
            )
        kem = self._kem
        assert kem is not None
        try:
            shared = kem.decapsulate(resp.share)
        except InvalidKeyError as exc:
            raise RemoteProtocolError(
                DropReason.BAD_SHARE, "responder key share is invalid"
            ) from exc
        clear = message[:RESP_CLEAR_SIZE]
        transcript = self._transcript.fork()
        transcript.add(clear)
        hs_secret = handshake_secret(shared)
        initiator_keys, responder_keys = derive_handshake_keys(hs_secret, transcript.digest())
        try:
            plaintext = responder_keys.aead.open(responder_keys.iv, resp.sealed, clear)
        except DecryptError as exc:
            raise RemoteProtocolError(DropReason.DECRYPT_FAILED, "RESP does not decrypt") from exc
        payload = AuthPayload.parse(plaintext)
        transcript.add(plaintext[: len(plaintext) - len(payload.signature)])
        identity = self._authenticate(
            payload, transcript.digest(), SignatureContext.HANDSHAKE_RESPONDER
        )
        if identity is None:
            return
        if self._expected_node_id is not None and identity.node_id != self._expected_node_id:
            self._fail(HandshakeErrorCode.UNEXPECTED_PEER)
            return
        transcript.add(payload.signature)
        self._remote_index = resp.sender_index
        self._finish(transcript, initiator_keys, hs_secret, identity, now)

    def _finish(
        self,
        transcript: Transcript,
        keys: HandshakeTrafficKeys,
        hs_secret: bytes,
        identity: PeerIdentity,
        now: float,
    ) -> None:
        credential = self._config.credential
        clear = FinishMessage(
            sender_index=self._local_index, receiver_index=self._remote_index, sealed=b""
        ).clear_part()
        certificate = AuthPayload.encode_certificate(credential.cert_der)
        transcript.add(clear, certificate)
        signature = credential.signing_key.sign(
            SignatureContext.HANDSHAKE_INITIATOR, transcript.digest()
        )
        transcript.add(signature)
        sealed = keys.aead.seal(keys.iv, certificate + signature, clear)
        handshake_hash = transcript.digest()
        i2r, r2i = derive_transport_keys(hs_secret, handshake_hash)
        self._transcript = transcript
        self._kem = None
        self._peer = identity
        self._state = HandshakeState.WAIT_CONFIRM
        self._reassembler.clear()
        self._send_flight(self._fragments(MessageType.HANDSHAKE_FINISH, clear + sealed), now)
        self._events.append(
            HandshakeCompleted(
                keys=TransportKeys(
                    send_key=i2r,
                    recv_key=r2i,
                    local_index=self._local_index,
                    remote_index=self._remote_index,
                    is_initiator=True,
                    handshake_hash=handshake_hash,
                ),
                peer=identity,
            )
        )


class ResponderHandshake(_Handshake):
    """The side that answers INIT; RESP is computed (and signed) on construction.

    ``init`` is a whole reassembled INIT message; a malformed one raises
    :class:`RemoteProtocolError` (nothing is allocated or signed then). Normally built by
    :class:`~x0tta6bl4.protocol.listener.HandshakeListener`, which first validates the
    initiator's address with a cookie. RESP is re-sent only when INIT arrives again, never on
    a timer. After completion, a FINISH that arrives again is reassembled and compared with
    the accepted one as a whole message: the same bytes ask the owner for a keepalive
    (:class:`~x0tta6bl4.protocol.events.FinishRetransmitted`, at most one per
    ``RESEND_MIN_INTERVAL``); other bytes are dropped as ``replayed_finish``.
    """

    is_initiator = False

    def __init__(
        self,
        config: HandshakeConfig,
        init: bytes,
        now: float,
        *,
        local_index: int | None = None,
    ) -> None:
        message = InitMessage.parse(init)
        try:
            share, shared = hybrid_encapsulate(message.share)
        except InvalidKeyError as exc:
            raise RemoteProtocolError(
                DropReason.BAD_SHARE, "initiator key share is invalid"
            ) from exc
        super().__init__(config, now, random_index() if local_index is None else local_index)
        self._remote_index = message.sender_index
        self._init = init
        clear = RespMessage(
            sender_index=self._local_index,
            receiver_index=self._remote_index,
            nonce=secrets.token_bytes(NONCE_SIZE),
            share=share,
            sealed=b"",
        ).clear_part()
        self._transcript.add(init, clear)
        self._hs_secret: bytes | None = handshake_secret(shared)
        initiator_keys, responder_keys = derive_handshake_keys(
            self._hs_secret, self._transcript.digest()
        )
        self._initiator_keys: HandshakeTrafficKeys | None = initiator_keys
        credential = config.credential
        certificate = AuthPayload.encode_certificate(credential.cert_der)
        self._transcript.add(certificate)
        signature = credential.signing_key.sign(
            SignatureContext.HANDSHAKE_RESPONDER, self._transcript.digest()
        )
        self._transcript.add(signature)
        sealed = responder_keys.aead.seal(responder_keys.iv, certificate + signature, clear)
        #: Length and SHA-256 of the accepted FINISH (a retransmission is compared whole).
        self._finish_length = 0
        self._finish_digest = b""
        self._resent_at = now
        self._state = HandshakeState.WAIT_FINISH
        self._send_flight(
            self._fragments(MessageType.HANDSHAKE_RESP, clear + sealed), now, retransmit=False
        )

    @property
    def init_message(self) -> bytes:
        """The INIT message this responder answers."""
        return self._init

    def matches_init(self, fragment: Fragment) -> bool:
        """True if ``fragment`` is a piece of the INIT this responder answers."""
        if fragment.msg_type != MessageType.HANDSHAKE_INIT:
            return False
        if fragment.sender_index != self._remote_index:
            return False
        if fragment.total_length != len(self._init):
            return False
        end = fragment.offset + len(fragment.data)
        return self._init[fragment.offset : end] == fragment.data

    def _on_deadline(self) -> None:
        if self._state is HandshakeState.COMPLETED:
            self._state = HandshakeState.CLOSED
            self._stop_flight()
        else:
            self._fail(HandshakeErrorCode.TIMEOUT)

    def _receive(self, data: bytes, now: float) -> None:
        fragment = parse_fragment(data)
        if fragment.msg_type == MessageType.HANDSHAKE_INIT:
            self._on_init_again(fragment, now)
            return
        if fragment.receiver_index != self._local_index:
            raise RemoteProtocolError(DropReason.UNKNOWN_INDEX, "fragment is not addressed to us")
        if fragment.msg_type != MessageType.HANDSHAKE_FINISH:
            raise RemoteProtocolError(DropReason.UNEXPECTED_MESSAGE, "responder expects FINISH")
        if fragment.sender_index != self._remote_index:
            raise RemoteProtocolError(DropReason.INDEX_MISMATCH, "FINISH from another sender index")
        if self._state is HandshakeState.COMPLETED:
            self._on_finish_again(fragment, now)
            return
        message = self._reassembler.add(fragment, now)
        if message is not None:
            self._on_finish(message)

    def _on_init_again(self, fragment: Fragment, now: float) -> None:
        """The initiator retransmitted INIT: it is missing (part of) RESP."""
        if not self.matches_init(fragment):
            raise RemoteProtocolError(
                DropReason.UNEXPECTED_MESSAGE, "INIT that this responder did not answer"
            )
        if self._state is not HandshakeState.WAIT_FINISH:
            raise RemoteProtocolError(DropReason.DUPLICATE, "INIT after FINISH")
        if now - self._resent_at < RESEND_MIN_INTERVAL:
            raise RemoteProtocolError(DropReason.RATE_LIMITED, "RESP was re-sent moments ago")
        self._resent_at = now
        self.retransmissions += 1
        self._outbox.extend(self._flight)

    def _on_finish_again(self, fragment: Fragment, now: float) -> None:
        """After completion: a retransmitted FINISH means the initiator is not confirmed yet.

        The retransmission is reassembled and compared with the accepted FINISH as a whole
        message, so one retransmitted FINISH asks for one keepalive however it was cut.
        """
        if fragment.total_length != self._finish_length:
            raise RemoteProtocolError(
                DropReason.REPLAYED_FINISH, "FINISH differs from the accepted one"
            )
        message = self._reassembler.add(fragment, now)
        if message is None:
            return
        digest = hashlib.sha256(message).digest()
        if not hmac.compare_digest(digest, self._finish_digest):
            raise RemoteProtocolError(
                DropReason.REPLAYED_FINISH, "FINISH differs from the accepted one"
            )
        if now - self._resent_at < RESEND_MIN_INTERVAL:
            raise RemoteProtocolError(
                DropReason.RATE_LIMITED, "keepalive was requested moments ago"
            )
        self._resent_at = now
        self._events.append(FinishRetransmitted(local_index=self._local_index))

    def _on_finish(self, message: bytes) -> None:
        finish = FinishMessage.parse(message)
        if finish.sender_index != self._remote_index or finish.receiver_index != self._local_index:
            raise RemoteProtocolError(
                DropReason.INDEX_MISMATCH, "FINISH indices differ from its fragments"
            )
        keys = self._initiator_keys
        hs_secret = self._hs_secret
        assert keys is not None
        assert hs_secret is not None
        clear = message[:FINISH_CLEAR_SIZE]
        try:
            plaintext = keys.aead.open(keys.iv, finish.sealed, clear)
        except DecryptError as exc:
            raise RemoteProtocolError(DropReason.DECRYPT_FAILED, "FINISH does not decrypt") from exc
        payload = AuthPayload.parse(plaintext)
        transcript = self._transcript.fork()
        transcript.add(clear, plaintext[: len(plaintext) - len(payload.signature)])
        identity = self._authenticate(
            payload, transcript.digest(), SignatureContext.HANDSHAKE_INITIATOR
        )
        if identity is None:
            return
        transcript.add(payload.signature)
        handshake_hash = transcript.digest()
        i2r, r2i = derive_transport_keys(hs_secret, handshake_hash)
        self._transcript = transcript
        self._hs_secret = None
        self._initiator_keys = None
        self._peer = identity
        self._finish_length = len(message)
        self._finish_digest = hashlib.sha256(message).digest()
        self._state = HandshakeState.COMPLETED
        self._stop_flight()
        self._events.append(
            HandshakeCompleted(
                keys=TransportKeys(
                    send_key=r2i,
                    recv_key=i2r,
                    local_index=self._local_index,
                    remote_index=self._remote_index,
                    is_initiator=False,
                    handshake_hash=handshake_hash,
                ),
                peer=identity,
            )
        )
