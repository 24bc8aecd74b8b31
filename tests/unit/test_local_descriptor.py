"""``STATE_DIR/mesh.json``, the runtime descriptor of ``x0tta6bl4 up``: round trip, validation,
and the running / starting / stopped / killed cases, with real processes standing in for
``up`` (a sleeping Python whose command line names x0tta6bl4, as ``up``'s does)."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from x0tta6bl4.local.descriptor import (
    DescriptorError,
    MeshDescriptor,
    UpNotRunningError,
    pid_alive,
    read_descriptor,
    remove_descriptor,
    write_descriptor,
)

_FAKE_UP = "import time; print('ready', flush=True); time.sleep(60)"


@pytest.fixture
def fake_up() -> Iterator[subprocess.Popen[bytes]]:
    # Popen can return before the child has exec'd (its /proc cmdline is still ours then):
    # wait for the child's own line so that it really is the "x0tta6bl4 up" process.
    proc = subprocess.Popen(
        [sys.executable, "-c", _FAKE_UP, "x0tta6bl4", "up"],
        stdout=subprocess.PIPE,
    )
    assert proc.stdout is not None
    assert proc.stdout.readline() == b"ready\n"
    try:
        yield proc
    finally:
        proc.kill()
        proc.wait()
        proc.stdout.close()


def descriptor(pid: int) -> MeshDescriptor:
    return MeshDescriptor(
        up_pid=pid,
        controller="http://127.0.0.1:41023",
        controllers=("http://127.0.0.1:41023",),
        ui="http://127.0.0.1:41023/ui",
        store="sqlite",
        nodes={"node-02": "http://127.0.0.1:40002", "node-01": "http://127.0.0.1:40001"},
        node_pids={"node-01": 11, "node-02": 12},
        started_at=1795670396.1,
        api=("https://127.0.0.1:41024",),
        trust_bundle="/tmp/x0/trust-bundle.pem",
        identity={
            "provider": "spire",
            "trust_domain": "x0tta6bl4.mesh",
            "agent_socket": "/tmp/x0up-a/spire-agent.sock",
            "server_socket": "/tmp/x0up-a/spire-server.sock",
        },
        controller_spiffe_id="spiffe://x0tta6bl4.mesh/ns/local/sa/x0tta6bl4-app/controller",
    )


def test_running_up_round_trips(tmp_path: Path, fake_up: subprocess.Popen[bytes]) -> None:
    (tmp_path / ".lock").write_text(f"{fake_up.pid}\n")
    path = write_descriptor(tmp_path, descriptor(fake_up.pid))
    assert path == tmp_path / "mesh.json"
    assert path.stat().st_mode & 0o777 == 0o600
    assert [p.name for p in tmp_path.iterdir() if p.name.endswith(".tmp")] == []
    data = json.loads(path.read_text())
    assert data["version"] == 1
    assert list(data["nodes"]) == ["node-01", "node-02"]
    assert data["identity"]["provider"] == "spire"
    assert data["identity"]["agent_socket"].endswith("spire-agent.sock")
    # The TLS API and its trust bundle (issue #12), next to the old keys.
    assert data["api"] == ["https://127.0.0.1:41024"]
    assert data["trust_bundle"] == "/tmp/x0/trust-bundle.pem"
    assert data["controller_spiffe_id"].endswith("/controller")
    assert read_descriptor(tmp_path) == descriptor(fake_up.pid)


def test_starting_up_is_reported_as_starting(
    tmp_path: Path, fake_up: subprocess.Popen[bytes]
) -> None:
    (tmp_path / ".lock").write_text(f"{fake_up.pid}\n")
    with pytest.raises(UpNotRunningError, match="is still starting") as err:
        read_descriptor(tmp_path)
    assert err.value.starting


def test_stopped_and_killed_up_are_refused(
    tmp_path: Path, fake_up: subprocess.Popen[bytes]
) -> None:
    (tmp_path / ".lock").write_text(f"{fake_up.pid}\n")
    write_descriptor(tmp_path, descriptor(fake_up.pid))
    fake_up.kill()
    fake_up.wait()
    assert not pid_alive(fake_up.pid)
    with pytest.raises(UpNotRunningError, match="no longer running") as err:
        read_descriptor(tmp_path)
    assert not err.value.starting
    remove_descriptor(tmp_path)
    remove_descriptor(tmp_path)  # twice: no error
    (tmp_path / ".lock").write_text("")  # what a stopped up leaves
    with pytest.raises(UpNotRunningError, match="x0tta6bl4 up is not running on"):
        read_descriptor(tmp_path)


def test_not_a_state_directory(tmp_path: Path) -> None:
    with pytest.raises(DescriptorError, match=r"has no mesh\.json"):
        read_descriptor(tmp_path)
    with pytest.raises(DescriptorError, match="is not a directory"):
        read_descriptor(tmp_path / "missing")
    (tmp_path / "mesh.json").write_text("{")
    with pytest.raises(DescriptorError, match="is not JSON"):
        read_descriptor(tmp_path)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"controller": 5}, "no controller URL"),
        ({"nodes": {"a": "ftp://x"}}, "nodes must map node IDs"),
        ({"up_pid": True}, "up_pid must be a positive integer"),
        ({"up_pid": -3}, "up_pid must be a positive integer"),
        ({"node_pids": {"a": "7"}}, "node_pids must map node IDs to pids"),
        ({"controllers": "http://x"}, "controllers must be a list"),
        ({"identity": "spire"}, "identity must be an object"),
        ({"identity": {"provider": "vault"}}, "provider is spire or embedded"),
        ({"api": ["http://127.0.0.1:1"]}, "api must be a list of https URLs"),
        ({"api": "https://x"}, "api must be a list of https URLs"),
        ({"trust_bundle": "relative.pem"}, "trust_bundle must be an absolute path"),
    ],
)
def test_malformed_fields_are_named(change: dict[str, object], message: str) -> None:
    data = descriptor(os.getpid()).to_json() | change
    with pytest.raises(DescriptorError, match=message):
        MeshDescriptor.from_json(data)
    with pytest.raises(DescriptorError, match="must hold a JSON object"):
        MeshDescriptor.from_json([data])


async def test_check_waits_for_a_starting_up_only_with_wait(
    tmp_path: Path, fake_up: subprocess.Popen[bytes]
) -> None:
    from x0tta6bl4.check.checks_local import load_waiting

    (tmp_path / ".lock").write_text(f"{fake_up.pid}\n")
    with pytest.raises(UpNotRunningError, match="still starting"):
        await load_waiting(str(tmp_path), 0.0)

    async def finish_starting() -> None:
        await asyncio.sleep(0.3)
        write_descriptor(tmp_path, descriptor(fake_up.pid))

    writer = asyncio.create_task(finish_starting())
    mesh = await load_waiting(str(tmp_path), 60.0, interval=0.05)
    await writer
    try:
        assert mesh.descriptor == descriptor(fake_up.pid)
        assert mesh.node_urls == dict(descriptor(fake_up.pid).nodes)
    finally:
        await mesh.close()
    fake_up.kill()
    fake_up.wait()
    with pytest.raises(UpNotRunningError, match="no longer running"):
        await load_waiting(str(tmp_path), 60.0)  # not starting: no waiting
