"""SPIRE configuration rendering, binary discovery and ``up``'s provider choice (no SPIRE
process runs here: the integration suite runs the real server and agent, and also has SPIRE
itself ``validate`` these files)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from x0tta6bl4.identity.errors import SpireNotFoundError
from x0tta6bl4.identity.spire import (
    AgentConfig,
    EntrySpec,
    ServerConfig,
    find_spire,
    require_spire,
)
from x0tta6bl4.identity.spire.config import go_duration, render_hcl
from x0tta6bl4.local.errors import PrerequisiteError
from x0tta6bl4.local.identity import resolve_provider
from x0tta6bl4.local.workloads import local_workloads


def test_go_durations() -> None:
    assert go_duration(90) == "90s"
    assert go_duration(3600.0) == "3600s"
    assert go_duration(0.5) == "500ms"
    with pytest.raises(ValueError, match="positive"):
        go_duration(0)


def test_hcl_blocks_attributes_and_escapes() -> None:
    text = render_hcl(
        {
            "server": {"name": 'a "quoted" \\ path', "port": 8081, "on": True, "l": ["x", "y"]},
            'DataStore "sql"': {"plugin_data": {}},
        }
    )
    assert text == (
        "server {\n"
        '  name = "a \\"quoted\\" \\\\ path"\n'
        "  port = 8081\n"
        "  on = true\n"
        '  l = ["x", "y"]\n'
        "}\n"
        'DataStore "sql" {\n'
        "  plugin_data {\n"
        "  }\n"
        "}"
    )
    with pytest.raises(TypeError, match="cannot render"):
        render_hcl({"x": 1.5})


def test_server_config_holds_the_project_settings(tmp_path: Path) -> None:
    text = ServerConfig(
        trust_domain="x0tta6bl4.mesh",
        data_dir=tmp_path / "server",
        socket_path=tmp_path / "api.sock",
        bind_port=18081,
        health_port=18080,
        default_x509_svid_ttl=20,
        default_jwt_svid_ttl=20,
        cache_reload_interval=1,
    ).render()
    for line in (
        'trust_domain = "x0tta6bl4.mesh"',
        'bind_port = "18081"',
        f'socket_path = "{tmp_path / "api.sock"}"',
        'database_type = "sqlite3"',
        f'keys_path = "{tmp_path / "server" / "keys.json"}"',
        'NodeAttestor "join_token" {',
        'ca_key_type = "ec-p256"',
        'default_x509_svid_ttl = "20s"',
        'cache_reload_interval = "1s"',
        "require_pq_kem = false",
        'bind_port = "18080"',
    ):
        assert line in text, line


def test_agent_config_reads_the_token_from_a_file(tmp_path: Path) -> None:
    text = AgentConfig(
        trust_domain="x0tta6bl4.mesh",
        data_dir=tmp_path / "agent",
        socket_path=tmp_path / "agent.sock",
        server_port=18081,
        health_port=18082,
        trust_bundle_path=tmp_path / "bundle.pem",
        join_token_file=tmp_path / "join-token",
    ).render()
    assert f'join_token_file = "{tmp_path / "join-token"}"' in text
    assert "join_token =" not in text
    assert "insecure_bootstrap" not in text
    assert 'WorkloadAttestor "unix" {' in text
    assert f'directory = "{tmp_path / "agent"}"' in text


def test_entry_spec_json_and_bad_selectors() -> None:
    spec = EntrySpec(
        spiffe_id="spiffe://x0tta6bl4.mesh/ns/local/sa/x0tta6bl4-app/node/node-01",
        parent_id="spiffe://x0tta6bl4.mesh/agent/local",
        selectors=("unix:uid:0", "unix:gid:1900000001"),
        x509_svid_ttl=20,
        entry_id="x0-node-01",
    )
    assert spec.to_json() == {
        "spiffe_id": "spiffe://x0tta6bl4.mesh/ns/local/sa/x0tta6bl4-app/node/node-01",
        "parent_id": "spiffe://x0tta6bl4.mesh/agent/local",
        "selectors": [
            {"type": "unix", "value": "uid:0"},
            {"type": "unix", "value": "gid:1900000001"},
        ],
        "x509_svid_ttl": 20,
        "entry_id": "x0-node-01",
    }
    with pytest.raises(ValueError, match="TYPE:VALUE"):
        EntrySpec("spiffe://td/a", "spiffe://td/b", ("unix",)).to_json()


def test_local_workloads_have_one_id_and_gid_each() -> None:
    workloads = local_workloads("x0tta6bl4.mesh", ["node-01", "node-02"], uid=0, gid_base=500)
    assert workloads["controller"].spiffe_id == (
        "spiffe://x0tta6bl4.mesh/ns/local/sa/x0tta6bl4-app/controller"
    )
    assert workloads["node-02"].spiffe_id == (
        "spiffe://x0tta6bl4.mesh/ns/local/sa/x0tta6bl4-app/node/node-02"
    )
    assert workloads["node-02"].selectors == ("unix:uid:0", "unix:gid:502")
    assert len({w.gid for w in workloads.values()}) == 3
    assert len({w.spiffe_id for w in workloads.values()}) == 3


def _fake_pair(directory: Path) -> None:
    directory.mkdir(parents=True)
    for name in ("spire-server", "spire-agent"):
        path = directory / name
        path.write_text("#!/bin/sh\n")
        path.chmod(0o755)


def test_binaries_are_found_explicitly_or_in_the_cache(tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    for version in ("v1.9.0", "v1.13.3", "v1.14.0"):
        _fake_pair(cache / "spire" / version / "bin")
    (cache / "spire" / "v1.9.0" / ".complete").write_text("")
    (cache / "spire" / "v1.13.3" / ".complete").write_text("")  # v1.14.0: an unfinished build
    env = {"X0_CACHE": str(cache), "PATH": str(tmp_path / "nothing")}
    found = find_spire(env=env)
    assert found is not None
    assert found.server == cache / "spire" / "v1.13.3" / "bin" / "spire-server"
    explicit = find_spire(env={**env, "X0_SPIRE_BIN_DIR": str(cache / "spire" / "v1.9.0" / "bin")})
    assert explicit is not None
    assert explicit.agent.parent.parent.name == "v1.9.0"
    empty = {"X0_CACHE": str(tmp_path / "none"), "PATH": str(tmp_path / "nothing")}
    assert find_spire(env=empty) is None
    with pytest.raises(SpireNotFoundError, match="scripts/components/build spire"):
        require_spire(env=empty)
    with pytest.raises(SpireNotFoundError, match="from X0_SPIRE_BIN_DIR"):
        require_spire(env={**empty, "X0_SPIRE_BIN_DIR": str(tmp_path)})


def test_provider_choice(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("X0_CACHE", str(tmp_path / "none"))
    monkeypatch.setenv("PATH", str(tmp_path / "nothing"))
    monkeypatch.delenv("X0_SPIRE_BIN_DIR", raising=False)
    assert resolve_provider("embedded").provider == "embedded"
    auto = resolve_provider("auto")
    assert (auto.provider, auto.reason) == (
        "embedded",
        "SPIRE binaries not found (scripts/components/build spire)",
    )
    with pytest.raises(PrerequisiteError, match="or use --identity embedded"):
        resolve_provider("spire")
    _fake_pair(tmp_path / "bin")
    monkeypatch.setenv("X0_SPIRE_BIN_DIR", str(tmp_path / "bin"))
    assert resolve_provider("auto", euid=0).provider == "spire"
    assert resolve_provider("auto", euid=1000).provider == "embedded"
    with pytest.raises(PrerequisiteError, match="needs root"):
        resolve_provider("spire", euid=1000)
    chosen = resolve_provider("spire", euid=0)
    assert chosen.binaries is not None
    assert os.access(chosen.binaries.server, os.X_OK)
