"""Fuzz harness: handshake fragments (``parse_fragment``) and their bounded reassembly.

Input: datagrams separated by :data:`fuzzlib.SEP`. Each is parsed; a parsed fragment must
re-encode to the same bytes (the 18-byte header of docs/protocol.md §4, packed here from the
spec, not by the code under test), then goes to one :class:`Reassembler` with a clock that
advances by a fuzzed step. Checked: only ``RemoteProtocolError`` escapes; the reassembler never
holds more partial messages than its bound; a completed message has its declared length and
holds the bytes of the fragment that completed it.

    python fuzz/fragments.py [libFuzzer flags] [corpus dirs]
"""

from __future__ import annotations

import struct

import fuzzlib

with fuzzlib.instrumented():
    from x0tta6bl4.protocol.errors import RemoteProtocolError
    from x0tta6bl4.protocol.fragments import Reassembler, fragment_message, parse_fragment

_SPEC_HEADER = struct.Struct("!BIIHHHHB")
_MAX_PARTIALS = 3
_MAX_MESSAGE = 16 * 1024


def test_one_input(data: bytes) -> None:
    reassembler = Reassembler(
        max_message_size=_MAX_MESSAGE, max_partials=_MAX_PARTIALS, timeout=3.0
    )
    now = 100.0
    for datagram in fuzzlib.split(data):
        # The last byte of a datagram (when any) also drives the clock: 0..2.55 s steps.
        now += (datagram[-1] if datagram else 0) / 100
        try:
            fragment = parse_fragment(datagram)
        except RemoteProtocolError:
            continue
        header = _SPEC_HEADER.pack(
            fragment.msg_type,
            fragment.sender_index,
            fragment.receiver_index,
            fragment.message_seq,
            fragment.total_length,
            fragment.offset,
            len(fragment.data),
            len(fragment.cookie),
        )
        assert header + fragment.cookie + fragment.data == datagram, "fragment does not round-trip"
        if fragment.offset == 0 and len(fragment.data) == fragment.total_length:
            whole = fragment_message(
                fragment.msg_type,  # type: ignore[arg-type]
                fragment.data,
                sender_index=fragment.sender_index,
                receiver_index=fragment.receiver_index,
                cookie=fragment.cookie,
                max_datagram_size=len(datagram),
            )
            assert whole == [datagram], "a whole-message fragment does not re-encode"
        try:
            message = reassembler.add(fragment, now)
        except RemoteProtocolError:
            continue
        assert len(reassembler) <= _MAX_PARTIALS, "reassembler exceeded its partial bound"
        if message is not None:
            assert len(message) == fragment.total_length, "reassembled message has a wrong length"
            assert message[fragment.offset : fragment.offset + len(fragment.data)] == fragment.data


if __name__ == "__main__":
    fuzzlib.run(test_one_input)
