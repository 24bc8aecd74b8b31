"""Link-state database, SPF and the router, driven by hand with an explicit clock."""

from __future__ import annotations

import functools
import itertools
import random

import pytest
from cryptography.hazmat.primitives.asymmetric import mldsa
from hypothesis import given, settings
from hypothesis import strategies as st

from x0tta6bl4.crypto.suite import MLDSA65_SIGNATURE_SIZE, SigningKey
from x0tta6bl4.protocol.errors import LocalProtocolError
from x0tta6bl4.protocol.flooding import Flooding
from x0tta6bl4.protocol.lsa import (
    FLAG_TRANSIT_OFF,
    LinkStateAdvert,
    decode_signed,
    encode_signed,
)
from x0tta6bl4.protocol.lsdb import INSTALL_REASONS, LinkStateDatabase
from x0tta6bl4.protocol.router import WAITING_FOR_KEY, Router, RouterConfig, RoutesChanged
from x0tta6bl4.protocol.spf import Route, compute_routes, confirmed_links, shortest_paths

EPOCH = 1_750_000_000.0


@functools.cache
def key(name: str) -> SigningKey:
    return SigningKey.generate()


def key_for(node_id: str) -> mldsa.MLDSA65PublicKey | None:
    if node_id.startswith("unknown"):
        return None
    return key(node_id).key.public_key()


def signed(origin: str, seq: int, neighbours: dict[str, int], signer: str | None = None) -> bytes:
    lsa = LinkStateAdvert(origin, seq, 0, tuple(neighbours.items()))
    return encode_signed(lsa, key(signer or origin))


# --- link-state database ----------------------------------------------------------------------


def test_lsdb_accepts_newer_and_rejects_duplicates_and_stale() -> None:
    db = LinkStateDatabase("me", key_for)
    first = signed("a", 5, {"b": 10})
    result = db.install(first, now=0.0)
    assert result.accepted
    assert result.flood
    assert result.topology_changed
    assert db.install(first, now=0.1).reason == "duplicate"
    # A re-signed copy of the same advert (ML-DSA signatures are randomized) is a duplicate too.
    assert db.install(signed("a", 5, {"b": 10}), now=0.1).reason == "duplicate"
    assert db.install(signed("a", 4, {"b": 10}), now=0.2).reason == "stale_seq"
    assert db.install(signed("a", 5, {"b": 99}), now=0.2).reason == "stale_seq"
    refresh = db.install(signed("a", 6, {"b": 10}), now=0.3)
    assert refresh.accepted
    assert not refresh.topology_changed
    assert db.install(signed("a", 7, {"b": 11}), now=0.4).topology_changed
    held = db.get("a")
    assert held is not None
    assert held.lsa.seq == 7
    assert db.counters["accepted"] == 3
    assert db.counters["duplicate"] == 2
    assert db.counters["stale_seq"] == 2
    assert set(db.counters) == {*INSTALL_REASONS, "expired"}


def test_lsdb_rejects_forged_altered_unknown_and_malformed() -> None:
    db = LinkStateDatabase("me", key_for)
    # Forged: claims to come from "a" but is signed with "mallory"'s key.
    assert db.install(signed("a", 1, {"b": 1}, signer="mallory"), 0.0).reason == "bad_signature"
    # Altered: one bit of a neighbour id flipped after signing.
    good = bytearray(signed("a", 2, {"b": 1}))
    body = decode_signed(bytes(good))[1]
    index = body.index(b"\x01b") + 1
    good[index] ^= 0x01  # "b" -> "c"
    assert decode_signed(bytes(good))[0].neighbours == (("c", 1),)
    assert db.install(bytes(good), 0.0).reason == "bad_signature"
    assert db.install(signed("unknown-x", 1, {}), 0.0).reason == "unknown_origin"
    assert db.install(b"\x01garbage", 0.0).reason == "malformed"
    assert len(db) == 0
    assert db.counters["bad_signature"] == 2
    assert db.counters["unknown_origin"] == 1
    assert db.counters["malformed"] == 1
    # After all that, the genuine advert is still accepted (rejects changed nothing).
    assert db.install(signed("a", 2, {"b": 1}), 0.0).accepted


def test_lsdb_ageing_and_replay_after_expiry() -> None:
    db = LinkStateDatabase("me", key_for, max_age=60.0)
    old = signed("a", 1, {"b": 1})
    assert db.install(old, 0.0).accepted
    assert db.install(signed("z", 1, {}), 30.0).accepted
    assert db.next_expiry() == 60.0
    assert db.expire(59.9) == []
    assert db.expire(60.0) == ["a"]
    assert "a" not in db
    assert "z" in db
    assert db.counters["expired"] == 1
    # The dead origin's advert replayed later cannot resurrect it.
    assert db.install(old, 61.0).reason == "replay"
    assert "a" not in db
    # The origin itself, alive again, comes back with a higher seq.
    assert db.install(signed("a", 2, {"b": 1}), 62.0).accepted


