"""Overlay IPv4 address management: pure, sans-IO helpers.

The controller hands every mesh node one overlay IPv4 address from a configurable network
(default ``100.96.0.0/16``, inside the CGNAT range ``100.64.0.0/10``). The stores do the
atomic bookkeeping; this module only answers "which addresses may be used" and "in which
order should a node try them".

Candidate order is deterministic but spread: a node starts at ``sha256(node_id) mod n`` and
probes linearly. Two controller replicas allocating for different nodes at the same time
therefore start far apart and rarely collide, and a node that re-registers after its record
expired usually gets its previous address back.

Network and broadcast addresses are never handed out, so a network needs a prefix length of
at most 30 (two usable addresses).
"""

from __future__ import annotations

import hashlib
import ipaddress
from collections.abc import Container, Iterator
from ipaddress import IPv4Address, IPv4Network

__all__ = [
    "DEFAULT_OVERLAY_CIDR",
    "MAX_PREFIXLEN",
    "InvalidCidrError",
    "allocate",
    "candidates",
    "check_network",
    "first_host",
    "is_usable",
    "parse_overlay_cidr",
    "usable_count",
]

DEFAULT_OVERLAY_CIDR = "100.96.0.0/16"
"""The default overlay network (CGNAT range, RFC 6598)."""

MAX_PREFIXLEN = 30
"""The longest prefix accepted: a /30 still has two usable host addresses."""


class InvalidCidrError(ValueError):
    """The overlay network is not a usable IPv4 network."""


def parse_overlay_cidr(text: str) -> IPv4Network:
    """Parse and validate an overlay network such as ``"100.96.0.0/16"``.

    Raises :class:`InvalidCidrError` for IPv6, host bits set, a missing prefix length or a
    network too small to hold a host address besides its network and broadcast addresses.
    """
    if not isinstance(text, str):
        raise InvalidCidrError(f"overlay CIDR must be a string, not {type(text).__name__}")
    candidate = text.strip()
    if "/" not in candidate:
        raise InvalidCidrError(f"overlay CIDR {text!r} needs a prefix length, e.g. 100.96.0.0/16")
    try:
        network = ipaddress.ip_network(candidate, strict=True)
    except ValueError as exc:
        raise InvalidCidrError(f"overlay CIDR {text!r} is not a valid network: {exc}") from None
    if not isinstance(network, IPv4Network):
        raise InvalidCidrError(f"overlay CIDR {text!r} must be IPv4 (the overlay is IPv4 only)")
    check_network(network)
    return network


def check_network(network: IPv4Network) -> None:
    """Raise :class:`InvalidCidrError` if ``network`` is too small to allocate from."""
    if not isinstance(network, IPv4Network):
        raise InvalidCidrError(f"overlay network must be an IPv4Network, not {network!r}")
    if network.prefixlen > MAX_PREFIXLEN:
        raise InvalidCidrError(
            f"overlay CIDR {network} is too small: the prefix length must be at most "
            f"/{MAX_PREFIXLEN} to leave a usable address besides network and broadcast"
        )


def usable_count(network: IPv4Network) -> int:
    """How many addresses of ``network`` can be handed out (all but network and broadcast)."""
    check_network(network)
    return network.num_addresses - 2


def first_host(network: IPv4Network) -> IPv4Address:
    """The lowest usable address of ``network``."""
    check_network(network)
    return network.network_address + 1


def is_usable(network: IPv4Network, address: IPv4Address) -> bool:
    """True if ``address`` is inside ``network`` and is neither its network nor broadcast."""
    return address in network and address not in (
        network.network_address,
        network.broadcast_address,
    )


def _start_offset(node_id: str, count: int) -> int:
    digest = hashlib.sha256(node_id.encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") % count


def candidates(network: IPv4Network, node_id: str) -> Iterator[IPv4Address]:
    """Yield every usable address of ``network`` exactly once, in ``node_id``'s order.

    The order starts at a hash of ``node_id`` and probes linearly, wrapping around.
    """
    count = usable_count(network)
    base = int(first_host(network))
    start = _start_offset(node_id, count)
    for step in range(count):
        yield IPv4Address(base + (start + step) % count)


def allocate(
    network: IPv4Network, node_id: str, used: Container[IPv4Address]
) -> IPv4Address | None:
    """The first candidate of ``node_id`` not in ``used``, or ``None`` if ``network`` is full."""
    for address in candidates(network, node_id):
        if address not in used:
            return address
    return None
