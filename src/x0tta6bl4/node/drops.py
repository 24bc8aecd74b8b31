"""Why a mesh node drops a datagram, a frame or a packet: the labels of
``x0tta6bl4_node_packets_dropped_total{reason}``.

A label is one of:

* a :class:`~x0tta6bl4.protocol.errors.DropReason`: the protocol refused the input (a
  transport datagram or an inner frame);
* a :class:`NodeDrop`: the node itself refused it (no route, no link, TUN checks, link-layer
  reassembly, ...);
* ``handshake_`` + a :class:`~x0tta6bl4.protocol.errors.DropReason`: the handshake listener
  or a handshake machine refused a handshake datagram;
* ``e2e_`` + any of the above: the same on an end-to-end session (inside ROUTED frames).

Both enums are closed and ``docs/metrics.md`` lists every member of each (a test holds them
equal): a new reason is one member and one line of the docs.
"""

from __future__ import annotations

import enum

from x0tta6bl4.protocol.errors import DropReason

__all__ = [
    "E2E_PREFIX",
    "HANDSHAKE_PREFIX",
    "NodeDrop",
    "e2e_label",
    "handshake_label",
    "is_drop_label",
]

HANDSHAKE_PREFIX = "handshake_"
E2E_PREFIX = "e2e_"


class NodeDrop(enum.StrEnum):
    """Why the node (not the protocol) drops input (see ``docs/metrics.md``)."""

    # datagrams (channels.py)
    EMPTY = "empty"
    INIT_COLLISION = "init_collision"
    # membership (core.py)
    MEMBER_CERT_REJECTED = "member_cert_rejected"
    CERT_REVOKED = "cert_revoked"
    CERT_NOT_CURRENT = "cert_not_current"
    # inner frames and forwarding (core.py)
    UNEXPECTED_FRAME = "unexpected_frame"
    TTL_EXPIRED = "ttl_expired"
    NO_ROUTE = "no_route"
    NO_LINK = "no_link"
    BAD_PING = "bad_ping"
    FRAME_TOO_LARGE = "frame_too_large"
    # link-layer fragmentation (core.py, reassembly.py)
    FRAGMENT_NESTED = "fragment_nested"
    FRAGMENT_TOO_LARGE = "fragment_too_large"
    FRAGMENT_EVICTED = "fragment_evicted"
    FRAGMENT_INCONSISTENT = "fragment_inconsistent"
    FRAGMENT_EXPIRED = "fragment_expired"
    # TUN mode (overlay.py, tun.py)
    TUN_SHORT_PACKET = "tun_short_packet"
    TUN_NOT_IPV4 = "tun_not_ipv4"
    TUN_BAD_HEADER = "tun_bad_header"
    TUN_BAD_LENGTH = "tun_bad_length"
    TUN_BAD_SOURCE = "tun_bad_source"
    TUN_TOO_BIG = "tun_too_big"
    TUN_NO_DESTINATION = "tun_no_destination"
    TUN_SPOOFED_SOURCE = "tun_spoofed_source"
    TUN_NOT_FOR_US = "tun_not_for_us"
    TUN_NO_ROUTE = "tun_no_route"
    TUN_WRITE_FAILED = "tun_write_failed"
    # the native data plane (node/native.py, native/src/dataplane.rs)
    HANDUP_OVERFLOW = "handup_overflow"
    RECV_TRUNCATED = "recv_truncated"
    TUN_BAD_GSO = "tun_bad_gso"
    TUN_UNSUPPORTED_GSO = "tun_unsupported_gso"
    TUN_GSO_OVERSIZE = "tun_gso_oversize"
    TUN_NO_BRIDGE = "tun_no_bridge"


def handshake_label(reason: DropReason) -> str:
    """The label of a handshake datagram the listener or a machine refused for ``reason``."""
    return HANDSHAKE_PREFIX + reason


def e2e_label(label: str) -> str:
    """The label of ``label`` on an end-to-end session."""
    return E2E_PREFIX + label


_PROTOCOL: frozenset[str] = frozenset(DropReason)
_SINGLE: frozenset[str] = _PROTOCOL | frozenset(NodeDrop)


def _single(label: str) -> bool:
    return label in _SINGLE or (
        label.startswith(HANDSHAKE_PREFIX) and label.removeprefix(HANDSHAKE_PREFIX) in _PROTOCOL
    )


def is_drop_label(label: str) -> bool:
    """Whether ``label`` is one the node can count (the closed set the module docstring
    describes)."""
    return _single(label.removeprefix(E2E_PREFIX))
