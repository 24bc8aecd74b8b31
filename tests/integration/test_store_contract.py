"""One contract for every store backend, run against real SQLite files and real etcd.

Also here: the records' JSON validation, store URL parsing, SQLite crash safety (a writer
process is SIGKILLed mid-writes) and etcd HA (three writer processes, 1000 registrations,
the etcd leader SIGKILLed part-way). The writer processes run this module as a program:
``python -m tests.integration.test_store_contract {sqlite-writer,ha-worker} …``.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import datetime
import json
import os
import signal
import sqlite3
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field, replace
from ipaddress import IPv4Address, IPv4Network
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519
from cryptography.x509.oid import NameOID

from tests.integration.etcd_cluster import ETCD_MISSING_REASON, EtcdCluster, etcd_binary
from x0tta6bl4.controller.models import (
    ML_DSA_65_PUBLIC_KEY_SIZE,
    EventKind,
    LinkStatus,
    NodeRecord,
    NodeRegistration,
    NodeStatus,
    Revocation,
    StoreEvent,
    dumps,
    loads,
)
from x0tta6bl4.controller.store import (
    CidrExhaustedError,
    ConflictError,
    EtcdUrl,
    InvalidStoreUrlError,
    NotFoundError,
    OwnershipError,
    RevisionCompactedError,
    SchemaError,
    SqliteUrl,
    Store,
    StoreCorruptError,
    StoreError,
    StoreMissingError,
    StoreUnavailableError,
    default_store_url,
    open_store,
    parse_store_url,
)
from x0tta6bl4.controller.store.base import MAX_REVOCATIONS_PER_NODE
from x0tta6bl4.controller.store.etcd import EtcdStore
from x0tta6bl4.controller.store.sqlite import SqliteStore
from x0tta6bl4.policy import Policy, PolicyRule
from x0tta6bl4.records import ModelError

REPO = Path(__file__).resolve().parents[2]
NET = IPv4Network("100.96.0.0/16")
PEM = "-----BEGIN CERTIFICATE-----\nTUlJQg==\n-----END CERTIFICATE-----\n"
WAIT = 20.0  # a hang guard for awaited events, never a performance assertion


def key_for(node_id: str) -> bytes:
    seed = node_id.encode()
    return (seed * (ML_DSA_65_PUBLIC_KEY_SIZE // len(seed) + 1))[:ML_DSA_65_PUBLIC_KEY_SIZE]


def reg(
    node_id: str,
    now: float = 1000.0,
    endpoint: str = "10.0.0.1:7810",
    spiffe_id: str | None = None,
) -> NodeRegistration:
    return NodeRegistration(
        node_id=node_id,
        spiffe_id=spiffe_id or f"spiffe://x0tta6bl4.mesh/ns/mesh/sa/{node_id}",
        endpoint=endpoint,
        pq_svid_pem=PEM,
        pq_svid_not_after=now + 3600,
        ml_dsa_public_key=key_for(node_id),
        now=now,
    )


# --------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def etcd_single(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EtcdCluster]:
    if etcd_binary() is None:
        pytest.skip(ETCD_MISSING_REASON)
    with EtcdCluster(tmp_path_factory.mktemp("etcd1"), size=1) as cluster:
        yield cluster


@dataclass
class Backend:
    """Makes store objects that share one backend (as controller replicas would)."""

    kind: str
    make: Callable[[], Store]
    opened: list[Store] = field(default_factory=list)

    async def open(self) -> Store:
        store = self.make()
        await store.open()
        self.opened.append(store)
        return store


@pytest.fixture(params=["sqlite", pytest.param("etcd", marks=pytest.mark.etcd)])
async def backend(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Backend]:
    if request.param == "sqlite":
        path = tmp_path / "state" / "controller.db"
        result = Backend("sqlite", lambda: SqliteStore(path))
    else:
        cluster: EtcdCluster = request.getfixturevalue("etcd_single")
        prefix = f"/x0-test-{uuid.uuid4().hex}/"
        result = Backend("etcd", lambda: EtcdStore(cluster.endpoints, prefix=prefix))
    yield result
    for store in result.opened:
        await store.close()


@pytest.fixture
async def store(backend: Backend) -> Store:
    return await backend.open()


# --------------------------------------------------------------------------- nodes


async def test_register_allocates_an_address_and_get_returns_the_record(store: Store) -> None:
    record = await store.register_node(reg("alpha"), NET)
    assert record.overlay_ip in NET
    assert record.overlay_ip not in (NET.network_address, NET.broadcast_address)
    assert (record.registered_at, record.last_seen) == (1000.0, 1000.0)
    assert record.status == NodeStatus()
    assert await store.get_node("alpha") == record
    assert await store.get_node("nobody") is None
    assert await store.verify() == []


async def test_reregistration_keeps_address_and_registered_at(store: Store) -> None:
    first = await store.register_node(reg("alpha", now=1000.0), NET)
    await store.touch_node("alpha", 1500.0, NodeStatus(links=(LinkStatus("beta", True, 1.5),)))
    again = await store.register_node(reg("alpha", now=2000.0, endpoint="10.0.0.9:7810"), NET)
    assert again.overlay_ip == first.overlay_ip
    assert again.registered_at == 1000.0
    assert again.last_seen == 2000.0
    assert again.endpoint == "10.0.0.9:7810"
    assert again.status == NodeStatus()  # a re-registered node reports its links afresh
    assert await store.get_node("alpha") == again
    assert len(await store.list_nodes()) == 1


async def test_reregistration_into_another_network_moves_and_releases(store: Store) -> None:
    old_net, new_net = IPv4Network("100.96.0.0/30"), IPv4Network("100.97.0.0/24")
    first = await store.register_node(reg("alpha"), old_net)
    moved = await store.register_node(reg("alpha"), new_net)
    assert moved.overlay_ip in new_net
    # The old address is free again: two more nodes fit in the /30's two addresses.
    await store.register_node(reg("beta"), old_net)
    gamma = await store.register_node(reg("gamma"), old_net)
    assert first.overlay_ip in {gamma.overlay_ip, (await store.get_node("beta")).overlay_ip}  # type: ignore[union-attr]
    assert await store.verify() == []


async def test_list_is_sorted_and_complete(store: Store) -> None:
    for node_id in ["c", "a", "b"]:
        await store.register_node(reg(node_id), NET)
    nodes = await store.list_nodes()
    assert [n.node_id for n in nodes] == ["a", "b", "c"]
    assert len({n.overlay_ip for n in nodes}) == 3


async def test_delete_releases_the_address(store: Store) -> None:
    tiny = IPv4Network("100.96.0.0/30")
    a = await store.register_node(reg("a"), tiny)
    await store.register_node(reg("b"), tiny)
    with pytest.raises(CidrExhaustedError):
        await store.register_node(reg("c"), tiny)
    assert await store.delete_node("a") is True
    assert await store.delete_node("a") is False
    assert await store.get_node("a") is None
    c = await store.register_node(reg("c"), tiny)
    assert c.overlay_ip == a.overlay_ip
    assert await store.verify() == []


async def test_expiry_deletes_stale_nodes_and_releases_addresses(store: Store) -> None:
    tiny = IPv4Network("100.96.0.0/30")
    stale = await store.register_node(reg("stale", now=100.0), tiny)
    await store.register_node(reg("fresh", now=100.0), tiny)
    await store.touch_node("fresh", 200.0)
    assert await store.expire_nodes(150.0) == ["stale"]
    assert await store.expire_nodes(150.0) == []
    assert [n.node_id for n in await store.list_nodes()] == ["fresh"]
    newcomer = await store.register_node(reg("newcomer", now=300.0), tiny)
    assert newcomer.overlay_ip == stale.overlay_ip
    assert await store.verify() == []


async def test_touch_records_heartbeat_and_status(store: Store) -> None:
    await store.register_node(reg("a"), NET)
    status = NodeStatus(links=(LinkStatus("b", True, 0.8), LinkStatus("c", False, None)))
    touched = await store.touch_node("a", 1010.0, status)
    assert (touched.last_seen, touched.status) == (1010.0, status)
    kept = await store.touch_node("a", 1020.0)
    assert (kept.last_seen, kept.status) == (1020.0, status)
    assert await store.get_node("a") == kept
    with pytest.raises(NotFoundError):
        await store.touch_node("ghost", 1020.0)
    assert await store.get_node("ghost") is None
    # With an owner, only the node's own SPIFFE ID may heartbeat it; a refusal writes nothing.
    mine = kept.spiffe_id
    owned = await store.touch_node("a", 1030.0, owner=mine)
    assert owned.last_seen == 1030.0
    with pytest.raises(OwnershipError):
        await store.touch_node("a", 1040.0, NodeStatus(links=()), owner=OWNER_B)
    assert await store.get_node("a") == owned


async def test_cidr_exhaustion_raises_and_writes_nothing(store: Store) -> None:
    tiny = IPv4Network("100.96.0.0/29")  # six usable addresses
    records = [await store.register_node(reg(f"n{i}"), tiny) for i in range(6)]
    assert len({r.overlay_ip for r in records}) == 6
    before_nodes, before_revision = await store.list_nodes(), await store.revision()
    with pytest.raises(CidrExhaustedError, match=r"100\.96\.0\.0/29"):
        await store.register_node(reg("n6"), tiny)
    assert await store.list_nodes() == before_nodes
    assert await store.revision() == before_revision
    assert await store.get_node("n6") is None
    # A known node still re-registers in a full network: it keeps its address.
    again = await store.register_node(reg("n3", now=2000.0), tiny)
    assert again.overlay_ip == records[3].overlay_ip
    assert await store.verify() == []


async def test_concurrent_registrations_from_two_replicas_never_share_an_address(
    backend: Backend,
) -> None:
    first, second = await backend.open(), await backend.open()
    small = IPv4Network("100.96.0.0/28")  # 14 usable addresses for 20 nodes
    results = await asyncio.gather(
        *((first if i % 2 else second).register_node(reg(f"node-{i}"), small) for i in range(20)),
        return_exceptions=True,
    )
    granted = [r for r in results if isinstance(r, NodeRecord)]
    refused = [r for r in results if isinstance(r, CidrExhaustedError)]
    assert len(granted) == 14, results
    assert len(refused) == 6, results
    assert len({r.overlay_ip for r in granted}) == 14
    stored = await first.list_nodes()
    assert sorted(r.node_id for r in stored) == sorted(r.node_id for r in granted)
    assert await second.verify() == []


OWNER_A = "spiffe://x0tta6bl4.mesh/ns/mesh/sa/owner-a"
OWNER_B = "spiffe://x0tta6bl4.mesh/ns/mesh/sa/owner-b"


async def test_a_node_id_belongs_to_its_first_spiffe_id(store: Store) -> None:
    first = await store.register_node(reg("alpha", spiffe_id=OWNER_A), NET)
    before_revision = await store.revision()
    with pytest.raises(OwnershipError, match="alpha") as refused:
        await store.register_node(reg("alpha", now=2000.0, spiffe_id=OWNER_B), NET)
    assert refused.value.node_id == "alpha"
    assert OWNER_A not in str(refused.value)  # the owner is not disclosed
    # Nothing was written: same record, same revision.
    assert await store.get_node("alpha") == first
    assert await store.revision() == before_revision
    # The owner still re-registers (idempotent upsert, same address).
    again = await store.register_node(reg("alpha", now=3000.0, spiffe_id=OWNER_A), NET)
    assert (again.overlay_ip, again.spiffe_id, again.last_seen) == (
        first.overlay_ip,
        OWNER_A,
        3000.0,
    )
    # Once the node is gone, the node ID is free for anyone.
    assert await store.delete_node("alpha") is True
    taken = await store.register_node(reg("alpha", now=4000.0, spiffe_id=OWNER_B), NET)
    assert taken.spiffe_id == OWNER_B
    assert await store.verify() == []


RACE_NODES = 24
RACE_TASKS_PER_OWNER = 2


async def test_two_spiffe_ids_racing_for_new_node_ids_exactly_one_wins(
    backend: Backend,
) -> None:
    """Two replicas, two owners, several tasks per owner, all on the same fresh node IDs at
    once: per node ID every task of one owner succeeds, every task of the other is refused."""
    replicas = [await backend.open() for _ in range(2)]
    node_ids = [f"race-{i}" for i in range(RACE_NODES)]
    calls: list[tuple[str, str]] = []
    coroutines = []
    for node_id in node_ids:
        for task in range(RACE_TASKS_PER_OWNER):
            for index, owner in enumerate((OWNER_A, OWNER_B)):
                # Each owner writes through both replicas, interleaved with the other owner.
                replica = replicas[(index + task) % 2]
                calls.append((node_id, owner))
                coroutines.append(replica.register_node(reg(node_id, spiffe_id=owner), NET))
    results = await asyncio.gather(*coroutines, return_exceptions=True)
    unexpected = [r for r in results if not isinstance(r, NodeRecord | OwnershipError)]
    assert unexpected == []
    stored = {record.node_id: record for record in await replicas[0].list_nodes()}
    assert sorted(stored) == sorted(node_ids)
    winners: dict[str, set[str]] = {}
    for (node_id, owner), result in zip(calls, results, strict=True):
        if isinstance(result, NodeRecord):
            assert result.spiffe_id == owner
            assert result.overlay_ip == stored[node_id].overlay_ip
            winners.setdefault(node_id, set()).add(owner)
        else:
            assert isinstance(result, OwnershipError)
            assert result.node_id == node_id
            assert stored[node_id].spiffe_id != owner
    for node_id in node_ids:
        assert winners.get(node_id) == {stored[node_id].spiffe_id}, node_id
    # Every task of the winning owner got the node, every task of the other was refused.
    granted = sum(isinstance(result, NodeRecord) for result in results)
    assert granted == RACE_NODES * RACE_TASKS_PER_OWNER
    for replica in replicas:
        assert await replica.verify() == []
    # The losers stay refused afterwards; the winners re-register idempotently.
    for node_id, record in stored.items():
        loser = OWNER_B if record.spiffe_id == OWNER_A else OWNER_A
        with pytest.raises(OwnershipError):
            await replicas[1].register_node(reg(node_id, now=2000.0, spiffe_id=loser), NET)
        again = await replicas[1].register_node(
            reg(node_id, now=2000.0, spiffe_id=record.spiffe_id), NET
        )
        assert again.overlay_ip == record.overlay_ip


def _race_worker_command(kind: str, location: str, prefix: str, owner: str) -> list[str]:
    module = "tests.integration.test_store_contract"
    return [sys.executable, "-m", module, "race-worker", kind, location, prefix, owner]


@pytest.mark.parametrize("kind", ["sqlite", pytest.param("etcd", marks=pytest.mark.etcd)])
def test_two_owner_processes_racing_for_new_node_ids(
    kind: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    """The same race between two processes (one per owner), as two controller replicas on
    two machines would run it: SQLite's file lock / etcd's txn decide, nothing in-process."""
    if kind == "sqlite":
        location, prefix = str(tmp_path / "race.db"), "-"
    else:
        cluster: EtcdCluster = request.getfixturevalue("etcd_single")
        location = cluster.url(cluster.members)
        prefix = f"/x0-race-{uuid.uuid4().hex}/"
    workers = [
        subprocess.Popen(
            _race_worker_command(kind, location, prefix, owner),
            cwd=REPO,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        for owner in (OWNER_A, OWNER_B)
    ]
    outputs: list[dict[str, Any]] = []
    try:
        for worker in workers:  # both are connected and waiting: release them together
            assert worker.stdout is not None
            assert worker.stdout.readline().strip() == "ready"
        for worker in workers:
            assert worker.stdin is not None
            worker.stdin.write("go\n")
            worker.stdin.flush()
        for worker in workers:
            out, _ = worker.communicate(timeout=120)
            assert worker.returncode == 0
            outputs.append(json.loads(out))
    finally:
        for worker in workers:
            worker.kill()
            worker.wait()
            for stream in (worker.stdin, worker.stdout):
                if stream is not None:
                    stream.close()
    won_a, won_b = (set(output["won"]) for output in outputs)
    refused_a, refused_b = (set(output["refused"]) for output in outputs)
    every = {f"race-{i}" for i in range(RACE_NODES)}
    assert won_a | won_b == every
    assert won_a & won_b == set()
    assert (refused_a, refused_b) == (won_b, won_a)

    async def check() -> tuple[dict[str, str], list[str]]:
        if kind == "sqlite":
            opened: Store = SqliteStore(location)
        else:
            parsed = parse_store_url(location, state_dir=tmp_path)
            assert isinstance(parsed, EtcdUrl)
            opened = EtcdStore(parsed.endpoints, prefix=prefix)
        async with opened as store:
            owners = {n.node_id: n.spiffe_id for n in await store.list_nodes()}
            return owners, await store.verify()

    owners, problems = asyncio.run(check())
    assert problems == []
    assert owners == {**dict.fromkeys(won_a, OWNER_A), **dict.fromkeys(won_b, OWNER_B)}


async def _race_worker(kind: str, location: str, prefix: str, owner: str) -> None:
    if kind == "sqlite":
        store: Store = SqliteStore(location)
    else:
        parsed = parse_store_url(location, state_dir="/nonexistent")
        assert isinstance(parsed, EtcdUrl)
        store = EtcdStore(parsed.endpoints, prefix=prefix)
    async with store:
        print("ready", flush=True)
        await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)
        node_ids = [f"race-{i}" for i in range(RACE_NODES)]
        results = await asyncio.gather(
            *(store.register_node(reg(n, spiffe_id=owner), NET) for n in node_ids),
            return_exceptions=True,
        )
    won, refused = [], []
    for node_id, result in zip(node_ids, results, strict=True):
        if isinstance(result, NodeRecord):
            won.append(node_id)
        elif isinstance(result, OwnershipError):
            refused.append(node_id)
        else:
            raise result
    print(json.dumps({"won": won, "refused": refused}), flush=True)


# --------------------------------------------------------------------------- policy


POLICY = Policy(
    rules=(
        PolicyRule("spiffe://x0tta6bl4.mesh/ns/mesh/*", "*", "link", True),
        PolicyRule("*", "spiffe://x0tta6bl4.mesh/ns/db/sa/pg", "talk", False),
    )
)


async def test_policy_optimistic_concurrency(store: Store) -> None:
    initial = await store.get_policy()
    assert initial.policy == Policy()
    assert initial.revision == 0
    r1 = await store.put_policy(POLICY, expected_revision=0)
    assert r1 > 0
    stored = await store.get_policy()
    assert (stored.policy, stored.revision) == (POLICY, r1)
    with pytest.raises(ConflictError) as conflict:
        await store.put_policy(Policy(), expected_revision=0)
    assert conflict.value.current_revision == r1
    assert (await store.get_policy()).policy == POLICY
    r2 = await store.put_policy(Policy(), expected_revision=r1)
    assert r2 > r1
    r3 = await store.put_policy(POLICY, expected_revision=None)
    assert r3 > r2
    assert await store.get_policy() == type(stored)(policy=POLICY, revision=r3)


# --------------------------------------------------------------------------- revisions and watch


async def _collect(store: Store, start: int, count: int) -> list[StoreEvent]:
    events: list[StoreEvent] = []
    async for event in store.watch(start):
        events.append(event)
        if len(events) == count:
            break
    return events


async def test_watch_sees_a_registration_pushed(store: Store) -> None:
    start = await store.revision()
    watcher = asyncio.create_task(_collect(store, start, 1))
    await asyncio.sleep(0)  # let the watch start before the write
    record = await store.register_node(reg("alpha"), NET)
    (event,) = await asyncio.wait_for(watcher, WAIT)
    assert event.kind is EventKind.NODE_PUT
    assert event.node == record
    assert event.revision > start


async def test_watch_replays_history_in_order(store: Store) -> None:
    start = await store.revision()
    await store.register_node(reg("a"), NET)
    await store.touch_node("a", 1001.0)
    await store.put_policy(POLICY, None)
    await store.delete_node("a")
    events = await asyncio.wait_for(_collect(store, start, 4), WAIT)
    assert [e.kind for e in events] == [
        EventKind.NODE_PUT,
        EventKind.NODE_PUT,
        EventKind.POLICY_PUT,
        EventKind.NODE_DELETED,
    ]
    assert [e.node_id for e in events] == ["a", "a", None, "a"]
    assert events[1].node is not None
    assert events[1].node.last_seen == 1001.0
    assert events[2].policy == POLICY
    revisions = [e.revision for e in events]
    assert revisions == sorted(set(revisions))
    assert revisions[-1] <= await store.revision()
    assert json.loads(json.dumps(events[0].to_json()))["kind"] == "node_put"


async def test_watch_sees_writes_of_another_replica(backend: Backend) -> None:
    watching, writing = await backend.open(), await backend.open()
    start = await watching.revision()
    watcher = asyncio.create_task(_collect(watching, start, 1))
    await asyncio.sleep(0)
    await writing.register_node(reg("remote"), NET)
    (event,) = await asyncio.wait_for(watcher, WAIT)
    assert (event.kind, event.node_id) == (EventKind.NODE_PUT, "remote")


async def test_snapshot_is_consistent_with_watch(store: Store) -> None:
    await store.register_node(reg("a"), NET)
    await store.put_policy(POLICY, 0)
    snap = await store.snapshot()
    assert [n.node_id for n in snap.nodes] == ["a"]
    assert snap.policy.policy == POLICY
    assert snap.revision == await store.revision()
    await store.register_node(reg("b"), NET)
    (event,) = await asyncio.wait_for(_collect(store, snap.revision, 1), WAIT)
    assert event.node_id == "b"


# --------------------------------------------------------------------------- revocations


def _cert_pem(serial: int) -> str:
    """A real (throw-away, Ed25519 self-signed) certificate with ``serial``: the store reads
    only its serial number."""
    key = ed25519.Ed25519PrivateKey.generate()
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "t")])
    start = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(serial)
        .not_valid_before(start)
        .not_valid_after(start + datetime.timedelta(hours=1))
        .sign(key, None)
    )
    return cert.public_bytes(serialization.Encoding.PEM).decode()


def keyed_reg(
    node_id: str, serial: int, key_byte: int, now: float, ttl: float = 3600
) -> NodeRegistration:
    """A registration of ``node_id`` with a certificate ``serial`` and a key made of
    ``key_byte`` (another byte: a re-key), valid ``ttl`` seconds from ``now``."""
    return NodeRegistration(
        node_id=node_id,
        spiffe_id=f"spiffe://x0tta6bl4.mesh/ns/mesh/sa/{node_id}",
        endpoint="10.0.0.1:7810",
        pq_svid_pem=_cert_pem(serial),
        pq_svid_not_after=now + ttl,
        ml_dsa_public_key=bytes([key_byte]) * ML_DSA_65_PUBLIC_KEY_SIZE,
        now=now,
    )


async def test_rekey_revokes_the_previous_certificate_atomically(backend: Backend) -> None:
    store, other = await backend.open(), await backend.open()
    now = time.time()
    start = await store.revision()
    await store.register_node(keyed_reg("alpha", 0x11, 1, now), NET)
    await store.register_node(keyed_reg("alpha", 0x12, 1, now + 1), NET)  # renewal: same key
    assert (await store.snapshot()).revoked == ()
    await store.register_node(keyed_reg("alpha", 0x13, 2, now + 2), NET)  # re-key
    expected = Revocation(0x12, "alpha", now + 1 + 3600)
    # Written with the change, and shared by every replica of the backend.
    assert (await other.snapshot()).revoked == (expected,)
    events = await asyncio.wait_for(_collect(other, start, 4), WAIT)
    assert [e.kind for e in events] == [
        EventKind.NODE_PUT,
        EventKind.NODE_PUT,
        EventKind.NODE_REVOKED,
        EventKind.NODE_PUT,
    ]
    assert events[2].revocation == expected
    assert events[2].node_id == "alpha"
    assert events[3].node is not None
    assert events[3].node.pq_svid_serial == 0x13
    assert json.loads(json.dumps(events[2].to_json()))["revocation"] == {
        "serial": "12",
        "node_id": "alpha",
        "not_after": now + 1 + 3600,
    }


async def test_delete_revokes_the_current_certificate_and_expiry_does_not(store: Store) -> None:
    now = time.time()
    await store.register_node(keyed_reg("gone", 0xA1, 1, now), NET)
    await store.register_node(keyed_reg("quiet", 0xB1, 2, now - 100), NET)
    assert await store.delete_node("gone") is True
    assert await store.expire_nodes(now - 50) == ["quiet"]
    assert (await store.snapshot()).revoked == (Revocation(0xA1, "gone", now + 3600),)


async def test_a_flood_of_rotations_keeps_the_revocations_bounded(store: Store) -> None:
    now = time.time()
    for i in range(3 * MAX_REVOCATIONS_PER_NODE):
        await store.register_node(keyed_reg("busy", 0x100 + i, i % 2, now + i), NET)
    # A revocation whose certificate has expired is pruned at the next write.
    await store.register_node(keyed_reg("brief", 0x900, 1, now - 100, ttl=101), NET)
    await store.register_node(keyed_reg("brief", 0x901, 2, now), NET)
    await asyncio.sleep(max(0.0, now + 1.5 - time.time()))
    await store.register_node(keyed_reg("other", 0x950, 1, now), NET)
    await store.register_node(keyed_reg("other", 0x951, 2, now), NET)
    revoked = (await store.snapshot()).revoked
    busy = [r for r in revoked if r.node_id == "busy"]
    assert len(busy) == MAX_REVOCATIONS_PER_NODE
    # the newest ones are kept: every re-key revoked the previous serial
    last = 0x100 + 3 * MAX_REVOCATIONS_PER_NODE - 2
    assert {r.serial for r in busy} == set(range(last - MAX_REVOCATIONS_PER_NODE + 1, last + 1))
    assert [r.serial for r in revoked if r.node_id != "busy"] == [0x950]


# --------------------------------------------------------------------------- replay guard


async def test_replay_guard_records_each_nonce_once(backend: Backend) -> None:
    first, second = await backend.open(), await backend.open()
    expires = time.time() + 300
    nonce = os.urandom(32)
    assert await first.replay_guard(nonce, expires) is True
    assert await first.replay_guard(nonce, expires) is False
    assert await second.replay_guard(nonce, expires) is False  # across replicas
    assert await second.replay_guard(os.urandom(32), expires) is True
    with pytest.raises(ValueError, match="nonce"):
        await first.replay_guard(b"short", expires)


async def test_replay_guard_purges_expired_nonces(store: Store) -> None:
    nonce = os.urandom(16)
    assert await store.replay_guard(nonce, time.time() + 1) is True
    deadline = time.monotonic() + WAIT
    while not await store.replay_guard(nonce, time.time() + 1):
        assert time.monotonic() < deadline, "expired nonce was never purged"
        await asyncio.sleep(0.2)


# --------------------------------------------------------------------------- leader election


async def test_leader_election_is_mutually_exclusive(backend: Backend) -> None:
    a, b = await backend.open(), await backend.open()
    assert await a.try_acquire_leader("expirer", "replica-a", 10) is True
    assert await b.try_acquire_leader("expirer", "replica-b", 10) is False
    assert await a.try_acquire_leader("expirer", "replica-a", 10) is True  # renewal
    assert await b.try_acquire_leader("other-job", "replica-b", 10) is True
    await b.release_leader("expirer", "replica-b")  # not the holder: no effect
    assert await b.try_acquire_leader("expirer", "replica-b", 10) is False
    await a.release_leader("expirer", "replica-a")
    assert await b.try_acquire_leader("expirer", "replica-b", 10) is True
    assert await a.try_acquire_leader("expirer", "replica-a", 10) is False
    with pytest.raises(ValueError, match="leader name"):
        await a.try_acquire_leader("Bad Name", "replica-a", 10)


def _count_leader_attempts(store: Store) -> list[bool]:
    """Record the answer of every ``try_acquire_leader`` the store is asked (a spy on the real
    method: the store still decides)."""
    answers: list[bool] = []
    real = store.try_acquire_leader

    async def counted(name: str, identity: str, ttl: float) -> bool:
        answer = await real(name, identity, ttl)
        answers.append(answer)
        return answer

    store.try_acquire_leader = counted  # type: ignore[method-assign]
    return answers


async def _until(condition: Callable[[], bool]) -> None:
    """Wait until ``condition()`` holds (checked every 10 ms; :data:`WAIT` is a hang guard)."""
    deadline = time.monotonic() + WAIT
    while not condition():
        assert time.monotonic() < deadline, "the condition never held"
        await asyncio.sleep(0.01)


async def test_leader_context_hands_over_on_exit(backend: Backend) -> None:
    a, b = await backend.open(), await backend.open()
    a_answers, b_answers = _count_leader_attempts(a), _count_leader_attempts(b)
    b_entered = asyncio.Event()

    async def second() -> None:
        async with b.leader("expirer", "replica-b", 3) as leadership:
            assert not leadership.lost.is_set()
            b_entered.set()

    async with a.leader("expirer", "replica-a", 3) as leadership:
        contender = asyncio.create_task(second())
        # b has tried twice (at once and one period later) and a has renewed once.
        await _until(lambda: len(b_answers) >= 2 and len(a_answers) >= 2)
        assert b_answers[:2] == [False, False]
        assert a_answers[:2] == [True, True]
        assert not b_entered.is_set()
        assert not leadership.lost.is_set()
        assert await b.try_acquire_leader("expirer", "replica-b", 3) is False
    await asyncio.wait_for(contender, WAIT)
    assert b_entered.is_set()


# --------------------------------------------------------------------------- blobs, health


async def test_blobs_put_if_absent_and_compare_and_replace(store: Store) -> None:
    assert await store.get_blob("ca/current") is None
    assert await store.put_blob_if_absent("ca/current", b"first") is True
    assert await store.put_blob_if_absent("ca/current", b"second") is False
    assert await store.get_blob("ca/current") == b"first"
    assert await store.replace_blob("ca/current", b"wrong", b"third") is False
    assert await store.replace_blob("ca/current", b"first", b"third") is True
    assert await store.get_blob("ca/current") == b"third"
    assert await store.replace_blob("ca/missing", b"", b"x") is False
    with pytest.raises(ValueError, match="blob key"):
        await store.get_blob("../etc/passwd")
    with pytest.raises(ValueError, match="at most"):
        await store.put_blob_if_absent("big", b"x" * (1024 * 1024 + 1))


async def test_ping_and_close(backend: Backend) -> None:
    store = await backend.open()
    assert await store.ping() is True
    await store.close()
    assert await store.ping() is False
    await store.close()  # idempotent


async def test_bad_arguments_change_nothing(store: Store) -> None:
    with pytest.raises(TypeError, match="IPv4Network"):
        await store.register_node(reg("a"), "100.96.0.0/16")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="too small"):
        await store.register_node(reg("a"), IPv4Network("100.96.0.0/31"))
    with pytest.raises(TypeError, match="NodeStatus"):
        await store.touch_node("a", 1.0, {"links": []})  # type: ignore[arg-type]
    assert await store.list_nodes() == []
    assert await store.revision() >= 0


# --------------------------------------------------------------------------- schema versions


# --------------------------------------------------------------------------- integrity


async def _damage(store: Store, key: str, raw: bytes = b'{"node_id": ') -> None:
    """Write ``raw`` where the record ``key`` (``nodes/<id>`` or ``policy``) lives, behind the
    store's back (as a disk fault or a foreign writer would)."""
    if isinstance(store, SqliteStore):
        with contextlib.closing(sqlite3.connect(store.path)) as conn, conn:
            if key == "policy":
                conn.execute(
                    "INSERT INTO policy (id, revision, document) VALUES (1, 1, ?) "
                    "ON CONFLICT (id) DO UPDATE SET document = excluded.document",
                    (raw.decode(),),
                )
            else:
                conn.execute(
                    "UPDATE nodes SET record = ? WHERE node_id = ?",
                    (raw.decode(), key.removeprefix("nodes/")),
                )
    else:
        assert isinstance(store, EtcdStore)
        await store._txn([], [_put(store.prefix + key, raw)])


