"""The etcd v3 store (via ``aetcd``) for highly available controllers.

Key layout under the prefix (default ``/x0tta6bl4/``; see ``docs/store.md``)::

    nodes/<node_id>        NodeRecord JSON            lease: the node's lease (TTL node_ttl)
    ipam/<a.b.c.d>         owning node_id             lease: the same node lease
    policy                 Policy JSON                (revision = its mod_revision)
    nonces/<sha256 hex>    empty                      lease: until the nonce expires
    leaders/<name>         holder identity            lease: the leader's TTL
    blobs/<key>            bytes
    revoked/<serial hex>   Revocation JSON            lease: until the certificate's notAfter
    meta/schema            schema version

Every write is a compare-and-swap transaction; a node record and its address key are
created, moved and deleted together, so an address can never be held by two nodes, and a
node whose lease expires (no heartbeat for ``node_ttl`` even with every controller down)
loses its record and address in one revision.

Endpoints: ``aetcd`` talks to one host, so the store keeps one client for the current
endpoint and moves to the next one on a connection error. Reads and the idempotent
read-compare-write loops retry across endpoints with a short backoff; what still fails
raises :class:`StoreUnavailableError`.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import math
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass, replace
from ipaddress import IPv4Address, IPv4Network
from typing import Any, TypeVar

import aetcd
import aetcd.exceptions
import grpc
from aetcd import rpc

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
from x0tta6bl4.controller.store.etcd_tls import EtcdTlsFiles, TlsEtcdClient
from x0tta6bl4.policy import Policy
from x0tta6bl4.records import ModelError

__all__ = ["DEFAULT_PREFIX", "SCHEMA_VERSION", "EtcdStore"]

DEFAULT_PREFIX = "/x0tta6bl4/"
SCHEMA_VERSION = 1

_CAS_ATTEMPTS = 64
_DIRECT_PROBES = 8
_T = TypeVar("_T")

_RETRYABLE_CODES = frozenset(
    {
        grpc.StatusCode.UNAVAILABLE,
        grpc.StatusCode.DEADLINE_EXCEEDED,
        grpc.StatusCode.UNKNOWN,
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        grpc.StatusCode.ABORTED,
        grpc.StatusCode.INTERNAL,
    }
)


class _LeaseGoneError(Exception):
    """A write named a lease that has expired meanwhile (internal: re-read and retry)."""


def _grpc_code(exc: BaseException) -> Any:
    for error in (exc, exc.__cause__):
        if isinstance(error, grpc.aio.AioRpcError):
            return error.code()
    return None


def _is_unavailable(exc: BaseException) -> bool:
    if isinstance(
        exc,
        TimeoutError
        | ConnectionError
        | grpc.aio.UsageError
        | aetcd.exceptions.ConnectionFailedError
        | aetcd.exceptions.ConnectionTimeoutError
        | aetcd.exceptions.WatchTimeoutError,
    ):
        return True
    return _grpc_code(exc) in _RETRYABLE_CODES


def _is_lease_gone(exc: BaseException) -> bool:
    return _grpc_code(exc) == grpc.StatusCode.NOT_FOUND and "lease" in str(exc)


@dataclass(frozen=True, slots=True)
class _KV:
    value: bytes
    mod_revision: int
    lease: int
    key: bytes = b""


# --------------------------------------------------------------------------- protobuf ops


def _range_end(prefix: bytes) -> bytes:
    return bytes(aetcd.utils.prefix_range_end(prefix))


def _cmp_mod(key: bytes, revision: int) -> Any:
    return rpc.Compare(
        key=key, target=rpc.Compare.MOD, result=rpc.Compare.EQUAL, mod_revision=revision
    )


def _cmp_create(key: bytes, revision: int) -> Any:
    return rpc.Compare(
        key=key, target=rpc.Compare.CREATE, result=rpc.Compare.EQUAL, create_revision=revision
    )


def _cmp_value(key: bytes, value: bytes) -> Any:
    return rpc.Compare(key=key, target=rpc.Compare.VALUE, result=rpc.Compare.EQUAL, value=value)


def _op_put(key: bytes, value: bytes, lease: int = 0) -> Any:
    return rpc.RequestOp(request_put=rpc.PutRequest(key=key, value=value, lease=lease))


def _op_delete(key: bytes) -> Any:
    return rpc.RequestOp(request_delete_range=rpc.DeleteRangeRequest(key=key))


def _op_get(key: bytes, range_end: bytes | None = None) -> Any:
    request = rpc.RangeRequest(key=key)
    if range_end is not None:
        request.range_end = range_end
    return rpc.RequestOp(request_range=request)


def _kv(raw: Any) -> _KV:
    return _KV(
        value=bytes(raw.value),
        mod_revision=int(raw.mod_revision),
        lease=int(raw.lease),
        key=bytes(raw.key),
    )


class EtcdStore(Store):
    """A :class:`Store` in an etcd v3 cluster (see the module docstring)."""

    def __init__(
        self,
        endpoints: Sequence[tuple[str, int]],
        *,
        prefix: str = DEFAULT_PREFIX,
        node_ttl: int = 60,
        timeout: float = 5.0,
        tls: EtcdTlsFiles | None = None,
        create: bool = True,
    ) -> None:
        """``tls``: reach etcd over TLS with these client certificate files (etcds://)."""
        if not endpoints:
            raise ValueError("at least one etcd endpoint is required")
        if not prefix.startswith("/") or not prefix.endswith("/"):
            raise ValueError("prefix must start and end with '/'")
        if isinstance(node_ttl, bool) or not isinstance(node_ttl, int) or node_ttl < 2:
            raise ValueError("node_ttl must be an integer of at least 2 seconds")
        self.endpoints = tuple((str(host), int(port)) for host, port in endpoints)
        self.prefix = prefix
        self._p = prefix.encode()
        self._node_ttl = node_ttl
        self._timeout = timeout
        self._tls = tls
        if tls is not None:
            tls.check()
        self._index = 0
        self._generation = 0
        self._client: aetcd.Client | None = None
        self._retiring: set[asyncio.Task[None]] = set()
        self._closed = False
        self.create = create

    def __repr__(self) -> str:
        hosts = ",".join(f"{host}:{port}" for host, port in self.endpoints)
        scheme = "etcd" if self._tls is None else "etcds"
        return f"EtcdStore({scheme}://{hosts}, prefix={self.prefix!r})"

    @property
    def location(self) -> str:
        hosts = ",".join(sorted(f"{host}:{port}" for host, port in self.endpoints))
        return f"etcd://{hosts}{self.prefix}"

    @property
    def failovers(self) -> int:
        """How many times this store moved to another endpoint after a connection error."""
        return self._generation

    # -- keys ----------------------------------------------------------------------

    def _node_key(self, node_id: str) -> bytes:
        return self._p + b"nodes/" + node_id.encode()

    def _ipam_key(self, address: IPv4Address) -> bytes:
        return self._p + b"ipam/" + str(address).encode()

    def _revoked_key(self, serial: int) -> bytes:
        return self._p + b"revoked/" + serial_hex(serial).encode()

    def _decode_revocation(self, raw: bytes) -> Revocation | None:
        try:
            return Revocation.from_json(loads(raw))
        except ModelError:
            return None

    async def _revocation_ops(self, revocation: Revocation, now: float) -> tuple[list[Any], int]:
        """The txn operations that record ``revocation`` (under a lease of its own, so etcd
        prunes it at its notAfter) and drop this node ID's oldest ones beyond
        MAX_REVOCATIONS_PER_NODE; and that lease (the caller revokes it if unused)."""
        prefix = self._p + b"revoked/"
        values, keys, _ = await self._range(prefix, _range_end(prefix))
        mine = []
        for key, kv in zip(keys, values, strict=True):
            held = self._decode_revocation(kv.value)
            if (
                held is not None
                and held.node_id == revocation.node_id
                and key != (self._revoked_key(revocation.serial))
            ):
                mine.append((held.not_after, key))
        mine.sort(reverse=True)
        drops = [_op_delete(key) for _, key in mine[MAX_REVOCATIONS_PER_NODE - 1 :]]
        lease = await self._grant(max(1, math.ceil(revocation.not_after - now) + 1))
        put = _op_put(self._revoked_key(revocation.serial), dumps(revocation.to_json()), lease)
        return [*drops, put], lease

    @property
    def _policy_key(self) -> bytes:
        return self._p + b"policy"

    # -- endpoints and calls -------------------------------------------------------

    def _current(self) -> tuple[aetcd.Client, int]:
        if self._closed:
            raise StoreError("the store is closed")
        if self._client is None:
            host, port = self.endpoints[self._index]
            settings: dict[str, Any] = {
                "host": host,
                "port": port,
                "timeout": self._timeout,
                "connect_wait_timeout": max(1, math.ceil(self._timeout)),
                "options": {
                    "grpc.max_receive_message_length": 256 * 1024 * 1024,
                    "grpc.keepalive_time_ms": 10_000,
                    "grpc.keepalive_timeout_ms": 5_000,
                },
            }
            if self._tls is None:
                self._client = aetcd.Client(**settings)
            else:
                self._client = TlsEtcdClient(**settings, credentials=self._tls.channel_credentials)
        return self._client, self._generation

    def _rotate(self, generation: int) -> None:
        """Move to the next endpoint, unless another task already did since ``generation``."""
        if generation != self._generation or self._closed:
            return
        self._generation += 1
        self._index = (self._index + 1) % len(self.endpoints)
        old, self._client = self._client, None
        if old is not None:
            # Calls still running on the old client finish or time out before it closes.
            task = asyncio.get_running_loop().create_task(self._retire(old, self._timeout + 1))
            self._retiring.add(task)
            task.add_done_callback(self._retiring.discard)

    @staticmethod
    async def _retire(client: aetcd.Client, delay: float) -> None:
        try:
            await asyncio.sleep(delay)
        finally:
            with contextlib.suppress(Exception):
                await client.close()

    async def _call(self, fn: Callable[[aetcd.Client], Awaitable[_T]], *, retry: bool = True) -> _T:
        """Run ``fn`` on the current endpoint's client, rotating endpoints on failure."""
        attempts = 2 * len(self.endpoints) if retry else 1
        failure: BaseException | None = None
        for attempt in range(attempts):
            client, generation = self._current()
            try:
                await client.connect()
                return await fn(client)
            except Exception as exc:
                if _is_lease_gone(exc):
                    raise _LeaseGoneError from exc
                if not _is_unavailable(exc):
                    raise StoreError(f"etcd request failed: {exc}") from exc
                failure = exc
                self._rotate(generation)
                if attempt + 1 < attempts:
                    await asyncio.sleep(min(0.05 * 2**attempt, 1.0))
        raise StoreUnavailableError(
            f"etcd is unavailable at {self._endpoint_list()}: {failure}"
        ) from failure

    def _endpoint_list(self) -> str:
        return ",".join(f"{host}:{port}" for host, port in self.endpoints)

    async def _range(
        self, key: bytes, range_end: bytes | None = None, *, keys_only: bool = False
    ) -> tuple[list[_KV], list[bytes], int]:
        """(values, keys, header revision) of a linearizable range read."""

        async def run(client: aetcd.Client) -> tuple[list[_KV], list[bytes], int]:
            request = rpc.RangeRequest(key=key, keys_only=keys_only)
            if range_end is not None:
                request.range_end = range_end
            response = await client.kvstub.Range(
                request, timeout=self._timeout, metadata=client.metadata
            )
            return (
                [_kv(raw) for raw in response.kvs],
                [bytes(raw.key) for raw in response.kvs],
                int(response.header.revision),
            )

        return await self._call(run)

    async def _get(self, key: bytes) -> _KV | None:
        values, _, _ = await self._range(key)
        return values[0] if values else None

    async def _txn(
        self,
        compare: list[Any],
        success: list[Any],
        failure: list[Any] | None = None,
        *,
        retry: bool = True,
    ) -> tuple[bool, Any]:
        async def run(client: aetcd.Client) -> tuple[bool, Any]:
            request = rpc.TxnRequest(compare=compare, success=success, failure=failure or [])
            response = await client.kvstub.Txn(
                request, timeout=self._timeout, metadata=client.metadata
            )
            return bool(response.succeeded), response

        return await self._call(run, retry=retry)

    async def _grant(self, ttl: int) -> int:
        async def run(client: aetcd.Client) -> int:
            lease = await client.lease(ttl)
            return int(lease.id)

        return await self._call(run)

    async def _revoke(self, lease_id: int) -> None:
        """Revoke a lease, best effort (it expires on its own otherwise)."""
        if lease_id == 0:
            return
        with contextlib.suppress(StoreError, _LeaseGoneError):
            await self._call(lambda client: client.revoke_lease(lease_id), retry=False)

    async def _keepalive(self, lease_id: int) -> bool:
        async def run(client: aetcd.Client) -> bool:
            reply = await client.refresh_lease(lease_id)
            return reply is not None and int(reply.TTL) > 0

        try:
            return await self._call(run)
        except _LeaseGoneError:
            return False

    # -- lifecycle -----------------------------------------------------------------

    async def open(self) -> None:
        """Check the prefix: its schema key, and that it is not data without one; create the
        schema in an empty prefix only when :attr:`create` allows."""
        self._closed = False
        key = self._p + b"meta/schema"
        version = str(SCHEMA_VERSION).encode()
        where = f"etcd prefix {self.prefix} at {self._endpoint_list()}"
        schema = await self._get(key)
        if schema is None:
            _, keys, _ = await self._range(self._p, _range_end(self._p), keys_only=True)
            if key in keys:
                # Another replica created the schema between the two reads (two controllers
                # opening one empty prefix at once): read what it wrote.
                schema = await self._get(key)
            elif keys:
                raise StoreCorruptError(
                    where, f"holds {len(keys)} key(s) but no meta/schema key (e.g. {keys[0]!r:.80})"
                )
        if schema is None:
            if not self.create:
                raise StoreMissingError(f"{where} is empty")
            created, response = await self._txn(
                [_cmp_create(key, 0)], [_op_put(key, version)], [_op_get(key)]
            )
            if created:
                return
            kvs = response.responses[0].response_range.kvs
            schema = _kv(kvs[0]) if kvs else None
            if schema is None:  # pragma: no cover - created and deleted in between
                raise StoreUnavailableError(f"{where}: the schema key vanished while opening")
        stored = schema.value
        if not (stored.isascii() and stored.isdigit()):
            raise StoreCorruptError(where, f"meta/schema holds {stored[:16]!r}, not a version")
        if int(stored) > SCHEMA_VERSION:
            raise SchemaError(
                f"etcd prefix {self.prefix} holds schema version {stored[:16]!r}; this version "
                f"of x0tta6bl4 understands up to {SCHEMA_VERSION}"
            )

    async def close(self) -> None:
        self._closed = True
        client, self._client = self._client, None
        for task in list(self._retiring):
            task.cancel()
        if self._retiring:
            await asyncio.gather(*self._retiring, return_exceptions=True)
        if client is not None:
            with contextlib.suppress(Exception):
                await client.close()

    async def ping(self) -> bool:
        try:
            await self._range(self._p + b"meta/schema", keys_only=True)
        except (StoreError, _LeaseGoneError):
            return False
        return True

    # -- nodes ---------------------------------------------------------------------

    def _where(self, kv: _KV) -> str:
        return f"node {kv.key[len(self._p) + len(b'nodes/') :].decode(errors='replace')!r}"

    def _decode_node(self, kv: _KV) -> NodeRecord:
        """Decode a node record; a damaged one raises StoreCorruptError and is remembered."""
        where = self._where(kv)
        try:
            record = NodeRecord.from_json(loads(kv.value))
        except ModelError as exc:
            raise self._record_fault(where, str(exc)) from None
        self._clear_fault(where)
        return record

    async def _scan_nodes(self) -> list[NodeRecord]:
        values, _ = await self._node_kvs()
        whole = []
        for kv in values:
            try:
                whole.append(self._decode_node(kv))
            except StoreCorruptError:
                continue
        return whole

    async def _recheck_other(self, where: str) -> None:
        self._clear_fault(where)  # only nodes and the policy are remembered here

    async def _used_addresses(self, network: IPv4Network) -> set[IPv4Address]:
        prefix = self._p + b"ipam/"
        _, keys, _ = await self._range(prefix, _range_end(prefix), keys_only=True)
        used = set()
        for key in keys:
            with contextlib.suppress(ValueError):
                address = IPv4Address(key[len(prefix) :].decode())
                if address in network:
                    used.add(address)
        return used

    async def register_node(self, registration: NodeRegistration, cidr: IPv4Network) -> NodeRecord:
        check_registration(registration)
        network = check_cidr(cidr)
        node_id = registration.node_id
        node_key = self._node_key(node_id)
        taken: set[IPv4Address] = set()
        used: set[IPv4Address] | None = None
        lease = 0
        revoke_lease = 0
        try:
            for _ in range(_CAS_ATTEMPTS):
                current = await self._get(node_key)
                existing = None if current is None else self._decode_node(current)
                # Every txn below compares mod_revision(nodes/<id>) with ``current``: the owner
                # checked here is the owner at commit. A concurrent write fails the compare and
                # the loop re-reads (same owner: retry; another owner: refused here).
                kept = kept_address(registration, existing, network)
                if kept is not None:
                    address = kept
                    compare = [
                        _cmp_mod(node_key, current.mod_revision if current else 0),
                        _cmp_value(self._ipam_key(address), node_id.encode()),
                    ]
                    fresh = False
                else:
                    if used is None and len(taken) >= _DIRECT_PROBES:
                        used = await self._used_addresses(network)
                    picked = ipam.allocate(network, node_id, taken | (used or set()))
                    if picked is None and used is None:
                        used = await self._used_addresses(network)
                        picked = ipam.allocate(network, node_id, taken | used)
                    if picked is None:
                        raise cidr_exhausted(network)
                    address = picked
                    compare = [
                        _cmp_mod(node_key, current.mod_revision if current else 0),
                        _cmp_create(self._ipam_key(address), 0),
                    ]
                    fresh = True
                record = NodeRecord.from_registration(
                    registration,
                    address,
                    registered_at=None if existing is None else existing.registered_at,
                )
                if lease == 0:
                    lease = await self._grant(self._node_ttl)
                success = [
                    _op_put(node_key, dumps(record.to_json()), lease),
                    _op_put(self._ipam_key(address), node_id.encode(), lease),
                ]
                if fresh and existing is not None:
                    success.append(_op_delete(self._ipam_key(existing.overlay_ip)))
                revoked = revoked_by_registration(registration, existing)
                if revoked is not None:
                    await self._revoke(revoke_lease)
                    ops, revoke_lease = await self._revocation_ops(revoked, registration.now)
                    success[:0] = ops  # its event comes before the node_put (as in SQLite)
                try:
                    ok, response = await self._txn(
                        compare, success, [_op_get(self._ipam_key(address))]
                    )
                except _LeaseGoneError:
                    lease = 0
                    continue
                if ok:
                    if current is not None and current.lease not in (0, lease):
                        await self._revoke(current.lease)
                    lease = 0
                    if revoked is not None:
                        revoke_lease = 0
                    return record
                holder = response.responses[0].response_range.kvs
                if fresh and holder and bytes(holder[0].value) != node_id.encode():
                    taken.add(address)
            raise StoreUnavailableError(
                f"registration of {node_id!r} lost {_CAS_ATTEMPTS} races in a row; retry"
            )
        finally:
            if lease:
                await self._revoke(lease)
            if revoke_lease:
                await self._revoke(revoke_lease)

    async def get_node(self, node_id: str) -> NodeRecord | None:
        kv = await self._get(self._node_key(node_id))
        if kv is None:
            self._clear_fault(f"node {node_id!r}")
            return None
        return self._decode_node(kv)

    async def _node_kvs(self) -> tuple[list[_KV], int]:
        prefix = self._p + b"nodes/"
        values, _, revision = await self._range(prefix, _range_end(prefix))
        return values, revision

    async def list_nodes(self) -> list[NodeRecord]:
        values, _ = await self._node_kvs()
        return [self._decode_node(kv) for kv in values]

    async def _delete_if_unchanged(self, node_id: str, kv: _KV, *, revoke: bool = False) -> bool:
        """Delete the node if its record is still ``kv``; with ``revoke``, revoke its current
        PQ SVID in the same transaction (an admin's delete; expiry revokes nothing)."""
        node_key = self._node_key(node_id)
        extra: list[Any] = []
        revoke_lease = 0
        try:
            record = self._decode_node(kv)
            addresses = [record.overlay_ip]
            now = time.time()
            revoked = revocation_of(record, now) if revoke else None
            if revoked is not None:
                extra, revoke_lease = await self._revocation_ops(revoked, now)
        except StoreCorruptError:
            # A damaged record names no address: release every one held by this node ID.
            prefix = self._p + b"ipam/"
            values, keys, _ = await self._range(prefix, _range_end(prefix))
            addresses = [
                IPv4Address(key[len(prefix) :].decode())
                for key, held in zip(keys, values, strict=True)
                if held.value == node_id.encode()
            ]
        try:
            ok, _ = await self._txn(
                [_cmp_mod(node_key, kv.mod_revision)],
                [
                    *extra,
                    _op_delete(node_key),
                    *(_op_delete(self._ipam_key(a)) for a in addresses),
                ],
            )
        except BaseException:
            await self._revoke(revoke_lease)
            raise
        if ok:
            await self._revoke(kv.lease)
            self._clear_fault(f"node {node_id!r}")
        else:
            await self._revoke(revoke_lease)
        return ok

    async def delete_node(self, node_id: str) -> bool:
        for _ in range(_CAS_ATTEMPTS):
            kv = await self._get(self._node_key(node_id))
            if kv is None:
                return False
            if await self._delete_if_unchanged(node_id, kv, revoke=True):
                return True
        raise StoreUnavailableError(f"deletion of {node_id!r} lost too many races; retry")

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
        node_key = self._node_key(node_id)
        for _ in range(_CAS_ATTEMPTS):
            kv = await self._get(node_key)
            if kv is None:
                raise NotFoundError(f"node {node_id!r} is not registered")
            old = self._decode_node(kv)
            # The transaction below compares the version read here, so the owner checked is
            # the owner of the record written.
            if owner is not None and old.spiffe_id != owner:
                raise OwnershipError(node_id)
            record = replace(old, last_seen=now, status=old.status if status is None else status)
            try:
                ok, _ = await self._txn(
                    [_cmp_mod(node_key, kv.mod_revision)],
                    [_op_put(node_key, dumps(record.to_json()), kv.lease)],
                )
            except _LeaseGoneError:
                continue
            if ok:
                if kv.lease:
                    await self._keepalive(kv.lease)
                return record
        raise StoreUnavailableError(f"heartbeat of {node_id!r} lost too many races; retry")

    async def expire_nodes(self, older_than: float) -> list[str]:
        values, _ = await self._node_kvs()
        expired = []
        for kv in values:
            try:
                record = self._decode_node(kv)
            except StoreCorruptError:
                continue  # remembered in faults; the operator decides (DELETE the node)
            if record.last_seen < older_than and await self._delete_if_unchanged(
                record.node_id, kv
            ):
                expired.append(record.node_id)
        return expired

    # -- policy --------------------------------------------------------------------

    def _decode_policy(self, kv: _KV | None) -> StoredPolicy:
        if kv is None:
            self._clear_fault("policy")
            return StoredPolicy(policy=Policy(), revision=0)
        try:
            policy = Policy.from_json(loads(kv.value))
        except ModelError as exc:
            raise self._record_fault("policy", str(exc)) from None
        self._clear_fault("policy")
        return StoredPolicy(policy=policy, revision=kv.mod_revision)

    async def get_policy(self) -> StoredPolicy:
        return self._decode_policy(await self._get(self._policy_key))

    async def put_policy(self, policy: Policy, expected_revision: Revision | None) -> Revision:
        if not isinstance(policy, Policy):
            raise TypeError("policy must be a Policy")
        key = self._policy_key
        compare = [] if expected_revision is None else [_cmp_mod(key, expected_revision)]
        ok, response = await self._txn(
            compare,
            [_op_put(key, dumps(policy.to_json()))],
            [_op_get(key)],
            retry=expected_revision is None,
        )
        if not ok:
            kvs = response.responses[0].response_range.kvs
            current = int(kvs[0].mod_revision) if kvs else 0
            raise ConflictError(
                f"policy is at revision {current}, not the expected {expected_revision}",
                current_revision=current,
            )
        self._clear_fault("policy")
        return int(response.header.revision)

    # -- revisions and watch -------------------------------------------------------

    async def revision(self) -> Revision:
        _, _, revision = await self._range(self._p + b"meta/schema", keys_only=True)
        return revision

    async def snapshot(self) -> Snapshot:
        prefix = self._p + b"nodes/"
        revoked_prefix = self._p + b"revoked/"
        _, response = await self._txn(
            [],
            [
                _op_get(prefix, _range_end(prefix)),
                _op_get(self._policy_key),
                _op_get(revoked_prefix, _range_end(revoked_prefix)),
            ],
        )
        nodes = tuple(
            self._decode_node(_kv(raw)) for raw in response.responses[0].response_range.kvs
        )
        policy_kvs = response.responses[1].response_range.kvs
        policy = self._decode_policy(_kv(policy_kvs[0]) if policy_kvs else None)
        now = time.time()
        revoked = [
            r
            for raw in response.responses[2].response_range.kvs
            if (r := self._decode_revocation(bytes(raw.value))) is not None and r.not_after > now
        ]
        revoked.sort(key=lambda r: (r.node_id, r.not_after, r.serial))
        return Snapshot(
            nodes=nodes,
            policy=policy,
            revision=int(response.header.revision),
            revoked=tuple(revoked),
        )

    def _event(self, raw: Any) -> StoreEvent | None:
        key = bytes(raw.kv.key)
        revision = int(raw.kv.mod_revision)
        nodes = self._p + b"nodes/"
        if key.startswith(nodes):
            node_id = key[len(nodes) :].decode()
            if raw.kind == "DELETE":
                return StoreEvent(kind=EventKind.NODE_DELETED, revision=revision, node_id=node_id)
            node = self._decode_node(_kv(raw.kv))
            return StoreEvent(
                kind=EventKind.NODE_PUT, revision=revision, node_id=node_id, node=node
            )
        if key == self._policy_key and raw.kind == "PUT":
            policy = self._decode_policy(_kv(raw.kv)).policy
            return StoreEvent(kind=EventKind.POLICY_PUT, revision=revision, policy=policy)
        if key.startswith(self._p + b"revoked/") and raw.kind == "PUT":
            revocation = self._decode_revocation(bytes(raw.kv.value))
            if revocation is not None:
                return StoreEvent(
                    kind=EventKind.NODE_REVOKED,
                    revision=revision,
                    node_id=revocation.node_id,
                    revocation=revocation,
                )
        return None

    async def watch(self, from_revision: Revision) -> AsyncIterator[StoreEvent]:
        if isinstance(from_revision, bool) or not isinstance(from_revision, int):
            raise TypeError("from_revision must be an int")
        if from_revision < 0:
            raise ValueError("from_revision must be >= 0")
        last = from_revision
        failures = 0
        failure: BaseException | None = None
        limit = 4 * len(self.endpoints)
        while not self._closed:
            client, generation = self._current()
            watch = None
            try:
                await client.connect()
                watch = await client.watch_prefix(self._p, start_revision=last + 1)
                async for raw in watch:
                    failures = 0
                    event = self._event(raw)
                    last = max(last, int(raw.kv.mod_revision))
                    if event is not None:
                        yield event
            except aetcd.exceptions.RevisionCompactedError as exc:
                raise RevisionCompactedError(last, int(exc.compacted_revision)) from exc
            except Exception as exc:
                if not _is_unavailable(exc):
                    raise StoreError(f"etcd watch failed: {exc}") from exc
                failure = exc
                failures += 1
                self._rotate(generation)
                if failures > limit:
                    raise StoreUnavailableError(
                        f"etcd watch is unavailable at {self._endpoint_list()}: {failure}"
                    ) from failure
                await asyncio.sleep(min(0.05 * 2**failures, 1.0))
            finally:
                if watch is not None:
                    with contextlib.suppress(Exception):
                        await watch.cancel()

    # -- replay guard --------------------------------------------------------------

    async def replay_guard(self, nonce: bytes, expires_at: float) -> bool:
        check_nonce(nonce, expires_at)
        key = self._p + b"nonces/" + hashlib.sha256(nonce).hexdigest().encode()
        ttl = max(1, math.ceil(expires_at - time.time()))
        lease = await self._grant(ttl)
        try:
            ok, _ = await self._txn([_cmp_create(key, 0)], [_op_put(key, b"", lease)], retry=False)
        except BaseException:
            await self._revoke(lease)
            raise
        if not ok:
            await self._revoke(lease)
        return ok

    # -- leader election -----------------------------------------------------------

    async def try_acquire_leader(self, name: str, identity: str, ttl: float) -> bool:
        check_leader_args(name, identity, ttl)
        key = self._p + b"leaders/" + name.encode()
        me = identity.encode()
        for _ in range(_CAS_ATTEMPTS):
            kv = await self._get(key)
            if kv is not None:
                if kv.value != me:
                    return False
                if await self._keepalive(kv.lease):
                    return True
                continue
            lease = await self._grant(math.ceil(ttl))
            try:
                ok, _ = await self._txn([_cmp_create(key, 0)], [_op_put(key, me, lease)])
            except BaseException:
                await self._revoke(lease)
                raise
            if ok:
                return True
            await self._revoke(lease)
        raise StoreUnavailableError(f"leader election for {name!r} lost too many races; retry")

    async def release_leader(self, name: str, identity: str) -> None:
        check_leader_args(name, identity, 1)
        key = self._p + b"leaders/" + name.encode()
        kv = await self._get(key)
        if kv is None or kv.value != identity.encode():
            return
        ok, _ = await self._txn([_cmp_mod(key, kv.mod_revision)], [_op_delete(key)])
        if ok:
            await self._revoke(kv.lease)

    # -- blobs ---------------------------------------------------------------------

    def _blob_key(self, key: str) -> bytes:
        return self._p + b"blobs/" + check_blob_key(key).encode()

    async def get_blob(self, key: str) -> bytes | None:
        kv = await self._get(self._blob_key(key))
        return None if kv is None else kv.value

    async def put_blob_if_absent(self, key: str, data: bytes) -> bool:
        full = self._blob_key(key)
        check_blob(data)
        ok, _ = await self._txn([_cmp_create(full, 0)], [_op_put(full, data)])
        return ok

    async def replace_blob(self, key: str, expected: bytes, data: bytes) -> bool:
        full = self._blob_key(key)
        check_blob(expected)
        check_blob(data)
        ok, _ = await self._txn([_cmp_value(full, expected)], [_op_put(full, data)])
        return ok

    # -- maintenance ---------------------------------------------------------------

    async def verify(self) -> list[str]:
        nodes_prefix = self._p + b"nodes/"
        ipam_prefix = self._p + b"ipam/"
        _, response = await self._txn(
            [],
            [
                _op_get(nodes_prefix, _range_end(nodes_prefix)),
                _op_get(ipam_prefix, _range_end(ipam_prefix)),
            ],
        )
        problems: list[str] = []
        owners: dict[str, str] = {}
        for raw in response.responses[1].response_range.kvs:
            owners[bytes(raw.key)[len(ipam_prefix) :].decode()] = bytes(raw.value).decode()
        held: dict[str, str] = {}
        for raw in response.responses[0].response_range.kvs:
            node_id = bytes(raw.key)[len(nodes_prefix) :].decode()
            try:
                record = NodeRecord.from_json(loads(bytes(raw.value)))
            except ModelError as exc:
                problems.append(f"node {node_id} has an invalid record: {exc}")
                continue
            address = str(record.overlay_ip)
            if record.node_id != node_id:
                problems.append(f"node key {node_id} holds the record of {record.node_id}")
            if address in held:
                problems.append(f"{address} held by {held[address]} and {node_id}")
            held[address] = node_id
            if owners.get(address) != node_id:
                problems.append(
                    f"node {node_id} has {address} but ipam says {owners.get(address)!r}"
                )
        for address, owner in owners.items():
            if held.get(address) != owner:
                problems.append(f"ipam key {address} -> {owner!r} has no matching node record")
        return problems