def test_lsdb_own_adverts() -> None:
    db = LinkStateDatabase("me", key_for)
    lsa = LinkStateAdvert("me", 10, 0, (("a", 1),))
    data = encode_signed(lsa, key("me"))
    assert db.install_own(lsa, data, data[:-MLDSA65_SIGNATURE_SIZE], 0.0)
    assert db.install(data, 0.0).reason == "duplicate"
    assert db.install(signed("me", 9, {}), 0.0).reason == "stale_seq"
    assert db.install(signed("me", 11, {}, signer="a"), 0.0).reason == "bad_signature"
    assert db.install(signed("me", 11, {}), 0.0).reason == "own_newer"
    held = db.get("me")
    assert held is not None
    assert held.lsa.seq == 10  # never installed from the network
    assert db.expire(1e9) == []  # own advert never ages out
    with pytest.raises(LocalProtocolError, match="own"):
        db.install_own(LinkStateAdvert("a", 1, 0), b"", b"", 0.0)


# --- SPF --------------------------------------------------------------------------------------


def adverts_from(
    edges: dict[tuple[str, str], int], nodes: set[str] | None = None
) -> dict[str, LinkStateAdvert]:
    """Adverts for an undirected graph ``{(a, b): cost}`` (both directions, same cost)."""
    out: dict[str, dict[str, int]] = {n: {} for n in nodes or ()}
    for (a, b), c in edges.items():
        out.setdefault(a, {})[b] = c
        out.setdefault(b, {})[a] = c
    return {n: LinkStateAdvert(n, 1, 0, tuple(nb.items())) for n, nb in out.items()}


def brute_force(
    source: str, adverts: dict[str, LinkStateAdvert]
) -> dict[str, tuple[int, tuple[str, ...]]]:
    """Min ``(cost, path)`` over every simple path, honouring confirmation and transit-off."""
    listed = {o: dict(a.neighbours) for o, a in adverts.items()}
    links = {
        u: {v: c for v, c in out.items() if v in listed and u in listed[v]}
        for u, out in listed.items()
    }
    assert links == confirmed_links(adverts)
    best: dict[str, tuple[int, tuple[str, ...]]] = {}

    def walk(node: str, cost: int, path: tuple[str, ...]) -> None:
        if path:
            if node not in best or (cost, path) < best[node]:
                best[node] = (cost, path)
            if adverts[node].transit_off:
                return
        for nxt, c in links[node].items():
            if nxt != source and nxt not in path:
                walk(nxt, cost + c, (*path, nxt))

    walk(source, 0, ())
    return best


def test_spf_line_prefers_cheaper_path_and_needs_both_ends() -> None:
    adverts = adverts_from({("a", "b"): 1, ("b", "c"): 1, ("a", "c"): 5})
    routes = compute_routes("a", adverts)
    assert routes["c"] == Route("c", "b", 2, ("b", "c"))
    assert routes["b"] == Route("b", "b", 1, ("b",))
    # "c" stops listing "b" (it lost the link): the one-sided claim of "b" is not used.
    adverts["c"] = LinkStateAdvert("c", 2, 0, (("a", 5),))
    assert compute_routes("a", adverts)["c"] == Route("c", "c", 5, ("c",))
    # A node nobody confirms is unreachable, whatever it claims.
    adverts["x"] = LinkStateAdvert("x", 1, 0, (("a", 1),))
    assert "x" not in compute_routes("a", adverts)
    assert compute_routes("missing", adverts) == {}


def test_spf_transit_off_node_is_a_destination_only() -> None:
    adverts = adverts_from({("a", "b"): 1, ("b", "c"): 1, ("a", "d"): 5, ("d", "c"): 5})
    adverts["b"] = LinkStateAdvert("b", 2, 0, adverts["b"].neighbours, FLAG_TRANSIT_OFF)
    routes = compute_routes("a", adverts)
    assert routes["b"].path == ("b",)
    assert routes["c"].path == ("d", "c")


def test_spf_tie_break_is_lexicographic() -> None:
    adverts = adverts_from({("s", "m2"): 1, ("s", "m1"): 1, ("m1", "t"): 1, ("m2", "t"): 1})
    assert compute_routes("s", adverts)["t"].path == ("m1", "t")


def test_spf_grid_distances() -> None:
    n = 6
    edges = {}
    for i, j in itertools.product(range(n), range(n)):
        if i + 1 < n:
            edges[(f"{i},{j}", f"{i + 1},{j}")] = 1
        if j + 1 < n:
            edges[(f"{i},{j}", f"{i},{j + 1}")] = 1
    routes = compute_routes("0,0", adverts_from(edges))
    assert len(routes) == n * n - 1
    for dest, route in routes.items():
        i, j = map(int, dest.split(","))
        assert route.cost == i + j
        assert len(route.path) == i + j


@st.composite
def random_graphs(draw: st.DrawFn) -> dict[str, LinkStateAdvert]:
    n = draw(st.integers(2, 7))
    nodes = [f"n{i}" for i in range(n)]
    listed: dict[str, dict[str, int]] = {v: {} for v in nodes}
    for a, b in itertools.combinations(nodes, 2):
        kind = draw(st.sampled_from(["none", "both", "both", "a_only"]))
        if kind == "both":
            listed[a][b] = draw(st.integers(1, 5))
            listed[b][a] = draw(st.integers(1, 5))
        elif kind == "a_only":
            listed[a][b] = draw(st.integers(1, 5))
    flags = {v: draw(st.sampled_from([0, 0, 0, FLAG_TRANSIT_OFF])) for v in nodes}
    return {v: LinkStateAdvert(v, 1, 0, tuple(listed[v].items()), flags[v]) for v in nodes}


