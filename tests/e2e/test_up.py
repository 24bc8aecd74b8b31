"""``x0tta6bl4 up`` end to end: real issuer, controller(s), etcd and node processes.

Each test runs ``up`` as a subprocess (as a user would) and then checks what it left behind
by scanning ``/proc`` for processes carrying the run's marker variable and the run's TMPDIR
for sockets and temporary state.
"""

from __future__ import annotations

import shutil
import socket
from pathlib import Path

import pytest

from tests.e2e.up_support import RunningUp, assert_clean, run_up

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


def test_reused_state_dir_reuses_identities_and_keeps_state(tmp_path: Path) -> None:
    state = tmp_path / "state"
    first = run_up(tmp_path, "--nodes", "2", "--for", "1", "--json", "--state-dir", str(state))
    assert first.returncode == 0, _explain(first)
    keys = {p.name: (p / "node-key.pem").read_bytes() for p in (state / "nodes").iterdir()}
    mesh_ca = (state / "mesh-ca" / "ca.crt").read_bytes()
    spiffe_ca = sorted((state / "identity").iterdir())
    spiffe_bytes = {p.name: p.read_bytes() for p in spiffe_ca if p.is_file()}
    assert sorted(keys) == ["node-01", "node-02"]
    assert first.summary()["state_dir"] == str(state.resolve())

    second = run_up(tmp_path, "--nodes", "2", "--for", "1", "--json", "--state-dir", str(state))
    assert second.returncode == 0, _explain(second)
    assert {n: (state / "nodes" / n / "node-key.pem").read_bytes() for n in keys} == keys
    assert (state / "mesh-ca" / "ca.crt").read_bytes() == mesh_ca
    assert {p.name: p.read_bytes() for p in spiffe_ca if p.is_file()} == spiffe_bytes
    assert_clean(second)


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