async def test_a_damaged_node_record_is_a_store_fault_naming_it(store: Store) -> None:
    """Issue 13 row 8: a record that does not decode raises StoreCorruptError (a StoreError
    naming the node), is remembered in ``faults``, and spares every other record."""
    await store.register_node(reg("good"), NET)
    await store.register_node(reg("bad"), NET)
    await _damage(store, "nodes/bad")
    for read in (store.list_nodes(), store.snapshot(), store.get_node("bad")):
        with pytest.raises(StoreCorruptError, match="node 'bad'") as caught:
            await read
        assert isinstance(caught.value, StoreError)
        assert caught.value.where == "node 'bad'"
    assert set(store.faults) == {"node 'bad'"}
    assert "invalid JSON" in store.faults["node 'bad'"]
    assert (await store.get_node("good")) is not None
    with pytest.raises(StoreCorruptError):
        await store.touch_node("bad", 2000.0)
    with pytest.raises(StoreCorruptError):
        await store.register_node(reg("bad"), NET)
    # A fresh store object finds it by scanning, without an error.
    assert [n.node_id for n in await store.scan()] == ["good"]
    assert set(await store.recheck_faults()) == {"node 'bad'"}
    # Deleting the node (the operator's way out) works and forgets the fault; the address
    # the damaged record held is free again.
    assert await store.delete_node("bad")
    assert store.faults == {}
    assert [n.node_id for n in await store.list_nodes()] == ["good"]
    assert await store.verify() == []
    assert (await store.register_node(reg("bad"), NET)).node_id == "bad"


