"""``x0tta6bl4 up`` end to end: real SPIRE or issuer, controller(s), etcd and node processes.

Each test runs ``up`` as a subprocess (as a user would) and then checks what it left behind
by scanning ``/proc`` for processes carrying the run's marker variable and the run's TMPDIR
for sockets and temporary state.
"""

from __future__ import annotations

import asyncio
import json
import shutil
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx
import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec

from tests.e2e.up_support import RunningUp, assert_clean, run_up
from tests.integration.identity_providers import require_spire_here
from x0tta6bl4.identity.spire import SpireServerAdmin, require_spire
from x0tta6bl4.tls.client import tls_client
from x0tta6bl4.tls.credentials import StaticCredentials, TlsCredentials, load_bundle_pem

pytestmark = pytest.mark.slow


def _explain(run: object) -> str:
    return f"stdout:\n{getattr(run, 'stdout', '')}\nstderr:\n{getattr(run, 'stderr', '')}"


def test_twelve_nodes_for_twenty_seconds_are_healthy_and_leave_nothing(tmp_path: Path) -> None:
    run = run_up(tmp_path, "--nodes", "12", "--for", "20", "--json")
    assert run.returncode == 0, _explain(run)
    summary = run.summary()
    assert summary["nodes"] == 12
    assert summary["ready"] == 12
    assert summary["total_pairs"] == 12 * 11
    assert summary["reachable_pairs"] == 12 * 11
    assert summary["healthy"] is True
    assert summary["heal_events"] == []
    assert summary["leftover_processes"] == []
    assert summary["state_dir"] is None
    assert summary["ui_url"] == summary["controller_url"] + "/ui"
    assert "topology UI" in run.stderr
    assert_clean(run)


def test_chaos_records_heal_events_with_measured_times(tmp_path: Path) -> None:
    run = run_up(
        tmp_path, "--nodes", "5", "--for", "12", "--chaos", "--chaos-interval", "2", "--json"
    )
    assert run.returncode == 0, _explain(run)
    summary = run.summary()
    events = summary["heal_events"]
    assert len(events) >= 1, _explain(run)
    for event in events:
        assert event["node"].startswith("node-")
        assert event["detected_by"] is not None
        assert event["detected_by"] != event["node"]
        assert event["mttd_ms"] > 0
        assert event["mttr_ms"] >= event["mttd_ms"]
        assert event["rejoin_ms"] > 0
    assert summary["reachable_pairs"] == summary["total_pairs"] == 20
    assert_clean(run)


@pytest.mark.etcd
@pytest.mark.skipif(
    shutil.which("etcd") is None and not Path("/usr/bin/etcd").exists(),
    reason="the etcd binary is not installed (Debian package etcd-server; make system)",
)
def test_three_controllers_on_a_local_etcd_cluster(tmp_path: Path) -> None:
    run = run_up(
        tmp_path, "--store", "etcd", "--controllers", "3", "--nodes", "4", "--for", "2", "--json"
    )
    assert run.returncode == 0, _explain(run)
    summary = run.summary()
    assert summary["controllers"] == 3
    assert summary["store"] == "etcd"
    assert summary["reachable_pairs"] == summary["total_pairs"] == 12
    assert "starting etcd (3)" in run.stderr
    assert_clean(run)


@pytest.mark.parametrize("provider", ["embedded", "spire"])
def test_reused_state_dir_reuses_identities_and_keeps_state(tmp_path: Path, provider: str) -> None:
    if provider == "spire":
        require_spire_here()
    state = tmp_path / "state"
    args = ("--nodes", "2", "--for", "1", "--json", "--state-dir", str(state))
    first = run_up(tmp_path, *args, "--identity", provider)
    assert first.returncode == 0, _explain(first)
    assert first.summary()["identity"] == provider
    keys = {p.name: (p / "node-key.pem").read_bytes() for p in (state / "nodes").iterdir()}
    mesh_ca = (state / "mesh-ca" / "ca.crt").read_bytes()
    # The SPIFFE trust bundle: the embedded issuer's CA files, or what SPIRE's server published.
    spiffe_ca = sorted((state / "identity").iterdir()) if provider == "embedded" else []
    spiffe_bytes = {p.name: p.read_bytes() for p in spiffe_ca if p.is_file()}
    bundle = (state / "spire" / "bundle.pem").read_bytes() if provider == "spire" else b""
    assert sorted(keys) == ["node-01", "node-02"]
    assert first.summary()["state_dir"] == str(state.resolve())

    second = run_up(tmp_path, *args, "--identity", provider)
    assert second.returncode == 0, _explain(second)
    assert {n: (state / "nodes" / n / "node-key.pem").read_bytes() for n in keys} == keys
    assert (state / "mesh-ca" / "ca.crt").read_bytes() == mesh_ca
    assert {p.name: p.read_bytes() for p in spiffe_ca if p.is_file()} == spiffe_bytes
    if provider == "spire":
        assert (state / "spire" / "bundle.pem").read_bytes() == bundle
    assert_clean(second)


