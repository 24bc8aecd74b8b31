"""Fuzz harness: what a handshake peer seals — the auth payload inside RESP and FINISH.

RESP's and FINISH's sealed parts are AES-256-GCM under keys only the two peers know, so
random bytes never get past the AEAD. Here the harness plays the peer: it runs the real key
schedule (``hybrid_encapsulate``/``decapsulate``, ``derive_handshake_keys``) and seals the
fuzzed plaintext, so the machine under test decrypts exactly the fuzzer's bytes and parses
them: ``AuthPayload.parse``, the peer certificate through ``verify_svid`` (the fixture CA's
trust bundle), the transcript signature, ``authorize``.

The first input byte chooses the side, the rest is the plaintext:

* even: sealed into RESP for an :class:`InitiatorHandshake` (node-a);
* odd: sealed into FINISH for a :class:`ResponderHandshake` (node-b) made from the harness's
  INIT.

A machine lives until an input fails it (making one costs a KEM key pair, or an ML-DSA
signature for a responder). Checked: nothing escapes ``receive_datagram``; a machine never
completes (the fuzzer cannot forge an ML-DSA-65 signature over the transcript); a failure is
one of the documented authentication failures.

    python fuzz/handshake_sealed.py [libFuzzer flags] [corpus dirs]
"""

from __future__ import annotations

import fuzzlib

with fuzzlib.instrumented():
    from x0tta6bl4.crypto.suite import HybridKemKeyPair, hybrid_encapsulate
    from x0tta6bl4.protocol.constants import NONCE_SIZE, MessageType
    from x0tta6bl4.protocol.errors import LocalProtocolError
    from x0tta6bl4.protocol.events import HandshakeErrorCode, HandshakeFailed
    from x0tta6bl4.protocol.fragments import Reassembler, fragment_message, parse_fragment
    from x0tta6bl4.protocol.handshake import InitiatorHandshake, ResponderHandshake
    from x0tta6bl4.protocol.messages import FinishMessage, InitMessage, RespMessage
    from x0tta6bl4.protocol.schedule import Transcript, derive_handshake_keys, handshake_secret

INITIATOR_INDEX = 0x11223344
RESPONDER_INDEX = 0x55667788
_ALICE = fuzzlib.handshake_config("node-a", memo=256)
_BOB = fuzzlib.handshake_config("node-b", memo=256)
_AUTH_FAILURES = {
    HandshakeErrorCode.CERTIFICATE_REJECTED,
    HandshakeErrorCode.BAD_SIGNATURE,
    HandshakeErrorCode.UNAUTHORIZED,
}


def _whole(datagrams: list[bytes]) -> bytes:
    reassembler = Reassembler()
    for datagram in datagrams:
        message = reassembler.add(parse_fragment(datagram), 0.0)
        if message is not None:
            return message
    raise AssertionError("flight did not reassemble")


class _InitiatorSide:
    """An initiator waiting for RESP, and its INIT."""

    def __init__(self) -> None:
        self.machine = InitiatorHandshake(_ALICE, 0.0, local_index=INITIATOR_INDEX)
        self.init = _whole(self.machine.datagrams_to_send())
        # One encapsulation per machine: it accepts any RESP while it waits for one.
        self.share, self.shared = hybrid_encapsulate(InitMessage.parse(self.init).share)

    def resp(self, plaintext: bytes) -> list[bytes]:
        share, shared = self.share, self.shared
        clear = RespMessage(
            sender_index=RESPONDER_INDEX,
            receiver_index=INITIATOR_INDEX,
            nonce=bytes(NONCE_SIZE),
            share=share,
            sealed=b"",
        ).clear_part()
        transcript = Transcript()
        transcript.add(self.init, clear)
        _, keys = derive_handshake_keys(handshake_secret(shared), transcript.digest())
        message = clear + keys.aead.seal(keys.iv, plaintext, clear)
        return fragment_message(
            MessageType.HANDSHAKE_RESP,
            message,
            sender_index=RESPONDER_INDEX,
            receiver_index=INITIATOR_INDEX,
        )


class _ResponderSide:
    """A responder that answered the harness's INIT, and the keys to seal FINISH with."""

    def __init__(self) -> None:
        kem = HybridKemKeyPair()
        init = InitMessage(sender_index=INITIATOR_INDEX, nonce=bytes(NONCE_SIZE), share=kem.share)
        self.init = init.encode()
        self.machine = ResponderHandshake(_BOB, self.init, 0.0, local_index=RESPONDER_INDEX)
        resp = _whole(self.machine.datagrams_to_send())
        parsed = RespMessage.parse(resp)
        clear = resp[: len(resp) - len(parsed.sealed)]
        transcript = Transcript()
        transcript.add(self.init, clear)
        self.keys, _ = derive_handshake_keys(
            handshake_secret(kem.decapsulate(parsed.share)), transcript.digest()
        )

    def finish(self, plaintext: bytes) -> list[bytes]:
        clear = FinishMessage(
            sender_index=INITIATOR_INDEX, receiver_index=RESPONDER_INDEX, sealed=b""
        ).clear_part()
        message = clear + self.keys.aead.seal(self.keys.iv, plaintext, clear)
        return fragment_message(
            MessageType.HANDSHAKE_FINISH,
            message,
            sender_index=INITIATOR_INDEX,
            receiver_index=RESPONDER_INDEX,
        )


_sides: dict[int, _InitiatorSide | _ResponderSide] = {}


def test_one_input(data: bytes) -> None:
    if not data:
        return
    side_key = data[0] % 2
    side = _sides.get(side_key)
    if side is None or side.machine.done:
        side = _sides[side_key] = _InitiatorSide() if side_key == 0 else _ResponderSide()
    try:
        datagrams = (
            side.resp(data[1:]) if isinstance(side, _InitiatorSide) else side.finish(data[1:])
        )
    except LocalProtocolError:
        return  # larger than a handshake message may be
    for datagram in datagrams:
        side.machine.receive_datagram(datagram, 0.5)
    event = side.machine.next_event()
    if event is not None:
        assert isinstance(event, HandshakeFailed), f"fuzzed bytes completed a handshake: {event}"
        assert event.error_code in _AUTH_FAILURES, event.error_code
    else:
        assert not side.machine.done


if __name__ == "__main__":
    fuzzlib.run(test_one_input)