async def test_a_repaired_record_is_forgotten_on_recheck(store: Store) -> None:
    record = await store.register_node(reg("n1"), NET)
    await _damage(store, "nodes/n1", b"[]")
    with pytest.raises(StoreCorruptError, match="must be a JSON object"):
        await store.get_node("n1")
    await _damage(store, "nodes/n1", dumps(record.to_json()))
    assert await store.recheck_faults() == {}


async def test_a_damaged_policy_is_a_store_fault(store: Store) -> None:
    await store.put_policy(Policy(rules=(PolicyRule("*", "*", "link", True),)), None)
    await _damage(store, "policy", b'{"rules": 5}')
    with pytest.raises(StoreCorruptError, match="policy"):
        await store.get_policy()
    assert list(store.faults) == ["policy"]
    await store.put_policy(Policy(), None)  # writing a whole one repairs it
    assert store.faults == {}
    assert (await store.get_policy()).policy == Policy()


async def test_create_false_refuses_an_empty_store_and_writes_nothing(backend: Backend) -> None:
    first = backend.make()
    first.create = False
    with pytest.raises(StoreMissingError):
        await first.open()
    await first.close()
    if backend.kind == "sqlite":
        assert isinstance(first, SqliteStore)
        assert not first.path.exists()
        first.path.parent.mkdir(parents=True, exist_ok=True)
        first.path.write_bytes(b"")
        with pytest.raises(StoreMissingError, match=r"is empty \(0 bytes\)"):
            await first.open()
        assert first.path.stat().st_size == 0
    # Once created (create=True), a create=False store opens it.
    store = await backend.open()
    await store.register_node(reg("n1"), NET)
    again = backend.make()
    again.create = False
    await again.open()
    assert [n.node_id for n in await again.list_nodes()] == ["n1"]
    await again.close()


