"""``x0tta6bl4.protocol`` is sans-IO: no asyncio, no sockets, no clock reads."""

from __future__ import annotations

import ast
from pathlib import Path

import x0tta6bl4.protocol

FORBIDDEN_MODULES = {"asyncio", "socket", "selectors", "trio", "anyio", "time"}
PACKAGE = Path(x0tta6bl4.protocol.__file__).parent


def _imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    found: set[str] = set()
    for item in ast.walk(tree):
        if isinstance(item, ast.Import):
            found.update(alias.name.split(".")[0] for alias in item.names)
        elif isinstance(item, ast.ImportFrom) and item.module and item.level == 0:
            found.add(item.module.split(".")[0])
    return found


def test_protocol_package_never_imports_io_or_clocks() -> None:
    modules = sorted(PACKAGE.rglob("*.py"))
    assert len(modules) >= 10
    offenders = {
        str(path.relative_to(PACKAGE)): sorted(_imports(path) & FORBIDDEN_MODULES)
        for path in modules
    }
    assert {k: v for k, v in offenders.items() if v} == {}


def test_the_scan_would_notice(tmp_path: Path) -> None:
    bad = tmp_path / "bad.py"
    bad.write_text("import asyncio\nfrom socket import socket\nimport time as t\n")
    assert _imports(bad) & FORBIDDEN_MODULES == {"asyncio", "socket", "time"}
