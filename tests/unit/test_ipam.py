"""Overlay address allocation: CIDR validation and the candidate order."""

from __future__ import annotations

from ipaddress import IPv4Address, IPv4Network

import pytest
from hypothesis import given
from hypothesis import strategies as st

from x0tta6bl4.controller import ipam


def test_default_cidr_is_cgnat() -> None:
    network = ipam.parse_overlay_cidr(ipam.DEFAULT_OVERLAY_CIDR)
    assert network.subnet_of(IPv4Network("100.64.0.0/10"))
    assert ipam.usable_count(network) == 65534


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("", "prefix length"),
        ("100.96.0.0", "prefix length"),
        ("100.96.0.1/16", "not a valid network"),
        ("100.96.0.0/33", "not a valid network"),
        ("fd00::/64", "IPv4"),
        ("100.96.0.0/31", "too small"),
        ("100.96.0.0/32", "too small"),
        ("banana/8", "not a valid network"),
    ],
)
def test_invalid_cidrs_are_rejected_with_a_reason(text: str, reason: str) -> None:
    with pytest.raises(ipam.InvalidCidrError, match=reason):
        ipam.parse_overlay_cidr(text)


def test_non_string_cidr_is_rejected() -> None:
    with pytest.raises(ipam.InvalidCidrError, match="string"):
        ipam.parse_overlay_cidr(16)  # type: ignore[arg-type]


def test_non_cgnat_networks_are_fine() -> None:
    assert ipam.parse_overlay_cidr(" 10.0.0.0/30 ") == IPv4Network("10.0.0.0/30")


def test_candidates_skip_network_and_broadcast() -> None:
    network = IPv4Network("192.0.2.0/30")
    assert sorted(ipam.candidates(network, "n")) == [
        IPv4Address("192.0.2.1"),
        IPv4Address("192.0.2.2"),
    ]
    assert not ipam.is_usable(network, IPv4Address("192.0.2.0"))
    assert not ipam.is_usable(network, IPv4Address("192.0.2.3"))
    assert not ipam.is_usable(network, IPv4Address("192.0.2.4"))
    assert ipam.is_usable(network, IPv4Address("192.0.2.1"))


def test_candidate_order_is_deterministic_and_spread() -> None:
    network = ipam.parse_overlay_cidr("100.96.0.0/16")
    first = {f"node-{i}": next(ipam.candidates(network, f"node-{i}")) for i in range(200)}
    assert first == {f"node-{i}": next(ipam.candidates(network, f"node-{i}")) for i in range(200)}
    # Hash-spread starting points: 200 nodes in 65534 addresses almost never share one.
    assert len(set(first.values())) >= 195


def test_allocate_probes_past_used_and_reports_full() -> None:
    network = IPv4Network("100.96.0.0/29")
    order = list(ipam.candidates(network, "a"))
    assert ipam.allocate(network, "a", set()) == order[0]
    assert ipam.allocate(network, "a", {order[0], order[1]}) == order[2]
    assert ipam.allocate(network, "a", set(order)) is None


def test_check_network_rejects_wrong_types() -> None:
    with pytest.raises(ipam.InvalidCidrError):
        ipam.check_network("100.96.0.0/16")  # type: ignore[arg-type]


@given(
    prefix=st.integers(min_value=20, max_value=30),
    base=st.integers(min_value=0, max_value=2**32 - 1),
    node_id=st.text(min_size=1, max_size=40),
)
def test_candidates_are_a_permutation_of_the_usable_hosts(
    prefix: int, base: int, node_id: str
) -> None:
    network = IPv4Network((base, prefix), strict=False)
    order = list(ipam.candidates(network, node_id))
    assert len(order) == ipam.usable_count(network)
    assert set(order) == set(network.hosts())
    assert order[0] == next(ipam.candidates(network, node_id))