@settings(max_examples=300, deadline=None)
@given(random_graphs())
def test_spf_matches_brute_force(adverts: dict[str, LinkStateAdvert]) -> None:
    for source in adverts:
        routes = compute_routes(source, adverts)
        expected = brute_force(source, adverts)
        assert {d: (r.cost, r.path) for d, r in routes.items()} == expected
        for dest, route in routes.items():
            assert route.next_hop == route.path[0]
            assert route.path[-1] == dest


_LSDB_OPS = st.lists(
    st.tuples(
        st.sampled_from(["install", "install", "install", "remove", "expire"]),
        st.sampled_from(["n0", "n1", "n2", "n3"]),
        st.dictionaries(st.sampled_from(["n0", "n1", "n2", "n3"]), st.integers(1, 4)),
        st.booleans(),
    ),
    max_size=14,
)


@settings(max_examples=60, deadline=None)
@given(_LSDB_OPS)
def test_lsdb_keeps_the_confirmed_graph_as_adverts_come_and_go(
    ops: list[tuple[str, str, dict[str, int], bool]],
) -> None:
    """The incrementally kept graph equals the one derived from scratch after every step."""
    db = LinkStateDatabase("me", key_for, max_age=10.0)
    for seq, (op, origin, neighbours, transit_off) in enumerate(ops, start=1):
        now = float(seq)
        if op == "install":
            links = {n: c for n, c in neighbours.items() if n != origin}
            lsa = LinkStateAdvert(
                origin, seq, 0, tuple(links.items()), FLAG_TRANSIT_OFF if transit_off else 0
            )
            assert db.install(encode_signed(lsa, key(origin)), now).accepted
        elif op == "remove":
            db.remove(origin)
        else:
            db.expire(now + 10.0 if transit_off else now)
        adverts = db.adverts()
        assert db.confirmed() == confirmed_links(adverts)
        assert db.no_transit() == {o for o, lsa in adverts.items() if lsa.transit_off}
        for source in adverts:
            assert shortest_paths(source, db.confirmed(), db.no_transit()) == compute_routes(
                source, adverts
            )


def test_spf_scales_to_a_thousand_nodes() -> None:
    rng = random.Random(5)
    n = 1000
    edges = {(f"n{i:04d}", f"n{(i + 1) % n:04d}"): rng.randint(1, 50) for i in range(n)}
    for _ in range(3 * n):
        a, b = rng.sample(range(n), 2)
        edges[(f"n{a:04d}", f"n{b:04d}")] = rng.randint(1, 50)
    routes = compute_routes("n0000", adverts_from(edges))
    assert len(routes) == n - 1


# --- router -----------------------------------------------------------------------------------


def make_router(node_id: str, now: float = 0.0, **config: float) -> Router:
    # Most tests want every neighbour change advertised at once; batching has its own test.
    config.setdefault("lsa_batch_interval", RouterConfig().lsa_min_interval)
    return Router(
        node_id,
        key(node_id),
        key_for,
        now,
        wall_offset=EPOCH,
        config=RouterConfig(**config),
    )


def advance(router: Router, until: float) -> None:
    """Fire every timer of ``router`` due up to ``until``, in order."""
    while router.get_timer() <= until:
        router.handle_timer(router.get_timer())


def flush(routers: dict[str, Router], now: float) -> int:
    """Deliver adverts, announces and requests until quiet; returns how many adverts moved."""
    moved = 0
    progressed = True
    while progressed:
        progressed = False
        for n, r in routers.items():
            for peer, entries in r.requests_to_send():
                progressed = True
                routers[peer].receive_request(n, entries, now)
            for peer, entries in r.announces_to_send():
                progressed = True
                routers[peer].receive_announce(n, entries, now)
            for peer, data in r.lsas_to_send():
                progressed = True
                moved += 1
                routers[peer].receive_lsa(data, n, now)
    return moved


def tick(routers: dict[str, Router], now: float) -> None:
    for r in routers.values():
        if r.get_timer() <= now:
            r.handle_timer(now)
    while flush(routers, now):
        pass


def test_router_line_converges_and_floods_once_per_link() -> None:
    names = ["a", "b", "c", "d"]
    routers = {n: make_router(n) for n in names}
    for x, y in itertools.pairwise(names):
        routers[x].neighbour_up(y, 10, 0.0)
        routers[y].neighbour_up(x, 10, 0.0)
    t = 0.0
    for _ in range(20):
        t += 0.01
        tick(routers, t)
    assert routers["a"].route("d") == Route("d", "b", 30, ("b", "c", "d"))
    assert routers["d"].next_hop("a") == "c"
    assert routers["b"].next_hop("zzz") is None
    counters = routers["c"].all_counters()
    assert counters["lsa_accepted"] >= 3
    assert counters["lsa_bad_signature"] == 0
    event = routers["a"].next_event()
    assert isinstance(event, RoutesChanged)
    # Link b-c goes down: both ends re-originate and a/d lose each other.
    routers["b"].neighbour_down("c", t)
    routers["c"].neighbour_down("b", t)
    for _ in range(20):
        t += 0.01
        tick(routers, t)
    assert routers["a"].next_hop("d") is None
    assert routers["a"].next_hop("b") == "b"