async def test_sqlite_refuses_a_damaged_file_at_open(tmp_path: Path) -> None:
    """Issue 13 row 9: a random 4 KiB page written into the database, or a file that is not a
    SQLite database at all, fails the open with StoreCorruptError naming the file."""
    path = tmp_path / "controller.db"
    async with SqliteStore(path) as store:
        for index in range(200):
            await store.register_node(reg(f"n{index}"), NET)
    with sqlite3.connect(path) as conn:
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    conn.close()
    pages = path.stat().st_size // 4096
    assert pages > 4
    with open(path, "r+b") as raw:
        raw.seek(4096 * (pages // 2))
        raw.write(os.urandom(4096))
    with pytest.raises(StoreCorruptError, match="integrity check failed") as caught:
        await SqliteStore(path).open()
    assert caught.value.where == str(path)
    path.write_bytes(os.urandom(8192))
    with pytest.raises(StoreCorruptError, match="file is not a database"):
        await SqliteStore(path).open()


@pytest.mark.etcd
async def test_etcd_refuses_data_without_a_schema(etcd_single: EtcdCluster) -> None:
    prefix = f"/x0-test-{uuid.uuid4().hex}/"
    async with EtcdStore(etcd_single.endpoints, prefix=prefix) as store:
        assert isinstance(store, EtcdStore)
        await store.register_node(reg("n1"), NET)
        await store._txn([], [_delete(prefix + "meta/schema")])
    with pytest.raises(StoreCorruptError, match="no meta/schema key"):
        await EtcdStore(etcd_single.endpoints, prefix=prefix).open()


@pytest.mark.etcd
async def test_etcd_open_reads_a_schema_another_replica_creates_meanwhile(
    etcd_single: EtcdCluster,
) -> None:
    """Two replicas opening one empty prefix at once: this one reads no schema key, the other
    creates it, then this one's check for keys without a schema finds only that key. It is
    the other replica's schema, not a corrupt prefix (a fresh-clone CI run hit this race in
    test_two_owner_processes_racing_for_new_node_ids[etcd])."""
    prefix = f"/x0-test-{uuid.uuid4().hex}/"

    class Late(EtcdStore):
        raced = False

        async def _get(self, key: bytes) -> Any:
            got = await super()._get(key)
            if not self.raced:
                self.raced = True
                async with EtcdStore(etcd_single.endpoints, prefix=prefix):
                    pass  # the other replica creates the schema now
            return got

    late = Late(etcd_single.endpoints, prefix=prefix)
    async with late as store:
        assert late.raced
        await store.register_node(reg("n1"), NET)
        assert [n.node_id for n in await store.list_nodes()] == ["n1"]


async def test_sqlite_open_waits_for_another_process_holding_the_write_lock(
    tmp_path: Path,
) -> None:
    """Switching to WAL while another process holds the write lock: SQLite answers "database
    is locked" at once (no busy handler); the store waits for the lock instead of failing."""
    path = tmp_path / "locked.db"
    with contextlib.closing(sqlite3.connect(path, isolation_level=None)) as conn:
        conn.execute("CREATE TABLE t (x)")
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sqlite3, sys, time\n"
            "c = sqlite3.connect(sys.argv[1], isolation_level=None)\n"
            "c.execute('BEGIN IMMEDIATE'); c.execute('INSERT INTO t VALUES (1)')\n"
            "print('held', flush=True); time.sleep(0.5); c.execute('COMMIT')\n",
            str(path),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout is not None
        assert holder.stdout.readline().strip() == "held"
        async with SqliteStore(str(path)) as store:
            assert await store.list_nodes() == []
    finally:
        holder.wait(timeout=30)
        assert holder.stdout is not None
        holder.stdout.close()
    assert holder.returncode == 0


async def test_sqlite_refuses_a_newer_schema(tmp_path: Path) -> None:
    path = tmp_path / "new.db"
    async with SqliteStore(path) as store:
        await store.register_node(reg("a"), NET)
    with sqlite3.connect(path) as conn:
        conn.execute("PRAGMA user_version = 99")
    conn.close()
    with pytest.raises(SchemaError, match="99"):
        await SqliteStore(path).open()


@pytest.mark.etcd
async def test_etcd_refuses_a_newer_schema(etcd_single: EtcdCluster) -> None:
    prefix = f"/x0-test-{uuid.uuid4().hex}/"
    async with EtcdStore(etcd_single.endpoints, prefix=prefix) as store:
        assert isinstance(store, EtcdStore)
        await store._txn([], [_put(prefix + "meta/schema", b"99")])
    with pytest.raises(SchemaError, match="99"):
        async with EtcdStore(etcd_single.endpoints, prefix=prefix):
            pass


def _put(key: str, value: bytes) -> Any:
    from aetcd import rpc

    return rpc.RequestOp(request_put=rpc.PutRequest(key=key.encode(), value=value))


def _delete(key: str) -> Any:
    from aetcd import rpc

    return rpc.RequestOp(request_delete_range=rpc.DeleteRangeRequest(key=key.encode()))


@pytest.mark.etcd
async def test_etcd_node_lease_expiry_releases_the_address(etcd_single: EtcdCluster) -> None:
    """With every controller gone, etcd itself expires a silent node and frees its address."""
    prefix = f"/x0-test-{uuid.uuid4().hex}/"
    tiny = IPv4Network("100.96.0.0/30")
    async with EtcdStore(etcd_single.endpoints, prefix=prefix, node_ttl=2) as store:
        start = await store.revision()
        await store.register_node(reg("silent"), tiny)
        await store.register_node(reg("other"), tiny)
        deleted = asyncio.create_task(_first_delete(store, start))
        assert await asyncio.wait_for(deleted, WAIT) in {"silent", "other"}
        assert await store.verify() == []
        assert len(await store.list_nodes()) <= 1


async def _first_delete(store: Store, start: int) -> str | None:
    async for event in store.watch(start):
        if event.kind is EventKind.NODE_DELETED:
            return event.node_id
    return None


@pytest.mark.etcd
async def test_etcd_unreachable_raises_store_unavailable(tmp_path: Path) -> None:
    from tests.integration.etcd_cluster import _free_ports

    (port,) = _free_ports(1)
    store = EtcdStore([("127.0.0.1", port)], timeout=1.0)
    with pytest.raises(StoreUnavailableError, match=str(port)):
        await store.open()
    assert await store.ping() is False
    await store.close()


@pytest.mark.etcd
async def test_etcd_watch_continues_across_a_leader_kill(tmp_path: Path) -> None:
    if etcd_binary() is None:
        pytest.skip(ETCD_MISSING_REASON)
    with EtcdCluster(tmp_path / "etcd", size=3) as cluster:
        leader = cluster.leader()
        # The watcher talks to the leader first, so the kill cuts its stream.
        first = cluster.members.index(leader)
        order = cluster.endpoints[first:] + cluster.endpoints[:first]
        prefix = f"/x0-test-{uuid.uuid4().hex}/"
        async with (
            EtcdStore(order, prefix=prefix, timeout=2.0) as watching,
            EtcdStore(order[::-1], prefix=prefix, timeout=2.0) as writing,
        ):
            start = await watching.revision()
            watcher = asyncio.create_task(_collect(watching, start, 2))
            await asyncio.sleep(0)
            await writing.register_node(reg("before"), NET)
            cluster.kill(leader)
            await writing.register_node(reg("after"), NET)
            events = await asyncio.wait_for(watcher, WAIT)
            assert [e.node_id for e in events] == ["before", "after"]
            assert watching.failovers >= 1


async def test_sqlite_watch_reports_compacted_history(tmp_path: Path) -> None:
    async with SqliteStore(tmp_path / "c.db", event_retention=10) as store:
        for index in range(130):
            await store.register_node(reg(f"n{index}"), NET)
        with pytest.raises(RevisionCompactedError, match="snapshot"):
            await anext(aiter(store.watch(0)))
        snap = await store.snapshot()
        await store.delete_node("n0")
        (event,) = await asyncio.wait_for(_collect(store, snap.revision, 1), WAIT)
        assert (event.kind, event.node_id) == (EventKind.NODE_DELETED, "n0")


# --------------------------------------------------------------------------- store URLs


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("sqlite:///var/lib/x0/controller.db", SqliteUrl(Path("/var/lib/x0/controller.db"))),
        ("sqlite:////var/lib/x0/controller.db", SqliteUrl(Path("/var/lib/x0/controller.db"))),
        ("sqlite://controller.db", SqliteUrl(Path("/state/controller.db"))),
        ("etcd://127.0.0.1:2379", EtcdUrl((("127.0.0.1", 2379),))),
        (
            "etcd://x0tta6bl4-etcd-0.x0tta6bl4-etcd:2379,[fd00::1]:2379/",
            EtcdUrl((("x0tta6bl4-etcd-0.x0tta6bl4-etcd", 2379), ("[fd00::1]", 2379))),
        ),
    ],
)
def test_store_urls_parse(url: str, expected: object) -> None:
    assert parse_store_url(url, state_dir="/state") == expected


