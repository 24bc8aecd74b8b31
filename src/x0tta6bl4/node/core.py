"""The data plane of one mesh node, sans-IO: links, failure detection, routing, forwarding.

:class:`NodeCore` glues the protocol machines together and never touches a socket or a
clock (``now`` is the caller's monotonic time; ``wall_offset`` turns it into wall time for
certificate checks and advert sequence numbers):

* **links** (:class:`~x0tta6bl4.node.channels.Channels` over UDP addresses): PQ handshakes
  with the neighbours that the :class:`~x0tta6bl4.node.neighbourhood.Neighbourhood` selects
  and maintains, one :class:`~x0tta6bl4.protocol.failure.FailureDetector` per link
  (heartbeats, RTT, up/down);
* **routing**: a :class:`~x0tta6bl4.protocol.router.Router` fed with link up/down/cost and the
  signed adverts that arrive in LINK_STATE_ADVERT frames (:meth:`Router.receive_flooded
  <x0tta6bl4.protocol.router.Router.receive_flooded>`: an advert whose origin's key we do not
  know yet waits until the key arrives with the membership or a handshake);
* **forwarding**: ROUTED frames go to the next hop with TTL − 1; frames for us go to the
  end-to-end sessions;
* **end-to-end sessions** (a second :class:`Channels` whose "address" is the destination
  node id): the same handshake and transport run inside ROUTED frames, so relays carry
  ciphertext they cannot read. Application datagrams (APP_DATA frames) travel only inside
  them; mesh ping is the channel :data:`~x0tta6bl4.node.model.PING_CHANNEL`.

Inputs: :meth:`receive_datagram`, :meth:`handle_timer`, :meth:`set_members`,
:meth:`set_policy`, :meth:`set_identity`, :meth:`send_app`, :meth:`ping`.
Outputs: :meth:`datagrams_to_send`, :meth:`next_app`, :meth:`get_timer`, :meth:`status`,
counters (:attr:`dropped`, :attr:`counters`). Not thread-safe: one owner drives it.
"""

from __future__ import annotations

import hmac
import ipaddress
import random
import struct
from collections import Counter, deque
from collections.abc import Callable, Iterable
from typing import Any, Protocol

from cryptography.hazmat.primitives.asymmetric import mldsa

from x0tta6bl4.crypto.errors import CryptoError
from x0tta6bl4.crypto.pqsvid import PeerIdentity, verify_svid
from x0tta6bl4.node.channels import (
    ChannelData,
    Channels,
    ChannelUp,
    HandshakeDone,
    TransportSession,
)
from x0tta6bl4.node.drops import NodeDrop, e2e_label
from x0tta6bl4.node.model import (
    PING_CHANNEL,
    Addr,
    AppMessage,
    CoreConfig,
    Member,
    NodeIdentity,
    RevokedCert,
)
from x0tta6bl4.node.neighbourhood import Neighbourhood
from x0tta6bl4.node.peers import Link
from x0tta6bl4.node.reassembly import split_frame
from x0tta6bl4.protocol.constants import MAX_TRANSPORT_DATAGRAM_SIZE
from x0tta6bl4.protocol.errors import LocalProtocolError, RemoteProtocolError
from x0tta6bl4.protocol.failure import (
    FailureDetector,
    FailureDetectorConfig,
    LinkCostChanged,
    LinkDown,
    LinkUp,
)
from x0tta6bl4.protocol.frames import (
    FRAME_HEADER_SIZE,
    MAX_NODE_ID_SIZE,
    AppData,
    Fragment,
    Frame,
    FrameType,
    Heartbeat,
    LinkStateAdvert,
    LsdbAnnounce,
    LsdbRequest,
    LsdbSummary,
    Routed,
    decode_frames,
    encode_frames,
)
from x0tta6bl4.protocol.handshake import Credential, HandshakeConfig
from x0tta6bl4.protocol.neighbours import accept_inbound
from x0tta6bl4.protocol.router import WAITING_FOR_KEY, Router
from x0tta6bl4.protocol.session import MIN_TRANSPORT_DATAGRAM_SIZE, Session

__all__ = ["E2E_MAX_DATAGRAM", "MAX_APP_PAYLOAD", "DataplaneHooks", "NodeCore", "PolicyCheck"]

#: An end-to-end datagram inside a ROUTED frame inside a link packet still fits one
#: 1472-byte UDP payload (two 64-byte node ids, frame headers, the link's header and tag).
E2E_MAX_DATAGRAM = (
    MAX_TRANSPORT_DATAGRAM_SIZE
    - MIN_TRANSPORT_DATAGRAM_SIZE
    - FRAME_HEADER_SIZE
    - (4 + 2 * MAX_NODE_ID_SIZE)
)
#: The largest application payload of one datagram.
MAX_APP_PAYLOAD = E2E_MAX_DATAGRAM - MIN_TRANSPORT_DATAGRAM_SIZE - FRAME_HEADER_SIZE - 2

#: ``check(a_spiffe_id, b_spiffe_id)`` — the mesh policy's ``may_link`` or ``may_talk``.
PolicyCheck = Callable[[str, str], bool]

_COALESCE = 1400
_PENDING_PER_DEST = 64
_PING = struct.Struct("!BIQ")
_LSA_FRAME = int(FrameType.LINK_STATE_ADVERT)


