"""SPIFFE ID, trust domain and SPIFFE ID pattern handling (x0tta6bl4.identity.spiffe_ids)."""

from __future__ import annotations

import ast
import re
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import assume, given
from hypothesis import strategies as st
from spiffe import SpiffeId, TrustDomain

import x0tta6bl4
import x0tta6bl4.identity as identity
from x0tta6bl4.identity import (
    DEFAULT_TRUST_DOMAIN,
    IdentityError,
    InvalidSpiffeIdError,
    InvalidTrustDomainError,
    SpiffeIdPattern,
    WrongTrustDomainError,
    parse_spiffe_id,
    parse_trust_domain,
    require_trust_domain,
    workload_id,
)

_LABEL = st.from_regex(r"[a-z0-9]([a-z0-9-]{0,10}[a-z0-9])?", fullmatch=True)
_SEGMENT = st.from_regex(r"[A-Za-z0-9._-]{1,12}", fullmatch=True).filter(
    lambda s: s not in {".", ".."}
)


def test_default_trust_domain_is_x0tta6bl4_mesh() -> None:
    assert DEFAULT_TRUST_DOMAIN == "x0tta6bl4.mesh"
    assert parse_trust_domain(DEFAULT_TRUST_DOMAIN) == TrustDomain("x0tta6bl4.mesh")


def test_public_api_is_complete() -> None:
    for name in identity.__all__:
        assert hasattr(identity, name), name
    errors = [getattr(identity, n) for n in identity.__all__ if n.endswith("Error")]
    assert all(issubclass(e, IdentityError) for e in errors)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("x0tta6bl4.mesh", "x0tta6bl4.mesh"),
        ("spiffe://x0tta6bl4.mesh", "x0tta6bl4.mesh"),
        ("Example.ORG", "example.org"),
    ],
)
def test_parse_trust_domain_accepts_name_and_id_forms(text: str, expected: str) -> None:
    assert parse_trust_domain(text).name == expected


@pytest.mark.parametrize(
    "text", ["", "spiffe://", "x0tta6bl4.mesh/path", "td:8080", "bad domain", "ünicode.mesh"]
)
def test_parse_trust_domain_rejects_malformed(text: str) -> None:
    with pytest.raises(InvalidTrustDomainError):
        parse_trust_domain(text)


def test_parse_spiffe_id_round_trips() -> None:
    sid = parse_spiffe_id("spiffe://x0tta6bl4.mesh/ns/prod/sa/x0tta6bl4-app")
    assert isinstance(sid, SpiffeId)
    assert sid.trust_domain.name == "x0tta6bl4.mesh"
    assert sid.path == "/ns/prod/sa/x0tta6bl4-app"


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("", "empty"),
        ("http://x0tta6bl4.mesh/a", "spiffe://"),
        ("spiffe://x0tta6bl4.mesh/a//b", "empty segments"),
        ("spiffe://x0tta6bl4.mesh/a/../b", "not allowed"),
        ("spiffe://x0tta6bl4.mesh/a b", "invalid character"),
        ("spiffe://x0tta6bl4.mesh/a/", "empty segments"),
        ("spiffe://bad_td!/a", "disallowed"),
        ("spiffe://x0tta6bl4.mesh", "no path"),
        ("spiffe://x0tta6bl4.mesh/" + "a" * 3000, "longer than"),
    ],
)
def test_parse_spiffe_id_rejects_malformed_with_reason(text: str, fragment: str) -> None:
    with pytest.raises(InvalidSpiffeIdError, match=fragment):
        parse_spiffe_id(text)


def test_parse_spiffe_id_trust_domain_root_allowed_when_asked() -> None:
    assert parse_spiffe_id("spiffe://x0tta6bl4.mesh", require_path=False).path == ""