@pytest.mark.parametrize(
    ("url", "reason"),
    [
        ("", "empty"),
        ("controller.db", "no scheme"),
        ("postgres://db:5432/x", "not supported"),
        ("sqlite://", "must name a file"),
        ("sqlite:///var/lib/", "must name a file"),
        ("sqlite:///x.db?mode=ro", "query"),
        ("etcd://", "no etcd endpoint"),
        ("etcd://host", "HOST:PORT"),
        ("etcd://host:0", "invalid port"),
        ("etcd://host:99999", "invalid port"),
        ("etcd://host:http", "invalid port"),
        ("etcd://user@host:2379", "no user or path"),
        ("etcd://host:2379/prefix", "no user or path"),
        ("etcd://ho_st:2379", "invalid host"),
        ("etcd://[zz::1]:2379", "IPv6"),
        ("etcd://a:1,a:1", "twice"),
        ("etcd://a:1,", "HOST:PORT"),
        ("etcd://a b:1", "whitespace"),
    ],
)
def test_invalid_store_urls_are_rejected(url: str, reason: str) -> None:
    with pytest.raises(InvalidStoreUrlError, match=reason):
        parse_store_url(url, state_dir="/state")
    with pytest.raises(ValueError, match=reason):
        open_store(url, state_dir="/state")


