"""``x0tta6bl4 bench glob``: the cost of SPIFFE ID pattern matching at its worst.

Policies match SPIFFE IDs against admin-written globs (:class:`SpiffeIdPattern`), on the
controller for every registration and on every node for every link rule. Issue 13 row 7: the
old regex matcher backtracked, and one pattern within the old limits took 12 s per match. The
requirement is that any accepted pattern matches any ID in under 1 ms.

This benchmark matches adversarial patterns at the limits of ``identity/spiffe_ids.py`` (the
row-7 pattern, sixteen ``*`` in one segment, ``?`` chunks that almost match at every
position, 32 segments around a ``**``) against IDs built to hurt them (2 kB of one letter in
one segment, a thousand one-letter segments, near misses at the end), each pair timed over
``matches`` calls and taken from its fastest of ``rounds`` rounds (noise only adds time).
The baseline, in the same rounds, is a literal pattern matching the same 2 kB ID (the cheapest
path through the same code, which still compares the whole ID). ``worst_us`` is the slowest
pair's time per match; ``ratio`` is ``worst_us`` ÷ the baseline's.
"""

from __future__ import annotations

import time
from typing import Any

from spiffe import SpiffeId

from x0tta6bl4.identity.spiffe_ids import (
    MAX_GLOB_SEGMENT,
    MAX_PATTERN_SEGMENTS,
    MAX_SEARCHED_CHUNK,
    SpiffeIdPattern,
    parse_spiffe_id,
)

__all__ = ["TARGET_WORST_US", "cases", "format_table", "run"]

#: Issue 13's bound: any accepted pattern matches any ID in under 1 ms.
TARGET_WORST_US = 1000.0

_TD = "spiffe://x0tta6bl4.mesh"
_ID_BUDGET = 2048 - len(_TD)  # the SPIFFE ID standard's limit


def _ids() -> dict[str, SpiffeId]:
    """IDs of (nearly) the maximum length, shaped to make chunks and segments near-miss."""
    one_letter = "a" * (_ID_BUDGET - 8)
    segments = ["a"] * ((_ID_BUDGET - 8) // 2)
    shapes = {
        "one 2 kB segment": f"/ns/{one_letter}",
        "2 kB segment then /x": f"/ns/{one_letter[:-2]}/x",
        "1000 one-letter segments": "/" + "/".join(segments),
        "1000 segments, last differs": "/" + "/".join([*segments[:-1], "b"]),
        "ab repeated": "/ns/" + "ab" * ((_ID_BUDGET - 8) // 2),
    }
    return {name: parse_spiffe_id(_TD + path) for name, path in shapes.items()}


def cases() -> dict[str, SpiffeIdPattern]:
    """The adversarial patterns, each accepted by the limits."""
    wide = "?" + "a" * (MAX_GLOB_SEGMENT - 4) + "?b"
    searched = "?a" * (MAX_SEARCHED_CHUNK // 2 - 1) + "?b"
    half = MAX_PATTERN_SEGMENTS // 2 - 1
    texts = {
        "issue 13 row 7": f"{_TD}/ns/*a*a*a*a*a*a*a*a*ab/**",
        "16 stars in a segment": f"{_TD}/ns/" + "*a" * 15 + "*b",
        "wide ? prefix and suffix": f"{_TD}/**/" + wide[:-3] + "*" + wide[-2:],
        "longest searched ? run": f"{_TD}/ns/*" + searched + "*",
        "searched ? runs": f"{_TD}/ns/" + "*a?" * 5 + "*b*",
        "32 segments around **": f"{_TD}/" + "/".join(["*"] * half + ["**"] + ["a"] * half),
        "stars then literal": f"{_TD}/*/*/*/*/*/*/**/" + "a" * 60 + "b",
    }
    return {name: SpiffeIdPattern(text) for name, text in texts.items()}


def _time(pattern: SpiffeIdPattern, sid: SpiffeId, matches: int) -> float:
    match = pattern.matches
    start = time.perf_counter()
    for _ in range(matches):
        match(sid)
    return time.perf_counter() - start


def run(matches: int = 200, rounds: int = 5) -> dict[str, Any]:
    """Run the benchmark: every (pattern, ID) pair ``matches`` times per round."""
    if matches < 1 or rounds < 1:
        raise ValueError("matches and rounds must be positive")
    ids = _ids()
    patterns = cases()
    baseline_id = ids["one 2 kB segment"]
    baseline = SpiffeIdPattern(str(baseline_id))
    pairs = {(p, i): (pattern, sid) for p, pattern in patterns.items() for i, sid in ids.items()}
    best: dict[tuple[str, str], float] = {}
    best_baseline = float("inf")
    for _ in range(rounds):
        best_baseline = min(best_baseline, _time(baseline, baseline_id, matches))
        for key, (pattern, sid) in pairs.items():
            best[key] = min(best.get(key, float("inf")), _time(pattern, sid, matches))
    per_match = {key: value / matches * 1e6 for key, value in best.items()}
    worst_key = max(per_match, key=per_match.__getitem__)
    baseline_us = best_baseline / matches * 1e6
    by_pattern = {
        name: round(max(us for (p, _), us in per_match.items() if p == name), 2)
        for name in patterns
    }
    return {
        "worst_us": round(per_match[worst_key], 2),
        "worst_pattern": worst_key[0],
        "worst_id": worst_key[1],
        "baseline_us": round(baseline_us, 2),
        "ratio": round(per_match[worst_key] / baseline_us, 2),
        "target_worst_us": TARGET_WORST_US,
        "worst_us_by_pattern": by_pattern,
        "pairs": len(pairs),
        "matches": matches,
        "rounds": rounds,
    }


def format_table(result: dict[str, Any]) -> str:
    """The result as a small human-readable table."""
    verdict = "meets" if result["worst_us"] < result["target_worst_us"] else "MISSES"
    rows = [(f"  {name}", f"{us:.2f} µs") for name, us in result["worst_us_by_pattern"].items()]
    rows = [
        ("pairs (pattern × 2 kB ID)", f"{result['pairs']} × {result['matches']} matches"),
        ("worst per match by pattern", ""),
        *rows,
        (
            "worst",
            f"{result['worst_us']:.2f} µs ({result['worst_pattern']} on "
            f"{result['worst_id']}; {verdict} < {result['target_worst_us']:.0f} µs)",
        ),
        ("baseline (literal, same ID)", f"{result['baseline_us']:.2f} µs"),
        ("ratio (worst ÷ baseline)", f"{result['ratio']:.2f}"),
    ]
    width = max(len(name) for name, _ in rows)
    return "\n".join(f"{name:<{width}}  {value}" for name, value in rows)
