"""A supervisor of OS processes: each child in its own process group, stopped without orphans.

Every child starts with ``start_new_session=True`` (its pid is its process group id) and, on
Linux, with ``PR_SET_PDEATHSIG = SIGKILL``, so even a SIGKILLed ``up`` takes its children
down. Stopping sends SIGTERM to the whole group, waits, then SIGKILLs the group; after
:meth:`Supervisor.stop_all`, :meth:`Supervisor.survivors` scans ``/proc`` for any process still
in one of the groups this supervisor ever created (there should be none; the caller reports
any). Children write stdout and stderr to their log file. Not thread-safe: call it from the
thread that created it (the death signal is tied to the spawning thread).
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

__all__ = ["Managed", "ProcessSpec", "Supervisor", "x0_command"]

_PR_SET_PDEATHSIG = 1


def x0_command(*args: str) -> list[str]:
    """``python -m x0tta6bl4 ARGS`` with this interpreter (works without the console script)."""
    return [sys.executable, "-m", "x0tta6bl4", *args]


def _death_signal() -> Callable[[], None] | None:
    if not sys.platform.startswith("linux"):
        return None
    try:
        prctl = ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None

    def preexec() -> None:  # runs in the child between fork and exec: keep it tiny
        prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)

    return preexec


_PREEXEC = _death_signal()


@dataclass(frozen=True)
class ProcessSpec:
    """How to start one component."""

    name: str
    argv: list[str]
    log: Path
    kind: str = "process"
    env: Mapping[str, str] = field(default_factory=dict)
    #: Run with this group id and no supplementary groups (root only): how SPIRE's ``unix``
    #: workload attestor tells local workloads apart (see :mod:`x0tta6bl4.local.workloads`).
    gid: int | None = None


@dataclass
class Managed:
    """A supervised process (``popen`` is None while it is stopped)."""

    spec: ProcessSpec
    popen: subprocess.Popen[bytes] | None = None
    starts: int = 0
    started_at: float = 0.0

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def pid(self) -> int | None:
        return None if self.popen is None else self.popen.pid

    @property
    def running(self) -> bool:
        return self.popen is not None and self.popen.poll() is None

    @property
    def returncode(self) -> int | None:
        return None if self.popen is None else self.popen.poll()

    def log_tail(self, lines: int = 20) -> str:
        """The last ``lines`` lines of the log (for error messages)."""
        try:
            text = self.spec.log.read_text(errors="replace")
        except OSError:
            return "(no log)"
        return "\n".join(text.splitlines()[-lines:])


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _killpg(pgid: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, sig)


class Supervisor:
    """Starts, kills, restarts and stops named processes (see the module docstring)."""

    def __init__(self, base_env: Mapping[str, str] | None = None) -> None:
        self._env = dict(os.environ if base_env is None else base_env)
        self.processes: dict[str, Managed] = {}
        self._groups: set[int] = set()

    def start(self, spec: ProcessSpec) -> Managed:
        """Start ``spec`` (a new name, or a stopped process being restarted)."""
        managed = self.processes.get(spec.name)
        if managed is not None and managed.running:
            raise RuntimeError(f"{spec.name} is already running")
        if managed is None:
            managed = Managed(spec)
            self.processes[spec.name] = managed
        spec.log.parent.mkdir(parents=True, exist_ok=True)
        env = {**self._env, **spec.env}
        with spec.log.open("ab") as log:
            log.write(f"--- start {time.strftime('%H:%M:%S')}: {' '.join(spec.argv)}\n".encode())
            log.flush()
            managed.popen = subprocess.Popen(  # noqa: S603 - argv built by up itself
                spec.argv,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=env,
                start_new_session=True,
                preexec_fn=_PREEXEC,  # noqa: PLW1509 - only a prctl call, see _death_signal
                close_fds=True,
                group=spec.gid,
                extra_groups=None if spec.gid is None else [],
            )
        self._groups.add(managed.popen.pid)
        managed.starts += 1
        managed.started_at = time.monotonic()
        return managed

    def restart(self, name: str) -> Managed:
        """Start a stopped (killed) process again with the same spec."""
        return self.start(self.processes[name].spec)

    def kill(self, name: str) -> None:
        """SIGKILL ``name``'s whole process group and reap it (chaos: an abrupt crash)."""
        managed = self.processes[name]
        if managed.popen is None:
            return
        _killpg(managed.popen.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            managed.popen.wait(timeout=5)

    def stop(self, names: Iterable[str], timeout: float = 8.0) -> None:
        """SIGTERM the groups of ``names`` together, wait up to ``timeout``, then SIGKILL."""
        chosen = [self.processes[n] for n in names if self.processes[n].popen is not None]
        for managed in chosen:
            assert managed.popen is not None
            if managed.popen.poll() is None:
                _killpg(managed.popen.pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout
        for managed in chosen:
            assert managed.popen is not None
            remaining = max(0.0, deadline - time.monotonic())
            try:
                managed.popen.wait(timeout=remaining)
            except subprocess.TimeoutExpired:
                _killpg(managed.popen.pid, signal.SIGKILL)
                managed.popen.wait(timeout=5)
            # the leader is gone; anything it left in its group goes too
            if _group_alive(managed.popen.pid):
                _killpg(managed.popen.pid, signal.SIGKILL)

    def stop_all(
        self,
        order: Iterable[str],
        timeout: float = 8.0,
        timeouts: Mapping[str, float] | None = None,
    ) -> list[int]:
        """Stop every process, kind by kind in ``order`` (other kinds last); ``timeouts``
        overrides the SIGTERM grace ``timeout`` per kind.

        Returns the pids that survived even SIGKILL (normally none).
        """
        kinds = list(order)
        remaining = set(self.processes)
        for kind in [*kinds, None]:
            batch = [
                n for n in sorted(remaining) if kind is None or self.processes[n].spec.kind == kind
            ]
            grace = timeout if kind is None else (timeouts or {}).get(kind, timeout)
            self.stop(batch, grace)
            remaining -= set(batch)
        survivors = self.survivors()
        for pid in survivors:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGKILL)
        deadline = time.monotonic() + 2.0
        while survivors and time.monotonic() < deadline:
            time.sleep(0.02)
            survivors = self.survivors()
        return survivors

    def survivors(self) -> list[int]:
        """Pids of live processes in any group this supervisor created (zombies excluded)."""
        found: list[int] = []
        for entry in Path("/proc").iterdir():
            if not (entry.name.isascii() and entry.name.isdigit()):
                continue
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            # pid (comm) state ppid pgrp ...: comm may contain spaces, split after ')'
            fields = stat.rpartition(")")[2].split()
            if len(fields) >= 3 and fields[0] != "Z" and int(fields[2]) in self._groups:
                found.append(int(entry.name))
        return found
