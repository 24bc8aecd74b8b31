"""Mesh policy evaluation: first match decides, default deny, symmetric links, join rules and
the join derivation from link rules."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from x0tta6bl4.policy import InvalidPolicyError, Policy, PolicyEngine, PolicyRule, default_policy
from x0tta6bl4.records import ModelError

TD = "x0tta6bl4.mesh"
APP = f"spiffe://{TD}/ns/prod/sa/x0tta6bl4-app"
DEV = f"spiffe://{TD}/ns/dev/sa/x0tta6bl4-app"
DB = f"spiffe://{TD}/ns/prod/sa/db"


def rule(source: str, to: str, action: str = "link", allow: bool = True) -> PolicyRule:
    return PolicyRule(source=source, to=to, action=action, allow=allow)  # type: ignore[arg-type]


def engine(*rules: PolicyRule) -> PolicyEngine:
    return PolicyEngine(Policy(rules=rules), TD)


def test_empty_policy_denies_everything() -> None:
    e = engine()
    assert not e.may_join(APP)
    assert not e.may_link(APP, DB)
    assert not e.may_talk(APP, DB)


def test_default_policy_allows_the_trust_domain_only() -> None:
    e = PolicyEngine(default_policy(), TD)
    assert e.may_join(APP)
    assert e.may_link(APP, DEV)
    assert e.may_talk(DEV, APP)
    foreign = "spiffe://evil.example/ns/prod/sa/x0tta6bl4-app"
    assert not e.may_join(foreign)
    assert not e.may_link(APP, foreign)
    assert not e.may_talk(foreign, APP)
    assert not e.may_join("not a spiffe id")


def test_first_match_decides() -> None:
    e = engine(
        rule(f"spiffe://{TD}/ns/dev/**", "*", allow=False),
        rule("*", "*", allow=True),
    )
    assert not e.may_link(DEV, APP)
    assert e.may_link(APP, DB)
    reverse = engine(rule("*", "*", allow=True), rule(f"spiffe://{TD}/ns/dev/**", "*", allow=False))
    assert reverse.may_link(DEV, APP)


def test_links_are_symmetric_talk_is_directional() -> None:
    e = engine(rule(APP, DB, "link"), rule(APP, DB, "talk"))
    assert e.may_link(APP, DB)
    assert e.may_link(DB, APP)
    assert e.may_talk(APP, DB)
    assert not e.may_talk(DB, APP)
    assert not e.may_link(APP, DEV)


def test_link_rules_do_not_grant_talk_and_vice_versa() -> None:
    e = engine(rule("*", "*", "talk"))
    assert e.may_talk(APP, DB)
    assert not e.may_link(APP, DB)
    assert not e.may_join(APP)


def test_join_follows_link_rules() -> None:
    e = engine(
        rule(f"spiffe://{TD}/ns/dev/**", "*", allow=False),
        rule(DB, APP, allow=False),
        rule(f"spiffe://{TD}/ns/prod/**", "*", allow=True),
    )
    assert not e.may_join(DEV)  # banned from every peer
    # A deny for one pair does not stop DB from joining: a later rule lets it link.
    assert e.may_join(DB)
    assert e.may_join(APP)
    assert not e.may_link(DB, APP)
    assert e.may_link(DB, f"spiffe://{TD}/ns/prod/sa/other")
    # Named only on the "to" side counts too.
    assert engine(rule("*", APP)).may_join(APP)
    assert engine(rule("*", APP)).may_join(DB)  # anyone may link with APP


def test_join_rules_decide_when_present() -> None:
    e = engine(
        rule(f"spiffe://{TD}/ns/prod/sa/db", "*", "join", allow=False),
        rule(f"spiffe://{TD}/ns/prod/**", "*", "join", allow=True),
        rule("*", "*", "link", allow=True),
    )
    assert e.has_join_rules
    assert e.may_join(APP)
    assert not e.may_join(DB)  # first matching join rule denies
    # No join rule names DEV: denied, although the link rules let it link with anybody.
    assert not e.may_join(DEV)
    assert e.may_link(DEV, APP)
    # The first match decides, in document order.
    reverse = engine(
        rule(f"spiffe://{TD}/ns/prod/**", "*", "join", allow=True),
        rule(DB, "*", "join", allow=False),
    )
    assert reverse.may_join(DB)


def test_join_rules_allow_joining_without_any_link_rule() -> None:
    e = engine(rule("*", "*", "join"))
    assert e.may_join(APP)
    assert e.may_join(DEV)
    # Joining grants nothing else: no link or talk rule, so no links and no traffic.
    assert not e.may_link(APP, DEV)
    assert not e.may_talk(APP, DEV)


def test_join_rules_never_change_link_or_talk_decisions() -> None:
    links = (
        rule(f"spiffe://{TD}/ns/dev/**", "*", allow=False),
        rule("*", "*", allow=True),
        rule("*", DB, "talk", allow=False),
        rule("*", "*", "talk", allow=True),
    )
    with_join = engine(rule("*", "*", "join", allow=False), *links)
    without = engine(*links)
    for a in (APP, DEV, DB):
        assert not with_join.may_join(a)
        for b in (APP, DEV, DB):
            assert with_join.may_link(a, b) == without.may_link(a, b)
            assert with_join.may_talk(a, b) == without.may_talk(a, b)


def test_policies_without_join_rules_keep_the_link_derivation() -> None:
    # The document stored before join rules existed decides exactly as it did.
    stored = Policy.from_json(
        {
            "rules": [
                {"from": f"spiffe://{TD}/ns/dev/**", "to": "*", "action": "link", "allow": False},
                {"from": f"spiffe://{TD}/ns/prod/**", "to": "*", "action": "link", "allow": True},
            ]
        }
    )
    e = PolicyEngine(stored, TD)
    assert not e.has_join_rules
    assert not e.may_join(DEV)
    assert e.may_join(APP)
    assert not PolicyEngine(default_policy(), TD).has_join_rules


def test_join_rule_model() -> None:
    data = {"from": f"spiffe://{TD}/ns/prod/**", "to": "*", "action": "join", "allow": True}
    parsed = Policy.from_json({"rules": [data]})
    assert parsed.rules[0] == rule(data["from"], "*", "join")  # type: ignore[arg-type]
    assert parsed.to_json() == {"rules": [data]}
    # A join rule is not towards a peer: its "to" must be "*".
    with pytest.raises(ModelError, match="join rule's 'to' must be"):
        Policy.from_json({"rules": [{**data, "to": APP}]})
    with pytest.raises(ModelError, match="'join', 'link' or 'talk'"):
        Policy.from_json({"rules": [{**data, "action": "enter"}]})
    # Its pattern is checked against the trust domain like any other.
    with pytest.raises(InvalidPolicyError, match=r"rules\[0\]\.from"):
        engine(rule("spiffe://evil.example/ns/*", "*", "join"))


def test_glob_syntax() -> None:
    e = engine(
        rule(f"spiffe://{TD}/ns/*/sa/x0tta6bl4-app", f"spiffe://{TD}/ns/prod/sa/d*b"),
    )
    assert e.may_link(DEV, DB)
    assert e.may_link(DEV, f"spiffe://{TD}/ns/prod/sa/dxyb")
    assert not e.may_link(DEV, f"spiffe://{TD}/ns/prod/sa/dbx")
    assert not e.may_link(f"spiffe://{TD}/ns/a/b/sa/x0tta6bl4-app", DB)


@pytest.mark.parametrize(
    "pattern",
    [
        "spiffe://evil.example/ns/*",  # another trust domain
        "spiffe://x0tta6bl4.mesh/ns//sa",  # empty segment
        "spiffe://*.mesh/ns/a",  # wildcard trust domain
        "spiffe://x0tta6bl4.mesh/ns/../sa",  # dot segment
    ],
)
def test_invalid_patterns_are_refused(pattern: str) -> None:
    # The store's model refuses some shapes itself; the engine refuses the rest.
    with pytest.raises((InvalidPolicyError, ModelError)):
        engine(rule(pattern, "*"))


_segment = st.text(alphabet="abcxyz0-", min_size=1, max_size=6).filter(
    lambda s: s not in {".", ".."}
)


@given(st.lists(_segment, min_size=1, max_size=4), st.lists(_segment, min_size=1, max_size=4))
def test_any_rule_matches_every_id_in_the_domain(a: list[str], b: list[str]) -> None:
    ida = f"spiffe://{TD}/" + "/".join(a)
    idb = f"spiffe://{TD}/" + "/".join(b)
    allow_all = engine(rule("*", "*"), rule("*", "*", "talk"))
    deny_all = engine(rule("*", "*", allow=False), rule("*", "*", "talk", allow=False))
    assert allow_all.may_link(ida, idb)
    assert allow_all.may_talk(ida, idb)
    assert allow_all.may_join(ida)
    assert not deny_all.may_link(ida, idb)
    assert not deny_all.may_talk(ida, idb)
    assert not deny_all.may_join(ida)
    # With join rules present, joining is exactly the first matching join rule.
    assert engine(rule(ida, "*", "join", allow=False), rule("*", "*", "join")).may_join(idb) == (
        ida != idb
    )
    # Link decisions never depend on the order of the pair.
    mixed = engine(rule(ida, "*", allow=False), rule("*", "*"))
    assert mixed.may_link(ida, idb) == mixed.may_link(idb, ida)
