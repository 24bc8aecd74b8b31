"""Fuzz harness: the native (Rust) data plane against the Python reference, differentially.

``x0tta6bl4_native`` parses the same untrusted bytes as ``protocol/session.py`` and
``protocol/frames.py`` (docs/transport.md is the one spec for both). The first input byte
chooses the check, the rest is its input:

* 0: ``decode_frames`` — both decoders give the same frames, or the same ``reason``;
* 1: a transport datagram from the network opened by a native and a Python :class:`Session`
  holding the same keypair — same plaintext or same drop reason, same drop counters;
* 2: a plaintext sealed by the native session and opened by the Python one, and the other way
  round (identical datagrams: the nonce is the counter);
* 3: counters (u64 each, 8 bytes apiece) through both RFC 6479 replay windows — same verdicts.

Checked: the native module raises only what the reference raises (``RemoteProtocolError`` with
the same reason, ``LocalProtocolError`` where the reference does), never panics (a Rust panic
surfaces as ``pyo3_runtime.PanicException``, a finding) and agrees with the reference on every
input. Without the native module (``make setup`` builds it where cargo exists) the harness
says so and exits 0.

    python fuzz/native_dataplane.py [libFuzzer flags] [corpus dirs]
"""

from __future__ import annotations

import hashlib
import sys
from typing import Any

import fuzzlib

with fuzzlib.instrumented():
    from x0tta6bl4.dataplane import native_module
    from x0tta6bl4.protocol import frames as pyframes
    from x0tta6bl4.protocol.errors import LocalProtocolError, RemoteProtocolError
    from x0tta6bl4.protocol.keys import TransportKeys
    from x0tta6bl4.protocol.replay import ReplayFilter
    from x0tta6bl4.protocol.session import Session

NATIVE = native_module()
_KEY_A = hashlib.sha256(b"x0tta6bl4-fuzz/native/a->b").digest()
_KEY_B = hashlib.sha256(b"x0tta6bl4-fuzz/native/b->a").digest()
_INDEX_A, _INDEX_B = 0x0A0A0A0A, 0x0B0B0B0B
_LIMIT = 2**64 - 2**13 - 1


def as_tuple(frame: pyframes.Frame) -> tuple[Any, ...]:
    """A reference frame in the native module's tuple form."""
    if isinstance(frame, pyframes.Padding):
        return (0, frame.length)
    if isinstance(frame, pyframes.Heartbeat):
        return (1, frame.seq, frame.echo_seq, frame.echo_delay_us, frame.probe)
    if isinstance(frame, pyframes.LinkStateAdvert):
        return (3, frame.body)
    if isinstance(frame, pyframes.Routed):
        return (4, frame.src, frame.dst, frame.ttl, frame.flags, frame.payload)
    if isinstance(frame, pyframes.AppData):
        return (5, frame.channel, frame.payload)
    if isinstance(frame, pyframes.Fragment):
        return (6, frame.msg_id, frame.total, frame.offset, frame.data)
    kinds = {pyframes.LsdbSummary: 7, pyframes.LsdbAnnounce: 8, pyframes.LsdbRequest: 9}
    return (kinds[type(frame)], frame.entries)


def _outcome(call: Any, *args: Any) -> Any:
    try:
        return ("ok", call(*args))
    except RemoteProtocolError as exc:
        return ("remote", exc.reason)
    except LocalProtocolError:
        return ("local",)


def _keys(send: bytes, recv: bytes, local: int, remote: int) -> TransportKeys:
    return TransportKeys(
        send_key=send,
        recv_key=recv,
        local_index=local,
        remote_index=remote,
        is_initiator=False,
        handshake_hash=bytes(32),
    )


def _pair(cls: Any, *, sender: bool) -> Any:
    session = cls()
    keys = (
        _keys(_KEY_A, _KEY_B, _INDEX_A, _INDEX_B)
        if sender
        else _keys(_KEY_B, _KEY_A, _INDEX_B, _INDEX_A)
    )
    session.install(keys, 0.0)
    return session


def _frames(data: bytes) -> None:
    py = _outcome(lambda d: [as_tuple(f) for f in pyframes.decode_frames(d)], data)
    nat = _outcome(lambda d: list(NATIVE.decode_frames(d)), data)
    assert py == nat, f"decode_frames differ: python {py!r:.300} native {nat!r:.300}"


def _open(data: bytes) -> None:
    py, nat = _pair(Session, sender=False), _pair(NATIVE.Session, sender=False)
    for now in (1.0, 1.0, 500.0):  # again (replay), then after the keypair expired
        a = _outcome(lambda d, n=now: tuple(py.open(d, n)), data)
        b = _outcome(lambda d, n=now: tuple(nat.open(d, n)), data)
        assert a == b, f"open differs at {now}: python {a!r:.300} native {b!r:.300}"
    assert py.stats.dropped == nat.stats.dropped, (py.stats.dropped, nat.stats.dropped)


def _cross(plaintext: bytes) -> None:
    for seal_cls, open_cls in ((NATIVE.Session, Session), (Session, NATIVE.Session)):
        sender, receiver = _pair(seal_cls, sender=True), _pair(open_cls, sender=False)
        sealed = _outcome(sender.seal, plaintext, 1.0)
        reference = _outcome(_pair(Session, sender=True).seal, plaintext, 1.0)
        assert sealed == reference, "seal differs from the reference"
        if sealed[0] == "ok":
            assert receiver.open(sealed[1], 1.0).plaintext == plaintext


def _replay(data: bytes) -> None:
    py, nat = ReplayFilter(), NATIVE.ReplayFilter()
    for i in range(0, len(data) - 7, 8):
        counter = int.from_bytes(data[i : i + 8], "big") >> (data[i] & 0x3F)
        a = py.validate_counter(counter, _LIMIT)
        b = nat.validate_counter(counter, _LIMIT)
        assert a == b, f"replay windows differ on counter {counter}"


def test_one_input(data: bytes) -> None:
    if not data:
        return
    check = (_frames, _open, _cross, _replay)[data[0] % 4]
    check(data[1:])


if __name__ == "__main__":
    if NATIVE is None:
        print(
            "native_dataplane: x0tta6bl4_native is not built (make setup, with cargo)",
            file=sys.stderr,
        )
        sys.exit(0)
    fuzzlib.run(test_one_input)
