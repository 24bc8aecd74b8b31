"""Running ``x0tta6bl4 up`` as a subprocess and proving it left nothing behind."""

from __future__ import annotations

import json
import os
import secrets
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

MARKER_VAR = "X0UP_TEST_MARKER"


@dataclass
class UpRun:
    """One finished ``up`` run."""

    returncode: int
    stdout: str
    stderr: str
    marker: str
    tmpdir: Path

    def summary(self) -> dict[str, Any]:
        data: dict[str, Any] = json.loads(self.stdout)
        return data


def processes_with_marker(marker: str) -> list[tuple[int, str]]:
    """Live processes whose environment carries ``marker`` (up's children inherit it)."""
    needle = f"{MARKER_VAR}={marker}".encode()
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            environ = (entry / "environ").read_bytes()
            stat = (entry / "stat").read_text()
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue
        if needle in environ.split(b"\0") and stat.rpartition(")")[2].split()[0] != "Z":
            found.append((int(entry.name), cmdline))
    return found


def run_up(tmp_path: Path, *args: str, timeout: float = 150.0) -> UpRun:
    """``x0tta6bl4 up ARGS`` with its own TMPDIR under ``tmp_path``; waits for it to exit."""
    marker = secrets.token_hex(8)
    tmpdir = tmp_path / "tmp"
    tmpdir.mkdir(exist_ok=True)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("X0_", "SPIFFE_"))} | {
        MARKER_VAR: marker,
        "TMPDIR": str(tmpdir),
        "COLUMNS": "120",
    }
    proc = subprocess.run(
        [sys.executable, "-m", "x0tta6bl4", "up", *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=timeout,
        check=False,
    )
    return UpRun(proc.returncode, proc.stdout, proc.stderr, marker, tmpdir)


def assert_clean(run: UpRun) -> None:
    """No process of the run is alive, and its TMPDIR (sockets, temporary state) is empty."""
    left = processes_with_marker(run.marker)
    assert left == [], f"processes left behind: {left}"
    leftovers = sorted(str(p) for p in run.tmpdir.rglob("*"))
    assert leftovers == [], f"files left in TMPDIR: {leftovers}"
