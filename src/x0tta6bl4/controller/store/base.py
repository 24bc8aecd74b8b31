"""The store interface every backend implements, and its shared argument checks.

Concurrency contract: a :class:`Store` object belongs to one asyncio event loop; any number
of tasks of that loop may call it concurrently. Several store objects (in one process or in
several controller replicas) may share one backend; every guarantee below holds across them.

Guarantees (see ``docs/store.md``):

- ``register_node`` is an atomic upsert by ``node_id``: the node keeps its overlay address on
  re-registration (while it lies inside the given network) and no address is ever held by
  two nodes, whatever the number of concurrent writers.
- A node ID belongs to the SPIFFE ID that first registered it until the node is deleted or
  expires: ``register_node`` with another SPIFFE ID raises
  :class:`~.errors.OwnershipError`, checked in the same transaction as the write (of several
  SPIFFE IDs racing for a new node ID exactly one wins).
- Every change of a node or the policy gets a revision, strictly increasing; ``watch`` yields
  the changes after a revision in order, pushed as they happen.
- Re-registering a node ID with another key revokes its previous PQ SVID, deleting a node
  (``delete_node``, not expiry) revokes its current one: the :class:`Revocation` is written
  in the same transaction as the change, kept until its notAfter (then pruned), at most
  :data:`MAX_REVOCATIONS_PER_NODE` per node ID (the oldest go first), published in
  :meth:`Store.snapshot` and as a ``node_revoked`` event.
- A write that fails with :class:`StoreUnavailableError` may or may not have been applied;
  retrying it is safe (see :mod:`.errors`).
"""

from __future__ import annotations

import abc
import asyncio
import contextlib
import hmac
import math
import re
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from ipaddress import IPv4Address, IPv4Network
from types import TracebackType
from typing import Self

from x0tta6bl4.controller import ipam
from x0tta6bl4.controller.models import (
    NodeRecord,
    NodeRegistration,
    NodeStatus,
    Revision,
    Revocation,
    Snapshot,
    StoredPolicy,
    StoreEvent,
)
from x0tta6bl4.controller.store.errors import (
    CidrExhaustedError,
    OwnershipError,
    StoreCorruptError,
    StoreError,
    StoreUnavailableError,
)
from x0tta6bl4.policy import Policy
from x0tta6bl4.records import ModelError

__all__ = [
    "MAX_BLOB_SIZE",
    "MAX_REVOCATIONS_PER_NODE",
    "MAX_TRACKED_FAULTS",
    "Leadership",
    "Store",
    "check_blob",
    "check_blob_key",
    "check_cidr",
    "check_leader_args",
    "check_nonce",
    "check_registration",
    "cidr_exhausted",
    "kept_address",
    "revocation_of",
    "revoked_by_registration",
]

MAX_BLOB_SIZE = 1024 * 1024
"""Largest blob accepted (etcd's default request limit is 1.5 MiB)."""

_BLOB_KEY = re.compile(r"[a-z0-9][a-z0-9._-]{0,63}(?:/[a-z0-9][a-z0-9._-]{0,63}){0,7}")
_LEADER_NAME = re.compile(r"[a-z0-9][a-z0-9._-]{0,63}")


def check_blob_key(key: object) -> str:
    """Validate a blob key: lowercase path segments such as ``ca/current``."""
    if not isinstance(key, str) or not _BLOB_KEY.fullmatch(key):
        raise ValueError(
            "blob key must be 1-8 '/'-separated segments of lowercase letters, digits, '.', "
            f"'_' or '-'; got {key!r:.80}"
        )
    return key


def check_blob(data: object) -> bytes:
    """Validate blob contents (bytes, at most :data:`MAX_BLOB_SIZE`)."""
    if not isinstance(data, bytes):
        raise TypeError(f"blob must be bytes, not {type(data).__name__}")
    if len(data) > MAX_BLOB_SIZE:
        raise ValueError(f"blob is {len(data)} bytes; at most {MAX_BLOB_SIZE} allowed")
    return data


def check_nonce(nonce: object, expires_at: object) -> None:
    """Validate replay-guard arguments: 8-1024 bytes and a finite expiry time."""
    if not isinstance(nonce, bytes) or not 8 <= len(nonce) <= 1024:
        raise ValueError("nonce must be 8 to 1024 bytes")
    if isinstance(expires_at, bool) or not isinstance(expires_at, int | float):
        raise TypeError("expires_at must be a number (seconds since the epoch)")
    if not math.isfinite(expires_at):
        raise ValueError("expires_at must be finite")


