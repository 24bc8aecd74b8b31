"""docs/limits.md names every limit of the code, with the code's value.

Each table row of the document starts with a constant (``module.NAME`` under ``x0tta6bl4``, or
``module.Settings.field`` for a setting's default) and its value: the constant must exist and
have that value. In the other direction, every module-level constant of ``src/x0tta6bl4`` whose
name says it is a limit must be listed in the document, or below in :data:`NOT_LIMITS` with the
reason it is not one; a new ``MAX_…`` added without a line in docs/limits.md fails here.
"""

from __future__ import annotations

import ast
import importlib
import re
from pathlib import Path
from typing import Any

import pytest
from pydantic import BaseModel

ROOT = Path(__file__).resolve().parents[2]
SRC = ROOT / "src" / "x0tta6bl4"
DOC = (ROOT / "docs" / "limits.md").read_text()

#: Names that say "limit" (the same words the document's introduction lists).
LIMIT_NAME = re.compile(
    r"^_?(MAX|MIN)_|_(MAX|MIN)_|_(TIMEOUT|LIMIT|RATE|BURST|BUDGET|THRESHOLD|RESERVE|BACKLOG"
    r"|MAX_AGE|INTERVAL|ATTEMPTS|KEYS|TTL|REFRESH|AFTER|SLEEP|RELAYED|SOURCES|INITS|RESPONDERS"
    r"|FAULTS|LINKS|RULES|NONCE|BATCH|BUFFER|PER_DEST|PER_FRAME|LENGTH|CHUNK|SEGMENT|SEGMENTS"
    r"|GLOBSTARS|WILDCARDS|PREFIXLEN|FIELD|BYTES|CONNECTIONS|COUNT|SIZE|MESSAGES|FILE|PEM)$"
)

#: Operator tools (run by the operator against their own cluster; they take no outside input).
TOOL_PACKAGES = ("bench", "check", "local", "commands")

#: Constants whose names look like limits but are facts of a format, each with the reason.
NOT_LIMITS: dict[str, str] = {
    "controller.models._MAX_SERIAL": "the X.509 serial size (RFC 5280: 20 octets)",
    "crypto.pqsvid._CREDENTIAL_HASH_SIZE": "a digest size (SHA-256, docs/pqsvid.md)",
    "crypto.suite.*": "sizes of the cryptographic suite (docs/protocol.md §1)",
    "protocol.constants.NONCE_SIZE": "wire format (docs/protocol.md §5)",
    "protocol.constants.COOKIE_SIZE": "wire format (docs/protocol.md §5)",
    "protocol.constants.COOKIE_SECRET_SIZE": "a key size (docs/protocol.md §6)",
    "protocol.constants.FRAGMENT_HEADER_SIZE": "wire format (docs/protocol.md §2)",
    "protocol.constants.INIT_MESSAGE_SIZE": "wire format (docs/protocol.md §3)",
    "protocol.constants.RESP_CLEAR_SIZE": "wire format (docs/protocol.md §3)",
    "protocol.constants.FINISH_CLEAR_SIZE": "wire format (docs/protocol.md §3)",
    "protocol.constants.COOKIE_REPLY_SIZE": "wire format (docs/protocol.md §3)",
    "protocol.constants.TRANSPORT_HEADER_SIZE": "wire format (docs/transport.md)",
    "protocol.constants.REKEY_AFTER_MESSAGES": "a key-lifetime rule (docs/transport.md)",
    "protocol.constants.REJECT_AFTER_MESSAGES": "a key-lifetime rule (docs/transport.md)",
    "protocol.constants.REPLAY_WINDOW_SIZE": "the replay window (docs/transport.md)",
    "protocol.replay.WINDOW_SIZE": "the same replay window",
    "protocol.session.MIN_TRANSPORT_DATAGRAM_SIZE": "wire format: header plus AEAD tag",
    "protocol.frames.FRAME_HEADER_SIZE": "wire format (docs/transport.md)",
    "protocol.handshake._MAX_INDEX": "largest u32 (a session index)",
    "protocol.lsa.MAX_COST": "largest u32 (a link cost field)",
    "protocol.lsa.MAX_ENCODED_SIZE": "derived from MAX_NODE_ID_BYTES and MAX_NEIGHBOURS",
    "node.core.E2E_MAX_DATAGRAM": "derived from MAX_TRANSPORT_DATAGRAM_SIZE (docs/node.md)",
    "node.core.MAX_APP_PAYLOAD": "derived from MAX_TRANSPORT_DATAGRAM_SIZE (docs/node.md)",
    "node.overlay._IPV4_MIN_HEADER": "the IPv4 header's size",
    "node.udp._RECV_SIZE": "the largest UDP datagram (a read buffer, not a limit)",
    "node.tun._READ_SIZE": "the largest IP packet (a read buffer, not a limit)",
    "identity.issuer.entries._MAX_UID": "the largest uid_t (an OS fact)",
    "identity.issuer.entries._MAX_PID": "the kernel's pid_max ceiling (an OS fact)",
    "identity.issuer.peercred._CHUNK": "a copy buffer, not a limit",
    "controller.models.ML_DSA_65_PUBLIC_KEY_SIZE": "FIPS 204 key size",
    "protocol.session._NONCE": "a struct layout (the AEAD nonce)",
    "identity.node_ids._NODE_SEGMENT": "a regular expression",
    "node.agent.KEY_FILE": "a file name",
    "tls.credentials._TLS_KEYS": "the private key types OpenSSL accepts, not a count",
    "controller.ui.STALE_AFTER": "how the UI draws a silent node, not a limit",
    "controller.api.routes_mesh._WATCH_BATCH": "how long a watch gathers events into one answer",
}

