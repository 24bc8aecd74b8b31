"""``x0tta6bl4 check --local`` against a real mesh from ``x0tta6bl4 up --nodes 4``.

One ``up`` runs in the background for the whole module (a subprocess with a kept
``--state-dir``, as a user would run it); every check is the real command in a subprocess.
The tests run in file order: the healthy checks first, then a node is SIGKILLed (its pid from
``mesh.json``), and last ``up`` is stopped and must leave nothing behind. No assertion is on
timing: latency checks may warn on a loaded machine, and warnings keep exit 0.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.e2e.up_support import RunningUp, assert_clean
from x0tta6bl4.check.checks_connectivity import relays_of
from x0tta6bl4.check.model import HINT_BASE

pytestmark = pytest.mark.slow

DOCS = Path(__file__).resolve().parents[2] / "docs" / "checks.md"
NODES = 4


@dataclass
class Mesh:
    up: RunningUp
    state: Path
    killed: str | None = None

    def descriptor(self) -> dict[str, Any]:
        data: dict[str, Any] = json.loads((self.state / "mesh.json").read_text())
        return data


@pytest.fixture(scope="module")
def mesh(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Mesh]:
    tmp = tmp_path_factory.mktemp("check-local")
    state = tmp / "state"
    up = RunningUp(tmp, "--nodes", str(NODES), "--state-dir", str(state), "--json")
    try:
        up.wait_for_line("  check ")
        yield Mesh(up, state.resolve())
    finally:
        up.kill()


def check(*args: str, timeout: float = 120.0) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("X0_", "SPIFFE_"))}
    return subprocess.run(
        [sys.executable, "-m", "x0tta6bl4", "check", *args],
        capture_output=True,
        text=True,
        env=env | {"NO_COLOR": "1", "COLUMNS": "200"},
        timeout=timeout,
        check=False,
    )


def by_id(stdout: str) -> dict[str, dict[str, Any]]:
    report = json.loads(stdout)
    return {c["id"]: c for cat in report["categories"] for c in cat["checks"]}


def docs_anchors() -> set[str]:
    return set(re.findall(r"^### ([a-z0-9-]+)$", DOCS.read_text(), re.MULTILINE))


def test_up_writes_its_descriptor_and_prints_the_check_command(mesh: Mesh) -> None:
    line = mesh.up.wait_for_line("  check ")
    assert line.split(None, 1)[1].strip() == f"x0tta6bl4 check --local {mesh.state}"
    data = mesh.descriptor()
    assert data["up_pid"] == mesh.up.proc.pid
    assert sorted(data["nodes"]) == [f"node-{i:02d}" for i in range(1, NODES + 1)]
    assert sorted(data["node_pids"]) == sorted(data["nodes"])
    assert data["ui"] == data["controller"] + "/ui"
    assert data["controllers"] == [data["controller"]]
    for pid in data["node_pids"].values():
        assert b"node" in Path(f"/proc/{pid}/cmdline").read_bytes()
    assert (mesh.state / "mesh.json").stat().st_mode & 0o777 == 0o600
    # Issue #12: the TLS API of each controller, the bundle that verifies it, the Workload API.
    assert len(data["api"]) == 1
    assert data["api"][0].startswith("https://127.0.0.1:")
    assert Path(data["trust_bundle"]).is_absolute()
    assert b"BEGIN CERTIFICATE" in Path(data["trust_bundle"]).read_bytes()
    # up --identity auto: SPIRE when its binaries are there, else the embedded issuer.
    assert data["identity"]["provider"] in ("embedded", "spire")
    assert Path(data["identity"]["agent_socket"]).is_socket()
    assert data["controller_spiffe_id"].endswith("/ns/local/sa/x0tta6bl4-app/controller")


def test_every_check_passes_on_a_healthy_mesh(mesh: Mesh) -> None:
    run = check("--local", str(mesh.state), "--wait", "30")
    assert run.returncode == 0, run.stdout + run.stderr
    assert "Status check results are √" in run.stdout
    for description in (
        "controller answers /health",
        "every mesh node is ready",
        "controller API is served over TLS only, as its SPIFFE ID",
        "controller TLS key exchange is post-quantum (X25519MLKEM768)",
    ):
        assert f"√ {description}" in run.stdout


def test_json_output_has_the_contract_keys(mesh: Mesh) -> None:
    run = check("--local", str(mesh.state), "-o", "json", "--wait", "30")
    assert run.returncode == 0, run.stdout + run.stderr
    report = json.loads(run.stdout)
    assert report["success"] is True
    assert report["categories"], report
    for category in report["categories"]:
        assert isinstance(category["name"], str)
        for item in category["checks"]:
            assert {"description", "result", "error", "hint"} <= set(item)
            assert item["result"] == "success", item
    found = by_id(run.stdout)
    assert found["nodes-ready"]["detail"] == f"{NODES} nodes"
    assert found["nodes-reporting"]["detail"] == f"{NODES} nodes reporting"
    assert found["mesh-nodes-metric"]["detail"] == f"{NODES} nodes"


def test_junit_output_parses(mesh: Mesh) -> None:
    run = check("--local", str(mesh.state), "-o", "junit", "--wait", "30")
    assert run.returncode == 0, run.stdout + run.stderr
    root = ET.fromstring(run.stdout)
    cases = root.findall(".//testcase")
    assert {c.get("id") for c in cases} >= {"controller-health", "nodes-ready", "pq-svids"}
    assert root.findall(".//failure") == []


def test_connectivity_pings_every_pair(mesh: Mesh) -> None:
    run = check("--connectivity", "--local", str(mesh.state), "-o", "json", "--wait", "30")
    assert run.returncode == 0, run.stdout + run.stderr
    found = by_id(run.stdout)
    pairs = NODES * (NODES - 1)
    assert found["mesh-ping"]["result"] == "success"
    assert found["mesh-ping"]["detail"].startswith(f"{pairs} pairs, ")
    # Targets, not failures: a loaded machine may warn, never fail.
    assert found["mesh-latency"]["result"] in ("success", "warning")
    assert found["controller-latency"]["result"] in ("success", "warning")
    # The check never kills a node it cannot restart: it names the relay (or says there is
    # none). The drill itself, killing that relay, is test_a_killed_relay_….
    relay = found["relay-loss"]
    assert relay["result"] == "skipped"
    assert re.match(r"node-\d+ relays \d+ route\(s\); the drill would stop it", relay["error"]) or (
        relay["error"].startswith(f"every route of the {NODES} nodes is direct")
    ), relay


def test_a_controller_url_checks_the_controller_and_says_why_nodes_are_skipped(
    mesh: Mesh,
) -> None:
    run = check("--local", mesh.descriptor()["controller"], "-o", "json")
    assert run.returncode == 0, run.stdout + run.stderr
    found = by_id(run.stdout)
    assert found["controller-ready"]["result"] == "success"
    assert found["controller-tls"]["result"] == "skipped"  # no trust bundle with a bare URL
    assert found["nodes-reporting"]["detail"] == f"{NODES} nodes reporting"
    assert found["nodes-ready"]["result"] == "skipped"
    assert "HTTP addresses" in found["nodes-ready"]["error"]


def busiest_relay(urls: dict[str, str]) -> str | None:
    statuses = {n: httpx.get(u + "/v1/status", timeout=10).json() for n, u in urls.items()}
    relayed = relays_of(statuses)
    return relayed.most_common(1)[0][0] if relayed else None


def test_a_killed_relay_fails_nodes_ready_and_survivors_still_reach_each_other(
    mesh: Mesh,
) -> None:
    descriptor = mesh.descriptor()
    # The relay-loss drill: SIGKILL the node that relays most routes (any node when every
    # route is direct), then every pair of survivors must still reach each other.
    victim = busiest_relay(descriptor["nodes"]) or "node-02"
    os.kill(descriptor["node_pids"][victim], signal.SIGKILL)
    mesh.killed = victim

    run = check("--local", str(mesh.state), "-o", "json")
    assert run.returncode == 1, run.stdout + run.stderr
    found = by_id(run.stdout)
    failed = found["nodes-ready"]
    assert failed["result"] == "error"
    assert failed["error"].startswith(f"1 of {NODES} nodes not ready: {victim}: ")
    assert failed["hint"] == HINT_BASE + "nodes-ready"
    assert "nodes-ready" in docs_anchors()

    run = check("--connectivity", "--local", str(mesh.state), "-o", "json")
    assert run.returncode == 1, run.stdout + run.stderr
    ping = by_id(run.stdout)["mesh-ping"]
    assert ping["result"] == "error"
    assert ping["hint"] == HINT_BASE + "mesh-ping"
    assert "mesh-ping" in docs_anchors()
    # Every failing pair involves the victim: the survivors re-routed around it.
    failures = ping["error"].split("; ")
    assert failures, ping
    for failure in failures:
        pair = failure.split(":", 1)[0]
        assert victim in pair.split(" → "), failure
    assert len(failures) <= 2 * (NODES - 1)


def test_stopping_up_removes_the_descriptor_and_check_says_so(mesh: Mesh) -> None:
    # A node is dead, so up's final ping check would wait for it: a second Ctrl-C skips it.
    mesh.up.proc.send_signal(signal.SIGINT)
    mesh.up.wait_for_line("checking the mesh")
    run = mesh.up.interrupt()
    assert run.returncode in (1, 130), run.stderr[-3000:]
    assert not (mesh.state / "mesh.json").exists()
    assert (mesh.state / "nodes").is_dir()  # the kept state stays
    assert_clean(run)
    after = check("--local", str(mesh.state))
    assert after.returncode == 2
    assert f"x0tta6bl4 up is not running on {mesh.state}" in after.stderr
