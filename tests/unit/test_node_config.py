"""Node settings: node ids from flags, the Kubernetes node name or the hostname."""

from __future__ import annotations

import re

import pytest
from typer.testing import CliRunner

from x0tta6bl4.cli import app
from x0tta6bl4.controller.api.schemas import NODE_ID_PATTERN
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