def test_wrong_trust_domain_is_its_own_error() -> None:
    with pytest.raises(WrongTrustDomainError, match=r"'evil\.mesh', expected 'x0tta6bl4\.mesh'"):
        parse_spiffe_id("spiffe://evil.mesh/ns/a/sa/b", trust_domain="x0tta6bl4.mesh")
    sid = parse_spiffe_id("spiffe://x0tta6bl4.mesh/ns/a/sa/b")
    require_trust_domain(sid, "spiffe://x0tta6bl4.mesh")
    with pytest.raises(WrongTrustDomainError):
        require_trust_domain(sid, "other.mesh")


def test_workload_id_follows_kubernetes_scheme() -> None:
    sid = workload_id("x0tta6bl4.mesh", "x0tta6bl4-staging", "x0tta6bl4-app")
    assert str(sid) == "spiffe://x0tta6bl4.mesh/ns/x0tta6bl4-staging/sa/x0tta6bl4-app"


@pytest.mark.parametrize(
    ("namespace", "serviceaccount"),
    [("Prod", "sa"), ("-ns", "sa"), ("ns", "SA"), ("n" * 64, "sa"), ("ns", "a/b"), ("", "sa")],
)
def test_workload_id_rejects_invalid_kubernetes_names(namespace: str, serviceaccount: str) -> None:
    with pytest.raises(InvalidSpiffeIdError):
        workload_id("x0tta6bl4.mesh", namespace, serviceaccount)


@given(ns=_LABEL, sa=_LABEL)
def test_workload_id_always_parses_back(ns: str, sa: str) -> None:
    sid = workload_id(DEFAULT_TRUST_DOMAIN, ns, sa)
    assert parse_spiffe_id(str(sid), trust_domain=DEFAULT_TRUST_DOMAIN) == sid
    assert SpiffeIdPattern("spiffe://x0tta6bl4.mesh/ns/*/sa/*").matches(sid)


def test_pattern_matches_any_namespace_for_one_service_account() -> None:
    pattern = SpiffeIdPattern("spiffe://x0tta6bl4.mesh/ns/*/sa/x0tta6bl4-app")
    assert pattern.matches("spiffe://x0tta6bl4.mesh/ns/staging/sa/x0tta6bl4-app")
    assert pattern.matches(workload_id("x0tta6bl4.mesh", "prod", "x0tta6bl4-app"))
    assert not pattern.matches("spiffe://x0tta6bl4.mesh/ns/staging/sa/other")
    assert not pattern.matches("spiffe://other.mesh/ns/staging/sa/x0tta6bl4-app")
    assert not pattern.matches("spiffe://x0tta6bl4.mesh/ns/a/b/sa/x0tta6bl4-app")
    assert not pattern.matches("spiffe://x0tta6bl4.mesh/ns/staging/sa/x0tta6bl4-app/extra")


def test_pattern_question_mark_and_partial_star() -> None:
    pattern = SpiffeIdPattern("spiffe://x0tta6bl4.mesh/node-?/x0-*")
    assert pattern.matches("spiffe://x0tta6bl4.mesh/node-1/x0-")
    assert pattern.matches("spiffe://x0tta6bl4.mesh/node-a/x0-abc")
    assert not pattern.matches("spiffe://x0tta6bl4.mesh/node-12/x0-abc")


def test_pattern_double_star_matches_zero_or_more_segments() -> None:
    pattern = SpiffeIdPattern("spiffe://x0tta6bl4.mesh/ns/**")
    assert pattern.matches("spiffe://x0tta6bl4.mesh/ns")
    assert pattern.matches("spiffe://x0tta6bl4.mesh/ns/a/sa/b")
    assert not pattern.matches("spiffe://x0tta6bl4.mesh/other/a")


def test_pattern_literal_dots_are_not_wildcards() -> None:
    pattern = SpiffeIdPattern("spiffe://x0tta6bl4.mesh/a.b")
    assert pattern.matches("spiffe://x0tta6bl4.mesh/a.b")
    assert not pattern.matches("spiffe://x0tta6bl4.mesh/aXb")


