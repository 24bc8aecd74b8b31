"""Plain records shared by the node's modules: members, our identity, app messages, config."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from x0tta6bl4.crypto.pqsvid import TrustBundle
from x0tta6bl4.crypto.suite import SigningKey
from x0tta6bl4.protocol.constants import REJECT_AFTER_TIME, REKEY_AFTER_TIME
from x0tta6bl4.protocol.failure import DEFAULT_DEAD_AFTER, DEFAULT_INTERVAL
from x0tta6bl4.protocol.neighbours import SelectionConfig
from x0tta6bl4.protocol.router import RouterConfig

__all__ = [
    "PING_CHANNEL",
    "Addr",
    "AppMessage",
    "CoreConfig",
    "LinkFilter",
    "Member",
    "NodeIdentity",
    "RevokedCert",
]

#: A UDP address: ``(host, port)``.
Addr = tuple[str, int]

#: ``allow(a, b)`` on node ids: an extra, local restriction of who may link (tests use it to
#: force a topology; the mesh policy still applies).
LinkFilter = Callable[[str, str], bool]

#: The application channel of mesh ping (echo request/reply); applications use others.
PING_CHANNEL = 0xFFFF


@dataclass(frozen=True, slots=True)
class Member:
    """A mesh node as the membership (the controller) describes it."""

    node_id: str
    spiffe_id: str
    endpoint: Addr
    overlay_ip: str | None = None
    #: The member's PQ SVID (DER) when known; its key verifies the member's adverts.
    cert_der: bytes | None = field(default=None, repr=False)


@dataclass(frozen=True, slots=True)
class RevokedCert:
    """A PQ SVID the controller revoked (re-keyed or deleted node), until its ``not_after``
    (UNIX seconds): no handshake is accepted with it, and links made with it are dropped."""

    serial: int
    node_id: str
    not_after: float


@dataclass(frozen=True, slots=True)
class NodeIdentity:
    """Who we are on the mesh: node id, SPIFFE ID, ML-DSA-65 key, PQ SVID, CA bundle."""

    node_id: str
    spiffe_id: str
    signing_key: SigningKey = field(repr=False)
    cert_der: bytes = field(repr=False)
    bundle: TrustBundle = field(repr=False)
    #: The PQ SVID's notAfter (UNIX seconds).
    not_after: float = 0.0
    overlay_ip: str | None = None


@dataclass(frozen=True, slots=True)
class AppMessage:
    """An application datagram that arrived over an end-to-end session."""

    src: str
    channel: int
    payload: bytes


@dataclass(frozen=True, slots=True)
class CoreConfig:
    """Tunables of one node's data plane (defaults: the runtime contract)."""

    heartbeat_interval: float = DEFAULT_INTERVAL
    dead_after: int = DEFAULT_DEAD_AFTER
    selection: SelectionConfig = field(default_factory=SelectionConfig)
    router: RouterConfig = field(default_factory=RouterConfig)
    rekey_after_time: float = REKEY_AFTER_TIME
    reject_after_time: float = REJECT_AFTER_TIME
    #: Hops a routed frame may take.
    ttl: int = 32
    #: The smaller node id initiates a link at once; the larger waits this long first.
    initiate_delay: float = 0.5
    #: First and largest pause between handshake attempts on a link that is down.
    retry_initial: float = 1.0
    retry_max: float = 8.0
    #: Test-only extra restriction of who may link.
    link_filter: LinkFilter | None = None
    #: Whether other nodes may route through us.
    transit: bool = True
    #: Neighbour selection runs at least this often (and at once after a membership, policy
    #: or link up/down change).
    reselect_interval: float = 5.0
    #: An end-to-end session whose data got no packet back for this long starts a new
    #: handshake (the peer may have restarted and lost its keys).
    e2e_stale_after: float = 1.0
    #: Link cost changes (RTT moving past the failure detector's hysteresis) reach the router,
    #: batched, at most once per this many seconds; each one re-signs and floods our advert.
    #: Link up/down is never delayed. 0 passes every change on at once. Every cost advert is
    #: verified by every node, so this bounds the mesh-wide advert rate they cause.
    cost_update_interval: float = 30.0

    def __post_init__(self) -> None:
        if self.heartbeat_interval <= 0 or self.dead_after < 1:
            raise ValueError("heartbeat_interval must be positive and dead_after at least 1")
        if not 1 <= self.ttl <= 255:
            raise ValueError("ttl must be 1..255")
        if self.retry_initial <= 0 or self.retry_max < self.retry_initial:
            raise ValueError("need 0 < retry_initial <= retry_max")
        if self.cost_update_interval < 0:
            raise ValueError("cost_update_interval must not be negative")
        if self.reselect_interval <= 0 or self.e2e_stale_after <= 0:
            raise ValueError("reselect_interval and e2e_stale_after must be positive")
