"""SPIFFE ID, trust domain and SPIFFE ID pattern handling (x0tta6bl4.identity.spiffe_ids)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st
from spiffe import SpiffeId, TrustDomain

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