def test_pattern_trust_domain_is_case_insensitive_and_str_round_trips() -> None:
    pattern = SpiffeIdPattern("spiffe://X0TTA6BL4.mesh/ns/*/sa/x")
    assert str(pattern) == "spiffe://x0tta6bl4.mesh/ns/*/sa/x"
    assert pattern == SpiffeIdPattern(str(pattern))
    assert len({pattern, SpiffeIdPattern(str(pattern))}) == 1
    assert pattern.trust_domain.name == "x0tta6bl4.mesh"


@pytest.mark.parametrize(
    "text",
    [
        "",
        "x0tta6bl4.mesh/ns/*",
        "spiffe://*.mesh/ns/a",
        "spiffe://x0tta6bl4.mesh/ns//a",
        "spiffe://x0tta6bl4.mesh/ns/[ab]",
        "spiffe://x0tta6bl4.mesh/../a",
        "spiffe://bad td/a",
    ],
)
def test_malformed_patterns_are_rejected(text: str) -> None:
    with pytest.raises(InvalidSpiffeIdError):
        SpiffeIdPattern(text)


def test_pattern_rejects_malformed_candidate() -> None:
    with pytest.raises(InvalidSpiffeIdError):
        SpiffeIdPattern("spiffe://x0tta6bl4.mesh/**").matches("not a spiffe id")


@given(segments=st.lists(_SEGMENT, min_size=1, max_size=5))
def test_literal_pattern_matches_exactly_its_id(segments: list[str]) -> None:
    text = "spiffe://x0tta6bl4.mesh/" + "/".join(segments)
    pattern = SpiffeIdPattern(text)
    assert pattern.matches(text)
    assert not pattern.matches(text + "x")
    assert not pattern.matches(text + "/x")
    assert SpiffeIdPattern("spiffe://x0tta6bl4.mesh/**").matches(text)
    star = "spiffe://x0tta6bl4.mesh/" + "/".join("*" for _ in segments)
    assert SpiffeIdPattern(star).matches(text)


# --------------------------------------------------------------------------- glob: linear time


def _reference_segment(pattern: str, value: str) -> bool:
    """Textbook dynamic programme over one segment (O(len(pattern) * len(value)))."""
    row = [True] + [False] * len(value)
    for ch in pattern:
        if ch == "*":
            for j in range(1, len(value) + 1):
                row[j] = row[j] or row[j - 1]
        else:
            row = [False] + [
                row[j - 1] and (ch == "?" or ch == value[j - 1]) for j in range(1, len(value) + 1)
            ]
    return row[-1]


def _reference(pattern: list[str], segments: list[str]) -> bool:
    """The same programme at segment level, ``**`` being the star."""
    row = [True] + [False] * len(segments)
    for part in pattern:
        if part == "**":
            for j in range(1, len(segments) + 1):
                row[j] = row[j] or row[j - 1]
        else:
            row = [False] + [
                row[j - 1] and _reference_segment(part, segments[j - 1])
                for j in range(1, len(segments) + 1)
            ]
    return row[-1]


_GLOB_SEGMENT = st.text(alphabet="ab*?", min_size=1, max_size=6).filter(
    lambda s: s.count("*") < 4 and s != "**"
)
_ID_SEGMENT = st.text(alphabet="ab", min_size=1, max_size=8)


@given(
    head=st.lists(_GLOB_SEGMENT, max_size=3),
    tail=st.lists(_GLOB_SEGMENT, max_size=3),
    globstar=st.booleans(),
    segments=st.lists(_ID_SEGMENT, max_size=7),
)
def test_glob_agrees_with_the_reference_programme(
    head: list[str], tail: list[str], globstar: bool, segments: list[str]
) -> None:
    parts = [*head, "**", *tail] if globstar else [*head, *tail]
    assume(sum(p.count("*") + p.count("?") for p in parts if p != "**") <= 16)
    text = "spiffe://x0tta6bl4.mesh" + "".join("/" + p for p in parts)
    sid = "spiffe://x0tta6bl4.mesh" + "".join("/" + s for s in segments)
    assert SpiffeIdPattern(text).matches(sid) == _reference(parts, segments), (text, sid)


