"""The link-state database (LSDB): the newest verified advert of every origin, with ageing.

Rules (checked in this order, cheapest first, so junk never costs a signature verification)::

    parse fails                                   -> reject "malformed"
    origin is this node                           -> "own_newer" if seq > ours and the signature
                                                     verifies (an advert of a previous
                                                     incarnation: the router jumps past it),
                                                     else "duplicate"/"stale_seq"
    no verified key for the origin (key_for)      -> reject "unknown_origin"
    same seq and same signed body as held         -> "duplicate" (a normal flooding echo;
                                                     not re-flooded, not an error)
    seq <= seq of the held (live) advert          -> reject "stale_seq"
    seq <= highest seq ever accepted for an origin
           whose advert has since aged out        -> reject "replay"
    signature does not verify for the origin      -> reject "bad_signature"
    otherwise                                     -> "accepted": install, re-flood to every
                                                     link except the one it came from

Ageing: an advert is removed ``max_age`` seconds (default 60) after it was last installed or
refreshed, measured on *this* node's monotonic clock (never the origin's ``issued_at``, so
clock skew cannot age adverts early or late). Origins re-originate every ``refresh_interval``
(10 s, see :mod:`x0tta6bl4.protocol.router`), so a live origin never ages out unless six
refreshes in a row are lost. The highest sequence number accepted from every origin is kept
after its advert ages out, so the old advert cannot be replayed to resurrect a dead node.
This memory is bounded by the number of origins with a verified key (the membership).

The database also keeps the **confirmed graph** SPF runs on (``{u: {v: cost}}`` for every link
both ends list, see :mod:`x0tta6bl4.protocol.spf`) and the origins that refuse transit, updated
per installed or removed advert in ``O(degree)``, so a route computation does not re-parse
and re-match every advert.

Not thread-safe: one owner (the router) calls it.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass

from x0tta6bl4.protocol.errors import InvalidConfigError, LocalProtocolError, RemoteProtocolError
from x0tta6bl4.protocol.lsa import (
    MAX_NODE_ID_BYTES,
    KeyLookup,
    LinkStateAdvert,
    decode_signed,
    verify_signed,
)

__all__ = [
    "DEFAULT_MAX_AGE",
    "INSTALL_REASONS",
    "InstallResult",
    "LinkStateDatabase",
    "LsdbEntry",
]

#: Seconds after its last refresh at which an advert is removed.
DEFAULT_MAX_AGE = 60.0

#: Every value :attr:`InstallResult.reason` can take (the counter names).
INSTALL_REASONS = (
    "accepted",
    "duplicate",
    "own_newer",
    "malformed",
    "unknown_origin",
    "stale_seq",
    "replay",
    "bad_signature",
)


@dataclass(frozen=True, slots=True)
class LsdbEntry:
    """One installed advert."""

    lsa: LinkStateAdvert
    #: The signed bytes exactly as received (flooded on unchanged).
    data: bytes
    #: The signed part (for cheap duplicate detection: ML-DSA signatures are randomized).
    body: bytes
    #: Local monotonic time at which it was installed.
    installed_at: float


@dataclass(frozen=True, slots=True)
class InstallResult:
    """What :meth:`LinkStateDatabase.install` did with one advert."""

    #: One of :data:`INSTALL_REASONS`.
    reason: str
    #: The parsed advert (None when it did not parse).
    lsa: LinkStateAdvert | None = None
    #: True when the topology the advert describes differs from what was held.
    topology_changed: bool = False

    @property
    def accepted(self) -> bool:
        return self.reason == "accepted"

    @property
    def flood(self) -> bool:
        """Whether to re-flood to every link except the one it came from."""
        return self.reason == "accepted"


class LinkStateDatabase:
    """Verified adverts by origin. ``key_for`` must also know this node's own key."""

    def __init__(
        self, own_id: str, key_for: KeyLookup, *, max_age: float = DEFAULT_MAX_AGE
    ) -> None:
        if max_age <= 0:
            raise InvalidConfigError("max_age must be positive")
        self.own_id = own_id
        self.max_age = max_age
        self._key_for = key_for
        self._entries: dict[str, LsdbEntry] = {}
        self._highest_seq: dict[str, int] = {}
        #: ``origin -> {neighbour: cost}`` as each held advert lists them.
        self._listed: dict[str, dict[str, int]] = {}
        #: The confirmed graph (links listed by both ends), kept by :meth:`_set_links`.
        self._confirmed: dict[str, dict[str, int]] = {}
        self._no_transit: set[str] = set()
        #: ``reason -> count`` for every advert offered to :meth:`install`, plus ``expired``.
        self.counters: dict[str, int] = dict.fromkeys((*INSTALL_REASONS, "expired"), 0)

    # --- queries --------------------------------------------------------------------------

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, origin: object) -> bool:
        return origin in self._entries

    def __iter__(self) -> Iterator[LsdbEntry]:
        return iter(list(self._entries.values()))

    def get(self, origin: str) -> LsdbEntry | None:
        return self._entries.get(origin)

    def adverts(self) -> Mapping[str, LinkStateAdvert]:
        """``{origin: advert}`` (a fresh dict)."""
        return {origin: e.lsa for origin, e in self._entries.items()}

    def confirmed(self) -> Mapping[str, Mapping[str, int]]:
        """``{u: {v: cost}}`` for every link both ends advertise (a live view: do not keep it
        across updates, do not modify it)."""
        return self._confirmed

    def no_transit(self) -> frozenset[str]:
        """Origins whose advert refuses transit (destinations only)."""
        return frozenset(self._no_transit)

    def next_expiry(self) -> float | None:
        """When the oldest foreign advert expires (None when there is none)."""
        times = [e.installed_at for o, e in self._entries.items() if o != self.own_id]
        return min(times) + self.max_age if times else None

    # --- updates --------------------------------------------------------------------------

    def install_own(self, lsa: LinkStateAdvert, data: bytes, body: bytes, now: float) -> bool:
        """Install this node's own freshly signed advert; True when its topology changed."""
        if lsa.origin != self.own_id:
            raise LocalProtocolError("install_own takes this node's own advert")
        previous = self._entries.get(lsa.origin)
        self._entries[lsa.origin] = LsdbEntry(lsa, data, body, now)
        self._highest_seq[lsa.origin] = max(lsa.seq, self._highest_seq.get(lsa.origin, 0))
        changed = previous is None or _topology(previous.lsa) != _topology(lsa)
        if changed:
            self._set_links(lsa)
        return changed

    def install(self, data: bytes, now: float) -> InstallResult:
        """Offer one received advert; see the module docstring for the rules."""
        result = self._install(data, now)
        self.counters[result.reason] += 1
        return result

    def _install(self, data: bytes, now: float) -> InstallResult:
        # Fast path for flooding echoes: byte-identical to the advert held for its origin.
        if len(data) > 3 and 1 <= data[2] <= MAX_NODE_ID_BYTES:
            try:
                origin = bytes(data[3 : 3 + data[2]]).decode("utf-8")
            except UnicodeDecodeError:
                origin = ""
            held = self._entries.get(origin)
            if held is not None and held.data == data:
                return InstallResult("duplicate", held.lsa)
        try:
            lsa, body, signature = decode_signed(data)
        except RemoteProtocolError:
            return InstallResult("malformed")
        held = self._entries.get(lsa.origin)
        if lsa.origin == self.own_id:
            if held is not None and lsa.seq <= held.lsa.seq:
                same = lsa.seq == held.lsa.seq and body == held.body
                return InstallResult("duplicate" if same else "stale_seq", lsa)
            try:
                verify_signed(lsa, body, signature, self._key_for)
            except RemoteProtocolError as exc:
                return InstallResult(exc.reason, lsa)
            return InstallResult("own_newer", lsa)
        if self._key_for(lsa.origin) is None:
            return InstallResult("unknown_origin", lsa)
        if held is not None:
            if lsa.seq == held.lsa.seq and body == held.body:
                return InstallResult("duplicate", lsa)
            if lsa.seq <= held.lsa.seq:
                return InstallResult("stale_seq", lsa)
        elif lsa.seq <= self._highest_seq.get(lsa.origin, -1):
            return InstallResult("replay", lsa)
        try:
            verify_signed(lsa, body, signature, self._key_for)
        except RemoteProtocolError as exc:
            return InstallResult(exc.reason, lsa)
        self._entries[lsa.origin] = LsdbEntry(lsa, bytes(data), body, now)
        self._highest_seq[lsa.origin] = lsa.seq
        changed = held is None or _topology(held.lsa) != _topology(lsa)
        if changed:
            self._set_links(lsa)
        return InstallResult("accepted", lsa, topology_changed=changed)

    def expire(self, now: float) -> list[str]:
        """Remove foreign adverts not refreshed for ``max_age``; return their origins."""
        dead = [
            origin
            for origin, entry in self._entries.items()
            if origin != self.own_id and now - entry.installed_at >= self.max_age
        ]
        for origin in dead:
            del self._entries[origin]
            self._drop_links(origin)
        self.counters["expired"] += len(dead)
        return sorted(dead)

    def remove(self, origin: str) -> bool:
        """Drop an origin's advert (e.g. it left the membership); its seq stays remembered."""
        if self._entries.pop(origin, None) is None:
            return False
        self._drop_links(origin)
        return True

    # --- the confirmed graph ----------------------------------------------------------------

    def _set_links(self, lsa: LinkStateAdvert) -> None:
        origin = lsa.origin
        old = self._listed.get(origin, {})
        new = dict(lsa.neighbours)
        self._listed[origin] = new
        self._confirmed.setdefault(origin, {})
        if lsa.transit_off:
            self._no_transit.add(origin)
        else:
            self._no_transit.discard(origin)
        for peer in old.keys() | new.keys():
            self._match(origin, peer)

    def _drop_links(self, origin: str) -> None:
        old = self._listed.pop(origin, {})
        self._no_transit.discard(origin)
        for peer in old:
            self._match(origin, peer)
        # Links other origins list towards it are unconfirmed now.
        for peer in self._confirmed.pop(origin, {}):
            self._confirmed.get(peer, {}).pop(origin, None)

    def _match(self, u: str, v: str) -> None:
        """Re-derive the confirmed state of the link between ``u`` and ``v``."""
        u_out = self._listed.get(u)
        v_out = self._listed.get(v)
        if u_out is not None and v_out is not None and v in u_out and u in v_out:
            self._confirmed[u][v] = u_out[v]
            self._confirmed[v][u] = v_out[u]
        else:
            if u in self._confirmed:
                self._confirmed[u].pop(v, None)
            if v in self._confirmed:
                self._confirmed[v].pop(u, None)


def _topology(lsa: LinkStateAdvert) -> tuple[object, ...]:
    return (lsa.neighbours, lsa.flags)