def test_router_debounces_spf() -> None:
    a, b = make_router("a"), make_router("b")
    a.neighbour_up("b", 5, 0.0)
    b.neighbour_up("a", 5, 0.0)
    advance(b, 0.05)
    (peer, advert) = b.lsas_to_send()[-1]
    assert peer == "a"
    advance(a, 1.4)  # originates a's advert listing b (and runs the age check at 1.0)
    a.lsas_to_send()
    assert a.receive_lsa(advert, "b", 1.5) == "accepted"
    assert a.announces_to_send() == []  # nowhere else to flood
    assert a.next_hop("b") is None  # not before the debounce
    assert a.get_timer() == pytest.approx(1.53)
    a.handle_timer(1.52)
    assert a.next_hop("b") is None
    a.handle_timer(1.53)
    assert a.next_hop("b") == "b"
    # A stream of changes 20 ms apart: SPF waits, but no longer than 200 ms after the first.
    adverts = [signed("b", b.seq + 1 + i, {"a": 6 + i}) for i in range(14)]
    t0 = 2.0
    runs = a.counters["spf_runs"]
    for i, advert in enumerate(adverts):
        t = t0 + 0.02 * i
        advance(a, t + 1e-9)
        expected_runs = runs + (1 if t >= t0 + 0.2 - 1e-9 else 0)
        assert a.counters["spf_runs"] == expected_runs, i
        a.receive_lsa(advert, "b", t)
    route = a.route("b")
    assert route is not None
    assert route.cost == 5  # a's own cost to b; b's advert costs are b -> a
    advance(a, 3.0)
    assert a.counters["spf_runs"] == runs + 2


def test_an_advert_waits_for_its_origins_key_latest_per_origin_and_bounded() -> None:
    keys: dict[str, mldsa.MLDSA65PublicKey] = {}
    r = Router("me", key("me"), keys.get, 0.0, config=RouterConfig(max_waiting_for_key=2))
    r.neighbour_up("p1", 1, 0.0)
    assert r.receive_flooded(signed("far", 1, {"p1": 1}), "p1", 0.1) == WAITING_FOR_KEY
    assert r.receive_flooded(signed("far", 2, {"p1": 3}), "p1", 0.1) == WAITING_FOR_KEY
    assert r.receive_flooded(signed("other", 1, {"p1": 1}), "p1", 0.1) == WAITING_FOR_KEY
    # A third origin finds no room: answered the same, but nothing is kept for it.
    assert r.receive_flooded(signed("third", 1, {"p1": 1}), "p1", 0.1) == WAITING_FOR_KEY
    assert r.key_learned("far", 0.2) == WAITING_FOR_KEY  # no key yet: it waits again
    assert r.all_counters()["lsa_unknown_origin"] == 0  # waiting is no rejection
    for origin in ("far", "other", "third"):
        keys[origin] = key(origin).key.public_key()
    assert r.key_learned("far", 0.2) == "accepted"
    held = r.lsdb.get("far")
    assert held is not None
    assert held.lsa.seq == 2  # the latest copy waited, not the first
    assert r.key_learned("far", 0.3) is None  # processed once
    assert r.key_learned("other", 0.3) == "accepted"
    assert r.key_learned("third", 0.3) is None
    assert r.lsdb.get("third") is None
    # Own adverts never wait (the router holds its own key).
    assert r.receive_flooded(signed("me", 1, {}), "p1", 0.4) != WAITING_FOR_KEY


def test_flooded_copies_older_than_held_are_stale_without_a_parse() -> None:
    r = make_router("me")
    r.neighbour_up("p1", 1, 0.0)
    assert r.receive_flooded(signed("far", 5, {"p1": 1}), "p1", 0.1) == "accepted"
    before = r.all_counters()
    older = bytearray(signed("far", 4, {"p1": 1}))
    older[-1] ^= 0xFF  # a broken signature is never checked: the seq alone decides
    assert r.receive_flooded(bytes(older), "p1", 0.2) == "stale_seq"
    after = r.all_counters()
    assert after["lsa_stale_seq"] == before["lsa_stale_seq"] + 1
    assert after["lsa_bad_signature"] == before["lsa_bad_signature"]
    # A newer one is parsed and verified as usual.
    newer = bytearray(signed("far", 6, {"p1": 1}))
    newer[-1] ^= 0xFF
    assert r.receive_flooded(bytes(newer), "p1", 0.3) == "bad_signature"
    assert r.receive_flooded(b"\x01\x00", "p1", 0.3) == "malformed"


def test_skip_held_answers_for_the_first_bytes_of_an_advert() -> None:
    r = make_router("me")
    r.receive_lsa(signed("far", 5, {"p1": 1}), "p1", 0.1)
    head = signed("far", 5, {"p1": 1})[:40]
    before = r.all_counters()
    assert r.skip_held(head)
    assert r.skip_held(signed("far", 3, {"p1": 1})[:40])
    assert not r.skip_held(signed("far", 6, {"p1": 1})[:40])
    assert not r.skip_held(signed("new", 1, {"p1": 1})[:40])
    assert not r.skip_held(head[:10])  # too short to hold the seq
    after = r.all_counters()
    assert after["lsa_duplicate"] == before["lsa_duplicate"] + 1
    assert after["lsa_stale_seq"] == before["lsa_stale_seq"] + 1