def check_leader_args(name: object, identity: object, ttl: object) -> None:
    """Validate leader-election arguments."""
    if not isinstance(name, str) or not _LEADER_NAME.fullmatch(name):
        raise ValueError(f"leader name must be a lowercase identifier; got {name!r:.80}")
    if not isinstance(identity, str) or not 1 <= len(identity) <= 256:
        raise ValueError("leader identity must be a non-empty string of at most 256 characters")
    if isinstance(ttl, bool) or not isinstance(ttl, int | float):
        raise TypeError("leader ttl must be a number of seconds")
    if not 1 <= ttl <= 3600:
        raise ValueError(f"leader ttl must be between 1 and 3600 seconds; got {ttl}")


def check_cidr(cidr: object) -> IPv4Network:
    """Validate the overlay network handed to ``register_node``."""
    if not isinstance(cidr, IPv4Network):
        raise TypeError("cidr must be an ipaddress.IPv4Network (see ipam.parse_overlay_cidr)")
    ipam.check_network(cidr)
    return cidr


def check_registration(registration: object) -> NodeRegistration:
    """Validate the registration handed to ``register_node``."""
    if not isinstance(registration, NodeRegistration):
        raise TypeError("registration must be a NodeRegistration")
    return registration


def kept_address(
    registration: NodeRegistration, existing: NodeRecord | None, network: IPv4Network
) -> IPv4Address | None:
    """The overlay address a re-registering node keeps; None when one must be allocated.

    ``existing`` is the stored record of ``registration.node_id`` (None: a new node). Raises
    :class:`~.errors.OwnershipError` when that record belongs to another SPIFFE ID; the
    backend must read ``existing`` in the same transaction as its write (or compare it at
    commit) for that check to hold.
    """
    if existing is None:
        return None
    if existing.spiffe_id != registration.spiffe_id:
        raise OwnershipError(registration.node_id)
    return existing.overlay_ip if ipam.is_usable(network, existing.overlay_ip) else None


MAX_REVOCATIONS_PER_NODE = 8
"""Revocations kept per node ID; beyond, the oldest (earliest notAfter) is dropped. Dropping
one re-admits nothing: nodes accept only the membership's current certificate of a node ID."""


def revocation_of(record: NodeRecord, now: float) -> Revocation | None:
    """The revocation of ``record``'s current PQ SVID; None if it has expired by ``now`` (or
    its certificate does not parse: there is no serial to revoke)."""
    try:
        revocation = record.revocation()
    except ModelError:
        return None
    return revocation if revocation.not_after > now else None


def revoked_by_registration(
    registration: NodeRegistration, existing: NodeRecord | None
) -> Revocation | None:
    """The PQ SVID a registration revokes: the previous one when the key changes."""
    if existing is None or hmac.compare_digest(
        existing.ml_dsa_public_key, registration.ml_dsa_public_key
    ):
        return None
    return revocation_of(existing, registration.now)


def cidr_exhausted(network: IPv4Network) -> CidrExhaustedError:
    """The error ``register_node`` raises when every usable address of ``network`` is held."""
    return CidrExhaustedError(
        f"no free overlay address left in {network} "
        f"({ipam.usable_count(network)} addresses, all allocated)"
    )


@dataclass
class Leadership:
    """Held leadership: ``lost`` is set when a renewal fails or another identity took over."""

    name: str
    identity: str
    lost: asyncio.Event = field(default_factory=asyncio.Event)


MAX_TRACKED_FAULTS = 64
"""Damaged records a store remembers (``Store.faults``); beyond, the oldest is forgotten."""