class DataplaneHooks(Protocol):
    """What the core tells a native data plane (``x0tta6bl4.node.native``) and asks of it.

    The data plane holds the sessions the core creates through it, so it seals and opens
    packets itself; the core keeps it told about forgotten peers, moved links, routes and link
    states, and reads its per-peer time stamps of the last authentic packet.
    """

    def session(self, node_id: str, addr: Addr | None, *, e2e: bool, **limits: Any) -> Any:
        """A new transport session for ``node_id``, attached to the data plane."""

    def forget(self, node_id: str, *, e2e: bool) -> None:
        """``node_id``'s link (or end-to-end) state was dropped: remove its keys."""

    def move(self, node_id: str, addr: Addr) -> None:
        """The link to ``node_id`` now uses ``addr``."""

    def routes_changed(self, routes: dict[str, str]) -> None:
        """The forwarding table (destination → next hop) changed."""

    def link_up(self, node_id: str, up: bool) -> None:
        """The failure detector's verdict on the link to ``node_id``."""

    def liveness(self, *, e2e: bool) -> dict[str, float]:
        """Per peer, the monotonic time of its last authentic packet seen natively."""

    def counters(self) -> dict[str, int]:
        """The data plane's packet counters and drops by reason."""


#: Native data plane counters that are not drops (everything else it counts is one).
_NATIVE_NOT_DROPS = frozenset(
    {
        "rx_datagrams",
        "tx_datagrams",
        "send_errors",
        "forwarded",
        "probes_answered",
        "pings_answered",
        "tun_packets_in",
        "tun_packets_out",
        "tun_bytes_in",
        "tun_bytes_out",
        "tun_gso_reads",
        "tun_gso_segments",
        "tun_writes",
        "tun_coalesced",
        "udp_gso_sends",
        "udp_gso_datagrams",
        "udp_gro_runs",
        "udp_gro_datagrams",
        "udp_gso_disabled",
    }
)


def _addr_key(addr: Addr) -> bytes:
    return f"{addr[0]}|{addr[1]}".encode()


def _source_key(addr: Addr) -> bytes:
    """The handshake listener's per-source limit key: the IP address (an IPv6 /64), so that
    one host does not multiply its handshake budget by using many ports or addresses."""
    host = addr[0]
    if ":" in host:
        try:
            return ipaddress.IPv6Network(f"{host}/64", strict=False).network_address.packed
        except ValueError:
            pass
    return host.encode()


def _allow(a: str, b: str) -> bool:
    return True


#: Entries per LSDB_ANNOUNCE / LSDB_REQUEST frame (≤ 73 bytes each: well inside a frame).
_ENTRIES_PER_FRAME = 256


def _chunks(entries: list[tuple[str, int]]) -> list[tuple[tuple[str, int], ...]]:
    return [
        tuple(entries[i : i + _ENTRIES_PER_FRAME])
        for i in range(0, len(entries), _ENTRIES_PER_FRAME)
    ]