def test_open_store_builds_the_named_backend(tmp_path: Path) -> None:
    sqlite_store = open_store(default_store_url(tmp_path), state_dir=tmp_path)
    assert isinstance(sqlite_store, SqliteStore)
    assert sqlite_store.path == tmp_path / "controller.db"
    etcd_store = open_store("etcd://10.0.0.1:2379,10.0.0.2:2379", state_dir=tmp_path)
    assert isinstance(etcd_store, EtcdStore)
    assert etcd_store.endpoints == (("10.0.0.1", 2379), ("10.0.0.2", 2379))
    assert etcd_store.prefix == "/x0tta6bl4/"


# --------------------------------------------------------------------------- records


def test_node_record_json_round_trip_and_strictness() -> None:
    record = NodeRecord.from_registration(reg("alpha"), IPv4Address("100.96.0.7"))
    record = replace(record, status=NodeStatus(links=(LinkStatus("beta", True, 2.0),)))
    data = loads(dumps(record.to_json()))
    assert NodeRecord.from_json(data) == record
    assert isinstance(data, dict)
    with pytest.raises(ModelError, match="unknown field"):
        NodeRecord.from_json({**data, "admin": True})
    with pytest.raises(ModelError, match="missing"):
        NodeRecord.from_json({k: v for k, v in data.items() if k != "endpoint"})
    bad_values: list[tuple[str, object, str]] = [
        ("node_id", "a/b", "node_id"),
        ("spiffe_id", "https://x", "spiffe_id"),
        ("endpoint", "10.0.0.1", "endpoint"),
        ("endpoint", "10.0.0.1:70000", "endpoint"),
        ("overlay_ip", "fd00::1", "overlay_ip"),
        ("last_seen", True, "last_seen"),
        ("last_seen", float("nan"), "last_seen"),
        ("ml_dsa_public_key", "!!!", "base64"),
        ("ml_dsa_public_key", base64.b64encode(b"short").decode(), "1952"),
        ("pq_svid_pem", "not a pem", "pq_svid_pem"),
        ("status", {"links": [{"peer": "b", "up": 1, "rtt_ms": None}]}, "up"),
        ("status", {"links": [{"peer": "b", "up": True, "rtt_ms": -1}]}, "rtt_ms"),
    ]
    for name, value, reason in bad_values:
        with pytest.raises(ModelError, match=reason):
            NodeRecord.from_json({**data, name: value})
    with pytest.raises(ModelError, match="JSON object"):
        NodeRecord.from_json([])
    with pytest.raises(ModelError, match="invalid JSON"):
        loads(b"{")


