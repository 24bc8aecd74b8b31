"""Announce-then-pull flooding of link-state adverts: who holds what, what we asked for.

A signed advert is ≈ 3.7 KB (three link packets). Pushed over every link, each node would
receive it once per link and throw all copies but one away. Instead (the router decides
*when*; this module keeps the state of *who*):

* an accepted advert is **announced**, ``(origin, seq)``, to every up neighbour except the one
  it came from and those known to hold that seq (:meth:`Flooding.accepted`);
* an announce of an advert newer than ours, that we have not asked anyone for, is
  **requested** from the announcer (:meth:`Flooding.on_announce`); the answer is the advert;
* a request not answered within the request timeout goes to another neighbour that announced
  the advert (one not asked yet first; never for more than what was wanted), at most
  ``max_requests`` times in all, the n-th try waiting n timeouts (:meth:`Flooding.handle_timer`);
  then refresh and database sync are left to repair it;
* the request timeout adapts to how long adverts take to arrive (RFC 6298's estimator over
  the time from the first request to the advert: ``srtt + 4 × rttvar``), never below
  ``request_timeout`` nor above ``max_request_timeout``. On hosts too busy to answer within
  the fixed 0.5 s, every request used to be asked again of another neighbour, which then sent
  the same 3-packet advert too: a 150-node mesh on 2 cores sent 169,049 adverts to accept
  40,053 (5 requests per accepted advert);
* a request is answered at most once per ``request_timeout / 2`` per neighbour and origin
  (:meth:`Flooding.answer`), so requests cannot make a node amplify traffic.

"Known to hold" is learned from announces, adverts and summaries a neighbour sent, and from
adverts we sent it. Memory is bounded: announces name origins the receiver may not know yet
(a member whose key has not arrived), so at most ``max_origins()`` origins are tracked; past
that, announces for further origins are counted (``announces_dropped``) and ignored, and
refresh and database sync deliver those adverts. Sans-IO and not thread-safe, like the router
that owns it.
"""

from __future__ import annotations

from collections.abc import Callable, Collection
from dataclasses import dataclass

from x0tta6bl4.protocol.errors import InvalidConfigError

__all__ = ["FLOODING_COUNTERS", "Flooding"]

#: The counters :attr:`Flooding.counters` holds (the router exports them).
FLOODING_COUNTERS = (
    "announces_sent",
    "announces_received",
    "requests_sent",
    "requests_received",
    "requests_answered",
    "requests_unanswerable",
    "requests_throttled",
    "request_timeouts",
    "announces_dropped",
)

#: ``origin -> seq`` of the advert we hold (-1 when none).
HeldSeq = Callable[[str], int]
Entries = list[tuple[str, int]]


#: Gains of the smoothed answer time and of its variation (RFC 6298).
_ALPHA = 0.125
_BETA = 0.25


@dataclass(slots=True)
class _Want:
    """An announced advert we lack and asked a neighbour for."""

    seq: int
    asked: str
    due: float
    tried: frozenset[str]
    attempts: int
    #: When it was first asked for (the answer time is measured from there).
    since: float