def test_up_on_real_spire_gives_every_node_an_svid_of_its_own(tmp_path: Path) -> None:
    """The acceptance of issue 15: ``up --identity spire --nodes 5`` is healthy, every pair
    reachable, and every node holds an SVID of its own SPIFFE ID signed by SPIRE's CA."""
    require_spire_here()
    state = tmp_path / "state"
    running = RunningUp(
        tmp_path, "--identity", "spire", "--nodes", "5", "--for", "25", "--json",
        "--state-dir", str(state),
    )  # fmt: skip
    try:
        running.wait_for_line("identity    SPIRE", timeout=180)
        descriptor = json.loads((state / "mesh.json").read_text())
        identity = descriptor["identity"]
        assert identity["provider"] == "spire"
        admin = SpireServerAdmin(require_spire().server, Path(identity["server_socket"]))
        authorities = x509.load_pem_x509_certificates(admin.bundle_pem().encode())
        issuers = {ca.subject: ca for ca in authorities}
        workloads = identity["workloads"]
        assert sorted(workloads) == ["controller", *(f"node-0{i}" for i in range(1, 6))]
        seen_ids = set()
        for name, workload in workloads.items():
            gid = int(workload["selectors"][1].removeprefix("unix:gid:"))
            spiffe_id, der = _fetch_svid_as(gid, identity["agent_socket"])
            assert spiffe_id == workload["spiffe_id"], name
            leaf = x509.load_der_x509_certificate(der)
            ca = issuers[leaf.issuer]  # signed by one of SPIRE's authorities
            ca.public_key().verify(  # type: ignore[call-arg, union-attr]
                leaf.signature, leaf.tbs_certificate_bytes, ec.ECDSA(leaf.signature_hash_algorithm)
            )
            seen_ids.add(spiffe_id)
        assert len(seen_ids) == 6
        # The controller admitted each node under its own SPIFFE ID.
        registered = _registered_ids(descriptor, workloads["controller"], identity)
        assert registered == {n: w["spiffe_id"] for n, w in workloads.items() if n != "controller"}
        run = running.wait(timeout=180)
    finally:
        running.kill()
    assert run.returncode == 0, _explain(run)
    summary = run.summary()
    assert summary["identity"] == "spire"
    assert summary["ready"] == 5
    assert summary["reachable_pairs"] == summary["total_pairs"] == 20
    assert summary["healthy"] is True
    assert not (state / "mesh.json").exists()
    assert_clean(run)


_FETCH = """
import sys, grpc
from spiffe._proto import workload_pb2 as pb, workload_pb2_grpc as rpc
stub = rpc.SpiffeWorkloadAPIStub(grpc.insecure_channel("unix:" + sys.argv[1]))
header = [("workload.spiffe.io", "true")]
if sys.argv[2] == "x509":
    r = next(stub.FetchX509SVID(pb.X509SVIDRequest(), timeout=20, metadata=header))
    print(r.svids[0].spiffe_id, r.svids[0].x509_svid.hex())
else:
    r = stub.FetchJWTSVID(pb.JWTSVIDRequest(audience=[sys.argv[2]]), timeout=20, metadata=header)
    print(r.svids[0].spiffe_id, r.svids[0].svid)
"""


def _as_gid(gid: int, socket_path: str, what: str) -> tuple[str, str]:
    done = subprocess.run(
        [sys.executable, "-c", _FETCH, socket_path, what],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        group=gid,
        extra_groups=[],
    )
    assert done.returncode == 0, done.stderr[-2000:]
    spiffe_id, value = done.stdout.split()
    return spiffe_id, value


def _fetch_svid_as(gid: int, socket_path: str) -> tuple[str, bytes]:
    spiffe_id, hexed = _as_gid(gid, socket_path, "x509")
    return spiffe_id, bytes.fromhex(hexed)


def _registered_ids(
    descriptor: dict[str, Any], workload: dict[str, Any], identity: dict[str, Any]
) -> dict[str, str]:
    """The controller's node list, asked over its TLS listener (verified as the controller's
    SPIFFE ID against the descriptor's trust bundle) with the controller's own JWT-SVID."""
    gid = int(workload["selectors"][1].removeprefix("unix:gid:"))
    _, token = _as_gid(gid, identity["agent_socket"], "x0tta6bl4-controller")
    trust = StaticCredentials(
        TlsCredentials.trust_only(
            load_bundle_pem(Path(descriptor["trust_bundle"])), identity["trust_domain"]
        )
    )

    async def get() -> httpx.Response:
        async with tls_client(descriptor["api"][0], trust, workload["spiffe_id"]) as client:
            return await client.get(
                "/api/v1/nodes", headers={"Authorization": f"Bearer {token}"}, timeout=30
            )

    listing = asyncio.run(get())
    assert listing.status_code == 200, listing.text
    return {n["node_id"]: n["spiffe_id"] for n in listing.json()["nodes"]}


def test_port_in_use_is_a_clear_error_and_starts_nothing(tmp_path: Path) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        run = run_up(tmp_path, "--nodes", "2", "--for", "1", "--port", str(port))
    assert run.returncode == 2, _explain(run)
    assert f"port {port}/tcp on 127.0.0.1 is already in use" in run.stderr
    assert "--port" in run.stderr
    assert_clean(run)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--controllers", "3"], "--controllers 3 needs a shared store: add --store etcd"),
        (["--nodes", "0"], "--nodes must be 1..200"),
        (["--store", "mysql"], "--store must be sqlite or etcd"),
        (["--for", "-1"], "--for must be a positive number of seconds"),
        (["--heartbeat-interval", "0"], "--heartbeat-interval must be 0.01..10 seconds"),
    ],
)
def test_bad_flags_are_refused_before_anything_starts(
    tmp_path: Path, args: list[str], message: str
) -> None:
    run = run_up(tmp_path, *args)
    assert run.returncode == 2, _explain(run)
    assert message in run.stderr
    assert_clean(run)


def test_ctrl_c_while_starting_stops_everything(tmp_path: Path) -> None:
    running = RunningUp(tmp_path, "--nodes", "3", "--for", "60", "--json")
    try:
        running.wait_for_line("starting nodes")
        run = running.interrupt()
    finally:
        running.kill()
    assert run.returncode == 130, run.stderr[-3000:]
    assert "interrupted; everything was stopped" in run.stderr
    assert_clean(run)