def test_router_announces_to_all_links_but_the_incoming_one() -> None:
    r = make_router("hub")
    for peer in ("p1", "p2", "p3"):
        r.neighbour_up(peer, 1, 0.0)
    advert = signed("far", 1, {"p1": 1})
    assert r.receive_lsa(advert, "p1", 0.0) == "accepted"
    assert r.announces_to_send() == [("p2", [("far", 1)]), ("p3", [("far", 1)])]
    assert r.receive_lsa(advert, "p2", 0.0) == "duplicate"  # not announced again
    assert r.announces_to_send() == []
    forged = signed("far", 2, {"p1": 1}, signer="p1")
    assert r.receive_lsa(forged, "p1", 0.0) == "bad_signature"
    assert r.announces_to_send() == []
    assert r.all_counters()["lsa_bad_signature"] == 1
    # A neighbour that announced an advert holds it: a newer one is not announced back to it.
    r.receive_announce("p3", [("far", 2)], 0.0)
    assert r.requests_to_send() == [("p3", [("far", 2)])]
    assert r.receive_lsa(signed("far", 2, {"p1": 2}), "p3", 0.01) == "accepted"
    assert r.announces_to_send() == [("p1", [("far", 2)]), ("p2", [("far", 2)])]
    # A new neighbour gets a summary of the database at once, then what its summary lacks.
    r.lsas_to_send()
    assert [peer for peer, _ in r.summaries_to_send()] == ["p1", "p2", "p3"]
    r.neighbour_up("p4", 1, 0.0)
    ((peer, entries),) = r.summaries_to_send()
    assert peer == "p4"
    assert ("far", 2) in entries
    assert ("hub", r.seq) in entries
    assert r.lsas_to_send() == []
    assert r.receive_summary("p4", [], 0.0) == 1  # restarted: it lacks the far advert
    far = r.lsdb.get("far")
    assert far is not None
    assert r.lsas_to_send() == [("p4", far.data)]
    assert r.receive_summary("p4", [("far", 2)], 0.0) == 0  # a flap: nothing to resend
    assert r.receive_summary("p4", [("far", 0), ("hub", 0)], 0.0) == 1  # older: resend
    assert r.lsas_to_send() == [("p4", far.data)]  # never our own (re-originated anyway)


def test_announce_then_pull_delivers_each_advert_once_per_node() -> None:
    # A ring of 8 with chords: degree 3-4, so push flooding would deliver 2-3 copies per node.
    names = [f"r{i}" for i in range(8)]
    edges = {(names[i], names[(i + 1) % 8]) for i in range(8)} | {("r0", "r4"), ("r2", "r6")}
    routers = {n: make_router(n) for n in names}
    for x, y in edges:
        routers[x].neighbour_up(y, 10, 0.0)
        routers[y].neighbour_up(x, 10, 0.0)
    for t in (0.05, 0.1, 0.2, 0.3):
        tick(routers, t)
    assert all(len(r.lsdb) == 8 for r in routers.values())
    duplicates = sum(r.all_counters()["lsa_duplicate"] for r in routers.values())
    # r0 loses a neighbour: its new advert reaches each of the 7 others exactly once.
    routers["r0"].neighbour_down("r4", 1.0)
    routers["r4"].neighbour_down("r0", 1.0)
    for r in (routers["r0"], routers["r4"]):
        advance(r, 1.1)
    assert flush(routers, 1.1) == 2 * 7
    assert sum(r.all_counters()["lsa_duplicate"] for r in routers.values()) == duplicates
    held = {n: r.lsdb.get("r0") for n, r in routers.items()}
    assert len({None if e is None else e.data for e in held.values()}) == 1
    advance(routers["r4"], 1.5)
    assert routers["r4"].route("r0") == Route("r0", "r3", 40, ("r3", "r2", "r1", "r0"))


