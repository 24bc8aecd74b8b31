"""Fuzz harness: the handshake's wire messages and the machines that take them from the network.

The first input byte chooses the target, the rest is its input:

* 0-4: one whole message parsed by ``InitMessage``, ``RespMessage``, ``FinishMessage``,
  ``AuthPayload`` or ``CookieReply`` ``.parse``; a parsed message must encode back to the
  same bytes;
* 5: datagrams (separated by :data:`fuzzlib.SEP`) sent from one address to a fresh
  :class:`HandshakeListener`, with a fuzzed clock; an INIT fragment that echoes a cookie
  carries the valid one (as after a real COOKIE_REPLY), so INIT reassembly, the responder
  budgets, responder creation and the responder's own input (FINISH) are reached;
* 7: the same with cookies as fuzzed (address validation itself) and the listener under load;
* 6: datagrams sent to an :class:`InitiatorHandshake` waiting for RESP (cookie replies, RESP
  reassembly and parsing; its index is fixed so the corpus can address it).

Checked: parsers raise only ``RemoteProtocolError``; the machines never raise on input, never
fail a handshake on unauthenticated garbage, and keep their bounds; a COOKIE_REPLY is never
larger than the datagram that drew it (anti-amplification).

    python fuzz/handshake_messages.py [libFuzzer flags] [corpus dirs]
"""

from __future__ import annotations

import fuzzlib

with fuzzlib.instrumented():
    from x0tta6bl4.protocol.cookie import CookieJar
    from x0tta6bl4.protocol.errors import RemoteProtocolError
    from x0tta6bl4.protocol.events import HandshakeErrorCode, HandshakeFailed
    from x0tta6bl4.protocol.handshake import InitiatorHandshake
    from x0tta6bl4.protocol.listener import HandshakeListener
    from x0tta6bl4.protocol.messages import (
        AuthPayload,
        CookieReply,
        FinishMessage,
        InitMessage,
        RespMessage,
    )

#: Handshake indices of the corpus's machines (``fuzz/make_corpus.py`` uses the same).
INITIATOR_INDEX = 0x11223344
RESPONDER_INDEX = 0x55667788
ADDR = bytes([10, 0, 0, 1, 0xB7, 0x98])

_ALICE = fuzzlib.handshake_config("node-a")
_BOB = fuzzlib.handshake_config("node-b")
_initiator: InitiatorHandshake | None = None


def _reencode(kind: int, message: object) -> bytes:
    if isinstance(message, InitMessage):
        return message.encode()
    if isinstance(message, RespMessage):
        return message.clear_part() + message.sealed
    if isinstance(message, FinishMessage):
        return message.clear_part() + message.sealed
    if isinstance(message, AuthPayload):
        return message.encode()
    assert isinstance(message, CookieReply), kind
    return message.encode()


_PARSERS = (
    InitMessage.parse,
    RespMessage.parse,
    FinishMessage.parse,
    AuthPayload.parse,
    CookieReply.parse,
)


def _with_valid_cookie(datagram: bytes, jar: CookieJar, now: float) -> bytes:
    """An INIT fragment that echoes a cookie gets the one ``jar`` makes for it now (what an
    initiator that received our COOKIE_REPLY sends), so that fuzzed INITs get past address
    validation into reassembly and responder creation."""
    if len(datagram) < 34 or datagram[0] != 1 or datagram[17] != 16:
        return datagram
    cookie = jar.make(ADDR, int.from_bytes(datagram[1:5], "big"), now)
    return datagram[:18] + cookie + datagram[34:]


def _listener(datagrams: list[bytes], *, under_load: bool, fix_cookies: bool) -> None:
    jar = CookieJar(0.0)
    listener = HandshakeListener(_BOB, 0.0, new_index=lambda: RESPONDER_INDEX, cookie_jar=jar)
    listener.force_under_load = under_load
    now = 1.0
    responders = []
    for raw in datagrams:
        now += (raw[-1] if raw else 0) / 50
        datagram = _with_valid_cookie(raw, jar, now) if fix_cookies else raw
        responder = listener.receive_datagram(datagram, ADDR, now)
        if responder is not None:
            # A second, different INIT with a valid cookie from the same address and index
            # replaces the first one's responder, which is aborted (docs/protocol.md §6): only
            # the holder of the address can do that, and the fuzzer holds it here.
            for old in responders:
                if old.failed:
                    event = old.next_event()
                    assert isinstance(event, HandshakeFailed), event
                    assert event.error_code is HandshakeErrorCode.ABORTED, event
            responders = [r for r in responders if not r.failed]
            # A retransmitted INIT returns the responder that already holds it.
            if not any(r is responder for r in responders):
                responders.append(responder)
            responder.datagrams_to_send()
        # FINISH goes to the responder directly (the node routes it by receiver index).
        for r in responders:
            r.receive_datagram(datagram, now)
            assert not r.failed, "garbage failed a responder"
        for reply, addr in listener.datagrams_to_send():
            assert addr == ADDR
            assert len(reply) <= max(len(datagram), 21), "amplification"
            assert CookieReply.parse(reply).receiver_index
        listener.handle_timer(now)


def _initiate(datagrams: list[bytes]) -> None:
    global _initiator
    if _initiator is None or _initiator.done:
        _initiator = InitiatorHandshake(_ALICE, 0.0, local_index=INITIATOR_INDEX)
    initiator = _initiator
    now = 0.05
    for datagram in datagrams:
        now += (datagram[-1] if datagram else 0) / 50
        initiator.receive_datagram(datagram, now)
        initiator.datagrams_to_send()
    # Unauthenticated bytes can never make the initiator fail or complete.
    assert not initiator.failed, "garbage failed the initiator"
    assert initiator.next_event() is None, "garbage completed the initiator"
    # Keep the machine alive for the next input: no timer is ever run on it.


def test_one_input(data: bytes) -> None:
    if not data:
        return
    target, rest = data[0] % 8, data[1:]
    if target < len(_PARSERS):
        try:
            message = _PARSERS[target](rest)
        except RemoteProtocolError:
            return
        assert _reencode(target, message) == rest, "message does not round-trip"
    elif target == 5:
        _listener(fuzzlib.split(rest), under_load=False, fix_cookies=True)
    elif target == 7:
        _listener(fuzzlib.split(rest), under_load=True, fix_cookies=False)
    else:
        _initiate(fuzzlib.split(rest))


if __name__ == "__main__":
    fuzzlib.run(test_one_input)