_UNITS = {"s": 1.0, "/s": 1.0, "KiB": 1024.0, "MiB": 1024.0**2, "": 1.0}
_VALUE = re.compile(r"^(\d[\d,]*(?:\.\d+)?) ?(s|/s|KiB|MiB)?$")
_ROW = re.compile(r"^\| `([A-Za-z_][\w.]*)` \| ([^|]+) \|", re.MULTILINE)


def _documented() -> dict[str, str]:
    rows: dict[str, str] = {}
    for name, value in _ROW.findall(DOC):
        assert name not in rows, f"{name} is listed twice in docs/limits.md"
        rows[name] = value.strip()
    return rows


def _resolve(dotted: str) -> Any:
    """The value of ``module.NAME`` or the default of ``module.Settings.field``."""
    parts = dotted.split(".")
    for cut in range(len(parts) - 1, 0, -1):
        try:
            module = importlib.import_module("x0tta6bl4." + ".".join(parts[:cut]))
        except ModuleNotFoundError:
            continue
        obj: Any = module
        for i, attr in enumerate(parts[cut:]):
            if isinstance(obj, type) and issubclass(obj, BaseModel) and i == len(parts[cut:]) - 1:
                assert attr in obj.model_fields, f"{dotted}: no field {attr}"
                return obj.model_fields[attr].default
            assert hasattr(obj, attr), f"{dotted}: {obj!r} has no {attr}"
            obj = getattr(obj, attr)
        return obj
    raise AssertionError(f"{dotted}: no such module")  # pragma: no cover


def _parse(value: str) -> float:
    match = _VALUE.match(value)
    assert match, f"value {value!r} is not 'number [unit]'"
    return float(match.group(1).replace(",", "")) * _UNITS[match.group(2) or ""]


def _limit_constants() -> set[str]:
    found: set[str] = set()
    for path in sorted(SRC.rglob("*.py")):
        rel = path.relative_to(SRC).with_suffix("")
        if rel.parts[0] in TOOL_PACKAGES:
            continue
        module = ".".join(p for p in rel.parts if p != "__init__")
        for node in ast.parse(path.read_text()).body:
            if isinstance(node, ast.Assign):
                names = [t.id for t in node.targets if isinstance(t, ast.Name)]
            elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
                names = [node.target.id] if node.value is not None else []
            else:
                continue
            found.update(f"{module}.{n}" for n in names if n.upper() == n and LIMIT_NAME.search(n))
    return found