def test_a_request_that_is_not_answered_goes_to_another_announcer() -> None:
    r = make_router("me")
    for peer in ("p1", "p2", "p3"):
        r.neighbour_up(peer, 1, 0.0)
    advance(r, 0.1)
    r.lsas_to_send()
    assert r.receive_announce("p1", [("far", 5)], 1.0) == 1
    assert r.receive_announce("p2", [("far", 5)], 1.01) == 0  # already asked p1
    assert r.requests_to_send() == [("p1", [("far", 5)])]
    advance(r, 1.49)
    assert r.requests_to_send() == []
    advance(r, 1.5)  # p1 never answered: ask p2, the other announcer
    assert r.requests_to_send() == [("p2", [("far", 5)])]
    # Nobody else announced it: ask them again, the n-th try waiting n timeouts, 5 in all.
    for at in (2.5, 4.0, 6.0):
        advance(r, at - 0.01)
        assert r.requests_to_send() == []
        advance(r, at)
        ((peer, _),) = r.requests_to_send()
        assert peer in ("p1", "p2")
    advance(r, 8.5)  # then it is left to refresh and database sync
    assert r.requests_to_send() == []
    assert r.counters["request_timeouts"] == 5
    # A neighbour announcing a made-up seq delays the genuine advert by one timeout only.
    r.receive_announce("p3", [("far", 2**40)], 10.0)
    r.receive_announce("p1", [("far", 6)], 10.0)
    assert r.requests_to_send() == [("p3", [("far", 2**40)])]
    advance(r, 10.5)
    assert r.requests_to_send() == [("p1", [("far", 6)])]
    assert r.receive_lsa(signed("far", 6, {"p1": 1}), "p1", 10.6) == "accepted"
    advance(r, 12.0)
    assert r.requests_to_send() == []  # nothing wanted any more
    assert r.counters["request_timeouts"] == 6
    # The neighbour we asked goes down: ask another at once.
    r.receive_announce("p2", [("far", 7)], 12.0)
    r.receive_announce("p3", [("far", 7)], 12.0)
    assert r.requests_to_send() == [("p2", [("far", 7)])]
    r.neighbour_down("p2", 12.1)
    advance(r, 12.1)
    assert r.requests_to_send() == [("p3", [("far", 7)])]


def test_requests_are_answered_with_held_adverts_and_throttled() -> None:
    r = make_router("me")
    r.neighbour_up("p1", 1, 0.0)
    advance(r, 0.1)
    r.lsas_to_send()
    advert = signed("far", 3, {"p1": 1})
    r.receive_lsa(advert, "p1", 0.1)
    assert r.receive_request("p1", [("far", 3), ("far2", 1)], 0.2) == 1
    assert r.receive_request("p1", [("far", 4)], 0.2) == 0  # we do not hold that one
    assert r.lsas_to_send() == [("p1", advert)]
    assert r.receive_request("p1", [("far", 3)], 0.3) == 0  # again, too soon
    assert r.receive_request("p1", [("far", 1)], 0.5) == 1  # an older seq: the held one
    assert r.lsas_to_send() == [("p1", advert)]
    own = r.lsdb.get("me")
    assert own is not None
    assert r.receive_request("p1", [("me", own.lsa.seq)], 0.5) == 1
    c = r.counters
    assert (c["requests_received"], c["requests_answered"]) == (6, 3)
    assert (c["requests_unanswerable"], c["requests_throttled"]) == (2, 1)
    with pytest.raises(ValueError, match="max_requests"):
        RouterConfig(max_requests=0)


def test_flooding_state_is_bounded() -> None:
    held: dict[str, int] = {}
    flooding = Flooding(
        lambda origin: held.get(origin, -1),
        request_timeout=0.5,
        max_requests=5,
        max_origins=lambda: 2,
    )
    # A neighbour announcing adverts of ever new origins cannot grow our state without bound.
    asked = flooding.on_announce("p1", [(f"o{i}", 1) for i in range(5)], 0.0, linked=True)
    assert asked == 2
    assert flooding.counters["announces_dropped"] == 3
    assert flooding.requests_to_send() == [("p1", [("o0", 1), ("o1", 1)])]
    held["o0"] = 1
    flooding.settle("o0")
    flooding.forget("o1")  # a departed member
    assert flooding.on_announce("p1", [("o2", 1)], 1.0, linked=True) == 1
    assert flooding.get_timer() == pytest.approx(1.5)
    with pytest.raises(ValueError, match="max_requests"):
        Flooding(lambda origin: -1, request_timeout=0.5, max_requests=0)


def test_relay_cannot_alter_another_nodes_advert() -> None:
    names = ["a", "relay", "c"]
    routers = {n: make_router(n) for n in names}
    for x, y in itertools.pairwise(names):
        routers[x].neighbour_up(y, 10, 0.0)
        routers[y].neighbour_up(x, 10, 0.0)
    for t in (0.05, 0.1, 0.2):
        tick(routers, t)
    genuine = routers["relay"].lsdb.get("a")
    assert genuine is not None
    lsa, body, _ = decode_signed(genuine.data)
    # 1. Re-sign a's advert, cheaper and with a made-up link, with the relay's own key.
    fake = LinkStateAdvert("a", lsa.seq + 1, 0, (("c", 1), ("relay", 1)))
    assert routers["c"].receive_lsa(encode_signed(fake, key("relay")), "relay", 0.3) != "accepted"
    # 2. Keep a's signature but change a cost byte.
    altered = bytearray(genuine.data)
    altered[len(body) - 1] ^= 0x04
    assert routers["c"].receive_lsa(bytes(altered), "relay", 0.3) != "accepted"
    # 3. Replay a's older advert.
    assert routers["c"].receive_lsa(genuine.data, "relay", 0.3) != "accepted"
    counters = routers["c"].all_counters()
    assert counters["lsa_bad_signature"] == 1
    # Same seq as the genuine advert it holds: rejected before any signature check.
    assert counters["lsa_stale_seq"] == 1
    assert counters["lsa_duplicate"] >= 1
    # A node that never saw the genuine advert rejects the altered one on its signature.
    fresh = LinkStateDatabase("c", key_for)
    assert fresh.install(bytes(altered), 0.3).reason == "bad_signature"
    held = routers["c"].lsdb.get("a")
    assert held is not None
    assert held.lsa == lsa
    tick(routers, 0.5)
    assert routers["c"].route("a") == Route("a", "relay", 20, ("relay", "a"))


