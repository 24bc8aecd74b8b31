"""HA: three controller processes on a three-member etcd cluster, under failures.

The etcd cluster speaks TLS only, client and peer ports, and requires client certificates
(as the chart's and ``up``'s do): the controllers reach it with ``etcds://`` and their client
certificate, and the test checks on the same members that a client without one is refused.

1000 registrations are spread across the controllers; part-way the etcd raft leader is
SIGKILLed, later one controller is SIGKILLed. Every registration must end in success, or in a
retryable answer (503 with Retry-After, or a dropped connection to the killed controller) after
which a retry elsewhere succeeds. At the end the store holds exactly the 1000 nodes, each with
the overlay address its last answer named, and no address twice.
"""

from __future__ import annotations

import asyncio
import itertools
import signal
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aetcd
import grpc
import httpx
import pytest

from tests.integration.controller_support import (
    ADMIN_TOKEN,
    CONTROLLER_ID,
    NODE_A,
    NODE_B,
    NODE_DEV,
    Identity,
    bearer,
    free_port,
    register_body,
    running_issuer,
    spawn_controller,
    wait_ready,
)
from tests.integration.etcd_cluster import ETCD_MISSING_REASON, EtcdCluster, etcd_binary
from x0tta6bl4.controller.ca import init_ca_dir
from x0tta6bl4.controller.store.etcd_tls import TlsEtcdClient
from x0tta6bl4.crypto.suite import SigningKey
from x0tta6bl4.tls.client import tls_client

pytestmark = [
    pytest.mark.slow,
    pytest.mark.etcd,
    pytest.mark.timeout(300),
    pytest.mark.skipif(etcd_binary() is None, reason=ETCD_MISSING_REASON),
]

REGISTRATIONS = 1000
CONCURRENCY = 24


@pytest.fixture
def identity(tmp_path: Path) -> Iterator[Identity]:
    with running_issuer(tmp_path / "id") as ident:
        yield ident


