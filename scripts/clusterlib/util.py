"""Processes, status lines and waiting, shared by every action of scripts/cluster."""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

__all__ = ["ClusterError", "log", "read_json", "run", "step", "wait_for", "write_json"]

REPO_ROOT = Path(__file__).resolve().parents[2]


class ClusterError(RuntimeError):
    """An action failed; the message says what and where its log is."""


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def run(
    cmd: Sequence[str],
    *,
    input: str | bytes | None = None,
    check: bool = True,
    capture: bool = True,
    env: dict[str, str] | None = None,
    timeout: float | None = 600,
) -> subprocess.CompletedProcess[str]:
    """Run a command; on failure raise ClusterError with its stderr."""
    data = input.decode() if isinstance(input, bytes) else input
    proc = subprocess.run(  # noqa: S603 - our own command lines, no shell
        list(cmd),
        input=data,
        text=True,
        capture_output=capture,
        env=env,
        timeout=timeout,
        check=False,
    )
    if check and proc.returncode != 0:
        detail = (proc.stderr or proc.stdout or "").strip()[-2000:]
        raise ClusterError(f"{shlex.join(cmd)} exited {proc.returncode}: {detail}")
    return proc


_TTY = sys.stderr.isatty()


@contextmanager
def step(name: str) -> Iterator[None]:
    """kind's status line: ' • name ...' then ' ✓ name (1.2 s)' or ' ✗ name'."""
    t0 = time.monotonic()
    log(f" • {name} ...")
    try:
        yield
    except BaseException:
        log(f" ✗ {name} ({time.monotonic() - t0:.1f} s)")
        raise
    log(f" ✓ {name} ({time.monotonic() - t0:.1f} s)")


def wait_for(what: str, probe: Callable[[], Any], timeout: float, interval: float = 0.5) -> Any:
    """Call ``probe`` until it returns a truthy value; raise ClusterError after ``timeout``."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while True:
        try:
            last = probe()
            if last:
                return last
        except Exception as exc:
            last = exc
        if time.monotonic() > deadline:
            raise ClusterError(
                f"timed out after {timeout:.0f} s waiting for {what} (last: {last!r})"
            )
        time.sleep(interval)


def write_json(path: Path, obj: Any) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(obj, indent=2) + "\n")
    os.replace(tmp, path)


def read_json(path: Path) -> Any:
    return json.loads(path.read_text())
