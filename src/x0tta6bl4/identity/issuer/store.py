"""The issuer's current SVIDs and their rotation at half-life.

One X.509-SVID per distinct SPIFFE ID of the entries, shared by every caller entitled to it
(as a SPIRE agent caches SVIDs per entry); an ID that first appears in the entries file is
issued when a caller first asks for it. :meth:`SvidStore.rotate_due` replaces those past
half-life and wakes every stream waiting in :meth:`SvidStore.wait_for_change`.

Concurrency: an instance belongs to one asyncio loop; :meth:`snapshot` may be called from any
thread (it reads an immutable mapping).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Mapping, Sequence
from types import MappingProxyType

from spiffe import SpiffeId

from x0tta6bl4.identity.issuer.authority import Authority, IssuedX509Svid
from x0tta6bl4.identity.issuer.entries import EntriesFile, Entry

__all__ = ["SvidStore"]


class SvidStore:
    """Current X.509-SVIDs by SPIFFE ID, and which caller gets which IDs."""

    def __init__(
        self,
        authority: Authority,
        entries: Sequence[Entry],
        ttl: float,
        now: float,
        entries_file: EntriesFile | None = None,
    ) -> None:
        self._authority = authority
        self._ttl = ttl
        self._entries = tuple(entries)
        self._file = entries_file
        unique = {entry.spiffe_id for entry in self._entries}
        self._svids: Mapping[SpiffeId, IssuedX509Svid] = MappingProxyType(
            {sid: authority.issue_x509_svid(sid, ttl, now) for sid in unique}
        )
        self._generation = 0
        self._closed = False
        self._changed: asyncio.Condition | None = None

    def _condition(self) -> asyncio.Condition:
        if self._changed is None:
            self._changed = asyncio.Condition()
        return self._changed

    @property
    def authority(self) -> Authority:
        """The authority that signs the SVIDs."""
        return self._authority

    def ids_for(self, uid: int, pid: int) -> tuple[SpiffeId, ...]:
        """The SPIFFE IDs a caller (its uid and pid) is entitled to (empty: none): those of
        process entries naming it first, then those of uid entries, each in entry order — so
        a process with an entry of its own gets that ID as its default SVID. An ID without an
        SVID yet gets one now."""
        entries = self._entries if self._file is None else (*self._entries, *self._file.entries())
        ids: list[SpiffeId] = []
        for wanted_pid in (True, False):
            for entry in entries:
                if (entry.pid is not None) is not wanted_pid or entry.spiffe_id in ids:
                    continue
                if entry.matches(uid, pid):
                    ids.append(entry.spiffe_id)
        missing = [sid for sid in ids if sid not in self._svids]
        if missing:
            now = time.time()
            fresh = dict(self._svids)
            for sid in missing:
                fresh[sid] = self._authority.issue_x509_svid(sid, self._ttl, now)
            self._svids = MappingProxyType(fresh)
        return tuple(ids)

    def snapshot(self) -> Mapping[SpiffeId, IssuedX509Svid]:
        """The current SVIDs (an immutable mapping)."""
        return self._svids

    def next_rotation(self) -> float | None:
        """When the next SVID reaches half-life, or None without SVIDs."""
        return min((s.rotate_at for s in self._svids.values()), default=None)

    async def rotate_due(self, now: float) -> bool:
        """Re-issue every SVID at or past half-life; True if any changed."""
        due = [sid for sid, svid in self._svids.items() if svid.rotate_at <= now]
        if not due:
            return False
        fresh = dict(self._svids)
        for sid in due:
            fresh[sid] = self._authority.issue_x509_svid(sid, self._ttl, now)
        async with self._condition():
            self._svids = MappingProxyType(fresh)
            self._generation += 1
            self._condition().notify_all()
        return True

    async def wait_for_change(self, generation: int) -> int | None:
        """The current generation once it differs from ``generation``; None once closed."""
        async with self._condition():
            await self._condition().wait_for(lambda: self._closed or self._generation != generation)
            return None if self._closed else self._generation

    async def close(self) -> None:
        """Wake every waiter for good: streams end cleanly before the server stops."""
        async with self._condition():
            self._closed = True
            self._condition().notify_all()

    @property
    def generation(self) -> int:
        """Bumped on every rotation."""
        return self._generation
