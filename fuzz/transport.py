"""Fuzz harness: transport datagrams (``Session.open``) and the inner frames they carry.

The first input byte chooses the mode, the rest is its input:

* even: the rest is a datagram from the network, opened by a fresh :class:`Session` holding
  one keypair (fixed keys, so the corpus's datagrams decrypt): header checks, index lookup,
  AEAD, replay window; a datagram that opens has its plaintext decoded as frames;
* odd: the rest is a plaintext, sealed by the peer under the same keys and opened, then
  decoded with ``decode_frames`` (what an authenticated peer can make us parse).

Checked: ``open`` raises only ``RemoteProtocolError`` with a ``DropReason`` and counts it;
an authentic datagram opens to exactly what was sealed and cannot be opened twice (replay);
``decode_frames`` raises only ``RemoteProtocolError`` and what it returns re-encodes to frames
that decode to the same list.

    python fuzz/transport.py [libFuzzer flags] [corpus dirs]
"""

from __future__ import annotations

import hashlib

import fuzzlib

with fuzzlib.instrumented():
    from x0tta6bl4.protocol.errors import DropReason, RemoteProtocolError
    from x0tta6bl4.protocol.frames import decode_frames, encode_frames
    from x0tta6bl4.protocol.keys import TransportKeys
    from x0tta6bl4.protocol.session import TRANSPORT_DROPS, Session

_KEY_A = hashlib.sha256(b"x0tta6bl4-fuzz/transport/a->b").digest()
_KEY_B = hashlib.sha256(b"x0tta6bl4-fuzz/transport/b->a").digest()
_INDEX_A, _INDEX_B = 0x0A0A0A0A, 0x0B0B0B0B
_REASONS = {r.value for r in TRANSPORT_DROPS}


def _session(send: bytes, recv: bytes, local: int, remote: int) -> Session:
    session = Session()
    session.install(
        TransportKeys(
            send_key=send,
            recv_key=recv,
            local_index=local,
            remote_index=remote,
            is_initiator=False,
            handshake_hash=bytes(32),
        ),
        0.0,
    )
    return session


def peer_session() -> Session:
    """The sending side (node-a); the harness's session is node-b's."""
    return _session(_KEY_A, _KEY_B, _INDEX_A, _INDEX_B)


def _check_frames(plaintext: bytes) -> None:
    try:
        frames = decode_frames(plaintext)
    except RemoteProtocolError as exc:
        assert exc.reason in ("bad_frame", "unknown_frame"), exc.reason
        return
    assert decode_frames(encode_frames(frames)) == frames, "frames do not round-trip"


def test_one_input(data: bytes) -> None:
    if not data:
        return
    mode, rest = data[0], data[1:]
    session = _session(_KEY_B, _KEY_A, _INDEX_B, _INDEX_A)
    if mode % 2 == 0:
        try:
            result = session.open(rest, 1.0 + mode)
        except RemoteProtocolError as exc:
            assert exc.reason in _REASONS, exc.reason
            assert session.stats.dropped == {exc.reason: 1}
            return
        _check_frames(result.plaintext)
        try:
            session.open(rest, 1.0 + mode)
        except RemoteProtocolError as exc:
            assert exc.reason == DropReason.REPLAY, "an authentic datagram opened twice"
        else:
            raise AssertionError("an authentic datagram opened twice")
        return
    peer = peer_session()
    try:
        datagram = peer.seal(rest, 1.0)
    except Exception:
        assert len(rest) > peer.max_plaintext_size
        return
    assert session.open(datagram, 1.0).plaintext == rest
    _check_frames(rest)


if __name__ == "__main__":
    fuzzlib.run(test_one_input)
