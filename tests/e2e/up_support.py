"""Running ``x0tta6bl4 up`` as a subprocess and proving it left nothing behind."""

from __future__ import annotations

import json
import os
import secrets
import signal
import subprocess
import sys
import threading
import time
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


class RunningUp:
    """``x0tta6bl4 up ARGS`` in the background; :meth:`wait_for_line` follows its stderr."""

    def __init__(self, tmp_path: Path, *args: str) -> None:
        self.marker = secrets.token_hex(8)
        self.tmpdir = tmp_path / "tmp"
        self.tmpdir.mkdir(exist_ok=True)
        env = {k: v for k, v in os.environ.items() if not k.startswith(("X0_", "SPIFFE_"))} | {
            MARKER_VAR: self.marker,
            "TMPDIR": str(self.tmpdir),
            "COLUMNS": "120",
        }
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "x0tta6bl4", "up", *args],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
        )
        self.lines: list[str] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            self.lines.append(line)

    def wait_for_line(self, needle: str, timeout: float = 90.0) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for line in list(self.lines):
                if needle in line:
                    return line
            if self.proc.poll() is not None:
                break
            time.sleep(0.05)
        raise AssertionError(f"{needle!r} never appeared; stderr:\n{''.join(self.lines)}")

    def wait(self, timeout: float = 150.0) -> UpRun:
        """Wait for ``up`` to exit on its own (``--for``)."""
        self.proc.wait(timeout=timeout)
        assert self.proc.stdout is not None
        stdout = self.proc.stdout.read()
        self._reader.join(timeout=5)
        return UpRun(self.proc.returncode, stdout, "".join(self.lines), self.marker, self.tmpdir)

    def interrupt(self, timeout: float = 60.0) -> UpRun:
        """Ctrl-C (SIGINT) and wait for the exit."""
        self.proc.send_signal(signal.SIGINT)
        self.proc.wait(timeout=timeout)
        assert self.proc.stdout is not None
        stdout = self.proc.stdout.read()  # the reader thread owns stderr
        self._reader.join(timeout=5)
        return UpRun(self.proc.returncode, stdout, "".join(self.lines), self.marker, self.tmpdir)

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        self._reader.join(timeout=5)
        for pipe in (self.proc.stdout, self.proc.stderr):
            if pipe is not None:
                pipe.close()
