"""The state directory of one ``up`` run and its short-lived runtime directory.

Layout (``root`` is ``--state-dir`` or a fresh temporary directory, mode 0700)::

    root/
      .lock             held (flock) while an ``up`` uses this directory
      identity/         embedded SPIFFE issuer keys (reused: same SPIFFE CA next run)
      spire/            SPIRE: server/ (datastore, CA keys; reused), agent/, configs, bundle
      mesh-ca/          ca.crt, ca.key: the mesh CA every controller signs with (reused)
      controller-<i>/   controller state (SQLite store for ``--store sqlite``)
      etcd/m<i>/        etcd member data (``--store etcd``)
      nodes/<node-id>/  node state (its ML-DSA-65 key: reused, so node keys survive a rerun)
      logs/<name>.log   every process's stdout and stderr

Unix sockets live in a separate short runtime directory under ``/tmp`` (socket paths are
limited to 107 bytes), removed at exit whatever happens. A temporary ``root`` is removed at
exit too; a ``--state-dir`` stays for the next run.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import shutil
import tempfile
from pathlib import Path
from typing import IO

from x0tta6bl4.local.errors import StateDirError

__all__ = ["StateDir"]


class StateDir:
    """Create, lock and (unless kept) remove the directories of one ``up`` run."""

    def __init__(self, given: Path | None) -> None:
        self.keep = given is not None
        self._lock_file: IO[str] | None = None
        if given is None:
            self.root = Path(tempfile.mkdtemp(prefix="x0tta6bl4-up-"))
        else:
            self.root = given.expanduser().resolve()
            if self.root.exists() and not self.root.is_dir():
                raise StateDirError(f"--state-dir {self.root} exists and is not a directory")
            try:
                self.root.mkdir(parents=True, exist_ok=True, mode=0o700)
            except OSError as err:
                raise StateDirError(
                    f"cannot create --state-dir {self.root}: {err.strerror}"
                ) from None
        try:
            os.chmod(self.root, 0o700)
            self._lock()
            self.runtime = Path(tempfile.mkdtemp(prefix="x0up-"))
        except BaseException:
            self._unlock()
            if not self.keep:
                shutil.rmtree(self.root, ignore_errors=True)
            raise

    def _lock(self) -> None:
        handle = (self.root / ".lock").open("a+")
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            holder = handle.read().strip() or "?"
            handle.close()
            raise StateDirError(
                f"--state-dir {self.root} is in use by another x0tta6bl4 up (pid {holder}); "
                "stop it or choose another directory"
            ) from None
        handle.seek(0)
        handle.truncate()
        handle.write(f"{os.getpid()}\n")
        handle.flush()
        self._lock_file = handle

    def _unlock(self) -> None:
        if self._lock_file is not None:
            with contextlib.suppress(OSError):
                self._lock_file.truncate(0)
            self._lock_file.close()
            self._lock_file = None

    def sub(self, *parts: str) -> Path:
        """``root/parts…``, created (0700) if missing."""
        path = self.root.joinpath(*parts)
        path.mkdir(parents=True, exist_ok=True, mode=0o700)
        return path

    def log(self, name: str) -> Path:
        """Log file of process ``name``."""
        return self.sub("logs") / f"{name}.log"

    def socket(self, name: str) -> Path:
        """A Unix socket path in the runtime directory."""
        return self.runtime / name

    def cleanup(self) -> None:
        """Remove the runtime directory, and the root unless it was given."""
        shutil.rmtree(self.runtime, ignore_errors=True)
        self._unlock()
        if not self.keep:
            shutil.rmtree(self.root, ignore_errors=True)
