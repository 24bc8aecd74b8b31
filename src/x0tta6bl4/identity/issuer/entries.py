"""Registration entries of the embedded issuer: which caller gets which SPIFFE ID.

An entry is ``SELECTOR=SPIFFE_ID``. Selectors, like SPIRE's unix workload attestor's:

- ``UID``, ``uid:UID`` or a user name (``user:NAME`` or just ``NAME``, resolved once when the
  entry is parsed): every process running as that uid;
- ``pid:PID@START`` (or ``pid:PID``, which reads START from ``/proc`` when parsed): exactly the
  process PID that started at START (clock ticks since boot, field 22 of
  ``/proc/PID/stat``). The start time makes the entry die with the process: a later process
  that is handed the same pid by the kernel does not match it. ``x0tta6bl4 up`` gives each
  node and controller an identity of its own this way (``docs/identity.md``).

A caller may match several entries; it then receives one SVID per entry: those of process
entries first, then those of uid entries, each in the order given (the first is its default
SVID).

:class:`EntriesFile` is a file of entries (one per line, ``#`` comments) that the issuer reads
again whenever it changes, so a supervisor can register the processes it starts while the
issuer runs (``identity serve --entries-file``). The file must belong to the issuer's user
(or root) and be writable by nobody else; a file that is not, or that does not parse, is
reported and ignored (the entries read before stay in force).
"""

from __future__ import annotations

import os
import pwd
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import structlog
from spiffe import SpiffeId, TrustDomain

from x0tta6bl4.identity.errors import InvalidEntryError, InvalidSpiffeIdError
from x0tta6bl4.identity.spiffe_ids import parse_spiffe_id

__all__ = ["EntriesFile", "Entry", "parse_entries", "parse_entry", "process_start_time"]

_MAX_UID = 2**32 - 2  # (uid_t)-1 is "no user"
_MAX_PID = 2**22
_MAX_FILE = 1024 * 1024
_log = structlog.get_logger(__name__)


