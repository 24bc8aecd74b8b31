"""Node settings: node ids from flags, the Kubernetes node name or the hostname."""

from __future__ import annotations

import re

import pytest
from pydantic import ValidationError
from typer.testing import CliRunner

from x0tta6bl4.cli import app
from x0tta6bl4.controller.api.schemas import NODE_ID_PATTERN
from x0tta6bl4.hostport import format_hostport, parse_hostport
from x0tta6bl4.node.config import MAX_NODE_ID_LENGTH, NodeSettings, node_id_from_name

# A Kubernetes node name may be a 253-character DNS subdomain.
LONG = "ip-10-0-1-23." + "very-long-availability-zone-label." * 6 + "compute.internal"


def test_short_names_are_kept() -> None:
    assert node_id_from_name("worker-1") == "worker-1"
    exact = "a" * MAX_NODE_ID_LENGTH
    assert node_id_from_name(exact) == exact


def test_long_names_are_shortened_stably_and_distinctly() -> None:
    assert len(LONG) > 200
    short = node_id_from_name(LONG)
    assert len(short) <= MAX_NODE_ID_LENGTH
    assert short.startswith(LONG[:40])
    assert short == node_id_from_name(LONG)  # the same after a restart
    other = node_id_from_name(LONG[:-1] + "x")  # same first 47 characters, other name
    assert other != short
    # The controller accepts it (its own node id rule).
    assert re.fullmatch(NODE_ID_PATTERN.strip("^$"), short)


def test_the_kubernetes_node_name_is_used_shortened(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("X0_NODE_NAME", LONG)
    assert NodeSettings().resolved_node_id() == node_id_from_name(LONG)
    assert NodeSettings(node_id="explicit").resolved_node_id() == "explicit"
    monkeypatch.setenv("X0_NODE_NAME", "bad name!")
    with pytest.raises(ValueError, match="X0_NODE_NAME 'bad name!' is not a valid node id"):
        NodeSettings().resolved_node_id()


@pytest.mark.parametrize("node_id", ["", "-lead", "trail-", "sp ace", "x" * 65, "ünïcode"])
def test_a_bad_explicit_node_id_is_refused(node_id: str) -> None:
    with pytest.raises(ValueError, match="--node-id must be"):
        NodeSettings(node_id=node_id)


def test_the_node_command_reports_a_bad_node_id_before_starting() -> None:
    result = CliRunner().invoke(app, ["node", "--node-id", "x" * 65])
    assert result.exit_code == 2
    assert "--node-id must be 1..64" in result.output


# --- one settings style: pydantic-settings, only given flags, one HOST:PORT parser ------------


def test_settings_come_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("X0_LISTEN_UDP", "127.0.0.1:9000")
    monkeypatch.setenv("X0_HTTP", "[::1]:9001")
    monkeypatch.setenv("X0_HEARTBEAT_INTERVAL", "0.25")
    monkeypatch.setenv("X0_TUN", "true")
    monkeypatch.setenv("SPIFFE_ENDPOINT_SOCKET", "/run/test.sock")
    monkeypatch.setenv("X0_POD_IP", "10.1.2.3")
    settings = NodeSettings()
    assert settings.listen_udp == ("127.0.0.1", 9000)
    assert settings.http == ("::1", 9001)
    assert settings.heartbeat_interval == 0.25
    assert settings.tun is True
    assert settings.spiffe_socket == "/run/test.sock"
    assert settings.resolved_advertise(7810) == "10.1.2.3:7810"
    # Given values win over the environment.
    assert NodeSettings(listen_udp="0.0.0.0:1").listen_udp == ("0.0.0.0", 1)


def test_unknown_and_invalid_settings_are_refused() -> None:
    with pytest.raises(ValidationError, match="extra"):
        NodeSettings(listen="0.0.0.0:1")  # type: ignore[call-arg]
    with pytest.raises(ValidationError, match="--listen-udp must be HOST:PORT"):
        NodeSettings(listen_udp="7810")
    with pytest.raises(ValidationError, match=r"--advertise port must be 0\.\.65535"):
        NodeSettings(advertise="node:70000")
    with pytest.raises(ValidationError, match="--heartbeat-interval must be within"):
        NodeSettings(heartbeat_interval=0)
    with pytest.raises(ValidationError, match="--controller must be the controller's https"):
        NodeSettings(controller="ftp://x")


def test_the_node_command_passes_only_given_flags(monkeypatch: pytest.MonkeyPatch) -> None:
    # A variable reaches the settings (the flag was not given) and is validated there ...
    monkeypatch.setenv("X0_DEAD_AFTER", "0")
    result = CliRunner().invoke(app, ["node", "--node-id", "n1"])
    assert result.exit_code == 2
    assert "--dead-after must be within 1..100" in result.output
    # ... and a given flag wins over it.
    monkeypatch.setenv("X0_DEAD_AFTER", "4")
    result = CliRunner().invoke(app, ["node", "--node-id", "n1", "--listen-udp", "nope"])
    assert result.exit_code == 2
    assert "--listen-udp must be HOST:PORT, got 'nope'" in result.output


@pytest.mark.parametrize(
    ("text", "parsed"),
    [
        ("0.0.0.0:7810", ("0.0.0.0", 7810)),
        (" node-1.example:0 ", ("node-1.example", 0)),
        ("[fd00::1]:65535", ("fd00::1", 65535)),
    ],
)
def test_one_hostport_parser(text: str, parsed: tuple[str, int]) -> None:
    assert parse_hostport(text, "x") == parsed
    assert parse_hostport(format_hostport(*parsed), "x") == parsed


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("7810", "x must be HOST:PORT"),
        (":7810", "x must be HOST:PORT"),
        ("host:", "x must be HOST:PORT"),
        ("host:-1", "x must be HOST:PORT"),
        ("host:65536", "x port must be 0..65535"),
        ("[not-v6]:80", "x has an invalid IPv6 address"),
        ("[::1]", "x must be HOST:PORT"),
    ],
)
def test_bad_hostports_are_refused_by_name(text: str, message: str) -> None:
    with pytest.raises(ValueError, match=re.escape(message)):
        parse_hostport(text, "x")


def test_the_controller_is_reached_over_https_only() -> None:
    for url in ("http://x0tta6bl4-api:8080", "x0tta6bl4-api:8443", "ftp://x"):
        with pytest.raises(ValueError, match="served over TLS only"):
            NodeSettings(controller=url)
    assert NodeSettings().controller == "https://x0tta6bl4-api:8443"


def test_the_expected_controller_id_is_next_to_the_nodes_own() -> None:
    own = "spiffe://x0tta6bl4.mesh/ns/x0/sa/x0tta6bl4-app/node/worker-1"
    assert NodeSettings().expected_controller(own) == (
        "spiffe://x0tta6bl4.mesh/ns/x0/sa/x0tta6bl4-app/controller"
    )
    explicit = "spiffe://x0tta6bl4.mesh/ns/ops/sa/ctl/controller"
    settings = NodeSettings(controller_spiffe_id=explicit)
    assert settings.expected_controller(own) == explicit
    with pytest.raises(ValueError, match="pass --controller-spiffe-id"):
        NodeSettings().expected_controller("spiffe://x0tta6bl4.mesh/ns/x0/sa/shared")
    with pytest.raises(ValueError, match="trust domain"):
        NodeSettings(controller_spiffe_id="spiffe://other.td/ns/x/sa/y/controller")
