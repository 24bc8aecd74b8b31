"""``--json`` means one JSON document on stdout, for every command that has it.

Every command of the CLI with a ``--json`` option (found by walking the command tree, so a new
one cannot be forgotten: it fails :func:`test_every_json_command_has_a_case` until it gets a
case here) runs as its own process, exactly as a user runs it, and its whole stdout must parse
as one JSON value: logs, progress lines and warnings belong on stderr. ``ping --json`` and
``check --output json`` run against a real ``x0tta6bl4 up`` mesh started by the test.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import typer.main

from tests.e2e.up_support import RunningUp, assert_clean
from x0tta6bl4.bench import tun
from x0tta6bl4.cli import app
from x0tta6bl4.local.descriptor import read_descriptor

pytestmark = [pytest.mark.slow]

#: Arguments that make each ``--json`` command quick; the mesh-backed ones are tested below.
CASES: dict[tuple[str, ...], tuple[str, ...]] = {
    ("version",): (),
    ("bench", "session"): ("--packets", "200"),
    ("bench", "handshake"): ("--iterations", "2"),
    ("bench", "glob"): ("--matches", "20"),
    ("bench", "api"): ("--duration", "1", "--nodes", "2"),
    ("bench", "heal"): ("--nodes", "3", "--events", "1", "--workers", "1"),
    ("bench", "dataplane"): ("--duration", "1", "--window", "2"),
    ("bench", "flood"): ("--trials", "1", "--partials", "2", "--scenario", "slowloris"),
    ("bench", "tun"): ("--seconds", "1", "--rounds", "1"),
    ("up",): ("--nodes", "2", "--for", "1"),
}
MESH_CASES = {("ping",), ("check",)}


def _tun_missing() -> str | None:
    """Why ``bench tun`` cannot run here (root, /dev/net/tun, its tools), or None."""
    if os.geteuid() != 0 or not os.path.exists("/dev/net/tun"):
        return "bench tun needs root and /dev/net/tun (network namespaces, TUN interfaces)"
    missing = [t for t in ("ip", "iperf3", "wg", "ping") if shutil.which(t) is None]
    if missing:
        return f"bench tun needs {', '.join(missing)} (scripts/setup-system.sh installs them)"
    try:
        tun.find_wireguard_go()
    except tun.TunBenchError as exc:
        return f"bench tun: {exc}"
    return None


#: Why a case cannot run on this machine (checked before running it).
PREREQUISITES = {("bench", "tun"): _tun_missing}


def _json_commands() -> list[tuple[str, ...]]:
    found: list[tuple[str, ...]] = []

    def walk(command: Any, path: tuple[str, ...]) -> None:
        if hasattr(command, "list_commands"):
            for name in command.list_commands(None):
                walk(command.get_command(None, name), (*path, name))
        elif any("--json" in param.opts for param in command.params):
            found.append(path)

    walk(typer.main.get_command(app), ())
    return sorted(found)


@pytest.fixture
def env() -> Iterator[dict[str, str]]:
    """The environment of a command: no X0_ or SPIFFE_ variables, and its own short TMPDIR
    (Unix socket paths must fit in 108 bytes), removed afterwards."""
    tmpdir = tempfile.mkdtemp(prefix="x0j-")
    try:
        yield {k: v for k, v in os.environ.items() if not k.startswith(("X0_", "SPIFFE_"))} | {
            "TMPDIR": tmpdir,
            "COLUMNS": "120",
        }
    finally:
        shutil.rmtree(tmpdir, ignore_errors=True)


def _run_json(args: tuple[str, ...], env: dict[str, str], timeout: float = 300) -> Any:
    proc = subprocess.run(
        [sys.executable, "-m", "x0tta6bl4", *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=timeout,
        check=False,
    )
    assert proc.returncode == 0, f"{args}: exit {proc.returncode}\n{proc.stderr[-3000:]}"
    try:
        return json.loads(proc.stdout)
    except json.JSONDecodeError as err:
        raise AssertionError(
            f"{' '.join(args)}: stdout is not one JSON document ({err}):\n{proc.stdout[:2000]}"
        ) from None


def test_every_json_command_has_a_case() -> None:
    commands = set(_json_commands())
    assert ("bench", "api") in commands  # the walk finds nested commands
    assert commands - MESH_CASES == set(CASES)


@pytest.mark.parametrize("command", sorted(CASES), ids=" ".join)
def test_json_stdout_is_exactly_one_document(command: tuple[str, ...], env: dict[str, str]) -> None:
    check = PREREQUISITES.get(command)
    reason = None if check is None else check()
    if reason is not None:
        pytest.skip(reason)
    result = _run_json((*command, *CASES[command], "--json"), env)
    assert isinstance(result, dict)
    assert result  # a result, not an empty object


@pytest.fixture
def mesh(tmp_path: Path) -> Iterator[Path]:
    """A two-node ``x0tta6bl4 up``, ready; its state directory."""
    state = tmp_path / "state"
    running = RunningUp(
        tmp_path, "--nodes", "2", "--for", "300", "--state-dir", str(state), "--json"
    )
    try:
        running.wait_for_line("  check ", timeout=180)
        yield state
    finally:
        run = running.interrupt()
        running.kill()
        assert_clean(run)


def test_ping_and_check_json_against_a_running_mesh(mesh: Path, env: dict[str, str]) -> None:
    nodes = read_descriptor(mesh).nodes
    (_, source_url), (target, _) = sorted(nodes.items())[:2]
    ping = _run_json(("ping", target, "--node", source_url, "--count", "2", "--json"), env)
    assert ping["received"] >= 1
    check = _run_json(("check", "--local", str(mesh), "--output", "json"), env)
    assert isinstance(check, dict)
    assert check
