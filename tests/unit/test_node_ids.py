"""The per-principal SPIFFE ID scheme and the node ID ↔ SPIFFE ID binding."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from x0tta6bl4.identity.errors import InvalidSpiffeIdError
from x0tta6bl4.identity.node_ids import (
    NodeIdMapping,
    controller_id_for,
    default_node_mapping,
    is_node_id,
    node_id_from_name,
    node_spiffe_id,
    role_spiffe_id,
)

TD = "x0tta6bl4.mesh"
DEFAULT = NodeIdMapping(default_node_mapping(TD))


def test_scheme_gives_every_principal_its_own_id() -> None:
    node1 = node_spiffe_id(TD, "x0", "x0tta6bl4-app", "worker-1")
    node2 = node_spiffe_id(TD, "x0", "x0tta6bl4-app", "worker-2")
    controller = role_spiffe_id(TD, "x0", "x0tta6bl4-app", "controller")
    check = role_spiffe_id(TD, "x0", "x0tta6bl4-check", "check")
    assert str(node1) == "spiffe://x0tta6bl4.mesh/ns/x0/sa/x0tta6bl4-app/node/worker-1"
    assert str(controller) == "spiffe://x0tta6bl4.mesh/ns/x0/sa/x0tta6bl4-app/controller"
    assert len({node1, node2, controller, check}) == 4


def test_default_mapping_takes_the_node_segment() -> None:
    assert DEFAULT.node_id_for(f"spiffe://{TD}/ns/x0/sa/app/node/worker-1") == "worker-1"
    assert DEFAULT.node_id_for(f"spiffe://{TD}/node/n") == "n"
    assert DEFAULT.allows(f"spiffe://{TD}/ns/x0/sa/app/node/worker-1", "worker-1")
    # The ID names another node, or no node at all, or is in another trust domain.
    assert not DEFAULT.allows(f"spiffe://{TD}/ns/x0/sa/app/node/worker-1", "worker-2")
    assert DEFAULT.node_id_for(f"spiffe://{TD}/ns/x0/sa/app/controller") is None
    assert DEFAULT.node_id_for(f"spiffe://{TD}/ns/x0/sa/app") is None
    assert DEFAULT.node_id_for("spiffe://other.td/ns/x0/sa/app/node/worker-1") is None
    assert DEFAULT.node_id_for(f"spiffe://{TD}/ns/x0/sa/app/node/worker-1/extra") is None
    assert DEFAULT.node_id_for("not a spiffe id") is None
    # Odd last segments: not a node ID (must start and end with a letter or digit).
    for odd in ("-lead", "trail-", ".hidden", "a_", "_"):
        assert DEFAULT.node_id_for(f"spiffe://{TD}/ns/x0/sa/app/node/{odd}") is None, odd
        assert not DEFAULT.allows(f"spiffe://{TD}/ns/x0/sa/app/node/{odd}", odd)


def test_long_kubernetes_node_names_map_as_the_agent_shortens_them() -> None:
    name = "ip-10-0-0-1." + "x" * 200 + ".compute.internal"
    node_id = DEFAULT.node_id_for(f"spiffe://{TD}/ns/x0/sa/app/node/{name}")
    assert node_id == node_id_from_name(name)
    assert node_id is not None
    assert len(node_id) == 64
    assert is_node_id(node_id)


def test_custom_mapping_and_none() -> None:
    mapping = NodeIdMapping(f"spiffe://{TD}/ns/mesh/sa/*/node/{{node}}")
    assert mapping.node_id_for(f"spiffe://{TD}/ns/mesh/sa/a/node/n1") == "n1"
    assert mapping.node_id_for(f"spiffe://{TD}/ns/other/sa/a/node/n1") is None
    off = NodeIdMapping("none")
    assert not off.enabled
    assert off.allows(f"spiffe://{TD}/ns/x/sa/y", "anything")
    assert off.node_id_for(f"spiffe://{TD}/ns/x/sa/y/node/n") is None


@pytest.mark.parametrize(
    "pattern",
    [
        f"spiffe://{TD}/**/node",
        f"spiffe://{TD}/{{node}}/x",
        f"spiffe://{TD}/{{node}}/{{node}}",
        "spiffe://*/node/{node}",
        "",
    ],
)
def test_bad_mappings_are_refused(pattern: str) -> None:
    with pytest.raises(InvalidSpiffeIdError):
        NodeIdMapping(pattern)


def test_controller_id_next_to_a_node_or_check() -> None:
    base = f"spiffe://{TD}/ns/x0/sa/x0tta6bl4-app"
    assert str(controller_id_for(f"{base}/node/worker-1")) == f"{base}/controller"
    assert str(controller_id_for(f"{base}/check")) == f"{base}/controller"
    assert controller_id_for(f"{base}") is None
    assert controller_id_for(f"spiffe://{TD}/node/x") is None


@given(st.from_regex(r"[a-z0-9]([-a-z0-9.]{0,250}[a-z0-9])?", fullmatch=True))
def test_any_kubernetes_node_name_maps_to_a_valid_distinct_id(name: str) -> None:
    node_id = DEFAULT.node_id_for(f"spiffe://{TD}/ns/x0/sa/app/node/{name}")
    assert node_id is not None
    assert is_node_id(node_id)
    assert node_id == node_id_from_name(name)
