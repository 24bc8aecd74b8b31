"""Issue 13 rows 8-10, end to end: a controller that refuses to lie about its store.

Real controller processes on loopback, a real SQLite file and a real etcd:

- row 8: a node record turned into invalid JSON: the controller still starts, ``/ready`` is
  503 naming the record, the routes that need it answer 503 ``store_corrupt`` in JSON, the
  rest keeps serving, and deleting the node (admin) clears the fault;
- row 9: the database truncated to 0 bytes, deleted, or a random 4 KiB page written into
  it: the controller exits non-zero naming the file and the fault (no silent reset);
  ``--fresh-store`` starts a new, empty store;
- row 10: ``--local-ca`` with both CA files deleted while the store holds nodes: exit
  non-zero and no new CA; a CA that did not issue the stored nodes: exit non-zero;
- the same for etcd: an emptied prefix is refused, ``--fresh-store`` accepted, a damaged
  record is a store fault.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.integration.controller_support import (
    ADMIN_TOKEN,
    CONTROLLER_ID,
    IDS,
    Identity,
    free_port,
    mesh_node_id,
    register_body,
    running_issuer,
    tls_request,
    wait_ready,
)
from tests.integration.etcd_cluster import ETCD_MISSING_REASON, EtcdCluster, etcd_binary
from x0tta6bl4.controller.startup import MARKER_NAME
from x0tta6bl4.crypto.suite import SigningKey

pytestmark = pytest.mark.timeout(300)

ADMIN = {"Authorization": f"Bearer {ADMIN_TOKEN}"}


# Every node ID the tests register, each under its own SPIFFE ID (…/node/<id>).
NODE_IDS = tuple(mesh_node_id(n) for n in ("good", "bad", *(f"n{i}" for i in range(30))))


@pytest.fixture(scope="module")
def identity(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Identity]:
    with running_issuer(tmp_path_factory.mktemp("id"), ids=IDS + NODE_IDS) as ident:
        yield ident


class Controller:
    """``x0tta6bl4 controller`` with a local CA, an admin token and a state directory."""

    def __init__(self, tmp_path: Path, identity: Identity, *extra: str) -> None:
        self.state = tmp_path / "state"
        self.state.mkdir(parents=True, exist_ok=True)
        (self.state / "admin-token").write_text(ADMIN_TOKEN + "\n")
        self.log = tmp_path / "controller.log"
        self.identity = identity
        self.extra = list(extra)
        self.port = free_port()
        self.tls_port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        self.api = f"https://127.0.0.1:{self.tls_port}"

    @property
    def db(self) -> Path:
        return self.state / "controller.db"

    def argv(self, *more: str) -> list[str]:
        return [
            sys.executable, "-m", "x0tta6bl4", "controller",
            "--listen", f"127.0.0.1:{self.port}",
            "--tls-listen", f"127.0.0.1:{self.tls_port}",
            "--state-dir", str(self.state),
            "--admin-token-file", str(self.state / "admin-token"),
            *self.extra, *more,
        ]  # fmt: skip

    def env(self) -> dict[str, str]:
        return {
            **os.environ,
            "SPIFFE_ENDPOINT_SOCKET": f"unix://{self.identity.issuer.socket_path}",
            "X0_LOG_FORMAT": "json",
        }

    @contextlib.contextmanager
    def running(self, *more: str) -> Iterator[subprocess.Popen[bytes]]:
        with open(self.log, "ab") as out:
            proc = subprocess.Popen(
                self.argv(*more), stdout=out, stderr=subprocess.STDOUT, env=self.env()
            )
        self.identity.attest(proc.pid, CONTROLLER_ID)
        try:
            wait_ready_or_corrupt(self.base, proc)
            yield proc
        finally:
            proc.terminate()
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:  # pragma: no cover - diagnostic path
                proc.kill()
                proc.wait()

    def refused(self, *more: str) -> str:
        """Run the controller expecting it to refuse to start; its output."""
        done = subprocess.run(
            self.argv(*more),
            check=False,
            capture_output=True,
            text=True,
            env=self.env(),
            timeout=120,
        )
        assert done.returncode != 0, done.stderr[-3000:]
        return done.stdout + done.stderr

    def register(self, node_id: str) -> None:
        """Register ``node_id`` as its own node SPIFFE ID (the default node ID mapping)."""
        spiffe_id = mesh_node_id(node_id)
        r = tls_request(
            self.api,
            self.identity,
            "POST",
            "/api/v1/nodes/register",
            spiffe_id=spiffe_id,
            json=register_body(SigningKey.generate(), spiffe_id=spiffe_id, node_id=node_id),
        )
        assert r.status_code == 200, r.text

    def admin(self, method: str, path: str) -> httpx.Response:
        """An admin request to the TLS API (admin token, no client certificate)."""
        return tls_request(self.api, self.identity, method, path, headers=ADMIN)


def wait_ready_or_corrupt(base: str, proc: subprocess.Popen[bytes]) -> None:
    """Wait until ``/ready`` answers (200, or 503 because a record is damaged)."""
    import time

    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"controller exited with {proc.returncode}")
        try:
            r = httpx.get(f"{base}/ready", timeout=2)
            if r.status_code == 200 or "store_corrupt" in r.json().get("reasons", []):
                return
        except (httpx.HTTPError, ValueError):
            pass
        time.sleep(0.05)
    wait_ready(base, proc, timeout=1)


def _nodes(ctl: Controller) -> list[str]:
    r = ctl.admin("GET", "/api/v1/nodes")
    assert r.status_code == 200, r.text
    return [n["node_id"] for n in r.json()["nodes"]]


# --------------------------------------------------------------------------- row 9


def test_a_truncated_or_deleted_database_is_refused_not_reset(
    tmp_path: Path, identity: Identity
) -> None:
    ctl = Controller(tmp_path, identity, "--local-ca")
    with ctl.running():
        ctl.register("n1")
    assert (ctl.state / MARKER_NAME).exists()
    ctl.db.write_bytes(b"")  # truncated to 0 bytes
    out = ctl.refused()
    assert f"SQLite store {ctl.db} is empty (0 bytes)" in out
    assert "--fresh-store" in out
    assert ctl.db.stat().st_size == 0  # nothing written
    ctl.db.unlink()
    assert f"SQLite store {ctl.db} does not exist" in ctl.refused()
    assert not ctl.db.exists()
    # The operator asks for a fresh store: it starts, empty.
    with ctl.running("--fresh-store"):
        assert _nodes(ctl) == []
        ctl.register("n2")
    with ctl.running():
        assert _nodes(ctl) == ["n2"]


def test_a_damaged_database_is_refused(tmp_path: Path, identity: Identity) -> None:
    ctl = Controller(tmp_path, identity, "--local-ca")
    with ctl.running():
        for index in range(30):
            ctl.register(f"n{index}")
    pages = ctl.db.stat().st_size // 4096
    assert pages > 4
    with open(ctl.db, "r+b") as raw:  # a random 4 KiB page in the middle
        raw.seek(4096 * (pages // 2))
        raw.write(os.urandom(4096))
    out = ctl.refused()
    assert f"the store {ctl.db} is damaged" in out
    assert "integrity check failed" in out
    assert "Traceback" not in out


# --------------------------------------------------------------------------- row 8


def test_a_damaged_record_is_a_store_fault_and_the_rest_serves(
    tmp_path: Path, identity: Identity
) -> None:
    ctl = Controller(tmp_path, identity, "--local-ca")
    with ctl.running():
        ctl.register("good")
        ctl.register("bad")
    with contextlib.closing(sqlite3.connect(ctl.db)) as conn, conn:
        conn.execute("UPDATE nodes SET record = '{\"node_id\": ' WHERE node_id = 'bad'")
    with ctl.running() as proc:
        r = httpx.get(f"{ctl.base}/ready", timeout=10)
        assert r.status_code == 503
        body = r.json()
        assert body["reasons"] == ["store_corrupt"]
        assert body["store"] is True
        assert body["store_faults"][0].startswith("node 'bad': invalid JSON")
        for path in ("/api/v1/nodes", "/api/v1/topology"):
            r = ctl.admin("GET", path)
            assert r.status_code == 503, (path, r.text)
            assert r.json()["error"] == "store_corrupt"
            assert "node 'bad'" in r.json()["detail"]
        # The rest keeps serving.
        r = ctl.admin("GET", "/api/v1/nodes/good")
        assert r.status_code == 200
        assert ctl.admin("GET", "/api/v1/policy").status_code == 200
        assert httpx.get(f"{ctl.base}/health", timeout=10).status_code == 200
        metrics = httpx.get(f"{ctl.base}/metrics", timeout=10)
        assert metrics.status_code == 200
        assert "x0tta6bl4_store_faults 1.0" in metrics.text
        assert "x0tta6bl4_store_up 1.0" in metrics.text
        # The operator deletes the damaged node: the fault is gone.
        r = ctl.admin("DELETE", "/api/v1/nodes/bad")
        assert r.status_code == 204, r.text
        assert httpx.get(f"{ctl.base}/ready", timeout=10).status_code == 200
        assert _nodes(ctl) == ["good"]
        assert proc.poll() is None


# --------------------------------------------------------------------------- row 10


def test_no_silent_new_mesh_ca_while_the_store_holds_nodes(
    tmp_path: Path, identity: Identity
) -> None:
    ctl = Controller(tmp_path, identity, "--local-ca")
    with ctl.running():
        ctl.register("n1")
    ca_dir = ctl.state / "ca"
    (ca_dir / "ca.crt").unlink()
    (ca_dir / "ca.key").unlink()
    out = ctl.refused()
    assert f"the mesh CA files {ca_dir / 'ca.crt'} and {ca_dir / 'ca.key'} are missing" in out
    assert "holds 1 node(s)" in out
    assert not (ca_dir / "ca.crt").exists()  # no new CA was made
    # Another CA's files (not a rotation of the old one): refused as well.
    other = tmp_path / "other-ca"
    subprocess.run(
        [sys.executable, "-m", "x0tta6bl4", "controller", "ca", "init", "--out", str(other)],
        check=True,
        capture_output=True,
    )
    out = Controller(tmp_path, identity).refused(
        "--ca-cert-file", str(other / "ca.crt"), "--ca-key-file", str(other / "ca.key")
    )
    assert "holds 1 node(s) whose PQ SVIDs were not issued by the mesh CA" in out
    assert "'n1'" in out


# --------------------------------------------------------------------------- etcd


@pytest.fixture(scope="module")
def etcd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EtcdCluster]:
    if etcd_binary() is None:
        pytest.skip(ETCD_MISSING_REASON)
    with EtcdCluster(tmp_path_factory.mktemp("etcd"), size=1) as cluster:
        yield cluster


async def _etcd_put(cluster: EtcdCluster, key: str, value: bytes | None) -> None:
    import aetcd

    host, port = cluster.endpoints[0]
    async with aetcd.Client(host=host, port=port) as client:
        if value is None:
            await client.delete_prefix(key.encode())
        else:
            await client.put(key.encode(), value)


@pytest.mark.etcd
async def test_etcd_store_same_contract(
    tmp_path: Path, identity: Identity, etcd: EtcdCluster
) -> None:
    url = "etcd://" + ",".join(f"{h}:{p}" for h, p in etcd.endpoints)
    ctl = Controller(tmp_path, identity, "--local-ca", "--store", url)
    with ctl.running():
        ctl.register("good")
        ctl.register("bad")
    # A damaged record: a store fault, the rest serves.
    await _etcd_put(etcd, "/x0tta6bl4/nodes/bad", b"[1, 2")
    with ctl.running():
        r = httpx.get(f"{ctl.base}/ready", timeout=10)
        assert r.status_code == 503
        assert r.json()["store_faults"][0].startswith("node 'bad': invalid JSON")
        r = ctl.admin("GET", "/api/v1/nodes")
        assert (r.status_code, r.json()["error"]) == (503, "store_corrupt")
        assert ctl.admin("GET", "/api/v1/nodes/good").status_code == 200
    # The prefix wiped (etcd data lost): refused, not silently reset.
    await _etcd_put(etcd, "/x0tta6bl4/", None)
    out = ctl.refused()
    assert "etcd prefix /x0tta6bl4/" in out
    assert "is empty" in out
    with ctl.running("--fresh-store"):
        assert _nodes(ctl) == []