class NodeCore:
    """One node's links, routes and end-to-end sessions (see the module docstring)."""

    def __init__(
        self,
        identity: NodeIdentity,
        now: float,
        *,
        wall_offset: float = 0.0,
        config: CoreConfig | None = None,
        may_link: PolicyCheck | None = None,
        may_talk: PolicyCheck | None = None,
        dataplane: DataplaneHooks | None = None,
    ) -> None:
        self.config = config or CoreConfig()
        #: The native data plane, or None (the Python reference opens and forwards).
        self.dataplane = dataplane
        self.identity = identity
        self.node_id = identity.node_id
        self._wall_offset = wall_offset
        self._may_link = may_link or _allow
        self._may_talk = may_talk or _allow
        self._members: dict[str, Member] = {}
        #: Each member's current PQ SVID (from the membership), verified: the only
        #: certificate (serial, key) a handshake for that node ID may present.
        self._member_certs: dict[str, PeerIdentity] = {}
        #: Revoked PQ SVIDs (serial -> notAfter, wall clock) published by the controller.
        self._revoked: dict[int, float] = {}
        self._keys: dict[str, mldsa.MLDSA65PublicKey] = {}
        self._fd_config = FailureDetectorConfig(
            interval=self.config.heartbeat_interval, dead_after=self.config.dead_after
        )
        cfg = self.config

        def link_session(node_id: str, addr: Addr) -> TransportSession:
            limits = {
                "rekey_after_time": cfg.rekey_after_time,
                "reject_after_time": cfg.reject_after_time,
                "max_datagram_size": MAX_TRANSPORT_DATAGRAM_SIZE,
            }
            if dataplane is not None:
                session: TransportSession = dataplane.session(node_id, addr, e2e=False, **limits)
                return session
            return Session(**limits)  # type: ignore[arg-type]

        def e2e_session(node_id: str, _addr: str) -> TransportSession:
            limits = {
                "rekey_after_time": cfg.rekey_after_time,
                "reject_after_time": cfg.reject_after_time,
                "max_datagram_size": E2E_MAX_DATAGRAM,
            }
            if dataplane is not None:
                session: TransportSession = dataplane.session(node_id, None, e2e=True, **limits)
                return session
            return Session(**limits)  # type: ignore[arg-type]

        self.links: Channels[Addr] = Channels(
            self.node_id,
            self._handshake_config(self._authorize_link),
            now,
            session_factory=link_session,
            addr_key=_addr_key,
            source_key=_source_key,
            on_forget=None if dataplane is None else lambda n: dataplane.forget(n, e2e=False),
            on_move=None if dataplane is None else dataplane.move,
        )
        self.e2e: Channels[str] = Channels(
            self.node_id,
            self._handshake_config(self._authorize_talk),
            now,
            session_factory=e2e_session,
            addr_key=lambda node_id: node_id.encode(),
            stale_after=cfg.e2e_stale_after,
            on_forget=None if dataplane is None else lambda n: dataplane.forget(n, e2e=True),
        )
        self.router = Router(
            self.node_id,
            identity.signing_key,
            self._keys.get,
            now,
            wall_offset=wall_offset,
            config=cfg.router,
            transit=cfg.transit,
        )
        self.neighbourhood = Neighbourhood(
            self.node_id,
            cfg,
            fd_config=self._fd_config,
            channels=self.links,
            router=self.router,
            allowed=self._link_allowed,
            now=now,
        )
        #: The neighbourhood's link table (the same dict).
        self._link: dict[str, Link] = self.neighbourhood.links
        self._link_serial: dict[str, int] = {}
        self._pending_app: dict[str, deque[bytes]] = {}
        self._inbox: deque[AppMessage] = deque()
        self._pongs: deque[tuple[str, int, float]] = deque()
        self._outbox: list[tuple[bytes, Addr]] = []
        self._pending_cost: dict[str, int] = {}
        #: Links whose failure detector may have heartbeats or events to drain.
        self._fd_dirty: set[str] = set()
        #: The earliest failure-detector or retry deadline of any link; None: scan again.
        #: Recomputed after each timer run; between runs only links that were fed (dirty)
        #: can have an earlier deadline, and _drain_failure folds those in.
        self._link_timer: float | None = None
        #: Links with frames queued since the last flush.
        self._to_flush: list[Link] = []
        self._cost_due: float | None = None
        # Cost changes wait a full interval after start (the first RTTs, measured while every
        # link is doing its handshake, are the noisiest) and every batch is jittered by up to
        # a quarter interval, so nodes that started together do not re-sign their adverts
        # together (every advert is verified by every node). Seeded by the node id: the
        # core stays deterministic for tests.
        self._cost_sent = now
        self._cost_jitter = random.Random(self.node_id).random  # noqa: S311 - timing only
        #: Datagrams and frames dropped, by reason (``x0tta6bl4_node_packets_dropped_total``;
        #: every key is a label of :mod:`x0tta6bl4.node.drops`).
        self.dropped: Counter[str] = Counter()
        #: ``handshakes_ok``, ``handshakes_failed``, ``link_down_events``, ``forwarded``, ...
        self.counters: Counter[str] = Counter()
        #: Failed link handshakes by reason (``unauthorized``, ``certificate_rejected``, …;
        #: ``x0tta6bl4_node_handshake_failures_total``): a closed set, the handshake's error
        #: codes plus ``self`` and ``duplicate_keys``.
        self.handshake_failures: Counter[str] = Counter()
        #: Diagnostic tap: called with every ROUTED frame this node relays for others.
        self.on_transit: Callable[[Routed], None] | None = None

    # --- configuration ------------------------------------------------------------------------

    def _handshake_config(self, authorize: Callable[[PeerIdentity], bool]) -> HandshakeConfig:
        identity = self.identity
        return HandshakeConfig(
            credential=Credential(identity.cert_der, identity.signing_key),
            verify_peer=self._verify_peer,
            authorize=authorize,
        )

    def _verify_peer(self, cert_der: bytes) -> PeerIdentity:
        return verify_svid(cert_der, self.identity.bundle, self._wall(self._now))

    def _wall(self, now: float) -> float:
        return now + self._wall_offset

    def set_identity(self, identity: NodeIdentity, now: float) -> None:
        """A renewed PQ SVID (or CA bundle): new handshakes use it; every link rekeys now."""
        if identity.node_id != self.node_id:
            raise LocalProtocolError("a node cannot change its node id")
        self.identity = identity
        self._now = now
        self.links.set_config(self._handshake_config(self._authorize_link), now)
        self.e2e.set_config(self._handshake_config(self._authorize_talk), now)
        for channel in self.links:
            if channel.session.can_send:
                self.links.connect(channel.node_id, channel.addr, now)
        self._process(now)

    def set_policy(
        self, may_link: PolicyCheck | None, may_talk: PolicyCheck | None, now: float
    ) -> None:
        """Apply a new mesh policy; links it forbids are closed."""
        self._may_link = may_link or _allow
        self._may_talk = may_talk or _allow
        for node_id in list(self._link):
            member = self._members.get(node_id)
            if member is not None and not self._link_allowed(member.node_id, member.spiffe_id):
                self.neighbourhood.close(node_id, now)
        self.neighbourhood.reselect(now)
        self._process(now)

    def set_members(
        self,
        members: Iterable[Member],
        now: float,
        revoked: Iterable[RevokedCert] | None = None,
    ) -> None:
        """The membership changed (from the controller); learn keys, re-select neighbours.

        ``revoked`` replaces the revoked certificates (None keeps those known; an entry past
        its notAfter is forgotten). A node that left the membership, whose current PQ SVID
        certifies another key than before (re-keyed, or a certificate that no longer
        verifies), or whose link or end-to-end session was made with a certificate that is
        now revoked or no longer current (:meth:`_standing`) loses that link and session at
        once: from now on only a handshake with the membership's current certificate for
        that node ID is accepted (:meth:`_known_identity`).
        """
        self._now = now
        wall = self._wall(now)
        if revoked is not None:
            self._revoked = {r.serial: r.not_after for r in revoked if r.not_after > wall}
        else:
            self._revoked = {s: t for s, t in self._revoked.items() if t > wall}
        new = {m.node_id: m for m in members if m.node_id != self.node_id}
        certs: dict[str, PeerIdentity] = {}
        learned: list[PeerIdentity] = []
        for member in new.values():
            old = self._members.get(member.node_id)
            if member.cert_der is None:
                continue
            if old == member:
                known = self._member_certs.get(member.node_id)
                if known is not None:
                    certs[member.node_id] = known
                continue
            try:
                identity = verify_svid(member.cert_der, self.identity.bundle, wall)
            except CryptoError:
                self.dropped[NodeDrop.MEMBER_CERT_REJECTED] += 1
                continue
            if identity.node_id != member.node_id or identity.spiffe_id != member.spiffe_id:
                self.dropped[NodeDrop.MEMBER_CERT_REJECTED] += 1
                continue
            certs[member.node_id] = identity
            learned.append(identity)

        def key(table: dict[str, PeerIdentity], node_id: str) -> bytes | None:
            cert = table.get(node_id)
            return None if cert is None else cert.public_key_bytes

        for node_id in set(self._members) | set(self._link):
            current, before = new.get(node_id), self._members.get(node_id)
            gone = current is None or (before is not None and before.spiffe_id != current.spiffe_id)
            rekeyed = (
                current is not None
                and current.cert_der is not None
                and key(certs, node_id) != key(self._member_certs, node_id)
            )
            if gone or rekeyed:
                self.neighbourhood.close(node_id, now)
                self.e2e.forget(node_id)
        for identity in learned:
            self._learn(identity, now)
        for member in new.values():
            old = self._members.get(member.node_id)
            if old is not None and old.endpoint != member.endpoint:
                self.links.set_addr(member.node_id, member.endpoint)
        self._members = new
        self._member_certs = certs
        # Links and sessions made with a certificate that is revoked or no longer current.
        for channel in list(self.links):
            if channel.identity is not None and self._standing(channel.identity, made=True):
                self.neighbourhood.close(channel.node_id, now)
                self.e2e.forget(channel.node_id)
        for e2e_channel in list(self.e2e):
            if e2e_channel.identity is not None and self._standing(e2e_channel.identity, made=True):
                self.e2e.forget(e2e_channel.node_id)
        self.neighbourhood.reselect(now)
        self._process(now)

    def revoked_serials(self) -> dict[int, float]:
        """The revoked PQ SVID serials this node knows (serial -> notAfter)."""
        return dict(self._revoked)

    @property
    def members(self) -> dict[str, Member]:
        return dict(self._members)

    # --- data-plane inputs --------------------------------------------------------------------

    def receive_datagram(self, data: bytes, addr: Addr, now: float) -> None:
        """One UDP datagram from ``addr``. Never raises for bad input (drops and counts)."""
        self._now = now
        links = self.links
        links.receive(data, addr, now)
        if links.has_events or self._to_flush:
            self._process(now)
            return
        # No event (the common case under a flood: a drop, or a cookie reply): no other
        # machine has new input, so only the link layer's counters and datagrams move.
        if links.dropped:
            for reason, count in links.dropped.items():
                self.dropped[reason] += count
            links.dropped.clear()
        self._outbox.extend(links.datagrams_to_send())

    def receive_link_frames(self, peer: str, plaintext: bytes, promoted: bool, now: float) -> None:
        """Frames of a link packet the native data plane opened (what it does not handle
        itself: control frames, heartbeats, a keypair promotion)."""
        self._now = now
        self.links.opened(peer, plaintext, promoted, now)
        self._process(now)

    def receive_e2e_datagram(self, src: str, payload: bytes, now: float) -> None:
        """An end-to-end datagram for us that the native data plane does not open (handshake)."""
        self._now = now
        self.e2e.receive(payload, src, now)
        self._process(now)

    def receive_e2e_frames(self, src: str, plaintext: bytes, promoted: bool, now: float) -> None:
        """Frames of an end-to-end packet the native data plane opened (channels it does not
        serve itself, echo replies, a keypair promotion)."""
        self._now = now
        self.e2e.opened(src, plaintext, promoted, now)
        self._process(now)

    def send_app(self, dest: str, channel: int, payload: bytes, now: float) -> None:
        """Send an application datagram to node ``dest`` over an end-to-end session.

        Raises :class:`ValueError` for an unknown destination, a channel outside 0..65534 or
        a payload larger than :data:`MAX_APP_PAYLOAD`.
        """
        if not 0 <= channel < PING_CHANNEL:
            raise ValueError(f"channel must be 0..{PING_CHANNEL - 1}")
        self._send_e2e(dest, channel, payload, now)

    def ping(self, dest: str, seq: int, now: float) -> None:
        """Send a mesh echo request to ``dest``; the reply shows up in :meth:`next_pong`."""
        payload = _PING.pack(0, seq & 0xFFFFFFFF, int(self._wall(now) * 1e6))
        self._send_e2e(dest, PING_CHANNEL, payload, now)

    def _send_e2e(self, dest: str, channel: int, payload: bytes, now: float) -> None:
        if len(payload) > MAX_APP_PAYLOAD:
            raise ValueError(f"payload of {len(payload)} bytes exceeds {MAX_APP_PAYLOAD}")
        if dest == self.node_id:
            raise ValueError("cannot send to ourselves")
        if dest not in self._members and self.router.route(dest) is None:
            raise ValueError(f"unknown destination node {dest!r}")
        self._now = now
        plaintext = encode_frames([AppData(channel, payload)])
        if not self.e2e.send(dest, plaintext, now):
            queue = self._pending_app.setdefault(dest, deque(maxlen=_PENDING_PER_DEST))
            queue.append(plaintext)
            channel_state = self.e2e.get(dest)
            if (
                channel_state is None
                or channel_state.initiator is None
                or (channel_state.initiator.done)
            ):
                self.e2e.connect(dest, dest, now)
        self._process(now)

    def send_frame(self, peer: str, frame: Frame, now: float) -> None:
        """Send one raw inner frame on the link to ``peer`` (diagnostics and fault tests)."""
        self._now = now
        self._queue(peer, frame)
        self._process(now)

    def handle_timer(self, now: float) -> None:
        self._now = now
        self._link_timer = None
        if self.dataplane is not None:
            self._native_liveness()
        self.links.handle_timer(now)
        self.e2e.handle_timer(now)
        for link in list(self._link.values()):
            fd = link.fd
            # Heartbeats due soon go with this wake-up: a node's links share timer runs.
            if fd is not None and now >= fd.get_timer() - fd.early:
                fd.handle_timer(now)
                self._fd_dirty.add(link.node_id)
        if now >= self.router.get_timer():
            self.router.handle_timer(now)
        neighbourhood = self.neighbourhood
        if now >= neighbourhood.select_at:
            neighbourhood.select(self._members, now)
        if self._cost_due is not None and now >= self._cost_due:
            self._apply_costs(now)
        neighbourhood.maintain(self._members, now)
        self._process(now)

    def _native_liveness(self) -> None:
        """Packets the native data plane opened without handing them up still prove the peer
        alive: its time stamps feed the failure detectors and the end-to-end stale check."""
        assert self.dataplane is not None
        for peer, stamp in self.dataplane.liveness(e2e=False).items():
            link = self._link.get(peer)
            if link is not None and link.fd is not None:
                link.fd.on_packet_received(stamp)
        for peer, stamp in self.dataplane.liveness(e2e=True).items():
            channel = self.e2e.get(peer)
            if channel is None:
                continue
            if channel.last_received is None or stamp > channel.last_received:
                channel.last_received = stamp
            since = channel.unanswered_since
            if since is not None and stamp >= since:
                channel.unanswered_since = None

    # --- outputs ------------------------------------------------------------------------------

    def get_timer(self) -> float:
        timer = self._link_timer
        if timer is None:
            timer = self._link_timer = self._scan_link_timers()
        timer = min(timer, self.router.get_timer(), self.neighbourhood.select_at)
        if self._cost_due is not None and self._cost_due < timer:
            timer = self._cost_due
        for source in (self.links.get_timer(), self.e2e.get_timer()):
            if source is not None and source < timer:
                timer = source
        return timer

    def _scan_link_timers(self) -> float:
        timer = float("inf")
        for link in self._link.values():
            if link.fd is not None:
                timer = min(timer, link.fd.get_timer())
            if link.attempt_due is not None:
                timer = min(timer, link.attempt_due)
        return timer

    def datagrams_to_send(self) -> list[tuple[bytes, Addr]]:
        out, self._outbox = self._outbox, []
        return out

    def next_app(self) -> AppMessage | None:
        """The next application datagram that arrived, or None."""
        return self._inbox.popleft() if self._inbox else None

    def next_pong(self) -> tuple[str, int, float] | None:
        """``(src, seq, rtt seconds)`` of the next echo reply, or None."""
        return self._pongs.popleft() if self._pongs else None

    def all_dropped(self) -> dict[str, int]:
        """Drops by reason, the native data plane's included
        (``x0tta6bl4_node_packets_dropped_total``)."""
        out = Counter(self.dropped)
        if self.dataplane is not None:
            for key, value in self.dataplane.counters().items():
                if key not in _NATIVE_NOT_DROPS:
                    out[key] += value
        return dict(out)

    def forwarded(self) -> int:
        """ROUTED frames relayed for other nodes (natively or here)."""
        native = 0 if self.dataplane is None else self.dataplane.counters().get("forwarded", 0)
        return self.counters["forwarded"] + native

    def link_state(self, peer: str) -> str:
        link = self._link.get(peer)
        if link is None:
            return "none"
        return link.state(self.links.get(peer))

    def link_peers(self) -> list[str]:
        """Every peer with a link entry (any state)."""
        return sorted(self._link)

    def up_links(self) -> list[str]:
        return sorted(n for n, link in self._link.items() if link.up)

    def status(self) -> dict[str, Any]:
        """A JSON-ready snapshot: links, routes, end-to-end sessions, counters."""
        links = []
        for node_id, link in sorted(self._link.items()):
            channel = self.links.get(node_id)
            fd = link.fd
            links.append(
                {
                    "peer": node_id,
                    "state": link.state(channel),
                    "endpoint": None if channel is None else f"{channel.addr[0]}:{channel.addr[1]}",
                    "rtt_ms": None if fd is None or fd.srtt is None else round(fd.srtt * 1e3, 3),
                    "cost": None if fd is None else fd.cost,
                    "selected": link.wanted,
                }
            )
        routes = [
            {"dest": r.dest, "next_hop": r.next_hop, "cost": r.cost, "path": list(r.path)}
            for r in sorted(self.router.routes().values(), key=lambda r: r.dest)
        ]
        sessions = [
            {"peer": c.node_id, "established": c.session.can_send}
            for c in sorted(self.e2e, key=lambda c: c.node_id)
        ]
        return {
            "node_id": self.node_id,
            "spiffe_id": self.identity.spiffe_id,
            "overlay_ip": self.identity.overlay_ip,
            "pq_svid_not_after": self.identity.not_after,
            "members": len(self._members),
            "links": links,
            "routes": routes,
            "sessions": sessions,
            "lsa_seq": self.router.seq,
            "dropped": self.all_dropped(),
            "counters": dict(self.counters)
            | self.router.all_counters()
            | {"forwarded": self.forwarded()},
        }

    # --- internals: authorization and keys ----------------------------------------------------

    def _link_allowed(self, node_id: str, spiffe_id: str) -> bool:
        link_filter = self.config.link_filter
        if link_filter is not None and not link_filter(self.node_id, node_id):
            return False
        return self._may_link(self.identity.spiffe_id, spiffe_id)

    def _standing(self, peer: PeerIdentity, *, made: bool = False) -> NodeDrop | None:
        """Why the certificate ``peer`` is not current for its node ID (None: it is).

        Revoked serials are refused first (``cert_revoked``). Then, when the membership
        carries the member's certificate: the key must be the member's current key (compared
        in constant time) and the serial the member's current serial — or, for a renewal the
        membership has not shown us yet, a certificate for that same key valid from no
        earlier than the current one (``cert_not_current`` otherwise: an older one). With
        ``made`` (a link or session already up) an older certificate of the current key is
        tolerated: the peer renewed and rekeys with its new certificate within the rekey
        time, while the old one is neither revoked nor re-keyed."""
        expiry = self._revoked.get(peer.serial)
        if expiry is not None and expiry > self._wall(self._now):
            return NodeDrop.CERT_REVOKED
        member = self._members.get(peer.node_id)
        if member is None or member.cert_der is None:
            return None
        current = self._member_certs.get(peer.node_id)
        if current is None or not hmac.compare_digest(
            current.public_key_bytes, peer.public_key_bytes
        ):
            return NodeDrop.CERT_NOT_CURRENT
        if made or peer.serial == current.serial or peer.not_before >= current.not_before:
            return None
        return NodeDrop.CERT_NOT_CURRENT

    def _known_identity(self, peer: PeerIdentity) -> bool:
        """Whether ``peer`` (a verified PQ SVID) is a current member: its node ID is in the
        membership, with this SPIFFE ID, and its certificate is not revoked and is current
        for that node ID (:meth:`_standing`; docs/protocol.md, "Who may handshake")."""
        member = self._members.get(peer.node_id)
        if member is None or member.spiffe_id != peer.spiffe_id:
            return False
        refused = self._standing(peer)
        if refused is not None:
            self.dropped[refused] += 1
            return False
        return True

    def _authorize_link(self, peer: PeerIdentity) -> bool:
        if peer.node_id == self.node_id or not self._known_identity(peer):
            return False
        if not self._link_allowed(peer.node_id, peer.spiffe_id):
            return False
        degree = sum(1 for link in self._link.values() if link.up)
        return peer.node_id in self._link or accept_inbound(
            self.node_id, peer.node_id, self._members, degree, config=self.config.selection
        )

    def _authorize_talk(self, peer: PeerIdentity) -> bool:
        if peer.node_id == self.node_id or not self._known_identity(peer):
            return False
        mine = self.identity.spiffe_id
        return self._may_talk(mine, peer.spiffe_id) or self._may_talk(peer.spiffe_id, mine)

    def _learn(self, identity: PeerIdentity, now: float) -> None:
        known = self._keys.get(identity.node_id)
        if known is not None and known.public_bytes_raw() == identity.public_key_bytes:
            return
        self._keys[identity.node_id] = identity.public_key
        self.router.key_learned(identity.node_id, now)

    # --- internals: event processing ----------------------------------------------------------

    def _process(self, now: float) -> None:
        # Each machine feeds only the ones after it in this order (links -> end-to-end and
        # detectors -> router -> frames), so one pass is complete; another runs only if a
        # later step left channel events behind.
        for _ in range(8):
            self._drain_links(now)
            self._drain_e2e(now)
            self._drain_failure(now)
            self._drain_router(now)
            if not (self.links.has_events or self.e2e.has_events):
                break
        self._flush(now)

    def _drain_links(self, now: float) -> bool:
        progressed = False
        while (event := self.links.next_event()) is not None:
            progressed = True
            if isinstance(event, ChannelData):
                self._link_data(event.node_id, event.plaintext, now)
            elif isinstance(event, ChannelUp):
                self._learn(event.identity, now)
                self.neighbourhood.ensure(event.node_id, now)
                self._fd_dirty.add(event.node_id)
                previous = self._link_serial.get(event.node_id)
                self._link_serial[event.node_id] = event.identity.serial
                e2e = self.e2e.get(event.node_id)
                if previous not in (None, event.identity.serial) and e2e is not None:
                    # A new PQ SVID: the peer re-registered (restarted) and lost its
                    # end-to-end keys; drop ours so the next datagram starts a handshake.
                    self.e2e.forget(event.node_id)
            elif isinstance(event, HandshakeDone):
                self.counters["handshakes_ok" if event.ok else "handshakes_failed"] += 1
                if not event.ok:
                    self.handshake_failures[event.reason] += 1
        for reason, count in self.links.dropped.items():
            self.dropped[reason] += count
        self.links.dropped.clear()
        return progressed

    def _drain_e2e(self, now: float) -> bool:
        progressed = False
        for datagram, dest in self.e2e.datagrams_to_send():
            self._forward(Routed(self.node_id, dest, self.config.ttl, 0, datagram), None, now)
        while (event := self.e2e.next_event()) is not None:
            progressed = True
            if isinstance(event, ChannelData):
                self._e2e_data(event.node_id, event.plaintext, now)
            elif isinstance(event, ChannelUp):
                self._learn(event.identity, now)
            elif isinstance(event, HandshakeDone):
                key = "e2e_handshakes_ok" if event.ok else "e2e_handshakes_failed"
                self.counters[key] += 1
        if self._pending_app:
            for dest in [d for d in self._pending_app if self.e2e.can_send(d)]:
                for plaintext in self._pending_app.pop(dest):
                    self.e2e.send(dest, plaintext, now)
                progressed = True
        for reason, count in self.e2e.dropped.items():
            self.dropped[e2e_label(reason)] += count
        self.e2e.dropped.clear()
        for datagram, dest in self.e2e.datagrams_to_send():
            progressed = True
            self._forward(Routed(self.node_id, dest, self.config.ttl, 0, datagram), None, now)
        return progressed

    def _drain_router(self, now: float) -> bool:
        if not self.router.has_output():
            return False
        progressed = False
        for peer, entries in self.router.summaries_to_send():
            progressed = True
            summary = LsdbSummary(tuple(entries))
            try:
                encode_frames([summary])
            except LocalProtocolError:  # past 65,535 bytes (thousands of origins)
                self.router.full_sync(peer)
                continue
            self._queue(peer, summary)
        for peer, entries in self.router.requests_to_send():
            progressed = True
            for chunk in _chunks(entries):
                self._queue(peer, LsdbRequest(chunk))
        for peer, entries in self.router.announces_to_send():
            progressed = True
            for chunk in _chunks(entries):
                self._queue(peer, LsdbAnnounce(chunk))
        for peer, data in self.router.lsas_to_send():
            progressed = True
            self._queue(peer, LinkStateAdvert(data))
        changed = False
        while self.router.next_event() is not None:
            changed = progressed = True
            self.counters["route_changes"] += 1
        if changed and self.dataplane is not None:
            routes = self.router.routes()
            self.dataplane.routes_changed({d: r.next_hop for d, r in routes.items()})
        return progressed

    def _drain_failure(self, now: float) -> bool:
        # Only detectors that were fed or fired since the last pass can have output.
        progressed = False
        dirty, self._fd_dirty = self._fd_dirty, set()
        for node_id in dirty:
            link = self._link.get(node_id)
            fd = None if link is None else link.fd
            if link is None or fd is None:
                continue
            beats = fd.heartbeats_to_send()
            if not self.links.can_send(node_id):
                self._fd_dirty.add(node_id)  # its events wait for the link's keys
                self._fold_link_timer(link)
                continue
            for seq in beats:
                echo = fd.take_echo(now)
                if echo is None:
                    self._queue(node_id, Heartbeat(seq, probe=fd.probing))
                else:
                    delay = min(int(echo[1] * 1e6), 0xFFFFFFFF)
                    self._queue(node_id, Heartbeat(seq, echo[0], delay, fd.probing))
            while (event := fd.next_event()) is not None:
                progressed = True
                if isinstance(event, LinkUp):
                    self._pending_cost.pop(node_id, None)
                    link.ever_up = True
                    link.backoff = self.config.retry_initial
                    link.attempt_due = None
                    self.router.neighbour_up(node_id, event.cost, now)
                    self.neighbourhood.reselect(now)
                    if self.dataplane is not None:
                        self.dataplane.link_up(node_id, True)
                elif isinstance(event, LinkDown):
                    self.counters["link_down_events"] += 1
                    self._pending_cost.pop(node_id, None)
                    link.down_since = now
                    link.attempt_due = now
                    self.router.neighbour_down(node_id, now)
                    self.neighbourhood.reselect(now)
                    if self.dataplane is not None:
                        self.dataplane.link_up(node_id, False)
                elif isinstance(event, LinkCostChanged):
                    self._pending_cost[node_id] = event.cost
                    if self._cost_due is None:
                        interval = self.config.cost_update_interval
                        jitter = 0.25 * interval * self._cost_jitter()
                        self._cost_due = max(now, self._cost_sent + interval + jitter)
            self._fold_link_timer(link)
        return progressed

    def _fold_link_timer(self, link: Link) -> None:
        """A fed link's deadlines may be earlier than the cached minimum: fold them in."""
        if self._link_timer is None or link.fd is None:
            return
        timer = link.fd.get_timer()
        if link.attempt_due is not None and link.attempt_due < timer:
            timer = link.attempt_due
        self._link_timer = min(self._link_timer, timer)

    def _apply_costs(self, now: float) -> None:
        """Hand the batched link cost changes to the router (one advert for all of them)."""
        self._cost_due = None
        self._cost_sent = now
        for node_id, cost in self._pending_cost.items():
            link = self._link.get(node_id)
            if link is not None and link.up:
                self.router.neighbour_up(node_id, cost, now)
        self._pending_cost.clear()

    def _link_data(self, node_id: str, plaintext: bytes, now: float) -> None:
        link = self.neighbourhood.ensure(node_id, now)
        fd = link.fd
        assert fd is not None
        fd.on_packet_received(now)
        self._fd_dirty.add(node_id)
        if not plaintext:
            return
        try:
            frames = decode_frames(plaintext)
        except RemoteProtocolError as exc:
            self.dropped[exc.reason] += 1
            return
        self._link_frames(link, fd, frames, now, nested=False)

    def _link_frames(
        self, link: Link, fd: FailureDetector, frames: list[Frame], now: float, *, nested: bool
    ) -> None:
        node_id = link.node_id
        for frame in frames:
            if isinstance(frame, Fragment):
                if nested:
                    self.dropped[NodeDrop.FRAGMENT_NESTED] += 1
                    continue
                reassembly = link.reassembly
                if frame.offset == 0 and self._held_advert(frame.data):
                    # A copy of an advert we hold (flooding brings one per link) or an older
                    # one: skip its other fragments instead of rebuilding and comparing it.
                    reassembly.discard(frame.msg_id)
                    self.counters["advert_copies_skipped"] += 1
                    continue
                message = reassembly.add(frame, now)
                if reassembly.dropped:
                    self.dropped.update(reassembly.dropped)
                    reassembly.dropped.clear()
                if message is None:
                    continue
                try:
                    inner = decode_frames(message)
                except RemoteProtocolError as exc:
                    self.dropped[exc.reason] += 1
                    continue
                self._link_frames(link, fd, inner, now, nested=True)
            elif isinstance(frame, Routed):
                self._forward(frame, node_id, now)
            elif isinstance(frame, Heartbeat):
                # The echo first: when it brings the link up, our answer to a probe no
                # longer probes.
                if frame.echo_seq is not None:
                    fd.on_heartbeat_ack(frame.echo_seq, now, frame.echo_delay_us / 1e6)
                fd.on_heartbeat(frame.seq, now, probe=frame.probe)
            elif isinstance(frame, LinkStateAdvert):
                self._receive_lsa(frame.body, node_id, now)
            elif isinstance(frame, LsdbAnnounce):
                self.router.receive_announce(node_id, frame.entries, now)
            elif isinstance(frame, LsdbRequest):
                self.router.receive_request(node_id, frame.entries, now)
            elif isinstance(frame, LsdbSummary):
                self.router.receive_summary(node_id, frame.entries, now)
            elif isinstance(frame, AppData):
                self.dropped[NodeDrop.UNEXPECTED_FRAME] += 1

    def _held_advert(self, head: bytes) -> bool:
        """Whether ``head`` starts a LINK_STATE_ADVERT frame holding an advert the router has
        (or a newer one); the router counts it as its database would."""
        if len(head) < FRAME_HEADER_SIZE + 4 or head[0] != _LSA_FRAME:
            return False
        return self.router.skip_held(head[FRAME_HEADER_SIZE:])

    def _receive_lsa(self, data: bytes, from_peer: str, now: float) -> None:
        if self.router.receive_flooded(data, from_peer, now) == WAITING_FOR_KEY:
            self.counters["lsa_waiting_for_key"] += 1

    def _forward(self, frame: Routed, from_peer: str | None, now: float) -> None:
        if frame.dst == self.node_id:
            if from_peer is not None:
                self.e2e.receive(frame.payload, frame.src, now)
            return
        ttl = frame.ttl if from_peer is None else frame.ttl - 1
        if ttl <= 0:
            self.dropped[NodeDrop.TTL_EXPIRED] += 1
            return
        hop = self.router.next_hop(frame.dst)
        if hop is None or hop == from_peer:
            self.dropped[NodeDrop.NO_ROUTE] += 1
            return
        if from_peer is not None:
            self.counters["forwarded"] += 1
            if self.on_transit is not None:
                self.on_transit(frame)
        self._queue(hop, Routed(frame.src, frame.dst, ttl, frame.flags, frame.payload))

    def _e2e_data(self, src: str, plaintext: bytes, now: float) -> None:
        if not plaintext:
            return
        try:
            frames = decode_frames(plaintext)
        except RemoteProtocolError as exc:
            self.dropped[e2e_label(exc.reason)] += 1
            return
        for frame in frames:
            if not isinstance(frame, AppData):
                self.dropped[e2e_label(NodeDrop.UNEXPECTED_FRAME)] += 1
            elif frame.channel == PING_CHANNEL:
                self._on_ping(src, frame.payload, now)
            else:
                self._inbox.append(AppMessage(src, frame.channel, frame.payload))

    def _on_ping(self, src: str, payload: bytes, now: float) -> None:
        if len(payload) != _PING.size:
            self.dropped[NodeDrop.BAD_PING] += 1
            return
        kind, seq, stamp = _PING.unpack(payload)
        if kind == 0:
            reply = encode_frames([AppData(PING_CHANNEL, _PING.pack(1, seq, stamp))])
            self.e2e.send(src, reply, now)
        elif kind == 1:
            self._pongs.append((src, seq, max(0.0, self._wall(now) - stamp / 1e6)))

    def _queue(self, node_id: str, frame: Frame) -> None:
        link = self._link.get(node_id)
        if link is None:
            self.dropped[NodeDrop.NO_LINK] += 1
            return
        if not link.frames:
            self._to_flush.append(link)
        link.frames.append(encode_frames([frame]))

    def _flush(self, now: float) -> None:
        to_flush, self._to_flush = self._to_flush, []
        for link in to_flush:
            frames = link.frames
            node_id = link.node_id
            if not frames or self._link.get(node_id) is not link:
                continue
            link.frames = []
            channel = self.links.get(node_id)
            if channel is None or not channel.session.can_send:
                self.dropped[NodeDrop.NO_LINK] += len(frames)
                continue
            budget = channel.session.max_plaintext_size
            if any(len(encoded) > budget for encoded in frames):
                frames = self._fragment(link, frames, budget)
            batch: list[bytes] = []
            size = 0
            for encoded in frames:
                if batch and size + len(encoded) > _COALESCE:
                    self.links.send(node_id, b"".join(batch), now)
                    batch, size = [], 0
                batch.append(encoded)
                size += len(encoded)
            if batch:
                self.links.send(node_id, b"".join(batch), now)
        self._outbox.extend(self.links.datagrams_to_send())

    def _fragment(self, link: Link, frames: list[bytes], budget: int) -> list[bytes]:
        """Frames larger than one packet become FRAGMENT frames that each fit one."""
        out: list[bytes] = []
        for encoded in frames:
            if len(encoded) <= budget:
                out.append(encoded)
                continue
            try:
                pieces = split_frame(encoded, link.next_msg_id, budget)
            except LocalProtocolError:
                self.dropped[NodeDrop.FRAME_TOO_LARGE] += 1
                continue
            link.next_msg_id = (link.next_msg_id + 1) & 0xFFFFFFFF
            self.counters["frames_fragmented"] += 1
            out.extend(pieces)
        return out

    _now: float = 0.0