def test_restarted_router_jumps_past_its_previous_incarnation() -> None:
    old = make_router("a", now=100.0)
    high = old.seq
    assert high >= int((100.0 + EPOCH) * 1e6)
    # The new incarnation's wall clock went backwards by an hour.
    new = Router("a", key("a"), key_for, 0.0, wall_offset=EPOCH - 3600)
    assert new.seq < high
    previous = old.lsdb.get("a")
    assert previous is not None
    assert new.receive_lsa(previous.data, "b", 0.0) == "own_newer"
    assert new.all_counters()["lsa_own_newer"] == 1
    advance(new, 0.05)
    assert new.seq > high


def test_router_refreshes_and_ages() -> None:
    a = make_router("a", refresh_interval=10.0, max_age=30.0)
    a.neighbour_up("b", 1, 0.0)
    advance(a, 0.05)
    seq = a.seq
    assert a.get_timer() <= 10.0 + 0.05
    advance(a, 10.06)
    assert a.seq > seq
    assert a.receive_lsa(signed("b", 1, {"a": 1}), "b", 10.0) == "accepted"
    advance(a, 10.2)
    assert a.next_hop("b") == "b"
    # b never refreshes: its advert ages out and the route goes.
    advance(a, 41.0)
    assert "b" not in a.lsdb
    assert a.next_hop("b") is None
    assert a.all_counters()["lsa_expired"] == 1


def test_router_forgets_a_departed_member() -> None:
    a = make_router("a")
    a.neighbour_up("b", 1, 0.0)
    advance(a, 0.1)
    assert a.receive_lsa(signed("b", 1, {"a": 1, "c": 1}), "b", 0.1) == "accepted"
    assert a.receive_lsa(signed("c", 1, {"b": 1}), "b", 0.1) == "accepted"
    advance(a, 0.5)
    assert a.next_hop("c") == "b"
    assert a.forget("c", 0.5)
    assert not a.forget("c", 0.5)
    assert not a.forget("a", 0.5)
    advance(a, 0.6)
    assert a.next_hop("c") is None
    assert a.next_hop("b") == "b"


def test_router_rejects_api_misuse() -> None:
    r = make_router("a")
    with pytest.raises(LocalProtocolError):
        r.neighbour_up("a", 1, 0.0)
    with pytest.raises(LocalProtocolError):
        r.neighbour_up("b", 0, 0.0)
    with pytest.raises(ValueError, match="max_age"):
        RouterConfig(refresh_interval=10, max_age=5)
    with pytest.raises(ValueError, match="spf_max_delay"):
        RouterConfig(spf_delay=1, spf_max_delay=0.5)
    assert "neighbours=0" in repr(r)


def test_new_neighbours_are_batched_but_a_lost_one_is_advertised_at_once() -> None:
    r = make_router("hub", lsa_batch_interval=1.0)
    start = r.counters["originated"]
    for i, peer in enumerate(("p1", "p2", "p3", "p4", "p5")):
        r.neighbour_up(peer, 1, 0.1 * i)
        advance(r, 0.1 * i)
    assert r.counters["originated"] == start  # links coming up wait for the batch
    advance(r, 1.0)
    assert r.counters["originated"] == start + 1  # one advert for all of them
    r.lsas_to_send()
    # Quiet for a while: a lost neighbour is advertised at once (fast heal).
    r.neighbour_down("p2", 30.0)
    advance(r, 30.0)
    assert r.counters["originated"] == start + 2
    sent = r.lsas_to_send()
    assert sorted(peer for peer, _ in sent) == ["p1", "p3", "p4", "p5"]
    # Adverts now follow each other closely: the hold doubles and later changes wait.
    r.neighbour_down("p3", 30.01)  # within lsa_min_interval: waits for it at least
    advance(r, 30.04)
    assert r.counters["originated"] == start + 2
    advance(r, 30.05)
    assert r.counters["originated"] == start + 3
    r.neighbour_down("p4", 30.1)  # a grown hold does not slow a loss down
    advance(r, 30.15)
    assert r.counters["originated"] == start + 4
    r.neighbour_up("p1", 1, 31.0)
    r.neighbour_down("p1", 31.0)  # the 4th loss within 10 s: still at once
    advance(r, 31.0)
    assert r.counters["originated"] == start + 5
    r.neighbour_up("p5", 1, 31.5)
    r.neighbour_down("p5", 31.5)  # the 5th: flapping, a quarter of the (grown) hold
    wait = r.batch_hold / 4
    assert wait > 1.0
    advance(r, 31.0 + wait - 0.01)
    assert r.counters["originated"] == start + 5
    advance(r, 31.0 + wait)
    assert r.counters["originated"] == start + 6
    with pytest.raises(ValueError, match="lsa_batch_interval"):
        RouterConfig(lsa_batch_interval=0.01)
    with pytest.raises(ValueError, match="lsa_max_batch_interval"):
        RouterConfig(lsa_batch_interval=10.0)
    with pytest.raises(ValueError, match="loss_burst"):
        RouterConfig(loss_burst=0)
    with pytest.raises(ValueError, match="request_timeout"):
        RouterConfig(request_timeout=0.0)


