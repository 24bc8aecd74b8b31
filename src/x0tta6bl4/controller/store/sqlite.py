"""The embedded SQLite store: one file, WAL, crash-safe, for a single controller.

Every call runs on one dedicated thread that owns the connection, so the event loop never
blocks on disk. Writes are ``BEGIN IMMEDIATE`` transactions with ``synchronous=FULL``: once
a write returns it survives a crash or a power cut, and a write interrupted by ``kill -9``
leaves nothing behind. Several processes may open the same file (SQLite's own locking
serialises their writes; ``busy_timeout`` makes them wait rather than fail).

Revisions are a counter in the ``meta`` table bumped once per change, in the same
transaction as the change and its row in ``events``. ``watch`` reads ``events`` and is woken
by an in-process condition after every local commit (push); changes committed by another
process are noticed within ``poll_interval``.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import functools
import hashlib
import hmac
import os
import sqlite3
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import replace
from ipaddress import IPv4Address, IPv4Network
from pathlib import Path
from typing import Any, TypeVar

from x0tta6bl4.controller import ipam
from x0tta6bl4.controller.models import (
    EventKind,
    NodeRecord,
    NodeRegistration,
    NodeStatus,
    Revision,
    Revocation,
    Snapshot,
    StoredPolicy,
    StoreEvent,
    dumps,
    loads,
    serial_hex,
)
from x0tta6bl4.controller.store.base import (
    MAX_REVOCATIONS_PER_NODE,
    Store,
    check_blob,
    check_blob_key,
    check_cidr,
    check_leader_args,
    check_nonce,
    check_registration,
    cidr_exhausted,
    kept_address,
    revocation_of,
    revoked_by_registration,
)
from x0tta6bl4.controller.store.errors import (
    ConflictError,
    NotFoundError,
    OwnershipError,
    RevisionCompactedError,
    SchemaError,
    StoreCorruptError,
    StoreError,
    StoreMissingError,
    StoreUnavailableError,
)
from x0tta6bl4.policy import Policy
from x0tta6bl4.records import ModelError

__all__ = ["SCHEMA_VERSION", "SqliteStore"]

SCHEMA_VERSION = 2

_SCHEMA = """
CREATE TABLE meta (key TEXT PRIMARY KEY, value INTEGER NOT NULL) STRICT;
INSERT INTO meta (key, value) VALUES ('revision', 0), ('compacted', 0);
CREATE TABLE nodes (
    node_id TEXT PRIMARY KEY,
    overlay_ip INTEGER NOT NULL UNIQUE,
    last_seen REAL NOT NULL,
    mod_revision INTEGER NOT NULL,
    record TEXT NOT NULL
) STRICT;
CREATE INDEX nodes_last_seen ON nodes (last_seen);
CREATE TABLE events (
    revision INTEGER PRIMARY KEY,
    kind TEXT NOT NULL,
    node_id TEXT,
    payload TEXT
) STRICT;
CREATE TABLE policy (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    revision INTEGER NOT NULL,
    document TEXT NOT NULL
) STRICT;
CREATE TABLE nonces (digest BLOB PRIMARY KEY, expires_at REAL NOT NULL) STRICT;
CREATE INDEX nonces_expires_at ON nonces (expires_at);
CREATE TABLE leaders (
    name TEXT PRIMARY KEY,
    identity TEXT NOT NULL,
    expires_at REAL NOT NULL
) STRICT;
CREATE TABLE blobs (key TEXT PRIMARY KEY, value BLOB NOT NULL) STRICT;
"""

# Version 2: revoked PQ SVIDs (serial as lowercase hex), kept until their notAfter.
_SCHEMA_2 = """
CREATE TABLE revocations (
    serial TEXT PRIMARY KEY,
    node_id TEXT NOT NULL,
    not_after REAL NOT NULL
) STRICT;
CREATE INDEX revocations_node ON revocations (node_id, not_after);
"""

_PROBES_BEFORE_SCAN = 64
_T = TypeVar("_T")


def _decode_node(raw: str) -> NodeRecord:
    return NodeRecord.from_json(loads(raw))


def _where(node_id: str) -> str:
    return f"node {node_id!r}"


class SqliteStore(Store):
    """A :class:`Store` in one SQLite file (see the module docstring)."""

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        event_retention: int = 10_000,
        busy_timeout: float = 10.0,
        poll_interval: float = 0.25,
        create: bool = True,
    ) -> None:
        if event_retention < 1:
            raise ValueError("event_retention must be at least 1")
        self.path = Path(path)
        self._retention = event_retention
        self._busy_timeout = busy_timeout
        self._poll_interval = poll_interval
        self._executor: concurrent.futures.ThreadPoolExecutor | None = None
        self._conn: sqlite3.Connection | None = None
        self._cond: asyncio.Condition | None = None
        self._seq = 0
        self._closed = False
        self.create = create

    def __repr__(self) -> str:
        return f"SqliteStore({str(self.path)!r})"

    @property
    def location(self) -> str:
        return f"sqlite://{self.path.absolute()}"

    # -- records -------------------------------------------------------------------

    def _node(self, node_id: str, raw: str) -> NodeRecord:
        """Decode a node row; a damaged one raises StoreCorruptError and is remembered."""
        try:
            record = _decode_node(raw)
        except ModelError as exc:
            raise self._record_fault(_where(node_id), str(exc)) from None
        self._clear_fault(_where(node_id))
        return record

    def _policy_document(self, raw: str) -> Policy:
        try:
            policy = Policy.from_json(loads(raw))
        except ModelError as exc:
            raise self._record_fault("policy", str(exc)) from None
        self._clear_fault("policy")
        return policy

    # -- plumbing ------------------------------------------------------------------

    async def _run(self, fn: Callable[[sqlite3.Connection], _T]) -> _T:
        executor, conn = self._executor, self._conn
        if executor is None or conn is None:
            raise StoreError("the store is not open")
        loop = asyncio.get_running_loop()
        try:
            return await loop.run_in_executor(executor, fn, conn)
        except sqlite3.OperationalError as exc:
            raise StoreUnavailableError(f"SQLite store {self.path} is unavailable: {exc}") from exc
        except sqlite3.DatabaseError as exc:  # SQLITE_CORRUPT, SQLITE_NOTADB
            raise self._record_fault(f"database {self.path}", str(exc)) from exc
        except sqlite3.Error as exc:
            raise StoreError(f"SQLite store {self.path} failed: {exc}") from exc

    async def _write(self, fn: Callable[[sqlite3.Connection], _T]) -> _T:
        def transaction(conn: sqlite3.Connection) -> _T:
            conn.execute("BEGIN IMMEDIATE")
            try:
                result = fn(conn)
            except BaseException:
                conn.execute("ROLLBACK")
                raise
            conn.execute("COMMIT")
            return result

        try:
            return await self._run(transaction)
        finally:
            await self._notify()

    async def _read(self, fn: Callable[[sqlite3.Connection], _T]) -> _T:
        def transaction(conn: sqlite3.Connection) -> _T:
            conn.execute("BEGIN")
            try:
                return fn(conn)
            finally:
                conn.execute("COMMIT")

        return await self._run(transaction)

    async def _notify(self) -> None:
        if self._cond is None:
            return
        async with self._cond:
            self._seq += 1
            self._cond.notify_all()

    def _emit(
        self, conn: sqlite3.Connection, kind: EventKind, node_id: str | None, payload: str | None
    ) -> Revision:
        row = conn.execute(
            "UPDATE meta SET value = value + 1 WHERE key = 'revision' RETURNING value"
        ).fetchone()
        revision = int(row[0])
        conn.execute(
            "INSERT INTO events (revision, kind, node_id, payload) VALUES (?, ?, ?, ?)",
            (revision, kind.value, node_id, payload),
        )
        if revision % 128 == 0 and revision > self._retention:
            horizon = revision - self._retention
            conn.execute("DELETE FROM events WHERE revision <= ?", (horizon,))
            conn.execute(
                "UPDATE meta SET value = max(value, ?) WHERE key = 'compacted'", (horizon,)
            )
        return revision

    # -- lifecycle -----------------------------------------------------------------

    async def open(self) -> None:
        if self._conn is not None:
            return
        self._closed = False
        self._cond = asyncio.Condition()
        self._executor = concurrent.futures.ThreadPoolExecutor(
            max_workers=1, thread_name_prefix="x0tta6bl4-sqlite"
        )
        loop = asyncio.get_running_loop()
        try:
            self._conn = await loop.run_in_executor(self._executor, self._connect)
        except BaseException:
            self._executor.shutdown(wait=False)
            self._executor = None
            raise

    def _connect(self) -> sqlite3.Connection:
        try:
            size = self.path.stat().st_size if self.path.exists() else None
        except OSError as exc:
            raise StoreUnavailableError(f"cannot open SQLite store {self.path}: {exc}") from exc
        if not self.create and not size:
            state = "does not exist" if size is None else "is empty (0 bytes)"
            raise StoreMissingError(f"SQLite store {self.path} {state}")
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            if size is None:
                # Created 0600 before SQLite sees it: the file may hold CA material.
                os.close(os.open(self.path, os.O_CREAT | os.O_WRONLY, 0o600))
            conn = sqlite3.connect(self.path, timeout=self._busy_timeout, isolation_level=None)
        except (OSError, sqlite3.Error) as exc:
            raise StoreUnavailableError(f"cannot open SQLite store {self.path}: {exc}") from exc
        try:
            self._check_integrity(conn)
            self._enable_wal(conn)
            conn.execute("PRAGMA synchronous = FULL")
            conn.execute("BEGIN IMMEDIATE")
            try:
                version = int(conn.execute("PRAGMA user_version").fetchone()[0])
                if version == 0 and not self.create:
                    raise StoreMissingError(
                        f"SQLite store {self.path} holds no x0tta6bl4 data (no schema)"
                    )
                if version == 0:
                    for statement in _SCHEMA.split(";"):
                        if statement.strip():
                            conn.execute(statement)
                if version < 2:
                    for statement in _SCHEMA_2.split(";"):
                        if statement.strip():
                            conn.execute(statement)
                    conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
                elif version > SCHEMA_VERSION:
                    raise SchemaError(
                        f"SQLite store {self.path} has schema version {version}; this "
                        f"version of x0tta6bl4 understands up to {SCHEMA_VERSION}"
                    )
            except BaseException:
                conn.execute("ROLLBACK")
                raise
            conn.execute("COMMIT")
        except sqlite3.OperationalError as exc:
            conn.close()
            raise StoreUnavailableError(f"cannot open SQLite store {self.path}: {exc}") from exc
        except sqlite3.DatabaseError as exc:
            conn.close()
            raise StoreCorruptError(str(self.path), f"not a usable SQLite database: {exc}") from exc
        except BaseException:
            conn.close()
            raise
        return conn

    def _check_integrity(self, conn: sqlite3.Connection) -> None:
        """``PRAGMA quick_check`` (every page and index structure, O(size)); raises
        StoreCorruptError with SQLite's first findings."""
        try:
            findings = [str(row[0]) for row in conn.execute("PRAGMA quick_check(5)")]
        except sqlite3.OperationalError:
            raise
        except sqlite3.DatabaseError as exc:  # SQLite gave up reading the file
            findings = [str(exc)]
        if findings != ["ok"]:
            raise StoreCorruptError(
                str(self.path), "integrity check failed: " + "; ".join(findings)[:500]
            )

    def _enable_wal(self, conn: sqlite3.Connection) -> None:
        """Switch to WAL, waiting up to the busy timeout: the switch needs an exclusive lock
        and SQLite may answer "database is locked" at once, without its busy handler, while
        another process opens the same file (two controllers starting together)."""
        deadline = time.monotonic() + self._busy_timeout
        while True:
            try:
                conn.execute("PRAGMA journal_mode = WAL")
                return
            except sqlite3.OperationalError as exc:
                if "locked" not in str(exc) or time.monotonic() >= deadline:
                    raise
                time.sleep(0.02)

    async def close(self) -> None:
        self._closed = True
        await self._notify()
        executor, conn = self._executor, self._conn
        self._executor, self._conn = None, None
        if executor is not None and conn is not None:
            await asyncio.get_running_loop().run_in_executor(executor, conn.close)
        if executor is not None:
            executor.shutdown(wait=True)

    async def ping(self) -> bool:
        try:
            await self._run(lambda conn: conn.execute("SELECT 1").fetchone())
        except StoreError:
            return False
        return True

    # -- nodes ---------------------------------------------------------------------

    async def register_node(self, registration: NodeRegistration, cidr: IPv4Network) -> NodeRecord:
        check_registration(registration)
        network = check_cidr(cidr)

        def work(conn: sqlite3.Connection) -> NodeRecord:
            row = conn.execute(
                "SELECT record FROM nodes WHERE node_id = ?", (registration.node_id,)
            ).fetchone()
            existing = None if row is None else self._node(registration.node_id, row[0])
            # Under BEGIN IMMEDIATE: no other writer can slip in between check and write.
            address = kept_address(registration, existing, network)
            if address is None:
                address = self._allocate(conn, network, registration.node_id)
            record = NodeRecord.from_registration(
                registration,
                address,
                registered_at=None if existing is None else existing.registered_at,
            )
            payload = dumps(record.to_json()).decode()
            revoked = revoked_by_registration(registration, existing)
            if revoked is not None:
                self._revoke(conn, revoked)
            revision = self._emit(conn, EventKind.NODE_PUT, record.node_id, payload)
            conn.execute(
                "INSERT INTO nodes (node_id, overlay_ip, last_seen, mod_revision, record) "
                "VALUES (?, ?, ?, ?, ?) ON CONFLICT (node_id) DO UPDATE SET "
                "overlay_ip = excluded.overlay_ip, last_seen = excluded.last_seen, "
                "mod_revision = excluded.mod_revision, record = excluded.record",
                (record.node_id, int(address), record.last_seen, revision, payload),
            )
            return record

        return await self._write(work)

    def _revoke(self, conn: sqlite3.Connection, revocation: Revocation) -> None:
        """Record ``revocation`` (in the caller's transaction), prune expired ones and keep at
        most MAX_REVOCATIONS_PER_NODE for its node ID."""
        conn.execute("DELETE FROM revocations WHERE not_after <= ?", (time.time(),))
        payload = dumps(revocation.to_json()).decode()
        conn.execute(
            "INSERT OR REPLACE INTO revocations (serial, node_id, not_after) VALUES (?, ?, ?)",
            (serial_hex(revocation.serial), revocation.node_id, revocation.not_after),
        )
        conn.execute(
            "DELETE FROM revocations WHERE node_id = ? AND serial NOT IN (SELECT serial FROM "
            "revocations WHERE node_id = ? ORDER BY not_after DESC, serial LIMIT ?)",
            (revocation.node_id, revocation.node_id, MAX_REVOCATIONS_PER_NODE),
        )
        self._emit(conn, EventKind.NODE_REVOKED, revocation.node_id, payload)

    @staticmethod
    def _revocations(conn: sqlite3.Connection, now: float) -> tuple[Revocation, ...]:
        rows = conn.execute(
            "SELECT serial, node_id, not_after FROM revocations WHERE not_after > ? "
            "ORDER BY node_id, not_after, serial",
            (now,),
        ).fetchall()
        out = []
        for serial, node_id, not_after in rows:
            with contextlib.suppress(ModelError, ValueError):
                out.append(Revocation(int(serial, 16), node_id, not_after))
        return tuple(out)

    @staticmethod
    def _allocate(conn: sqlite3.Connection, network: IPv4Network, node_id: str) -> IPv4Address:
        for index, candidate in enumerate(ipam.candidates(network, node_id)):
            if index == _PROBES_BEFORE_SCAN:
                low, high = int(network.network_address), int(network.broadcast_address)
                used = {
                    IPv4Address(value)
                    for (value,) in conn.execute(
                        "SELECT overlay_ip FROM nodes WHERE overlay_ip BETWEEN ? AND ?",
                        (low, high),
                    )
                }
                found = ipam.allocate(network, node_id, used)
                if found is None:
                    break
                return found
            taken = conn.execute(
                "SELECT 1 FROM nodes WHERE overlay_ip = ?", (int(candidate),)
            ).fetchone()
            if taken is None:
                return candidate
        raise cidr_exhausted(network)

    async def get_node(self, node_id: str) -> NodeRecord | None:
        row = await self._run(
            lambda conn: conn.execute(
                "SELECT record FROM nodes WHERE node_id = ?", (node_id,)
            ).fetchone()
        )
        if row is None:
            self._clear_fault(_where(node_id))
            return None
        return self._node(node_id, row[0])

    async def list_nodes(self) -> list[NodeRecord]:
        rows = await self._run(
            lambda conn: conn.execute(
                "SELECT node_id, record FROM nodes ORDER BY node_id"
            ).fetchall()
        )
        return [self._node(node_id, raw) for node_id, raw in rows]

    async def _scan_nodes(self) -> list[NodeRecord]:
        rows = await self._run(
            lambda conn: conn.execute("SELECT node_id, record FROM nodes").fetchall()
        )
        whole = []
        for node_id, raw in rows:
            try:
                whole.append(self._node(node_id, raw))
            except StoreCorruptError:
                continue
        return whole

    async def delete_node(self, node_id: str) -> bool:
        def work(conn: sqlite3.Connection) -> bool:
            row = conn.execute(
                "DELETE FROM nodes WHERE node_id = ? RETURNING record", (node_id,)
            ).fetchone()
            if row is None:
                return False
            now = time.time()
            try:
                revoked = revocation_of(self._node(node_id, row[0]), now)
            except StoreCorruptError:
                revoked = None  # a damaged record names no certificate to revoke
            if revoked is not None:
                self._revoke(conn, revoked)
            self._emit(conn, EventKind.NODE_DELETED, node_id, None)
            return True

        deleted = await self._write(work)
        self._clear_fault(_where(node_id))
        return deleted

    async def touch_node(
        self,
        node_id: str,
        now: float,
        status: NodeStatus | None = None,
        *,
        owner: str | None = None,
    ) -> NodeRecord:
        if status is not None and not isinstance(status, NodeStatus):
            raise TypeError("status must be a NodeStatus or None")

        def work(conn: sqlite3.Connection) -> NodeRecord:
            row = conn.execute("SELECT record FROM nodes WHERE node_id = ?", (node_id,)).fetchone()
            if row is None:
                raise NotFoundError(f"node {node_id!r} is not registered")
            old = self._node(node_id, row[0])
            if owner is not None and old.spiffe_id != owner:
                raise OwnershipError(node_id)
            record = replace(old, last_seen=now, status=old.status if status is None else status)
            payload = dumps(record.to_json()).decode()
            revision = self._emit(conn, EventKind.NODE_PUT, node_id, payload)
            conn.execute(
                "UPDATE nodes SET last_seen = ?, mod_revision = ?, record = ? WHERE node_id = ?",
                (record.last_seen, revision, payload, node_id),
            )
            return record

        return await self._write(work)

    async def expire_nodes(self, older_than: float) -> list[str]:
        def work(conn: sqlite3.Connection) -> list[str]:
            expired = [
                str(node_id)
                for (node_id,) in conn.execute(
                    "SELECT node_id FROM nodes WHERE last_seen < ? ORDER BY node_id",
                    (float(older_than),),
                )
            ]
            for node_id in expired:
                conn.execute("DELETE FROM nodes WHERE node_id = ?", (node_id,))
                self._emit(conn, EventKind.NODE_DELETED, node_id, None)
            return expired

        expired = await self._write(work)
        for node_id in expired:
            self._clear_fault(_where(node_id))
        return expired

    # -- policy --------------------------------------------------------------------

    def _policy(self, conn: sqlite3.Connection) -> StoredPolicy:
        row = conn.execute("SELECT revision, document FROM policy WHERE id = 1").fetchone()
        if row is None:
            self._clear_fault("policy")
            return StoredPolicy(policy=Policy(), revision=0)
        return StoredPolicy(policy=self._policy_document(row[1]), revision=int(row[0]))

    async def get_policy(self) -> StoredPolicy:
        return await self._run(self._policy)

    async def put_policy(self, policy: Policy, expected_revision: Revision | None) -> Revision:
        if not isinstance(policy, Policy):
            raise TypeError("policy must be a Policy")

        def work(conn: sqlite3.Connection) -> Revision:
            row = conn.execute("SELECT revision FROM policy WHERE id = 1").fetchone()
            current = 0 if row is None else int(row[0])
            if expected_revision is not None and current != expected_revision:
                raise ConflictError(
                    f"policy is at revision {current}, not the expected {expected_revision}",
                    current_revision=current,
                )
            document = dumps(policy.to_json()).decode()
            revision = self._emit(conn, EventKind.POLICY_PUT, None, document)
            conn.execute(
                "INSERT INTO policy (id, revision, document) VALUES (1, ?, ?) "
                "ON CONFLICT (id) DO UPDATE SET revision = excluded.revision, "
                "document = excluded.document",
                (revision, document),
            )
            return revision

        revision = await self._write(work)
        self._clear_fault("policy")
        return revision

    # -- revisions and watch -------------------------------------------------------

    @staticmethod
    def _revision(conn: sqlite3.Connection) -> Revision:
        return int(conn.execute("SELECT value FROM meta WHERE key = 'revision'").fetchone()[0])

    async def revision(self) -> Revision:
        return await self._run(self._revision)

    async def snapshot(self) -> Snapshot:
        def work(conn: sqlite3.Connection) -> Snapshot:
            rows = conn.execute("SELECT node_id, record FROM nodes ORDER BY node_id").fetchall()
            return Snapshot(
                nodes=tuple(self._node(node_id, raw) for node_id, raw in rows),
                policy=self._policy(conn),
                revision=self._revision(conn),
                revoked=self._revocations(conn, time.time()),
            )

        return await self._read(work)

    def _event(self, revision: int, kind: str, node_id: str | None, payload: Any) -> StoreEvent:
        where = f"event {revision}"
        try:
            event_kind = EventKind(kind)
            event = StoreEvent(
                kind=event_kind,
                revision=revision,
                node_id=node_id,
                node=_decode_node(payload) if event_kind is EventKind.NODE_PUT else None,
                policy=(
                    Policy.from_json(loads(payload)) if event_kind is EventKind.POLICY_PUT else None
                ),
                revocation=(
                    Revocation.from_json(loads(payload))
                    if event_kind is EventKind.NODE_REVOKED
                    else None
                ),
            )
        except (ModelError, ValueError) as exc:
            raise self._record_fault(where, str(exc)) from None
        self._clear_fault(where)
        return event

    async def _recheck_other(self, where: str) -> None:
        kind, _, name = where.partition(" ")
        if kind == "event" and name.isdigit():
            row = await self._run(
                lambda conn: conn.execute(
                    "SELECT revision, kind, node_id, payload FROM events WHERE revision = ?",
                    (int(name),),
                ).fetchone()
            )
            if row is None:
                self._clear_fault(where)
            else:
                self._event(int(row[0]), row[1], row[2], row[3])
        elif kind == "database":
            await self._run(self._check_integrity)
            self._clear_fault(where)

    def _events_after(self, conn: sqlite3.Connection, after: Revision) -> list[StoreEvent]:
        compacted = int(
            conn.execute("SELECT value FROM meta WHERE key = 'compacted'").fetchone()[0]
        )
        if after < compacted:
            raise RevisionCompactedError(after, compacted)
        return [
            self._event(int(revision), kind, node_id, payload)
            for revision, kind, node_id, payload in conn.execute(
                "SELECT revision, kind, node_id, payload FROM events WHERE revision > ? "
                "ORDER BY revision LIMIT 1000",
                (after,),
            )
        ]

    async def watch(self, from_revision: Revision) -> AsyncIterator[StoreEvent]:
        if isinstance(from_revision, bool) or not isinstance(from_revision, int):
            raise TypeError("from_revision must be an int")
        if from_revision < 0:
            raise ValueError("from_revision must be >= 0")
        last = from_revision
        while not self._closed:
            seen = self._seq
            events = await self._read(functools.partial(self._events_after, after=last))
            for event in events:
                yield event
                last = event.revision
            if not events:
                await self._wait_for_change(seen)

    async def _wait_for_change(self, seen: int) -> None:
        cond = self._cond
        if cond is None:
            return
        async with cond:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(
                    cond.wait_for(lambda: self._seq != seen or self._closed),
                    self._poll_interval,
                )

    # -- replay guard --------------------------------------------------------------

    async def replay_guard(self, nonce: bytes, expires_at: float) -> bool:
        check_nonce(nonce, expires_at)
        digest = hashlib.sha256(nonce).digest()

        def work(conn: sqlite3.Connection) -> bool:
            conn.execute("DELETE FROM nonces WHERE expires_at <= ?", (time.time(),))
            cursor = conn.execute(
                "INSERT OR IGNORE INTO nonces (digest, expires_at) VALUES (?, ?)",
                (digest, float(expires_at)),
            )
            return cursor.rowcount == 1

        return await self._write(work)

    # -- leader election -----------------------------------------------------------

    async def try_acquire_leader(self, name: str, identity: str, ttl: float) -> bool:
        check_leader_args(name, identity, ttl)

        def work(conn: sqlite3.Connection) -> bool:
            now = time.time()
            row = conn.execute(
                "SELECT identity, expires_at FROM leaders WHERE name = ?", (name,)
            ).fetchone()
            if row is not None and row[0] != identity and row[1] > now:
                return False
            conn.execute(
                "INSERT INTO leaders (name, identity, expires_at) VALUES (?, ?, ?) "
                "ON CONFLICT (name) DO UPDATE SET identity = excluded.identity, "
                "expires_at = excluded.expires_at",
                (name, identity, now + ttl),
            )
            return True

        return await self._write(work)

    async def release_leader(self, name: str, identity: str) -> None:
        check_leader_args(name, identity, 1)
        await self._write(
            lambda conn: conn.execute(
                "DELETE FROM leaders WHERE name = ? AND identity = ?", (name, identity)
            )
        )

    # -- blobs ---------------------------------------------------------------------

    async def get_blob(self, key: str) -> bytes | None:
        check_blob_key(key)
        row = await self._run(
            lambda conn: conn.execute("SELECT value FROM blobs WHERE key = ?", (key,)).fetchone()
        )
        return None if row is None else bytes(row[0])

    async def put_blob_if_absent(self, key: str, data: bytes) -> bool:
        check_blob_key(key)
        check_blob(data)

        def work(conn: sqlite3.Connection) -> bool:
            cursor = conn.execute(
                "INSERT OR IGNORE INTO blobs (key, value) VALUES (?, ?)", (key, data)
            )
            return cursor.rowcount == 1

        return await self._write(work)

    async def replace_blob(self, key: str, expected: bytes, data: bytes) -> bool:
        check_blob_key(key)
        check_blob(expected)
        check_blob(data)

        def work(conn: sqlite3.Connection) -> bool:
            row = conn.execute("SELECT value FROM blobs WHERE key = ?", (key,)).fetchone()
            if row is None or not hmac.compare_digest(bytes(row[0]), expected):
                return False
            conn.execute("UPDATE blobs SET value = ? WHERE key = ?", (data, key))
            return True

        return await self._write(work)

    # -- maintenance ---------------------------------------------------------------

    async def verify(self) -> list[str]:
        def work(conn: sqlite3.Connection) -> list[str]:
            problems: list[str] = []
            integrity = [str(row[0]) for row in conn.execute("PRAGMA integrity_check")]
            if integrity != ["ok"]:
                problems.extend(f"integrity_check: {line}" for line in integrity)
            revision = self._revision(conn)
            max_event = conn.execute("SELECT max(revision) FROM events").fetchone()[0]
            if max_event is not None and int(max_event) != revision:
                problems.append(f"revision {revision} != newest event {max_event}")
            owners: dict[IPv4Address, str] = {}
            rows: list[Any] = conn.execute(
                "SELECT node_id, overlay_ip, mod_revision, last_seen, record FROM nodes"
            ).fetchall()
            for node_id, ip_value, mod_revision, last_seen, raw in rows:
                address = IPv4Address(ip_value)
                if address in owners:
                    problems.append(f"{address} held by {owners[address]} and {node_id}")
                owners[address] = node_id
                if mod_revision > revision:
                    problems.append(f"node {node_id} is at revision {mod_revision} > {revision}")
                try:
                    record = _decode_node(raw)
                except ModelError as exc:
                    problems.append(f"node {node_id} has an invalid record: {exc}")
                    continue
                if (record.node_id, record.overlay_ip, record.last_seen) != (
                    node_id,
                    address,
                    last_seen,
                ):
                    problems.append(f"node {node_id}: record and index columns disagree")
            row = conn.execute("SELECT revision FROM policy WHERE id = 1").fetchone()
            policy_revision = 0 if row is None else int(row[0])
            if policy_revision > revision:
                problems.append(f"policy revision {policy_revision} > {revision}")
            return problems

        return await self._read(work)