class Flooding:
    """Per-router announce/request state; ``held_seq(origin)`` reads the router's database."""

    def __init__(
        self,
        held_seq: HeldSeq,
        *,
        request_timeout: float,
        max_requests: int,
        max_request_timeout: float | None = None,
        counters: dict[str, int] | None = None,
        max_origins: Callable[[], int] = lambda: 4096,
    ) -> None:
        if request_timeout <= 0 or max_requests < 1:
            raise InvalidConfigError("request_timeout must be positive and max_requests at least 1")
        if max_request_timeout is None:
            max_request_timeout = request_timeout
        if max_request_timeout < request_timeout:
            raise InvalidConfigError("max_request_timeout must be at least request_timeout")
        self._held_seq = held_seq
        self._max_origins = max_origins
        self.request_timeout = request_timeout
        self.max_request_timeout = max_request_timeout
        self.max_requests = max_requests
        #: Smoothed time from a first request to the advert, and its variation (None: no
        #: sample yet).
        self.srtt: float | None = None
        self.rttvar = 0.0
        #: ``origin -> {peer: seq}``: the newest advert of ``origin`` each neighbour holds.
        self._holds: dict[str, dict[str, int]] = {}
        self._wants: dict[str, _Want] = {}
        #: ``(peer, origin) -> (seq, when)``: the last request of ``peer`` we answered.
        self._answered: dict[tuple[str, str], tuple[int, float]] = {}
        self._announces: dict[str, Entries] = {}
        self._requests: dict[str, Entries] = {}
        #: :data:`FLOODING_COUNTERS` (kept in ``counters`` when given: the router's own dict).
        self.counters: dict[str, int] = {} if counters is None else counters
        for name in FLOODING_COUNTERS:
            self.counters.setdefault(name, 0)

    # --- outputs ----------------------------------------------------------------------------

    def announces_to_send(self) -> list[tuple[str, Entries]]:
        if not self._announces:  # the common case: called after every input
            return []
        out, self._announces = self._announces, {}
        self.counters["announces_sent"] += sum(len(entries) for entries in out.values())
        return sorted(out.items())

    def requests_to_send(self) -> list[tuple[str, Entries]]:
        if not self._requests:
            return []
        out, self._requests = self._requests, {}
        self.counters["requests_sent"] += sum(len(entries) for entries in out.values())
        return sorted(out.items())

    def has_output(self) -> bool:
        """Whether announces or requests wait to be sent."""
        return bool(self._announces or self._requests)

    def get_timer(self) -> float | None:
        """When the earliest outstanding request times out (None: nothing outstanding)."""
        if not self._wants:
            return None
        return min(want.due for want in self._wants.values())

    # --- what neighbours hold ---------------------------------------------------------------

    def holds(self, peer: str, origin: str, seq: int) -> None:
        """``peer`` holds ``origin``'s advert ``seq`` (it sent or announced it, or we sent it)."""
        if origin not in self._holds and len(self._holds) >= self._max_origins():
            return
        holders = self._holds.setdefault(origin, {})
        if holders.get(peer, -1) < seq:
            holders[peer] = seq

    def peer_down(self, peer: str, now: float) -> None:
        """A neighbour is gone: forget what it holds; re-ask what we asked it for, at once."""
        for holders in self._holds.values():
            holders.pop(peer, None)
        for want in self._wants.values():
            if want.asked == peer:
                want.due = now

    def forget(self, origin: str) -> None:
        self._wants.pop(origin, None)
        self._holds.pop(origin, None)

    # --- inputs -----------------------------------------------------------------------------

    def accepted(
        self, origin: str, seq: int, from_peer: str | None, peers: Collection[str]
    ) -> None:
        """We installed ``origin``'s advert ``seq``: announce it to ``peers`` that may lack it
        (the caller has settled any request for it)."""
        holders = self._holds.get(origin, {})
        for peer in peers:
            if peer != from_peer and holders.get(peer, -1) < seq:
                self._announces.setdefault(peer, []).append((origin, seq))

    @property
    def timeout(self) -> float:
        """The current request timeout: ``srtt + 4 × rttvar`` within its bounds."""
        if self.srtt is None:
            return self.request_timeout
        estimate = self.srtt + 4 * self.rttvar
        return min(self.max_request_timeout, max(self.request_timeout, estimate))

    def settle(self, origin: str, now: float | None = None) -> None:
        """Drop the request for ``origin`` if what we hold now satisfies it; with ``now``,
        the time since its first request is a sample of the answer time."""
        want = self._wants.get(origin)
        if want is not None and self._held_seq(origin) >= want.seq:
            del self._wants[origin]
            if now is not None and now >= want.since:
                self._sample(now - want.since)

    def _sample(self, answer_time: float) -> None:
        if self.srtt is None:
            self.srtt, self.rttvar = answer_time, answer_time / 2
            return
        self.rttvar = (1 - _BETA) * self.rttvar + _BETA * abs(self.srtt - answer_time)
        self.srtt = (1 - _ALPHA) * self.srtt + _ALPHA * answer_time

    def on_announce(
        self, peer: str, entries: Collection[tuple[str, int]], now: float, *, linked: bool
    ) -> int:
        """A neighbour accepted these adverts; ask it for the newer ones nobody was asked
        for. ``linked``: it is an up neighbour (only then is what it holds remembered).
        Returns how many were requested."""
        asked = 0
        for origin, seq in entries:
            self.counters["announces_received"] += 1
            if linked:
                self.holds(peer, origin, seq)
            if self._held_seq(origin) >= seq:
                continue
            want = self._wants.get(origin)
            if want is not None and want.seq >= seq:
                continue
            if want is None and len(self._wants) >= self._max_origins():
                self.counters["announces_dropped"] += 1
                continue
            self._ask(origin, seq, peer, now, None)
            asked += 1
        return asked

    def answer(self, peer: str, origin: str, seq: int, now: float) -> bool:
        """May ``peer``'s request for ``origin`` (we hold ``seq``) be answered now? Counts."""
        self.counters["requests_received"] += 1
        if seq < 0:
            self.counters["requests_unanswerable"] += 1
            return False
        last = self._answered.get((peer, origin))
        if last is not None and last[0] == seq and now - last[1] < self.request_timeout / 2:
            self.counters["requests_throttled"] += 1
            return False
        self._answered[(peer, origin)] = (seq, now)
        self.counters["requests_answered"] += 1
        return True

    def prune(self, now: float) -> None:
        """Forget answers older than the throttle needs (call now and then)."""
        horizon = now - self.request_timeout
        self._answered = {k: v for k, v in self._answered.items() if v[1] > horizon}

    def handle_timer(self, now: float, peers: Collection[str]) -> None:
        """Retry timed-out requests among ``peers`` (the up neighbours)."""
        for origin, want in list(self._wants.items()):
            if now >= want.due:
                self._retry(origin, want, now, peers)

    # --- internals --------------------------------------------------------------------------

    def _ask(self, origin: str, seq: int, peer: str, now: float, previous: _Want | None) -> None:
        tried = frozenset({peer}) if previous is None else previous.tried | {peer}
        attempts = 1 if previous is None else previous.attempts + 1
        since = now if previous is None else previous.since
        # The n-th try waits n timeouts: on a host too busy to answer in time, retries must
        # not multiply the transfers that made it busy.
        due = now + self.timeout * attempts
        self._wants[origin] = _Want(seq, peer, due, tried, attempts, since)
        self._requests.setdefault(peer, []).append((origin, seq))

    def _retry(self, origin: str, want: _Want, now: float, peers: Collection[str]) -> None:
        self.counters["request_timeouts"] += 1
        floor = self._held_seq(origin)
        offers = [
            (peer not in want.tried, seq, peer)
            for peer, seq in self._holds.get(origin, {}).items()
            if seq > floor and peer in peers
        ]
        if not offers or want.attempts >= self.max_requests:
            del self._wants[origin]
            return
        _, seq, peer = max(offers)
        # Never ask for more than was wanted: a neighbour claiming an absurd seq is asked only
        # for the advert the others announced.
        self._ask(origin, min(seq, want.seq), peer, now, want)