def test_a_lost_neighbour_leaves_own_routes_before_the_new_advert_is_out() -> None:
    r = make_router("a", loss_burst=1, lsa_batch_interval=1.0)
    for peer in ("b", "c", "x"):
        r.neighbour_up(peer, 1, 0.0)
    advance(r, 0.1)
    for origin, links in (
        ("b", {"a": 1, "d": 1}),
        ("c", {"a": 1, "d": 5}),
        ("d", {"b": 1, "c": 5}),
    ):
        assert r.receive_lsa(signed(origin, 1, links), "b", 0.1) == "accepted"
    advance(r, 1.5)
    assert r.next_hop("d") == "b"
    r.neighbour_down("x", 2.0)
    advance(r, 2.0)
    originated = r.counters["originated"]
    r.neighbour_down("b", 2.1)  # the second loss: flapping, so our advert waits
    advance(r, 2.1 + r.config.spf_delay)
    assert r.counters["originated"] == originated
    assert r.next_hop("d") == "c"  # but our own routes moved at once


def test_flapping_link_resyncs_by_summary_not_the_whole_database() -> None:
    names = ["a", "b", "c", "d", "e"]
    routers = {n: make_router(n) for n in names}
    for x, y in itertools.pairwise(names):
        routers[x].neighbour_up(y, 10, 0.0)
        routers[y].neighbour_up(x, 10, 0.0)

    def sync(now: float) -> int:
        moved = 0
        for _ in range(10):
            for n, r in routers.items():
                for peer, entries in r.summaries_to_send():
                    routers[peer].receive_summary(n, entries, now)
            step = flush(routers, now)
            moved += step
            if not step:
                break
        return moved

    sync(0.0)
    for r in routers.values():
        advance(r, 1.0)
    sync(1.0)
    assert all(len(r.lsdb) == 5 for r in routers.values())
    # The a-b link flaps: down, then up again with both databases intact.
    for x, y in (("a", "b"), ("b", "a")):
        routers[x].neighbour_down(y, 2.0)
    for x, y in (("a", "b"), ("b", "a")):
        routers[x].neighbour_up(y, 10, 2.5)
    before = {n: r.counters["sync_adverts_sent"] for n, r in routers.items()}
    sync(2.5)
    assert {n: r.counters["sync_adverts_sent"] for n, r in routers.items()} == before
    # A restarted b (empty database) gets everything a holds but a's own advert.
    routers["b"] = make_router("b", 3.0)
    routers["a"].neighbour_down("b", 3.0)
    routers["a"].neighbour_up("b", 10, 3.1)
    routers["b"].neighbour_up("a", 10, 3.1)
    sync(3.1)
    assert routers["a"].counters["sync_adverts_sent"] == before["a"] + 3  # c, d, e


def test_request_timeout_adapts_to_the_answer_time() -> None:
    held: dict[str, int] = {}
    flooding = Flooding(
        lambda origin: held.get(origin, -1),
        request_timeout=0.5,
        max_requests=5,
        max_request_timeout=4.0,
    )
    assert flooding.timeout == 0.5  # no sample yet: the least timeout
    # A busy host: the advert arrives 1.5 s after the request (it was never re-asked).
    assert flooding.on_announce("p1", [("o0", 1)], 0.0, linked=True) == 1
    flooding.handle_timer(0.4, ["p1", "p2"])
    assert flooding.requests_to_send() == [("p1", [("o0", 1)])]
    held["o0"] = 1
    flooding.settle("o0", 1.5)
    assert flooding.srtt == pytest.approx(1.5)
    assert flooding.timeout == pytest.approx(4.0)  # 1.5 + 4 x 0.75, capped
    # The next request waits that long before another neighbour is asked.
    flooding.on_announce("p1", [("o1", 1)], 2.0, linked=True)
    flooding.on_announce("p2", [("o1", 1)], 2.0, linked=True)
    assert flooding.get_timer() == pytest.approx(6.0)
    flooding.handle_timer(5.9, ["p1", "p2"])
    assert flooding.counters["request_timeouts"] == 0
    flooding.handle_timer(6.0, ["p1", "p2"])
    assert flooding.counters["request_timeouts"] == 1
    assert flooding.requests_to_send() == [("p1", [("o1", 1)]), ("p2", [("o1", 1)])]
    # Quick answers bring it back down to the floor, never below.
    for i in range(60):
        origin = f"q{i}"
        flooding.on_announce("p1", [(origin, 1)], 10.0 + i, linked=True)
        held[origin] = 1
        flooding.settle(origin, 10.0 + i + 0.01)
    assert flooding.timeout == 0.5
    # Without a time (a caller that does not measure) nothing is sampled.
    srtt = flooding.srtt
    flooding.on_announce("p1", [("z", 1)], 100.0, linked=True)
    held["z"] = 1
    flooding.settle("z")
    assert flooding.srtt == srtt
    with pytest.raises(ValueError, match="max_request_timeout"):
        Flooding(lambda origin: -1, request_timeout=0.5, max_requests=1, max_request_timeout=0.1)
    with pytest.raises(ValueError, match="max_request_timeout"):
        RouterConfig(max_request_timeout=0.1)
