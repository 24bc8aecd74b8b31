"""Native data plane tests: skipped only where it cannot be built (no cargo on the machine).

Where cargo exists (every CI machine) `make setup` builds the extension; failing to import
it then is an error, not a skip.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from x0tta6bl4.dataplane import native_error, native_module


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    if native_module() is not None:
        return
    cargo = shutil.which("cargo") or (Path.home() / ".cargo/bin/cargo").exists()
    if cargo:
        raise pytest.UsageError(f"cargo is installed but {native_error()}")
    skip = pytest.mark.skip(reason=f"no Rust toolchain on this machine: {native_error()}")
    here = Path(__file__).parent
    for item in items:
        if here in Path(str(item.fspath)).parents:
            item.add_marker(skip)
