"""The link-state router of one node, sans-IO: adverts in, adverts out, routes, one timer.

Inputs (``now`` is the node's monotonic clock, in seconds)::

    neighbour_up(peer, cost, now)       a link came up (or its cost changed)
    neighbour_down(peer, now)           a link went down
    forget(origin, now)                 a node left the membership: drop its advert
    receive_lsa(data, from_peer, now)   an advert arrived on a link -> the database's verdict
    receive_flooded(data, from_peer, now) the same, for a node whose keys arrive late (below)
    key_learned(origin, now)            a key arrived: the advert waiting for it is processed
    skip_held(head)                     the first bytes of an advert: a copy we hold? (below)
    receive_announce(peer, entries, now) a neighbour accepted these adverts -> ask for new ones
    receive_request(peer, entries, now)  a neighbour asks for adverts -> to lsas_to_send
    receive_summary(peer, entries, now)  a neighbour's summary -> what it lacks, to lsas_to_send
    handle_timer(now)                   at or after get_timer()

Outputs::

    lsas_to_send()  -> [(peer, bytes)]  own adverts, answers to requests and database sync
    announces_to_send() -> [(peer, [(origin, seq)])]  flooding announces
    requests_to_send()  -> [(peer, [(origin, seq)])]  asks for announced adverts we lack
    summaries_to_send() -> [(peer, [(origin, seq)])]  database summaries for new neighbours
    has_output()    -> bool              whether any of the above has something (cheap)
    next_event()    -> RoutesChanged     after a recomputation that changed the table
    next_hop(dest), route(dest), routes(), counters, neighbours

Rules:

* **Origination.** The node's own advert lists its up neighbours with their costs. It is
  re-signed (seq + 1) after a neighbour change: a lost neighbour (fast heal) at most
  ``lsa_min_interval`` (50 ms) after the previous advert (unless the node lost more than
  ``loss_burst`` (4) neighbours within ``loss_window`` (10 s): a flapping node waits a quarter
  of its batch hold), and its own routes avoid the link at once, before the advert is out
  (local repair); a new neighbour or a cost change
  at most once per batch hold, so that a burst of links coming up (start-up, re-selection) is
  one advert, not one per link, each verified by every node. The hold starts at
  ``lsa_batch_interval`` (1 s), doubles each time an advert follows the previous one within
  twice the hold (up to ``lsa_max_batch_interval``, 8 s: a flapping node's adverts slow
  down, as OSPF's LSA throttling) and returns to its start after a quiet period. Every advert
  is flooded to every node, so their rate is what a mesh's CPU pays for. It is
  refreshed every ``refresh_interval`` (30 s) even when unchanged, so that receivers'
  ageing (``max_age`` 60 s) never removes a live origin. Each new own advert goes to every up
  neighbour.
* **Sequence numbers survive restarts** without persistent state: ``seq`` is
  ``max(previous seq + 1, wall clock in microseconds)``, so a restarted node starts above
  anything its previous incarnation sent (as long as it sent fewer than a million adverts a
  second and the wall clock did not step back). If the clock did step back, the OSPF rule
  applies: when an advert of our own with a higher seq comes back to us (neighbours sync their
  database to us when a link comes up), we jump past it and re-originate.
* **Flooding: announce, then pull** (:mod:`x0tta6bl4.protocol.flooding` holds the rules and
  the state). An origin pushes its own new advert to its neighbours; every other node that
  accepts it announces ``(origin, seq)`` to its neighbours, which request it from one
  announcer, so each node receives each ≈ 3.7 KB advert about once instead of once per
  link. A duplicate or rejected advert is announced nowhere.
* **Database sync by summary.** When a link comes up, we send the new neighbour a summary,
  the ``(origin, seq)`` of every advert we hold (ours included), and it sends us its own.
  Each side answers a summary with the adverts it holds that the other lacks or holds older
  (never its own, which it re-originates to every neighbour anyway). A link that flaps
  therefore costs two summaries (≈ 17 bytes per origin) instead of the whole database
  (≈ 3.7 KB per origin) each way; a restarted neighbour, whose summary is empty, gets
  everything. Our own advert of a previous incarnation with a higher seq comes back the same
  way (``own_newer``).
* **Adverts that come early or twice.** A node learns keys from the membership and from
  handshakes, and adverts can overtake both: :meth:`Router.receive_flooded` keeps an advert
  whose origin has no key yet (the latest per origin, for at most ``max_waiting_for_key``
  origins) until :meth:`Router.key_learned`, instead of refusing it as ``unknown_origin``.
  Flooding also delivers older copies after newer ones: an advert whose seq (read by
  :func:`~x0tta6bl4.protocol.lsa.peek`) is below the one held is counted ``stale_seq``, as
  the database would, without a full parse; :meth:`Router.skip_held` answers the same for
  the first fragment of an advert, so a node skips the other fragments of a copy it holds.
* **Debounced SPF.** A topology change schedules a recomputation ``spf_delay`` (30 ms) after
  the *latest* change, but never later than ``spf_max_delay`` (200 ms) after the *first*
  change still pending.

Not thread-safe: one owner drives it.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from cryptography.hazmat.primitives.asymmetric import mldsa

from x0tta6bl4.crypto.suite import SigningKey
from x0tta6bl4.protocol.errors import InvalidConfigError, LocalProtocolError
from x0tta6bl4.protocol.flooding import Flooding
from x0tta6bl4.protocol.lsa import (
    FLAG_TRANSIT_OFF,
    MAX_COST,
    MAX_NEIGHBOURS,
    KeyLookup,
    LinkStateAdvert,
    encode_signed,
    encode_unsigned,
    peek,
)
from x0tta6bl4.protocol.lsdb import LinkStateDatabase
from x0tta6bl4.protocol.spf import Route, shortest_paths

__all__ = ["WAITING_FOR_KEY", "Router", "RouterConfig", "RoutesChanged"]

_U64_MAX = 0xFFFF_FFFF_FFFF_FFFF

#: What :meth:`Router.receive_flooded` answers for an advert kept until its origin's key comes.
WAITING_FOR_KEY = "waiting_for_key"


@dataclass(frozen=True, slots=True)
class RouterConfig:
    """Routing timers, in seconds."""

    #: Recompute routes this long after the latest topology change ...
    spf_delay: float = 0.03
    #: ... but no later than this after the first pending change.
    spf_max_delay: float = 0.2
    #: Minimum time between two of our own adverts (a lost neighbour waits no longer).
    lsa_min_interval: float = 0.05
    #: Minimum time between an advert and the next one for a new neighbour or a cost change.
    lsa_batch_interval: float = 1.0
    #: The batch hold doubles up to this while adverts follow each other closely.
    lsa_max_batch_interval: float = 8.0
    #: Losing more than ``loss_burst`` neighbours within ``loss_window`` seconds is flapping:
    #: further losses wait a quarter of the batch hold instead of ``lsa_min_interval``.
    loss_burst: int = 4
    loss_window: float = 10.0
    #: Re-originate our advert this often even when nothing changed.
    refresh_interval: float = 30.0
    #: Remove a foreign advert not refreshed for this long.
    max_age: float = 120.0
    #: How often to look for aged adverts.
    age_check_interval: float = 1.0
    #: Ask another neighbour for an announced advert that did not arrive within this (the
    #: least request timeout: it adapts to the measured answer time up to the next one).
    request_timeout: float = 0.5
    #: The most the adapted request timeout grows to.
    max_request_timeout: float = 4.0
    #: Give up on an announced advert after this many requests (refresh and sync repair it).
    max_requests: int = 5
    #: Origins whose advert may wait for their key at once (one advert each, the latest).
    max_waiting_for_key: int = 4096

    def __post_init__(self) -> None:
        values = (
            self.spf_delay,
            self.spf_max_delay,
            self.lsa_min_interval,
            self.lsa_batch_interval,
            self.lsa_max_batch_interval,
            self.refresh_interval,
            self.max_age,
            self.age_check_interval,
            self.request_timeout,
        )
        if self.loss_burst < 1 or self.loss_window <= 0:
            raise InvalidConfigError("loss_burst must be at least 1 and loss_window positive")
        if self.max_requests < 1 or self.request_timeout <= 0:
            raise InvalidConfigError("max_requests must be at least 1 and request_timeout positive")
        if self.max_request_timeout < self.request_timeout:
            raise InvalidConfigError("max_request_timeout must be at least request_timeout")
        if self.max_waiting_for_key < 0:
            raise InvalidConfigError("max_waiting_for_key must not be negative")
        if min(values) < 0 or self.refresh_interval <= 0 or self.age_check_interval <= 0:
            raise InvalidConfigError(
                "router timers must be non-negative (refresh and ageing positive)"
            )
        if self.spf_max_delay < self.spf_delay:
            raise InvalidConfigError("spf_max_delay must be at least spf_delay")
        if not self.lsa_min_interval <= self.lsa_batch_interval <= self.lsa_max_batch_interval:
            raise InvalidConfigError(
                "need lsa_min_interval <= lsa_batch_interval <= lsa_max_batch_interval"
            )
        if self.max_age <= self.refresh_interval:
            raise InvalidConfigError("max_age must exceed refresh_interval")


@dataclass(frozen=True, slots=True)
class RoutesChanged:
    """The routing table changed: destinations added, removed or with a new route."""

    changed: frozenset[str]


class Router:
    """Link-state routing for ``node_id``; ``key_for`` maps node ids to verified public keys."""

    def __init__(
        self,
        node_id: str,
        signing_key: SigningKey,
        key_for: KeyLookup,
        now: float,
        *,
        wall_offset: float = 0.0,
        config: RouterConfig | None = None,
        transit: bool = True,
    ) -> None:
        self.node_id = node_id
        self.config = config or RouterConfig()
        self._key = signing_key
        self._own_public = signing_key.key.public_key()
        self._key_for_foreign = key_for
        #: ``wall clock = now + wall_offset`` (the driver passes time.time() - time.monotonic()).
        self._wall_offset = wall_offset
        self._flags = 0 if transit else FLAG_TRANSIT_OFF
        self.lsdb = LinkStateDatabase(node_id, self._key_for, max_age=self.config.max_age)
        self._neighbours: dict[str, int] = {}
        self._seq = 0
        self._last_originated = -float("inf")
        #: Current batch hold for new neighbours and cost changes (see the module docstring).
        self._hold = self.config.lsa_batch_interval
        #: When we lost neighbours within the last ``loss_window`` (flap detection).
        self._losses: deque[float] = deque()
        self._originate_at: float | None = None
        self._spf_at: float | None = None
        self._spf_first_change: float | None = None
        self._next_age_check = now + self.config.age_check_interval
        self._routes: dict[str, Route] = {}
        self._outbox: list[tuple[str, bytes]] = []
        self._summaries: list[str] = []
        self._events: deque[RoutesChanged] = deque()
        #: Adverts waiting for their origin's key: origin -> (advert, the peer it came from).
        self._waiting: dict[str, tuple[bytes, str | None]] = {}
        self.counters: dict[str, int] = {
            "originated": 0,
            "neighbours_up": 0,
            "cost_changes": 0,
            "spf_runs": 0,
            "lsas_sent": 0,
            "summaries_sent": 0,
            "summaries_received": 0,
            "sync_adverts_sent": 0,
        }
        self.flooding = Flooding(
            self._held_seq,
            request_timeout=self.config.request_timeout,
            max_requests=self.config.max_requests,
            max_request_timeout=self.config.max_request_timeout,
            counters=self.counters,
            max_origins=lambda: max(4096, 4 * len(self.lsdb)),
        )
        self._originate(now)

    # --- queries ----------------------------------------------------------------------------

    @property
    def neighbours(self) -> Mapping[str, int]:
        """Up neighbours and their link costs."""
        return dict(self._neighbours)

    @property
    def seq(self) -> int:
        """Sequence number of our current advert."""
        return self._seq

    @property
    def batch_hold(self) -> float:
        """The current batch hold (see the module docstring): how long after the previous
        advert a new neighbour or a cost change waits; a flapping node's loss waits a quarter
        of it."""
        return self._hold

    def next_hop(self, dest: str) -> str | None:
        route = self._routes.get(dest)
        return route.next_hop if route else None

    def route(self, dest: str) -> Route | None:
        return self._routes.get(dest)

    def routes(self) -> dict[str, Route]:
        return dict(self._routes)

    def all_counters(self) -> dict[str, int]:
        """Router counters plus the database's ``lsa_<reason>`` counters."""
        out = dict(self.counters)
        out.update({f"lsa_{k}": v for k, v in self.lsdb.counters.items()})
        return out

    # --- outputs ----------------------------------------------------------------------------

    def get_timer(self) -> float:
        deadlines = [
            self._last_originated + self.config.refresh_interval,
            self._next_age_check,
        ]
        if self._originate_at is not None:
            deadlines.append(self._originate_at)
        if self._spf_at is not None:
            deadlines.append(self._spf_at)
        flooding = self.flooding.get_timer()
        if flooding is not None:
            deadlines.append(flooding)
        return min(deadlines)

    def has_output(self) -> bool:
        """Whether any ``*_to_send()`` or :meth:`next_event` has something (one cheap call
        for drivers that poll after every input)."""
        return bool(self._outbox or self._summaries or self._events or self.flooding.has_output())

    def lsas_to_send(self) -> list[tuple[str, bytes]]:
        """``(peer, advert bytes)`` to send (drained)."""
        out, self._outbox = self._outbox, []
        self.counters["lsas_sent"] += len(out)
        return out

    def announces_to_send(self) -> list[tuple[str, list[tuple[str, int]]]]:
        """``(peer, [(origin, seq), ...])``: adverts we accepted, for neighbours (drained)."""
        return self.flooding.announces_to_send()

    def requests_to_send(self) -> list[tuple[str, list[tuple[str, int]]]]:
        """``(peer, [(origin, seq), ...])``: announced adverts we ask for (drained)."""
        return self.flooding.requests_to_send()

    def summaries_to_send(self) -> list[tuple[str, list[tuple[str, int]]]]:
        """``(peer, [(origin, seq), ...])``: database summaries for new neighbours (drained)."""
        peers, self._summaries = self._summaries, []
        if not peers:
            return []
        entries = sorted((entry.lsa.origin, entry.lsa.seq) for entry in self.lsdb)
        self.counters["summaries_sent"] += len(peers)
        return [(peer, list(entries)) for peer in peers]

    def full_sync(self, peer: str) -> None:
        """Queue every advert we hold (but our own) to ``peer``: the sync without a summary."""
        for entry in self.lsdb:
            if entry.lsa.origin != self.node_id:
                self._push(peer, entry.lsa.origin, entry.lsa.seq, entry.data)

    def next_event(self) -> RoutesChanged | None:
        return self._events.popleft() if self._events else None

    # --- inputs -----------------------------------------------------------------------------

    def neighbour_up(self, peer: str, cost: int, now: float) -> None:
        """A link to ``peer`` is up with ``cost`` (call again when the cost changes)."""
        if peer == self.node_id:
            raise LocalProtocolError("a node cannot be its own neighbour")
        if not isinstance(cost, int) or not 1 <= cost <= MAX_COST:
            raise LocalProtocolError("link cost must be an integer in 1..2^32-1")
        if peer not in self._neighbours and len(self._neighbours) >= MAX_NEIGHBOURS:
            raise LocalProtocolError(f"at most {MAX_NEIGHBOURS} neighbours")
        new = peer not in self._neighbours
        if not new and self._neighbours[peer] == cost:
            return
        self._neighbours[peer] = cost
        self.counters["neighbours_up" if new else "cost_changes"] += 1
        if new:
            # Database sync: the new neighbour learns what we hold; it answers with what we
            # lack (and we do the same with its summary).
            self._summaries.append(peer)
        self._schedule_origination(now, self._hold)

    def neighbour_down(self, peer: str, now: float) -> None:
        self.flooding.peer_down(peer, now)
        if self._neighbours.pop(peer, None) is not None:
            # Fast heal: at once, unless this node keeps losing neighbours (flapping links):
            # then a quarter of its batch hold, so it cannot flood the mesh faster than that.
            # Links coming up or costs moving (the hold's usual cause) never slow a loss down.
            cfg = self.config
            losses = self._losses
            losses.append(now)
            while losses[0] < now - cfg.loss_window:
                losses.popleft()
            flapping = len(losses) > cfg.loss_burst
            self._schedule_origination(now, self._hold / 4 if flapping else None)
            # Local repair at once: our own routes stop using the link before our new advert
            # is even signed (the SPF leaves out links to neighbours that are down).
            self._schedule_spf(now)

    def receive_lsa(self, data: bytes, from_peer: str | None, now: float) -> str:
        """Process an advert received from ``from_peer``; returns the database's verdict
        (:data:`~x0tta6bl4.protocol.lsdb.INSTALL_REASONS`). An accepted one is announced."""
        result = self.lsdb.install(data, now)
        lsa = result.lsa
        if lsa is None:
            return result.reason
        if from_peer in self._neighbours and result.reason in (
            "accepted",
            "duplicate",
            "own_newer",
        ):
            self.flooding.holds(from_peer, lsa.origin, lsa.seq)
        self.flooding.settle(lsa.origin, now)
        if result.reason == "own_newer":
            # An advert of a previous incarnation of this node: jump past it.
            self.flooding.forget(lsa.origin)
            self._seq = max(self._seq, lsa.seq)
            self._schedule_origination(now)
            return result.reason
        if not result.flood:
            return result.reason
        if result.topology_changed:
            self._schedule_spf(now)
        self.flooding.accepted(lsa.origin, lsa.seq, from_peer, self._neighbours)
        return result.reason

    def receive_flooded(self, data: bytes, from_peer: str | None, now: float) -> str:
        """:meth:`receive_lsa` for a node whose keys may arrive after the adverts they verify.

        An advert from an origin without a key waits for :meth:`key_learned` (latest per
        origin, at most ``max_waiting_for_key`` origins; more are refused) and the answer is
        :data:`WAITING_FOR_KEY`; one older than the advert held is counted ``stale_seq`` by its
        peeked seq alone; anything else is :meth:`receive_lsa`'s verdict.
        """
        head = peek(data)
        if head is not None and head.origin != self.node_id:
            # Only the origin and seq are read here: a full parse of every flooded copy would
            # cost more than the database's byte-comparison of duplicates.
            if self._key_for_foreign(head.origin) is None:
                waiting = self._waiting
                if len(waiting) < self.config.max_waiting_for_key or head.origin in waiting:
                    waiting[head.origin] = (bytes(data), from_peer)
                return WAITING_FOR_KEY
            held = self.lsdb.get(head.origin)
            if held is not None and head.seq < held.lsa.seq:
                self.lsdb.counters["stale_seq"] += 1
                return "stale_seq"
        return self.receive_lsa(data, from_peer, now)

    def key_learned(self, origin: str, now: float) -> str | None:
        """``origin``'s key is known now: process the advert that waited for it, if any, and
        return its verdict."""
        waiting = self._waiting.pop(origin, None)
        if waiting is None:
            return None
        return self.receive_flooded(waiting[0], waiting[1], now)

    def skip_held(self, head: bytes) -> bool:
        """Whether the advert that ``head`` starts (a first fragment) is one we hold (same
        seq: counted ``duplicate``) or older (counted ``stale_seq``), so that the rest of it
        need not be reassembled and compared."""
        peeked = peek(head)
        if peeked is None:
            return False
        held = self.lsdb.get(peeked.origin)
        if held is None or peeked.seq > held.lsa.seq:
            return False
        self.lsdb.counters["duplicate" if peeked.seq == held.lsa.seq else "stale_seq"] += 1
        return True

    def receive_announce(self, peer: str, entries: Iterable[tuple[str, int]], now: float) -> int:
        """A neighbour accepted these adverts: ask it for those newer than ours (unless we
        already asked someone for them). Returns how many were requested."""
        linked = peer in self._neighbours
        return self.flooding.on_announce(peer, list(entries), now, linked=linked)

    def receive_request(self, peer: str, entries: Iterable[tuple[str, int]], now: float) -> int:
        """A neighbour asks for adverts: queue those we hold (at that seq or newer) to it.
        Returns how many were queued."""
        sent = 0
        for origin, seq in entries:
            held = self.lsdb.get(origin)
            have = -1 if held is None or held.lsa.seq < seq else held.lsa.seq
            if self.flooding.answer(peer, origin, have, now) and held is not None:
                self._push(peer, origin, held.lsa.seq, held.data)
                sent += 1
        return sent

    def receive_summary(self, peer: str, entries: Iterable[tuple[str, int]], now: float) -> int:
        """A neighbour's database summary: queue the adverts it lacks or holds older.

        Returns how many adverts were queued (to :meth:`lsas_to_send`).
        """
        theirs = dict(entries)
        self.counters["summaries_received"] += 1
        if peer in self._neighbours:
            for origin, seq in theirs.items():
                self.flooding.holds(peer, origin, seq)
        sent = 0
        for entry in self.lsdb:
            lsa = entry.lsa
            if lsa.origin != self.node_id and theirs.get(lsa.origin, -1) < lsa.seq:
                self._push(peer, lsa.origin, lsa.seq, entry.data)
                sent += 1
        self.counters["sync_adverts_sent"] += sent
        return sent

    def forget(self, origin: str, now: float) -> bool:
        """Drop ``origin``'s advert at once (it left the membership or its SVID was revoked).

        Its next adverts are refused as long as ``key_for`` no longer knows it; without this
        call its last advert would stay until it ages out (its neighbours' adverts already
        stop listing it, so no route crosses it either way).
        """
        self.flooding.forget(origin)
        if origin == self.node_id or not self.lsdb.remove(origin):
            return False
        self._schedule_spf(now)
        return True

    def handle_timer(self, now: float) -> None:
        cfg = self.config
        if (self._originate_at is not None and now >= self._originate_at) or (
            now >= self._last_originated + cfg.refresh_interval
        ):
            self._originate(now)
        if now >= self._next_age_check:
            self._next_age_check = now + cfg.age_check_interval
            if self.lsdb.expire(now):
                self._schedule_spf(now)
            self.flooding.prune(now)
        flooding = self.flooding.get_timer()
        if flooding is not None and now >= flooding:
            self.flooding.handle_timer(now, self._neighbours)
        if self._spf_at is not None and now >= self._spf_at:
            self._run_spf()

    def recompute(self) -> None:
        """Run SPF now (normally done by the debounced timer)."""
        self._run_spf()

    # --- internals --------------------------------------------------------------------------

    def _key_for(self, node_id: str) -> mldsa.MLDSA65PublicKey | None:
        if node_id == self.node_id:
            return self._own_public
        return self._key_for_foreign(node_id)

    def _push(self, peer: str, origin: str, seq: int, data: bytes) -> None:
        """Queue a whole advert to ``peer``, which will then hold it."""
        self._outbox.append((peer, data))
        if peer in self._neighbours:
            self.flooding.holds(peer, origin, seq)

    def _held_seq(self, origin: str) -> int:
        entry = self.lsdb.get(origin)
        return -1 if entry is None else entry.lsa.seq

    def _schedule_origination(self, now: float, gap: float | None = None) -> None:
        gap = (
            self.config.lsa_min_interval if gap is None else max(gap, self.config.lsa_min_interval)
        )
        at = max(now, self._last_originated + gap)
        if self._originate_at is None or at < self._originate_at:
            self._originate_at = at

    def _schedule_spf(self, now: float) -> None:
        cfg = self.config
        if self._spf_first_change is None:
            self._spf_first_change = now
        self._spf_at = min(now + cfg.spf_delay, self._spf_first_change + cfg.spf_max_delay)

    def _originate(self, now: float) -> None:
        wall_us = max(0, int((now + self._wall_offset) * 1_000_000))
        self._seq = min(_U64_MAX, max(self._seq + 1, wall_us))
        lsa = LinkStateAdvert(
            origin=self.node_id,
            seq=self._seq,
            issued_at_ms=wall_us // 1000,
            neighbours=tuple(self._neighbours.items()),
            flags=self._flags,
        )
        data = encode_signed(lsa, self._key)
        body = encode_unsigned(lsa)
        gap = now - self._last_originated
        if gap < 2 * self._hold:
            self._hold = min(2 * self._hold, self.config.lsa_max_batch_interval)
        elif gap > 4 * self._hold:
            self._hold = self.config.lsa_batch_interval
        self._last_originated = now
        self._originate_at = None
        self.counters["originated"] += 1
        if self.lsdb.install_own(lsa, data, body, now):
            self._schedule_spf(now)
        for peer in sorted(self._neighbours):
            self._push(peer, self.node_id, self._seq, data)

    def _run_spf(self) -> None:
        self._spf_at = None
        self._spf_first_change = None
        self.counters["spf_runs"] += 1
        links = self.lsdb.confirmed()
        own = links.get(self.node_id, {})
        if any(peer not in self._neighbours for peer in own):
            # Our installed advert still lists a neighbour we lost (the new one may wait for
            # the origination throttle): route as if it were out already.
            links = dict(links)
            links[self.node_id] = {p: c for p, c in own.items() if p in self._neighbours}
        new = shortest_paths(self.node_id, links, self.lsdb.no_transit())
        old = self._routes
        changed = {d for d in new.keys() | old.keys() if new.get(d) != old.get(d)}
        self._routes = new
        if changed:
            self._events.append(RoutesChanged(frozenset(changed)))

    def __repr__(self) -> str:
        return (
            f"Router({self.node_id!r}, neighbours={len(self._neighbours)}, "
            f"lsdb={len(self.lsdb)}, routes={len(self._routes)})"
        )
