"""Fuzz harness: inner frames (``decode_frames``) and link-layer frame reassembly.

Input: plaintexts separated by :data:`fuzzlib.SEP`, as an authenticated peer could send them.
Each is decoded; decoded frames must re-encode to bytes that decode to the same frames (and to
the same bytes when the plaintext held no ignorable frame). FRAGMENT frames go to one
:class:`FrameReassembler` (the node's, with its bounds) and a rebuilt message is decoded too,
as the node does.

Checked: only ``RemoteProtocolError`` (``bad_frame``/``unknown_frame``) escapes the decoder;
the reassembler holds at most ``max_partials`` messages of at most ``max_size`` bytes.

    python fuzz/frames.py [libFuzzer flags] [corpus dirs]
"""

from __future__ import annotations

import fuzzlib

with fuzzlib.instrumented():
    from x0tta6bl4.node.reassembly import FrameReassembler
    from x0tta6bl4.protocol.errors import RemoteProtocolError
    from x0tta6bl4.protocol.frames import (
        IGNORABLE_FRAME_BIT,
        Fragment,
        decode_frames,
        encode_frames,
    )

_REASONS = ("bad_frame", "unknown_frame")


def _decode(plaintext: bytes) -> list[object]:
    try:
        frames = decode_frames(plaintext)
    except RemoteProtocolError as exc:
        assert exc.reason in _REASONS, exc.reason
        return []
    again = encode_frames(frames)  # type: ignore[arg-type]
    assert decode_frames(again) == frames, "frames do not round-trip"
    if not any(b & IGNORABLE_FRAME_BIT for b in _frame_types(plaintext)):
        assert again == plaintext, "frames do not re-encode to the same bytes"
    return list(frames)


def _frame_types(plaintext: bytes) -> list[int]:
    types, pos = [], 0
    while pos + 3 <= len(plaintext):
        types.append(plaintext[pos])
        pos += 3 + int.from_bytes(plaintext[pos + 1 : pos + 3], "big")
    return types


def test_one_input(data: bytes) -> None:
    reassembler = FrameReassembler()
    now = 0.0
    for plaintext in fuzzlib.split(data):
        now += 0.25
        for frame in _decode(plaintext):
            if isinstance(frame, Fragment):
                message = reassembler.add(frame, now)
                assert len(reassembler) <= reassembler.max_partials
                if message is not None:
                    assert len(message) == frame.total
                    _decode(message)


if __name__ == "__main__":
    fuzzlib.run(test_one_input)