def test_consecutive_double_stars_are_one() -> None:
    pattern = SpiffeIdPattern("spiffe://x0tta6bl4.mesh/a/**/**/b")
    assert pattern.matches("spiffe://x0tta6bl4.mesh/a/b")
    assert pattern.matches("spiffe://x0tta6bl4.mesh/a/x/y/b")
    assert not pattern.matches("spiffe://x0tta6bl4.mesh/a")


@pytest.mark.parametrize(
    ("text", "fault"),
    [
        ("spiffe://x0tta6bl4.mesh/" + "a" * 2030, "longer than 2048 characters"),
        ("spiffe://x0tta6bl4.mesh" + "/a" * 33, "more than 32 path segments"),
        ("spiffe://x0tta6bl4.mesh/ns/**/sa/**", "more than 1 '**' segment"),
        ("spiffe://x0tta6bl4.mesh/" + "/".join("*" * 17), "more than 16 wildcards"),
        ("spiffe://x0tta6bl4.mesh/ns/" + "?a" * 15 + "/*?", "more than 16 wildcards"),
        ("spiffe://x0tta6bl4.mesh/ns/*" + "a" * 64, "at most 64 characters"),
        ("spiffe://x0tta6bl4.mesh/ns/*" + "a?" * 8 + "a*", "at most 16 characters"),
    ],
)
def test_patterns_beyond_the_limits_are_rejected(text: str, fault: str) -> None:
    with pytest.raises(InvalidSpiffeIdError, match=re.escape(fault)):
        SpiffeIdPattern(text)


def test_patterns_at_the_limits_are_accepted() -> None:
    assert SpiffeIdPattern("spiffe://x0tta6bl4.mesh/" + "a" * 2024)  # literal: any length
    assert SpiffeIdPattern("spiffe://x0tta6bl4.mesh" + "/a" * 31 + "/**")
    assert SpiffeIdPattern("spiffe://x0tta6bl4.mesh/ns/" + "*a" * 16)
    assert SpiffeIdPattern("spiffe://x0tta6bl4.mesh/ns/*" + "a" * 63)
    assert SpiffeIdPattern("spiffe://x0tta6bl4.mesh/ns/*" + "a?" * 8 + "*")
    assert SpiffeIdPattern("spiffe://x0tta6bl4.mesh/ns/?" + "a?" * 10 + "*" + "a" * 20)


def _calls(pattern: SpiffeIdPattern, sid: SpiffeId) -> tuple[bool, int]:
    """Whether ``sid`` matches, and how many Python and C function calls matching made."""
    count = 0

    def profile(frame: object, event: str, arg: object) -> None:
        nonlocal count
        if event in {"call", "c_call"}:
            count += 1

    sys.setprofile(profile)
    try:
        result = pattern.matches(sid)
    finally:
        sys.setprofile(None)
    return result, count


# Adversarial pairs at the limits: the row-7 pattern of issue 13 (the old matcher took 5 s to
# 12 s per match on it), and patterns whose chunks almost match everywhere in a 2 kB ID.
_ADVERSARIAL = [
    ("spiffe://x0tta6bl4.mesh/ns/*a*a*a*a*a*a*a*a*ab/**", "/ns/{a}/x"),
    ("spiffe://x0tta6bl4.mesh/ns/*a*a*a*a*a*a*a*a*a*a*a*a*a*a*ab", "/ns/{a}"),
    ("spiffe://x0tta6bl4.mesh/**/*?" + "a" * 13 + "?b*", "/{a}"),
    ("spiffe://x0tta6bl4.mesh/**/?" + "a" * 59 + "*?b", "/{a}"),
    (
        "spiffe://x0tta6bl4.mesh/"
        + "/".join(["a"] * 8 + ["*"] * 7 + ["**"] + ["*"] * 8 + ["a"] * 8),
        "/{s}",
    ),
    ("spiffe://x0tta6bl4.mesh/" + "/".join(["?"] * 16), "/{a}"),
]