def process_start_time(pid: int) -> int | None:
    """When process ``pid`` started (clock ticks since boot), or None if it does not exist."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat.rpartition(")")[2].split()
    # fields[0] is the state (field 3); starttime is field 22 → index 19.
    try:
        return int(fields[19])
    except (IndexError, ValueError):
        return None


@dataclass(frozen=True)
class Entry:
    """Callers running as ``uid`` — or, for a process entry, exactly process ``pid`` started at
    ``start_time`` — are issued ``spiffe_id``."""

    uid: int | None
    spiffe_id: SpiffeId
    pid: int | None = None
    start_time: int | None = None

    def __post_init__(self) -> None:
        if (self.uid is None) == (self.pid is None):
            raise InvalidEntryError("an entry selects either a uid or a process")
        if self.pid is not None and self.start_time is None:
            raise InvalidEntryError("a process entry needs the process start time")

    def matches(self, uid: int, pid: int) -> bool:
        """Whether a caller with these credentials is selected."""
        if self.pid is None:
            return self.uid == uid
        return pid == self.pid and process_start_time(pid) == self.start_time

    def __str__(self) -> str:
        if self.pid is not None:
            return f"pid:{self.pid}@{self.start_time}={self.spiffe_id}"
        return f"{self.uid}={self.spiffe_id}"


def _uid(user: str, text: str) -> int:
    if user.isascii() and user.isdigit():
        uid = int(user)
        if uid > _MAX_UID:
            raise InvalidEntryError(f"entry {text!r}: uid {uid} is out of range")
        return uid
    try:
        return pwd.getpwnam(user).pw_uid
    except KeyError:
        raise InvalidEntryError(
            f"entry {text!r}: {user!r} is neither a numeric uid nor a user of this host"
        ) from None


def _process(value: str, text: str) -> tuple[int, int]:
    pid_text, _, start_text = value.partition("@")
    if not (pid_text.isascii() and pid_text.isdigit()) or not 0 < int(pid_text) <= _MAX_PID:
        raise InvalidEntryError(f"entry {text!r}: pid must be a positive process id")
    pid = int(pid_text)
    if start_text:
        if not (start_text.isascii() and start_text.isdigit()):
            raise InvalidEntryError(f"entry {text!r}: the start time must be a number")
        return pid, int(start_text)
    start = process_start_time(pid)
    if start is None:
        raise InvalidEntryError(f"entry {text!r}: no process {pid} is running")
    return pid, start


def parse_entry(text: str, trust_domain: TrustDomain) -> Entry:
    """Parse ``SELECTOR=SPIFFE_ID``; the SPIFFE ID must belong to ``trust_domain``.

    Raises :class:`InvalidEntryError` for a malformed entry, an unknown user or a process
    that is not running, :class:`~x0tta6bl4.identity.errors.WrongTrustDomainError` for an ID of
    another trust domain.
    """
    selector, sep, raw_id = text.partition("=")
    selector = selector.strip()
    raw_id = raw_id.strip()
    if not sep or not selector or not raw_id:
        raise InvalidEntryError(
            f"entry {text!r} must have the form SELECTOR=SPIFFE_ID "
            "(UID=SPIFFE_ID, user:NAME=SPIFFE_ID, pid:PID@START=SPIFFE_ID)"
        )
    kind, colon, value = selector.partition(":")
    uid: int | None = None
    pid: int | None = None
    start: int | None = None
    if not colon:
        uid = _uid(selector, text)
    elif kind == "uid":
        if not (value.isascii() and value.isdigit()):
            raise InvalidEntryError(f"entry {text!r}: uid: needs a number")
        uid = _uid(value, text)
    elif kind == "user":
        uid = _uid(value, text)
    elif kind == "pid":
        pid, start = _process(value, text)
    else:
        raise InvalidEntryError(
            f"entry {text!r}: unknown selector {kind!r} (use UID, uid:, user: or pid:)"
        )
    try:
        spiffe_id = parse_spiffe_id(raw_id, trust_domain=trust_domain)
    except InvalidSpiffeIdError as err:
        raise InvalidEntryError(f"entry {text!r}: {err}") from err
    return Entry(uid=uid, spiffe_id=spiffe_id, pid=pid, start_time=start)


def parse_entries(text: str, trust_domain: TrustDomain) -> list[Entry]:
    """Entries of a file: one per line; blank lines and ``#`` comments are skipped."""
    entries = []
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        try:
            entries.append(parse_entry(line, trust_domain))
        except InvalidEntryError as err:
            raise InvalidEntryError(f"line {number}: {err}") from None
    return entries


class EntriesFile:
    """Entries read from a file, re-read whenever it changes (see the module docstring)."""

    def __init__(self, path: Path, trust_domain: TrustDomain) -> None:
        self.path = Path(path)
        self._trust_domain = trust_domain
        self._lock = threading.Lock()
        self._stamp: tuple[int, int, int] | None = None
        self._entries: tuple[Entry, ...] = ()
        self.last_error: str | None = None

    def entries(self) -> Sequence[Entry]:
        """The current entries (reading the file again if it changed)."""
        with self._lock:
            self._refresh()
            return self._entries

    def _refresh(self) -> None:
        try:
            st = self.path.stat()
        except FileNotFoundError:
            self._stamp, self._entries = None, ()
            return
        except OSError as err:
            self._fail(f"cannot stat {self.path}: {err.strerror}")
            return
        stamp = (st.st_ino, st.st_mtime_ns, st.st_size)
        if stamp == self._stamp:
            return
        if st.st_uid not in (0, os.geteuid()) or st.st_mode & 0o022:
            self._fail(
                f"{self.path} must belong to uid {os.geteuid()} (or root) and be writable by "
                f"nobody else (mode {st.st_mode & 0o777:o}); ignoring it"
            )
            return
        if st.st_size > _MAX_FILE:
            self._fail(f"{self.path} is larger than {_MAX_FILE} bytes; ignoring it")
            return
        try:
            entries = parse_entries(self.path.read_text(encoding="utf-8"), self._trust_domain)
        except (OSError, UnicodeDecodeError, InvalidEntryError) as err:
            self._fail(f"{self.path}: {err}")
            return
        self._stamp, self._entries, self.last_error = stamp, tuple(entries), None
        _log.info("identity.issuer.entries_loaded", path=str(self.path), entries=len(entries))

    def _fail(self, message: str) -> None:
        if message != self.last_error:
            _log.warning("identity.issuer.entries_file", error=message)
        self.last_error = message
