"""The native transport session against the Python reference: the same wire, byte for byte,
and the same behaviour.

* Every test of ``tests/unit/test_session.py`` runs again here with the native ``Session``
  (the reference's tests are the behavioural spec; only the benchmark tests are left out).
* Cross tests: each side seals, the other opens; identical keys and inputs give identical
  datagrams; replay windows and frame decoders agree on random inputs.
"""

from __future__ import annotations

import os
import struct
from collections.abc import Iterator
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import tests.unit.test_session as reference
from x0tta6bl4.dataplane import native_module
from x0tta6bl4.protocol import frames as pyframes
from x0tta6bl4.protocol.constants import REJECT_AFTER_MESSAGES
from x0tta6bl4.protocol.errors import LocalProtocolError, RemoteProtocolError
from x0tta6bl4.protocol.keys import TransportKeys
from x0tta6bl4.protocol.replay import ReplayFilter
from x0tta6bl4.protocol.session import OpenResult, Session

native: Any = native_module()
NativeSession: Any = native.Session if native is not None else None

# The reference's behavioural tests, collected again in this module (their globals are the
# reference module's, patched below to the native Session).
globals().update(
    {
        name: value
        for name, value in vars(reference).items()
        if name.startswith("test_") and "bench" not in name
    }
)


@pytest.fixture(autouse=True, scope="module")
def _native_session() -> Iterator[None]:
    if native is None:
        yield
        return
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(reference, "Session", NativeSession)
        patch.setattr(reference, "_FUZZ_PAIR", reference.establish())
        yield


def keys_pair(i: int = 7, r: int = 9) -> tuple[TransportKeys, TransportKeys]:
    return reference.paired_keys(i, r)


def confirmed(cls_i: Any, cls_r: Any) -> tuple[Any, Any]:
    ikeys, rkeys = keys_pair()
    initiator, responder = cls_i(), cls_r()
    initiator.install(ikeys, 0.0)
    responder.install(rkeys, 0.0)
    assert initiator.open(responder.seal(b"", 0.0), 0.0) == OpenResult(b"", True)
    return initiator, responder


@pytest.mark.parametrize(("cls_i", "cls_r"), [("py", "native"), ("native", "py")])
def test_each_side_seals_the_other_opens(cls_i: str, cls_r: str) -> None:
    pick = {"py": Session, "native": NativeSession}
    initiator, responder = confirmed(pick[cls_i], pick[cls_r])
    for size in (0, 1, 13, 100, 1443):
        payload = os.urandom(size)
        assert responder.open(initiator.seal(payload, 1.0), 1.0) == OpenResult(payload, False)
        assert initiator.open(responder.seal(payload, 1.0), 1.0).plaintext == payload


def test_identical_bytes_for_identical_keys_and_inputs() -> None:
    _ikeys, rkeys = keys_pair()
    py_side, native_side = Session(), NativeSession()
    py_side.install(rkeys, 5.0)
    native_side.install(rkeys, 5.0)
    for size in (0, 1, 29, 700, 1443):
        payload = os.urandom(size)
        assert py_side.seal(payload, 6.0) == native_side.seal(payload, 6.0)
    assert py_side.stats == native_side.stats


@settings(max_examples=300, deadline=None)
@given(st.lists(st.integers(0, 20_000), max_size=60), st.integers(1, 2**64 - 1))
def test_replay_windows_agree(counters: list[int], limit: int) -> None:
    py_filter, native_filter = ReplayFilter(), native.ReplayFilter()
    for counter in counters:
        assert py_filter.validate_counter(counter, limit) == native_filter.validate_counter(
            counter, limit
        )


def as_tuple(frame: pyframes.Frame) -> tuple[Any, ...]:
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


def decode_both(data: bytes) -> tuple[Any, Any]:
    try:
        py: Any = [as_tuple(f) for f in pyframes.decode_frames(data)]
    except RemoteProtocolError as exc:
        py = exc.reason
    try:
        nat: Any = native.decode_frames(data)
    except RemoteProtocolError as exc:
        nat = exc.reason
    return py, nat


def test_frame_decoders_agree_on_every_sample() -> None:
    from tests.unit.test_frames import SAMPLE

    data = pyframes.encode_frames(SAMPLE)
    py, nat = decode_both(data)
    assert py == nat
    assert len(nat) == len(SAMPLE)


_frame = st.tuples(st.integers(0, 255), st.binary(max_size=80)).map(
    lambda kb: struct.pack("!BH", kb[0], len(kb[1])) + kb[1]
)


@settings(max_examples=2000, deadline=None)
@given(st.lists(_frame | st.binary(max_size=8), max_size=6))
def test_frame_decoders_agree_on_random_input(parts: list[bytes]) -> None:
    py, nat = decode_both(b"".join(parts))
    assert py == nat


def test_errors_are_the_package_types() -> None:
    session = NativeSession()
    with pytest.raises(LocalProtocolError, match="no current keypair"):
        session.seal(b"x", 0.0)
    with pytest.raises(RemoteProtocolError) as info:
        session.open(b"\x04" + bytes(40), 0.0)
    assert info.value.reason == "unknown_index"
    with pytest.raises(ValueError, match="need"):
        NativeSession(reject_after_messages=REJECT_AFTER_MESSAGES + 1)
    with pytest.raises(RemoteProtocolError) as frame_error:
        native.decode_frames(b"\x01\x00\x02ab")
    assert frame_error.value.reason == "bad_frame"