def _excluded(name: str) -> bool:
    module = name.rsplit(".", 1)[0]
    return name in NOT_LIMITS or f"{module}.*" in NOT_LIMITS


DOCUMENTED = _documented()


def test_the_document_has_its_tables() -> None:
    assert len(DOCUMENTED) > 80


@pytest.mark.parametrize("name", sorted(DOCUMENTED))
def test_each_documented_limit_has_the_codes_value(name: str) -> None:
    actual = _resolve(name)
    assert isinstance(actual, int | float), (name, actual)
    assert not isinstance(actual, bool), (name, actual)
    assert _parse(DOCUMENTED[name]) == pytest.approx(float(actual)), (
        f"docs/limits.md says {name} = {DOCUMENTED[name]}, the code has {actual!r}"
    )


def test_every_limit_constant_of_the_code_is_documented() -> None:
    missing = sorted(n for n in _limit_constants() if n not in DOCUMENTED and not _excluded(n))
    assert not missing, f"limits not listed in docs/limits.md (or in NOT_LIMITS): {missing}"


def test_the_exclusions_are_not_stale() -> None:
    constants = _limit_constants()
    for name in NOT_LIMITS:
        if name.endswith(".*"):
            assert any(c.startswith(name[:-1]) for c in constants), name
        else:
            assert name in constants, f"NOT_LIMITS names {name}, which is gone or not limit-like"
            assert name not in DOCUMENTED, f"{name} is both documented and excluded"


# --- the native data plane's bounds (Rust constants, `module::NAME` under native/src) --------

NATIVE_SRC = ROOT / "native" / "src"
_NATIVE_ROW = re.compile(r"^\| `(\w+)::(\w+)` \| ([^|]+) \|", re.MULTILINE)
_RUST_CONST = r"^\s*(?:pub(?:\(crate\))? )?const {name}: \w+ = ([^;]+);"


def _rust_value(module: str, name: str) -> float:
    """The value of the Rust constant ``name`` of ``native/src/<module>.rs``: an expression of
    literals, ``+ - * <<``, casts and the module's other constants (the forms the limits use)."""
    source = (NATIVE_SRC / f"{module}.rs").read_text()
    found = re.search(_RUST_CONST.format(name=name), source, re.MULTILINE)
    assert found, f"native/src/{module}.rs has no constant {name}"
    expression = re.sub(r"(?<=\d)_(?=\d)", "", re.sub(r" as \w+", "", found.group(1).strip()))

    def value(node: ast.AST) -> float:
        if isinstance(node, ast.Constant) and isinstance(node.value, int | float):
            return float(node.value)
        if isinstance(node, ast.Name):
            return _rust_value(module, node.id)
        if isinstance(node, ast.BinOp):
            left, right = value(node.left), value(node.right)
            if isinstance(node.op, ast.Add):
                return left + right
            if isinstance(node.op, ast.Sub):
                return left - right
            if isinstance(node.op, ast.Mult):
                return left * right
            if isinstance(node.op, ast.LShift):
                return float(int(left) << int(right))
        raise AssertionError(f"{module}::{name}: unsupported expression {expression!r}")

    return value(ast.parse(expression, mode="eval").body)


NATIVE_DOCUMENTED = {(m, n): v.strip() for m, n, v in _NATIVE_ROW.findall(DOC)}


def test_the_native_table_is_there() -> None:
    assert len(NATIVE_DOCUMENTED) >= 8


@pytest.mark.parametrize(("module", "name"), sorted(NATIVE_DOCUMENTED))
def test_each_native_limit_has_the_rust_value(module: str, name: str) -> None:
    documented = NATIVE_DOCUMENTED[(module, name)]
    assert _parse(documented) == pytest.approx(_rust_value(module, name)), (
        f"docs/limits.md says {module}::{name} = {documented}, native/src/{module}.rs differs"
    )
