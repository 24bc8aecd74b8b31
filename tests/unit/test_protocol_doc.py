"""docs/protocol.md says what the code does: sizes, constants and drop reasons.

Every size the document states is derived here from the document's own tables (the byte
layouts of sections 2 and 3 are parsed: offsets must be contiguous and sum to the stated
size), then compared with the code's constants and with messages the code builds. The
constants tables of section 5 are compared with ``protocol/constants.py``, including which
block (specification or implementation) each one lives in, and the drop-reason table of
section 8 with the reasons the handshake code can raise. An independent implementation
written from the document alone must get the same bytes.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

from tests.protocol_helpers import HandshakeLink, config_for, node
from x0tta6bl4.crypto.suite import MLDSA65_SIGNATURE_SIZE
from x0tta6bl4.protocol import constants
from x0tta6bl4.protocol.errors import DropReason
from x0tta6bl4.protocol.events import HandshakeCompleted
from x0tta6bl4.protocol.fragments import fragment_message
from x0tta6bl4.protocol.messages import CookieReply, RespMessage

ROOT = Path(__file__).resolve().parents[2]
DOC = (ROOT / "docs" / "protocol.md").read_text()
CONSTANTS_SOURCE = Path(constants.__file__).read_text()
PROTOCOL = Path(constants.__file__).parent

_ROW = re.compile(r"^(\S+)\s+(\S+)\s+(.*)$")


def _section(title: str) -> str:
    """The text of the section whose heading starts with ``title`` (up to the next one)."""
    match = re.search(rf"^(#+) {re.escape(title)}.*$", DOC, re.MULTILINE)
    assert match, f"no section {title!r} in docs/protocol.md"
    level = len(match.group(1))
    rest = DOC[match.end() :]
    end = re.search(rf"^#{{1,{level}}} ", rest, re.MULTILINE)
    return rest[: end.start()] if end else rest


def _code_blocks(text: str) -> list[list[str]]:
    return [block.strip("\n").splitlines() for block in re.findall(r"```\n(.*?)```", text, re.S)]


def _layout(lines: list[str]) -> list[tuple[int, int, str]]:
    """``offset size field`` rows with numeric offsets and sizes, checked to be contiguous;
    stops at the first row whose offset or size is symbolic (``18+c``, ``L``, ``…``)."""
    rows: list[tuple[int, int, str]] = []
    for line in lines:
        match = _ROW.match(line.strip())
        if not match or not match.group(1).isdigit():
            continue
        if not match.group(2).isdigit():
            break
        offset, size = int(match.group(1)), int(match.group(2))
        if rows:
            last_offset, last_size, last_field = rows[-1]
            assert offset == last_offset + last_size, f"{line!r} does not follow {last_field!r}"
        else:
            assert offset == 0, f"a layout must start at offset 0: {line!r}"
        rows.append((offset, size, match.group(3)))
    assert rows, f"no layout in {lines!r}"
    return rows


def _total(rows: list[tuple[int, int, str]]) -> int:
    return rows[-1][0] + rows[-1][1]


def _stated(text: str, pattern: str) -> int:
    match = re.search(pattern, text)
    assert match, f"{pattern!r} not found"
    return int(match.group(1).replace(",", ""))


# --- sizes ---------------------------------------------------------------------------------------


def test_fragment_header_size_and_datagram_bound() -> None:
    text = _section("2. Fragment header")
    header = _layout(_code_blocks(text)[0])
    assert [field.split()[0] for _, _, field in header] == [
        "type",
        "sender",
        "receiver",
        "message",
        "total",
        "fragment",
        "fragment",
        "cookie",
    ]
    assert _total(header) == constants.FRAGMENT_HEADER_SIZE == 18
    assert _stated(text, r"at most \*\*(\d+)\*\*") == constants.MAX_DATAGRAM_SIZE
    assert _stated(text, r"total length of 0 or above (\d+)") == (
        constants.MAX_HANDSHAKE_MESSAGE_SIZE
    )
    assert _stated(text, r"INIT (\d+) bytes") == constants.INIT_MESSAGE_SIZE
    cookie_row = next(line for line in _code_blocks(text)[0] if "cookie length" in line)
    assert f"or {constants.COOKIE_SIZE} in INIT" in cookie_row


def test_init_layout() -> None:
    text = _section("INIT (initiator")
    rows = _layout(_code_blocks(text)[0])
    stated = _stated(DOC, r"### INIT \(initiator → responder\), (\d+) bytes")
    assert _total(rows) == stated == constants.INIT_MESSAGE_SIZE
    nonce = next(size for _, size, field in rows if field.startswith("nonce"))
    assert nonce == constants.NONCE_SIZE
    link = HandshakeLink.create(config_for(node("alice")), config_for(node("bob")))
    init = link.initiator._init  # the bytes the code puts in the transcript
    assert len(init) == stated


def test_resp_clear_part_layout() -> None:
    """The size the independent implementation had to find by trial: 1162, not 1164."""
    text = _section("RESP (responder")
    lines = _code_blocks(text)[0]
    sealed_at = next(i for i, line in enumerate(lines) if line.startswith("sealed part"))
    rows = _layout(lines[:sealed_at])
    stated = _stated(text, r"clear part \((\d+) bytes, RESP\.clear\)")
    sealed_offset = int(lines[sealed_at + 1].split()[0])
    assert _total(rows) == stated == sealed_offset == constants.RESP_CLEAR_SIZE == 1162
    link = HandshakeLink.create(config_for(node("alice")), config_for(node("bob")))
    link.transfer_to_responder()
    responder = link.responder
    assert responder is not None
    datagrams = link.from_responder()
    resp = b"".join(d[constants.FRAGMENT_HEADER_SIZE :] for d in datagrams)
    # The document's fields, read at the document's offsets.
    fields = {field.split()[0]: (offset, size) for offset, size, field in rows}
    offset, size = fields["receiver"]
    assert int.from_bytes(resp[offset : offset + size], "big") == link.initiator.local_index
    assert RespMessage.parse(resp).sealed == resp[sealed_offset:]
    # The initiator opens the sealed part with RESP.clear = the first 1162 bytes as AAD.
    for d in datagrams:
        link.deliver_to_initiator(d)
    assert link.initiator.dropped == {}
    assert isinstance(link.initiator.next_event(), HandshakeCompleted)


def test_finish_clear_part_layout() -> None:
    text = _section("FINISH (initiator")
    lines = _code_blocks(text)[0]
    sealed_at = next(i for i, line in enumerate(lines) if line.startswith("sealed part"))
    rows = _layout(lines[:sealed_at])
    stated = _stated(text, r"clear part \((\d+) bytes, FINISH\.clear\)")
    assert _total(rows) == stated == int(lines[sealed_at + 1].split()[0])
    assert stated == constants.FINISH_CLEAR_SIZE


def test_auth_payload_layout() -> None:
    text = _section("Auth payload")
    lines = _code_blocks(text)[0]
    assert _layout(lines) == [(0, 2, "certificate length L, 1 … 8192")]
    signature = next(line for line in lines if "signature" in line).split()
    assert signature[0] == "2+L"
    assert int(signature[1]) == MLDSA65_SIGNATURE_SIZE
    assert _stated(text, r"exactly `2 \+ L \+ (\d+)` bytes") == MLDSA65_SIGNATURE_SIZE
    assert _stated(lines[0], r"1 … (\d+)") == constants.MAX_CERTIFICATE_SIZE


def test_cookie_reply_layout() -> None:
    text = _section("COOKIE_REPLY (responder")
    rows = _layout(_code_blocks(text)[0])
    stated = _stated(DOC, r"### COOKIE_REPLY \(responder → initiator\), (\d+) bytes")
    assert _total(rows) == stated == constants.COOKIE_REPLY_SIZE
    assert len(CookieReply(receiver_index=1, cookie=bytes(constants.COOKIE_SIZE)).encode()) == (
        stated
    )
    assert rows[-1][1] == constants.COOKIE_SIZE


def test_datagram_figures_of_section_6() -> None:
    """The byte counts section 6 gives for INIT with and without a cookie."""
    text = _section("6. Address validation")
    init = bytes(constants.INIT_MESSAGE_SIZE)
    plain = [
        len(d)
        for d in fragment_message(
            constants.MessageType.HANDSHAKE_INIT, init, sender_index=1, receiver_index=0
        )
    ]
    cookie = bytes(constants.COOKIE_SIZE)
    echoed = [
        len(d)
        for d in fragment_message(
            constants.MessageType.HANDSHAKE_INIT,
            init,
            sender_index=1,
            receiver_index=0,
            cookie=cookie,
        )
    ]
    match = re.search(r"(\d+) datagrams of (\d+) \+ (\d+) = (\d+)\s+bytes", text)
    assert match
    assert [int(g) for g in match.groups()] == [len(plain), *plain, sum(plain)]
    match = re.search(r"\((\d+)\s+bytes: (\d+) \+ (\d+)\)", text)
    assert match
    assert [int(g) for g in match.groups()] == [sum(echoed), *echoed]
    assert f"{len(plain)} × {constants.COOKIE_REPLY_SIZE} = " in text
    assert f"{constants.COOKIE_REPLY_SIZE}/19" in text  # smallest fragment: header + 1 byte
    assert constants.FRAGMENT_HEADER_SIZE + 1 == 19


# --- constants -----------------------------------------------------------------------------------


def _blocks() -> dict[str, str]:
    """Constant name -> ``specification`` / ``implementation``, from the block headings of
    ``protocol/constants.py`` (``# --- specification constants`` and the like)."""
    kinds: dict[str, str] = {}
    kind = ""
    for line in CONSTANTS_SOURCE.splitlines():
        if line.startswith("# ---"):
            kind = "specification" if "specification" in line else "implementation"
        match = re.match(r"^([A-Z][A-Z0-9_]+)\s*=", line)
        if match:
            kinds[match.group(1)] = kind
    return kinds


def _value(text: str) -> float:
    return float(text.split(maxsplit=1)[0].replace(",", ""))


def _constants_table() -> list[tuple[str, str, str]]:
    text = _section("Timers")
    rows = re.findall(r"^\| `([A-Z_]+)` \| ([^|]+) \| (\w+) \|", text, re.MULTILINE)
    assert len(rows) >= 15
    return [(name, value.strip(), kind) for name, value, kind in rows]


@pytest.mark.parametrize(("name", "value", "kind"), _constants_table())
def test_constants_table_matches_the_code(name: str, value: str, kind: str) -> None:
    assert getattr(constants, name) == pytest.approx(_value(value))
    assert _blocks()[name] == kind


def test_specification_constants_list_matches_the_code() -> None:
    text = _section("Timers")
    paragraph = text[text.index("Specification constants (a compatible") :]
    paragraph = paragraph[: paragraph.index("\n\n")]
    pairs = re.findall(r"`([A-Z_]+)` (\d+)", paragraph)
    assert len(pairs) == 11
    for name, value in pairs:
        assert getattr(constants, name) == int(value), name
        assert _blocks()[name] == "specification", name


def test_every_handshake_constant_is_documented() -> None:
    """Every handshake constant of ``constants.py`` appears in section 5."""
    text = _section("Timers")
    handshake_block = CONSTANTS_SOURCE[: CONSTANTS_SOURCE.index("# === transport session")]
    names = re.findall(r"^([A-Z][A-Z0-9_]+)\s*=", handshake_block, re.MULTILINE)
    missing = [n for n in names if f"`{n}`" not in text]
    assert missing == []


# --- drop reasons ------------------------------------------------------------------------------

_HANDSHAKE_MODULES = ("fragments.py", "messages.py", "handshake.py", "listener.py")


def _reason_of(node: ast.expr) -> str | None:
    """``"bad_length"`` or ``DropReason.BAD_LENGTH`` as the reason's value; else None."""
    if isinstance(node, ast.Constant):
        return str(node.value)
    if (
        isinstance(node, ast.Attribute)
        and isinstance(node.value, ast.Name)
        and node.value.id == "DropReason"
    ):
        return DropReason[node.attr].value
    return None


def _raised_reasons() -> set[str]:
    """First arguments of ``RemoteProtocolError(...)`` and ``dropped[...]`` keys."""
    reasons: set[str] = set()
    for name in _HANDSHAKE_MODULES:
        tree = ast.parse((PROTOCOL / name).read_text())
        for item in ast.walk(tree):
            found = None
            if (
                isinstance(item, ast.Call)
                and isinstance(item.func, ast.Name)
                and item.func.id == "RemoteProtocolError"
                and item.args
            ):
                found = _reason_of(item.args[0])
            if (
                isinstance(item, ast.Subscript)
                and isinstance(item.value, ast.Attribute)
                and item.value.attr == "dropped"
            ):
                found = _reason_of(item.slice)
            if found is not None:
                reasons.add(found)
    return reasons


def _documented_reasons() -> set[str]:
    text = _section("8. API and errors")
    table = text[text.index("| reason | meaning |") : text.index("**Which reason")]
    found: set[str] = set()
    for cell in re.findall(r"^\| ([^|]+) \|", table, re.MULTILINE):
        found.update(re.findall(r"`([a-z_]+)`", cell))
    return found


def test_drop_reasons_match_the_code() -> None:
    assert _raised_reasons() == _documented_reasons()


def test_the_rejection_table_names_only_documented_reasons() -> None:
    text = _section("8. API and errors")
    table = text[text.index("| what arrives | where | reason |") :]
    table = table[: table.index("\n\n")]
    named = set()
    for row in table.splitlines()[2:]:
        named.update(re.findall(r"`([a-z_]+)`", row.rsplit("|", 2)[-2]))
    assert named <= _documented_reasons()
    assert _documented_reasons() - named == set()  # and every reason has its row
    assert "decrypt_failed" in named
    assert "replayed_finish" in named


def test_every_handshake_reason_is_a_drop_reason() -> None:
    """The node counts them as ``handshake_<reason>``; docs/metrics.md lists every
    DropReason (tests/unit/test_drop_reasons.py holds that table equal to the enum)."""
    assert _documented_reasons() <= {r.value for r in DropReason}