class Fleet:
    """Three controller processes on one etcd cluster."""

    def __init__(self, base: Path, cluster: EtcdCluster, identity: Identity) -> None:
        self.base = base
        ca_dir = base / "ca"
        init_ca_dir(ca_dir, trust_domain="x0tta6bl4.mesh")
        token_file = base / "admin-token"
        token_file.write_text(ADMIN_TOKEN)
        self.ports = [free_port() for _ in range(3)]
        self.tls_ports = [free_port() for _ in range(3)]
        self.identity = identity
        self.procs = []
        for index, port in enumerate(self.ports):
            self.procs.append(
                spawn_controller(
                    [
                        "--listen",
                        f"127.0.0.1:{port}",
                        "--tls-listen",
                        f"127.0.0.1:{self.tls_ports[index]}",
                        "--store",
                        cluster.url(),
                        "--etcd-ca-file",
                        str(cluster.client_tls.ca_file),
                        "--etcd-cert-file",
                        str(cluster.client_tls.cert_file),
                        "--etcd-key-file",
                        str(cluster.client_tls.key_file),
                        "--state-dir",
                        str(base / f"c{index}"),
                        "--ca-cert-file",
                        str(ca_dir / "ca.crt"),
                        "--ca-key-file",
                        str(ca_dir / "ca.key"),
                        "--admin-token-file",
                        str(token_file),
                        # 1000 node IDs from three SPIFFE IDs: the shared-identity mode.
                        # This test is about the store; the binding of node IDs to SPIFFE
                        # IDs is test_controller_api's.
                        "--node-id-mapping",
                        "none",
                        "--node-ttl",
                        "3600",
                    ],
                    env={
                        "SPIFFE_ENDPOINT_SOCKET": f"unix://{identity.issuer.socket_path}",
                        "X0_LOG_FORMAT": "json",
                    },
                    log=base / f"controller-{index}.log",
                    identity=identity,
                )
            )
        for port, proc in zip(self.ports, self.procs, strict=True):
            wait_ready(f"http://127.0.0.1:{port}", proc, timeout=60)
        self.alive = [True, True, True]

    def url(self, index: int) -> str:
        return f"http://127.0.0.1:{self.ports[index]}"

    def api(self, index: int) -> str:
        return f"https://127.0.0.1:{self.tls_ports[index]}"

    def kill(self, index: int) -> None:
        self.procs[index].send_signal(signal.SIGKILL)
        self.procs[index].wait()
        self.alive[index] = False

    def stop(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.terminate()
        for proc in self.procs:
            try:
                proc.wait(timeout=20)
            except Exception:
                proc.kill()
                proc.wait()

    def logs(self) -> str:
        return "\n".join(
            f"--- controller {i}\n" + (self.base / f"controller-{i}.log").read_text()[-3000:]
            for i in range(3)
        )


async def _register_with_retries(
    clients: dict[tuple[str, int], httpx.AsyncClient],
    fleet: Fleet,
    index: int,
    key: SigningKey,
    tokens: dict[str, str],
    stats: Counter[str],
) -> dict[str, Any]:
    sid = list(tokens)[index % len(tokens)]
    node_id = f"ha-node-{index:04d}"
    for attempt in itertools.count():
        target = (index + attempt) % 3
        if not fleet.alive[target]:
            continue
        body = register_body(key, spiffe_id=sid, node_id=node_id)  # a fresh nonce each try
        try:
            # Mutual TLS with the node identity's X.509-SVID, as nodes register.
            r = await clients[sid, target].post("/api/v1/nodes/register", json=body)
        except httpx.TransportError:
            stats["connection_error"] += 1
            await asyncio.sleep(0.05)
            continue
        if r.status_code == 200:
            stats["ok_after_retry" if attempt else "ok"] += 1
            answer: dict[str, Any] = r.json()
            return answer
        assert r.status_code == 503, (node_id, r.status_code, r.text)
        assert "retry-after" in r.headers
        stats[f"503_{r.json()['error']}"] += 1
        await asyncio.sleep(min(float(r.headers["retry-after"]), 0.2))
        if attempt > 200:
            raise AssertionError(f"{node_id}: still failing after {attempt} attempts")
    raise AssertionError("unreachable")


async def _run(fleet: Fleet, cluster: EtcdCluster, tokens: dict[str, str]) -> dict[str, Any]:
    key = SigningKey.generate()
    stats: Counter[str] = Counter()
    results: dict[int, dict[str, Any]] = {}
    queue: asyncio.Queue[int] = asyncio.Queue()
    for i in range(REGISTRATIONS):
        queue.put_nowait(i)
    killed_etcd = asyncio.Event()
    killed_controller = asyncio.Event()

    async def worker(clients: dict[tuple[str, int], httpx.AsyncClient]) -> None:
        while True:
            try:
                index = queue.get_nowait()
            except asyncio.QueueEmpty:
                return
            results[index] = await _register_with_retries(clients, fleet, index, key, tokens, stats)
            done = len(results)
            if done >= REGISTRATIONS * 0.3 and not killed_etcd.is_set():
                killed_etcd.set()
                leader = await asyncio.to_thread(cluster.leader)
                await asyncio.to_thread(cluster.kill, leader)
            if done >= REGISTRATIONS * 0.6 and not killed_controller.is_set():
                killed_controller.set()
                await asyncio.to_thread(fleet.kill, 0)

    clients = {
        (sid, target): tls_client(
            fleet.api(target), fleet.identity.credentials(sid), CONTROLLER_ID, timeout=30
        )
        for sid in tokens
        for target in range(3)
    }
    try:
        await asyncio.gather(*(worker(clients) for _ in range(CONCURRENCY)))
    finally:
        for client in clients.values():
            await client.aclose()
    assert killed_etcd.is_set()
    assert killed_controller.is_set()
    return {"stats": stats, "results": results}


async def _clients_without_certificate(cluster: EtcdCluster) -> list[BaseException | None]:
    """Try a read on every member without a client certificate; the errors (None = served)."""
    ca = cluster.client_tls.ca_file.read_bytes()
    outcomes: list[BaseException | None] = []
    for host, port in cluster.endpoints:
        for client in (
            TlsEtcdClient(
                host=host,
                port=port,
                timeout=3,
                credentials=lambda: grpc.ssl_channel_credentials(root_certificates=ca),
            ),
            aetcd.Client(host=host, port=port, timeout=3),
        ):
            try:
                async with asyncio.timeout(10):
                    await client.connect()
                    await client.get(b"/x0tta6bl4/meta/schema")
                outcomes.append(None)
            except Exception as err:
                outcomes.append(err)
            finally:
                await client.close()
    return outcomes


async def _list(api: str, identity: Identity) -> httpx.Response:
    async with tls_client(api, identity.credentials(), CONTROLLER_ID, timeout=30) as client:
        return await client.get("/api/v1/nodes", headers=bearer(ADMIN_TOKEN))


def test_registrations_survive_etcd_leader_and_controller_loss(
    tmp_path: Path, identity: Identity
) -> None:
    tokens = {sid: identity.token(sid) for sid in (NODE_A, NODE_B, NODE_DEV)}
    with EtcdCluster(tmp_path / "etcd", size=3, tls=True) as cluster:
        assert cluster.url().startswith("etcds://")
        fleet = Fleet(tmp_path, cluster, identity)
        try:
            refusals = asyncio.run(_clients_without_certificate(cluster))
            outcome = asyncio.run(_run(fleet, cluster, tokens))
            survivor = next(i for i in range(3) if fleet.alive[i])
            listing = asyncio.run(_list(fleet.api(survivor), fleet.identity))
        except BaseException:
            print(fleet.logs())
            raise
        finally:
            fleet.stop()
    # Every member refuses a client without a certificate (TLS without one, or plain gRPC).
    assert len(refusals) == 2 * len(cluster.endpoints)
    assert all(err is not None for err in refusals), refusals
    stats = outcome["stats"]
    results: dict[int, dict[str, Any]] = outcome["results"]
    print(dict(stats))
    assert listing.status_code == 200
    nodes = {n["node_id"]: n for n in listing.json()["nodes"]}
    # No record lost, none invented.
    assert len(results) == REGISTRATIONS
    assert set(nodes) == {f"ha-node-{i:04d}" for i in range(REGISTRATIONS)}
    # Each node holds the address its (last) successful answer named; no address twice.
    for index, answer in results.items():
        assert nodes[answer["node_id"]]["overlay_ip"] == answer["overlay_ip"], index
    ips = [n["overlay_ip"] for n in nodes.values()]
    assert len(set(ips)) == len(ips) == REGISTRATIONS
    assert stats["ok"] + stats["ok_after_retry"] == REGISTRATIONS