@pytest.mark.parametrize(("text", "shape"), _ADVERSARIAL)
def test_glob_work_does_not_grow_with_the_id(text: str, shape: str) -> None:
    """Counted, not timed: the calls matching makes are bounded by the pattern alone (each a
    C-level string operation linear in its input); a 64 B and a 2 kB ID cost the same count."""
    pattern = SpiffeIdPattern(text)
    counts = []
    for size in (8, 64, 1900):
        path = shape.format(a="a" * size, s="/".join(["a"] * (size // 2)))
        sid = parse_spiffe_id("spiffe://x0tta6bl4.mesh" + path)
        _, calls = _calls(pattern, sid)
        counts.append(calls)
    assert max(counts) <= 4 * (32 + 16 + 8), counts
    assert counts[2] == counts[1], counts  # 64 B and 2 kB: the same work, at C level


def test_row_7_pattern_matches_in_bounded_cpu() -> None:
    """Issue 13 row 7, end to end in a child with a 20 s CPU limit: before the fix one such match
    took 12 s and the full ID below would not finish in hours; now the 200 matches take ms."""
    code = (
        "import resource\n"
        "resource.setrlimit(resource.RLIMIT_CPU, (20, 20))\n"
        "from x0tta6bl4.identity import SpiffeIdPattern, parse_spiffe_id\n"
        "p = SpiffeIdPattern('spiffe://x0tta6bl4.mesh/ns/' + '*a' * 10 + 'b/**')\n"
        "sid = parse_spiffe_id('spiffe://x0tta6bl4.mesh/ns/' + 'a' * 60 + '/x')\n"
        "print(sum(p.matches(sid) for _ in range(200)))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=False
    )
    assert (done.returncode, done.stdout.strip()) == (0, "0"), done.stderr[-2000:]


def test_glob_bench_runs_its_cases_within_the_limits() -> None:
    """``x0tta6bl4 bench glob`` (figures in bench/README.md): every case is an accepted pattern."""
    from x0tta6bl4.bench.glob import TARGET_WORST_US, cases, run

    assert len(cases()) >= 6
    result = run(matches=2, rounds=1)
    assert result["pairs"] == len(cases()) * 5
    assert result["target_worst_us"] == TARGET_WORST_US
    assert set(result["worst_us_by_pattern"]) == set(cases())


# --- one identity vocabulary -----------------------------------------------------------------


def _definitions(name: str) -> list[str]:
    """Modules of src/x0tta6bl4 that define ``name`` (a class, or an assignment at top level)."""
    root = Path(x0tta6bl4.__file__).parent
    found = []
    for path in sorted(root.rglob("*.py")):
        for node in ast.parse(path.read_text()).body:
            targets: list[ast.expr] = []
            if isinstance(node, ast.ClassDef) and node.name == name:
                found.append(str(path.relative_to(root)))
            elif isinstance(node, ast.Assign):
                targets = list(node.targets)
            elif isinstance(node, ast.AnnAssign):
                targets = [node.target]
            if any(isinstance(t, ast.Name) and t.id == name for t in targets):
                found.append(str(path.relative_to(root)))
    return found


@pytest.mark.parametrize(
    ("name", "home"),
    [
        ("InvalidSpiffeIdError", "identity/errors.py"),
        ("InvalidTrustDomainError", "identity/errors.py"),
        ("WrongTrustDomainError", "identity/errors.py"),
        ("DEFAULT_TRUST_DOMAIN", "defaults.py"),
    ],
)
def test_each_identity_name_is_defined_once(name: str, home: str) -> None:
    assert _definitions(name) == [home]


def test_the_default_trust_domain_is_written_out_once() -> None:
    root = Path(x0tta6bl4.__file__).parent
    holders = sorted(
        str(path.relative_to(root))
        for path in root.rglob("*.py")
        for node in ast.walk(ast.parse(path.read_text()))
        if isinstance(node, ast.Constant) and node.value == "x0tta6bl4.mesh"
    )
    assert holders == ["defaults.py"]