class Store(abc.ABC):
    """Durable controller state: nodes, overlay addresses, policy, nonces, leaders, blobs.

    ``create`` (default True; set before :meth:`open`) says whether ``open`` may create the
    store when it holds no x0tta6bl4 data yet; with False such a store raises
    :class:`StoreMissingError` and nothing is written. A record that does not decode raises
    :class:`StoreCorruptError` naming it and is remembered in :attr:`faults` until it is read
    whole again, deleted or overwritten (:meth:`recheck_faults` re-reads them).
    """

    create: bool = True

    @property
    def faults(self) -> dict[str, str]:
        """Damaged records seen and not yet repaired: where → what is wrong."""
        return dict(self._fault_map())

    def _fault_map(self) -> dict[str, str]:
        faults: dict[str, str] | None = self.__dict__.get("_faults")
        if faults is None:
            faults = self.__dict__["_faults"] = {}
        return faults

    def _record_fault(self, where: str, fault: str) -> StoreCorruptError:
        """Remember a damaged record; the error to raise for it."""
        faults = self._fault_map()
        faults.pop(where, None)
        faults[where] = fault
        while len(faults) > MAX_TRACKED_FAULTS:
            faults.pop(next(iter(faults)))
        return StoreCorruptError(where, fault)

    def _clear_fault(self, where: str) -> None:
        self._fault_map().pop(where, None)

    async def recheck_faults(self) -> dict[str, str]:
        """Re-read every remembered damaged record (a repaired or deleted one is forgotten);
        the faults that remain. Raises only what the reads raise besides StoreCorruptError."""
        for where in list(self._fault_map()):
            kind, _, name = where.partition(" ")
            try:
                if kind == "node":
                    node_id = name.strip("'")
                    if await self.get_node(node_id) is None:
                        self._clear_fault(where)
                elif kind == "policy":
                    await self.get_policy()
                else:  # an event of the history: it stays damaged until compacted away
                    await self._recheck_other(where)
            except StoreCorruptError:
                continue
        return self.faults

    @abc.abstractmethod
    async def _recheck_other(self, where: str) -> None:
        """Re-read a remembered damaged record other than a node or the policy (forget it if
        it is gone or whole)."""

    async def scan(self) -> list[NodeRecord]:
        """Read every node record and the policy once, remembering the damaged ones in
        :attr:`faults` (no error for them); the nodes read whole."""
        with contextlib.suppress(StoreCorruptError):
            await self.get_policy()
        return await self._scan_nodes()

    @abc.abstractmethod
    async def _scan_nodes(self) -> list[NodeRecord]:
        """Decode every node record, remembering the damaged ones; the whole ones."""

    @property
    @abc.abstractmethod
    def location(self) -> str:
        """Where the data lives, stable across restarts: ``sqlite:///abs/path`` or
        ``etcd://host:port,…/prefix/`` (endpoints sorted)."""

    async def __aenter__(self) -> Self:
        await self.open()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    # -- lifecycle -----------------------------------------------------------------

    @abc.abstractmethod
    async def open(self) -> None:
        """Connect / open the database and create the schema if needed."""

    @abc.abstractmethod
    async def close(self) -> None:
        """Release every resource; idempotent. Running watches end."""

    @abc.abstractmethod
    async def ping(self) -> bool:
        """True if the backend answers now (for ``/ready``); never raises."""

    # -- nodes ---------------------------------------------------------------------

    @abc.abstractmethod
    async def register_node(self, registration: NodeRegistration, cidr: IPv4Network) -> NodeRecord:
        """Insert or update the node, allocating an overlay address from ``cidr``.

        A known node keeps its address (if it lies in ``cidr``) and its ``registered_at``;
        its status is reset. Raises :class:`CidrExhaustedError` (writing nothing) when no
        address is free, and :class:`~.errors.OwnershipError` (writing nothing) when the node ID is
        registered to another SPIFFE ID — decided atomically with the write.
        """

    @abc.abstractmethod
    async def get_node(self, node_id: str) -> NodeRecord | None:
        """The node, or None."""

    @abc.abstractmethod
    async def list_nodes(self) -> list[NodeRecord]:
        """All nodes, sorted by node_id."""

    @abc.abstractmethod
    async def delete_node(self, node_id: str) -> bool:
        """Delete the node and release its address; False if it did not exist."""

    @abc.abstractmethod
    async def touch_node(
        self,
        node_id: str,
        now: float,
        status: NodeStatus | None = None,
        *,
        owner: str | None = None,
    ) -> NodeRecord:
        """Record a heartbeat at ``now`` (and the new ``status`` if given).

        Raises :class:`NotFoundError` if the node is not registered (it must re-register).
        With ``owner`` (a SPIFFE ID), raises :class:`OwnershipError` unless the record being
        updated is registered to it: checked in the write's own transaction, so a heartbeat
        can never land on a node ID that changed owner after a separate read.
        """

    @abc.abstractmethod
    async def expire_nodes(self, older_than: float) -> list[str]:
        """Delete every node last seen before ``older_than``, releasing addresses."""

    # -- policy --------------------------------------------------------------------

    @abc.abstractmethod
    async def get_policy(self) -> StoredPolicy:
        """The policy and its revision; an empty policy at revision 0 if never written."""

    @abc.abstractmethod
    async def put_policy(self, policy: Policy, expected_revision: Revision | None) -> Revision:
        """Replace the policy; returns its new revision.

        With ``expected_revision`` (0 = "never written") the write happens only if the stored
        policy is still at that revision, else :class:`ConflictError`.
        """

    # -- revisions and watch -------------------------------------------------------

    @abc.abstractmethod
    async def revision(self) -> Revision:
        """The current store revision (every change so far is at or below it)."""

    @abc.abstractmethod
    async def snapshot(self) -> Snapshot:
        """All nodes and the policy, consistent at one revision (watch from it)."""

    @abc.abstractmethod
    def watch(self, from_revision: Revision) -> AsyncIterator[StoreEvent]:
        """Yield every change with a revision greater than ``from_revision``, forever.

        Raises :class:`RevisionCompactedError` if that history is gone, and
        :class:`StoreUnavailableError` if the backend stays unreachable.
        """

    # -- replay guard --------------------------------------------------------------

    @abc.abstractmethod
    async def replay_guard(self, nonce: bytes, expires_at: float) -> bool:
        """Record ``nonce`` until ``expires_at``; False if it was already recorded."""

    # -- leader election -----------------------------------------------------------

    @abc.abstractmethod
    async def try_acquire_leader(self, name: str, identity: str, ttl: float) -> bool:
        """Become (or stay) leader of ``name`` for ``ttl`` seconds; False if someone else is.

        Call again well within ``ttl`` (e.g. every ttl/3) to renew. ``identity`` must be
        unique per replica.
        """

    @abc.abstractmethod
    async def release_leader(self, name: str, identity: str) -> None:
        """Give up leadership of ``name`` if ``identity`` holds it."""

    @contextlib.asynccontextmanager
    async def leader(self, name: str, identity: str, ttl: float) -> AsyncIterator[Leadership]:
        """Wait until leader of ``name``, renew every ttl/3 while inside, release on exit.

        The yielded :class:`Leadership` has its ``lost`` event set if a renewal is refused or
        the store stays unreachable for a whole ``ttl``; singleton work should stop then.
        """
        check_leader_args(name, identity, ttl)
        period = ttl / 3
        while True:
            with contextlib.suppress(StoreUnavailableError):
                if await self.try_acquire_leader(name, identity, ttl):
                    break
            await asyncio.sleep(period)
        leadership = Leadership(name=name, identity=identity)
        renewer = asyncio.create_task(self._renew(leadership, ttl))
        try:
            yield leadership
        finally:
            renewer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await renewer
            with contextlib.suppress(StoreError):
                await self.release_leader(name, identity)

    async def _renew(self, leadership: Leadership, ttl: float) -> None:
        loop = asyncio.get_running_loop()
        confirmed = loop.time()
        while not leadership.lost.is_set():
            await asyncio.sleep(ttl / 3)
            try:
                held = await self.try_acquire_leader(leadership.name, leadership.identity, ttl)
            except StoreUnavailableError:
                held = loop.time() - confirmed < ttl
            else:
                confirmed = loop.time()
            if not held:
                leadership.lost.set()

    # -- blobs ---------------------------------------------------------------------

    @abc.abstractmethod
    async def get_blob(self, key: str) -> bytes | None:
        """The blob stored under ``key``, or None."""

    @abc.abstractmethod
    async def put_blob_if_absent(self, key: str, data: bytes) -> bool:
        """Store ``data`` under ``key`` unless the key exists; True if written."""

    @abc.abstractmethod
    async def replace_blob(self, key: str, expected: bytes, data: bytes) -> bool:
        """Replace the blob only if it still equals ``expected``; True if replaced."""

    # -- maintenance ---------------------------------------------------------------

    @abc.abstractmethod
    async def verify(self) -> list[str]:
        """Check the store's invariants; returns the problems found (empty: consistent)."""