def test_policy_json_round_trip_and_strictness() -> None:
    data = loads(dumps(POLICY.to_json()))
    assert data == {
        "rules": [
            {
                "from": "spiffe://x0tta6bl4.mesh/ns/mesh/*",
                "to": "*",
                "action": "link",
                "allow": True,
            },
            {
                "from": "*",
                "to": "spiffe://x0tta6bl4.mesh/ns/db/sa/pg",
                "action": "talk",
                "allow": False,
            },
        ]
    }
    assert Policy.from_json(data) == POLICY
    rule = {"from": "*", "to": "*", "action": "link", "allow": True}
    for bad, reason in [
        ({**rule, "priority": 1}, "unknown field"),
        ({**rule, "action": "route"}, "action"),
        ({**rule, "allow": "yes"}, "allow"),
        ({**rule, "from": "x0tta6bl4.mesh/*"}, "rule from"),
        ({**rule, "to": ""}, "rule to"),
    ]:
        with pytest.raises(ModelError, match=reason):
            Policy.from_json({"rules": [bad]})
    with pytest.raises(ModelError, match="array"):
        Policy.from_json({"rules": {}})


# --------------------------------------------------------------------------- SQLite crash safety


async def test_sqlite_survives_kill_9_during_writes(tmp_path: Path) -> None:
    path = tmp_path / "crash.db"
    writer = subprocess.Popen(
        [sys.executable, "-m", "tests.integration.test_store_contract", "sqlite-writer", str(path)],
        cwd=REPO,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert writer.stdout is not None
    committed: list[str] = []
    try:
        for line in writer.stdout:
            committed.append(line.strip())
            if len(committed) == 300:
                writer.send_signal(signal.SIGKILL)
                break
    finally:
        writer.kill()
        writer.wait()
        writer.stdout.close()
    assert writer.returncode == -signal.SIGKILL
    assert len(committed) == 300, "the writer stopped before it was killed"
    async with SqliteStore(path) as store:
        assert await store.verify() == []
        nodes = {n.node_id: n for n in await store.list_nodes()}
        assert set(committed) <= set(nodes)  # every acknowledged write survived
        assert len({n.overlay_ip for n in nodes.values()}) == len(nodes)
        revision = await store.revision()
        assert revision >= len(nodes)
        # The store keeps working after the crash.
        await store.register_node(reg("after-crash"), NET)
        assert await store.revision() == revision + 1


async def _sqlite_writer(path: str) -> None:
    async with SqliteStore(path) as store:
        index = 0
        while True:
            node_id = f"crash-{index}"
            await store.register_node(reg(node_id), NET)
            if index % 3 == 0:
                await store.touch_node(node_id, 2000.0)
            if index % 7 == 0:
                await store.put_policy(POLICY, None)
            print(node_id, flush=True)
            index += 1


# --------------------------------------------------------------------------- etcd HA

HA_NODES = 1000
HA_WORKERS = 3


class _Worker:
    """One controller-replica process of the HA test and what it printed."""

    def __init__(self, url: str, prefix: str, index: int, *, gated: bool) -> None:
        self.process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "tests.integration.test_store_contract",
                "ha-worker",
                url,
                prefix,
                str(index),
            ],
            cwd=REPO,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        self.results: list[dict[str, Any]] = []
        self.failovers: int | None = None
        self.first_quarter_done = threading.Event()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        if not gated:
            self.go()

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            message = json.loads(line)
            if message.get("phase") == 1:
                self.first_quarter_done.set()
            elif "failovers" in message:
                self.failovers = message["failovers"]
            else:
                self.results.append(message)

    def go(self) -> None:
        assert self.process.stdin is not None
        self.process.stdin.write("go\n")
        self.process.stdin.flush()

    def finish(self, timeout: float | None) -> int:
        try:
            return self.process.wait(timeout)
        finally:
            self.process.kill()
            self.process.wait()
            self._reader.join(10)
            for pipe in (self.process.stdin, self.process.stdout):
                if pipe is not None:
                    pipe.close()


