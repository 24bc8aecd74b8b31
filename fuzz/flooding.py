"""Fuzz harness: flooding announces, requests and database summaries (and the adverts they
bring) as a router receives them from its neighbours.

Input: records separated by :data:`fuzzlib.SEP`; a record's first byte picks the neighbour
it comes from (node-a, node-b or node-c, all up) and how far the clock moves; the rest is a
link plaintext decoded with ``decode_frames``. LSDB_ANNOUNCE, LSDB_REQUEST and LSDB_SUMMARY
frames go to ``Router.receive_announce/request/summary``, LINK_STATE_ADVERT frames to
``receive_lsa``, as the node dispatches them; then the router's timers run and its output
queues are drained.

One router lives across inputs (building one signs an advert, which would make each input
cost milliseconds), so this also checks that a long stream of hostile input keeps its state
bounded: at most ``max_origins()`` origins tracked by flooding, outputs bounded by what was
asked. Checked: nothing but ``RemoteProtocolError`` escapes the decoder and nothing at all
escapes the router.

    python fuzz/flooding.py [libFuzzer flags] [corpus dirs]
"""

from __future__ import annotations

import fuzzlib

with fuzzlib.instrumented():
    from x0tta6bl4.protocol.errors import RemoteProtocolError
    from x0tta6bl4.protocol.frames import (
        LinkStateAdvert,
        LsdbAnnounce,
        LsdbRequest,
        LsdbSummary,
        decode_frames,
    )
    from x0tta6bl4.protocol.router import Router

PEERS = ("node-a", "node-b", "node-c")
_KEYS = {name: fuzzlib.signing_key(f"node/{name}").key.public_key() for name in (*PEERS, "node-d")}
_clock = [10.0]
_router: Router | None = None


def _get_router() -> Router:
    global _router
    if _router is None:
        _router = Router("node-z", fuzzlib.signing_key("node/node-z"), _KEYS.get, _clock[0])
        for i, peer in enumerate(PEERS):
            _router.neighbour_up(peer, 10 + i, _clock[0])
    return _router


def test_one_input(data: bytes) -> None:
    router = _get_router()
    for record in fuzzlib.split(data, 16):
        if not record:
            continue
        peer = PEERS[record[0] % len(PEERS)]
        _clock[0] += (record[0] >> 2) / 40
        now = _clock[0]
        try:
            frames = decode_frames(record[1:])
        except RemoteProtocolError:
            continue
        asked = 0
        for frame in frames:
            if isinstance(frame, LsdbAnnounce):
                assert router.receive_announce(peer, frame.entries, now) <= len(frame.entries)
            elif isinstance(frame, LsdbRequest):
                asked += len(frame.entries)
                assert router.receive_request(peer, frame.entries, now) <= len(frame.entries)
            elif isinstance(frame, LsdbSummary):
                router.receive_summary(peer, frame.entries, now)
            elif isinstance(frame, LinkStateAdvert):
                router.receive_lsa(frame.body, peer, now)
        if now >= router.get_timer():
            router.handle_timer(now)
        router.lsas_to_send()
        router.announces_to_send()
        router.requests_to_send()
        router.summaries_to_send()
        while router.next_event() is not None:
            pass
        assert len(router.flooding._holds) <= router.flooding._max_origins()


if __name__ == "__main__":
    fuzzlib.run(test_one_input)