@pytest.mark.etcd
@pytest.mark.slow
def test_etcd_ha_registrations_survive_leader_and_replica_kill(tmp_path: Path) -> None:
    if etcd_binary() is None:
        pytest.skip(ETCD_MISSING_REASON)
    prefix = f"/x0-ha-{uuid.uuid4().hex}/"
    with EtcdCluster(tmp_path / "etcd", size=3) as cluster:
        # Each replica lists the endpoints in a different order.
        urls = [cluster.url(cluster.members[i:] + cluster.members[:i]) for i in range(3)]
        workers = [_Worker(urls[i], prefix, i, gated=True) for i in range(HA_WORKERS)]
        try:
            for worker in workers:
                assert worker.first_quarter_done.wait(60), "a replica did not get started"
            # Everyone resumes; the etcd leader and one replica die under their feet.
            for worker in workers:
                worker.go()
            leader = cluster.leader()
            cluster.kill(leader)
            workers[0].process.send_signal(signal.SIGKILL)
            killed = workers[0]
            assert killed.finish(60) == -signal.SIGKILL
            # The replica is replaced and redoes all of its work (registration is an upsert).
            workers[0] = _Worker(urls[0], prefix, 0, gated=False)
            for worker in workers:
                assert worker.finish(120) == 0
        finally:
            for worker in workers:
                with contextlib.suppress(subprocess.TimeoutExpired):
                    worker.finish(0)
        cluster.restart(leader)

        results = [message for worker in workers for message in worker.results]
        assert [m for m in results if "error" in m] == []
        assert len(results) == HA_NODES
        assigned = {m["node_id"]: m["ip"] for m in results}
        assert len(assigned) == HA_NODES
        assert len(set(assigned.values())) == HA_NODES, "an overlay IP was handed out twice"
        # What the killed replica had registered kept its address when redone.
        assert killed.results
        assert all(assigned[m["node_id"]] == m["ip"] for m in killed.results)
        failovers = [worker.failovers for worker in workers]
        assert None not in failovers
        # The replica whose first endpoint was the killed leader had to move elsewhere.
        assert sum(f for f in failovers if f is not None) >= 1

        async def check() -> tuple[dict[str, str], list[str]]:
            # Read through the restarted member alone: it caught up with the cluster.
            alone = [cluster.endpoints[cluster.members.index(leader)]]
            async with EtcdStore(alone, prefix=prefix) as store:
                nodes = {n.node_id: str(n.overlay_ip) for n in await store.list_nodes()}
                return nodes, await store.verify()

        stored, problems = asyncio.run(check())
        assert problems == []
        assert stored == assigned, "a registration was lost or its address changed"
        retries = sum(m["retries"] for m in results)
        print(
            f"HA: {HA_NODES} registrations, {len(killed.results)} by the killed replica, "
            f"failovers per replica {failovers}, {retries} caller retries after "
            "StoreUnavailableError"
        )


async def _ha_worker(url: str, prefix: str, index: int) -> None:
    parsed = parse_store_url(url, state_dir="/nonexistent")
    assert isinstance(parsed, EtcdUrl)
    node_ids = [f"ha-{n}" for n in range(index, HA_NODES, HA_WORKERS)]
    quarter = len(node_ids) // 4
    gate = asyncio.Semaphore(16)

    async with EtcdStore(parsed.endpoints, prefix=prefix, timeout=2.0) as store:

        async def register(node_id: str) -> None:
            async with gate:
                retries = 0
                while True:
                    try:
                        record = await store.register_node(reg(node_id), NET)
                    except StoreUnavailableError:
                        retries += 1
                        if retries > 50:
                            print(json.dumps({"node_id": node_id, "error": "gave up"}), flush=True)
                            return
                        await asyncio.sleep(0.2)
                        continue
                    message = {"node_id": node_id, "ip": str(record.overlay_ip), "retries": retries}
                    print(json.dumps(message), flush=True)
                    return

        await asyncio.gather(*(register(n) for n in node_ids[:quarter]))
        print(json.dumps({"phase": 1}), flush=True)
        await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)
        await asyncio.gather(*(register(n) for n in node_ids[quarter:]))
        print(json.dumps({"failovers": store.failovers}), flush=True)


if __name__ == "__main__":
    command, *arguments = sys.argv[1:]
    if command == "sqlite-writer":
        asyncio.run(_sqlite_writer(arguments[0]))
    elif command == "race-worker":
        asyncio.run(_race_worker(*arguments))
    elif command == "ha-worker":
        asyncio.run(_ha_worker(arguments[0], arguments[1], int(arguments[2])))
    else:
        raise SystemExit(f"unknown command {command!r}")
