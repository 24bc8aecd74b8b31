"""The mesh policy: who may join, who may link, who may talk to whom.

The controller holds the document in its store and serves it (``GET/PUT /api/v1/policy``);
every mesh node evaluates the same document with the same :class:`PolicyEngine`. So the
document (:class:`Policy`, :class:`PolicyRule`), its validation and its evaluation live here,
below both the controller and the node. The document is an ordered list of rules::

    {"rules": [
      {"from": "spiffe://x0tta6bl4.mesh/ns/*/sa/x0tta6bl4-app", "to": "*",
       "action": "join", "allow": true},
      {"from": "spiffe://x0tta6bl4.mesh/ns/dev/**", "to": "*", "action": "link", "allow": false},
      {"from": "spiffe://x0tta6bl4.mesh/ns/*/sa/x0tta6bl4-app", "to": "*",
       "action": "link", "allow": true},
      {"from": "*", "to": "spiffe://x0tta6bl4.mesh/ns/db/**", "action": "talk", "allow": false},
      {"from": "*", "to": "*", "action": "talk", "allow": true}
    ]}

Patterns are ``*`` (any SPIFFE ID of the trust domain) or
:class:`~x0tta6bl4.identity.spiffe_ids.SpiffeIdPattern` globs (``*``, ``?`` within a path
segment, ``**`` across segments; the trust domain is literal and must be the mesh's).

Evaluation, per action, in document order: **the first matching rule decides**; when none
matches the answer is *deny* (zero trust).

- ``link`` rules are symmetric: a rule for ``from``/``to`` also covers ``to``/``from`` (a link
  is one mutually authenticated channel).
- ``talk`` rules are directional: ``from`` may send application traffic to ``to``.
- ``join`` rules say whether ``from`` may register as a mesh node at all; their ``to`` is
  always ``*`` (the model refuses anything else).

**join**, exactly:

1. If the policy holds at least one ``join`` rule, the join rules alone decide: the first
   join rule whose ``from`` matches the identity decides; none matching denies. Link rules
   play no part in joining then (and join rules never play a part in linking or talking: an
   identity that may join but link with nobody registers and builds no links).
2. A policy without any ``join`` rule (every policy written before the action existed)
   derives joining from the link rules, as before: an identity may join if it may link with
   somebody, i.e. the first link rule naming it on either side allows, and it is not banned
   first by a rule that denies it linking with ``*``.

A store that never had a policy written (revision 0) holds an empty document; the controller
then applies :func:`default_policy`: everything inside the trust domain may join, link and
talk (every caller is still authenticated by its SVID).

The module is pure (no I/O) so that mesh nodes evaluate the same document the same way.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Literal, TypeAlias

from spiffe import SpiffeId

from x0tta6bl4.identity.errors import IdentityError
from x0tta6bl4.identity.spiffe_ids import (
    SpiffeIdPattern,
    parse_spiffe_id,
    parse_trust_domain,
)
from x0tta6bl4.records import ModelError, check_bool, exact_fields

__all__ = [
    "ANY",
    "MAX_POLICY_RULES",
    "POLICY_ACTIONS",
    "InvalidPolicyError",
    "Policy",
    "PolicyAction",
    "PolicyEngine",
    "PolicyRule",
    "default_policy",
]

ANY = "*"
"""The pattern that matches any SPIFFE ID of the trust domain."""

PolicyAction: TypeAlias = Literal["join", "link", "talk"]
"""``join``: may register as a mesh node; ``link``: may build a link; ``talk``: may send to."""

POLICY_ACTIONS: tuple[PolicyAction, ...] = ("join", "link", "talk")

MAX_POLICY_RULES = 10_000
_MAX_PATTERN = 2048
_PATTERN = re.compile(r"\*|spiffe://[A-Za-z0-9._*-]{1,255}(?:/[A-Za-z0-9._~!$&'()*+,;=:@%-]+)*")


# --------------------------------------------------------------------------- the document


def _check_pattern(value: object, what: str) -> str:
    if not isinstance(value, str) or len(value) > _MAX_PATTERN or not _PATTERN.fullmatch(value):
        raise ModelError(
            f"{what} must be '*' or a SPIFFE ID pattern spiffe://<td>/<path> ('*' wildcards "
            f"allowed); got {value!r:.80}"
        )
    return value


@dataclass(frozen=True, slots=True)
class PolicyRule:
    """Whether SPIFFE IDs matching ``source`` may ``action`` (link or talk) to ``to``, or
    (``join``) may register as mesh nodes at all — a join rule's ``to`` must be ``*``.

    In JSON the source is spelled ``from``. Patterns are ``*`` or SPIFFE IDs in which ``*``
    is a wildcard; the record checks their shape, :class:`PolicyEngine` what they match.
    """

    source: str
    to: str
    action: PolicyAction
    allow: bool

    def __post_init__(self) -> None:
        _check_pattern(self.source, "rule from")
        _check_pattern(self.to, "rule to")
        if self.action not in POLICY_ACTIONS:
            raise ModelError(
                f"rule action must be 'join', 'link' or 'talk'; got {self.action!r:.40}"
            )
        if self.action == "join" and self.to != ANY:
            raise ModelError(
                "a join rule's 'to' must be '*' (joining the mesh is not towards a peer); "
                f"got {self.to!r:.80}"
            )
        check_bool(self.allow, "rule allow")

    def to_json(self) -> dict[str, Any]:
        return {"from": self.source, "to": self.to, "action": self.action, "allow": self.allow}

    @classmethod
    def from_json(cls, data: object) -> PolicyRule:
        fields = exact_fields(data, "policy rule", ("from", "to", "action", "allow"))
        return cls(
            source=fields["from"], to=fields["to"], action=fields["action"], allow=fields["allow"]
        )


@dataclass(frozen=True, slots=True)
class Policy:
    """The mesh policy document: an ordered list of rules (at most :data:`MAX_POLICY_RULES`)."""

    rules: tuple[PolicyRule, ...] = ()

    def __post_init__(self) -> None:
        if not isinstance(self.rules, tuple) or not all(
            isinstance(rule, PolicyRule) for rule in self.rules
        ):
            raise ModelError("policy rules must be a tuple of PolicyRule")
        if len(self.rules) > MAX_POLICY_RULES:
            raise ModelError(f"policy has {len(self.rules)} rules; at most {MAX_POLICY_RULES}")

    def to_json(self) -> dict[str, Any]:
        return {"rules": [rule.to_json() for rule in self.rules]}

    @classmethod
    def from_json(cls, data: object) -> Policy:
        fields = exact_fields(data, "policy", ("rules",))
        rules = fields["rules"]
        if not isinstance(rules, list):
            raise ModelError("policy rules must be a JSON array")
        if len(rules) > MAX_POLICY_RULES:
            raise ModelError(f"policy has {len(rules)} rules; at most {MAX_POLICY_RULES}")
        return cls(rules=tuple(PolicyRule.from_json(rule) for rule in rules))


# --------------------------------------------------------------------------- evaluation


class InvalidPolicyError(ValueError):
    """A policy names a malformed pattern or one outside the trust domain."""


@dataclass(frozen=True, slots=True)
class _CompiledRule:
    source: SpiffeIdPattern | None  # None: any
    to: SpiffeIdPattern | None
    action: str
    allow: bool

    def source_matches(self, spiffe_id: SpiffeId) -> bool:
        return self.source is None or self.source.matches(spiffe_id)

    def to_matches(self, spiffe_id: SpiffeId) -> bool:
        return self.to is None or self.to.matches(spiffe_id)


def _compile(pattern: str, where: str, trust_domain: str) -> SpiffeIdPattern | None:
    if pattern == ANY:
        return None
    try:
        compiled = SpiffeIdPattern(pattern)
    except IdentityError as err:
        raise InvalidPolicyError(f"{where}: {err}") from None
    if compiled.trust_domain.name != trust_domain:
        raise InvalidPolicyError(
            f"{where}: pattern {pattern!r} is not in trust domain {trust_domain!r}"
        )
    return compiled


class PolicyEngine:
    """A compiled :class:`Policy` for one trust domain. Immutable; safe to share."""

    __slots__ = ("_join", "_link", "_policy", "_talk", "_trust_domain")

    def __init__(self, policy: Policy, trust_domain: str) -> None:
        """Compile ``policy``; raise :class:`InvalidPolicyError` naming the first bad rule."""
        self._trust_domain = parse_trust_domain(trust_domain).name
        self._policy = policy
        by_action: dict[str, list[_CompiledRule]] = {"join": [], "link": [], "talk": []}
        for index, rule in enumerate(policy.rules):
            compiled = _CompiledRule(
                source=_compile(rule.source, f"rules[{index}].from", self._trust_domain),
                to=_compile(rule.to, f"rules[{index}].to", self._trust_domain),
                action=rule.action,
                allow=rule.allow,
            )
            by_action[rule.action].append(compiled)
        self._join = tuple(by_action["join"])
        self._link = tuple(by_action["link"])
        self._talk = tuple(by_action["talk"])

    @property
    def policy(self) -> Policy:
        """The document this engine was compiled from."""
        return self._policy

    def _id(self, value: SpiffeId | str) -> SpiffeId | None:
        try:
            return parse_spiffe_id(value, trust_domain=self._trust_domain)
        except IdentityError:
            return None

    @property
    def has_join_rules(self) -> bool:
        """Whether ``join`` rules decide :meth:`may_join` (else it derives from link rules)."""
        return bool(self._join)

    def may_join(self, spiffe_id: SpiffeId | str) -> bool:
        """Whether ``spiffe_id`` may register as a mesh node (see the module docstring)."""
        sid = self._id(spiffe_id)
        if sid is None:
            return False
        if self._join:
            for rule in self._join:
                if rule.source_matches(sid):
                    return rule.allow
            return False
        for rule in self._link:
            if rule.source_matches(sid) or rule.to_matches(sid):
                if rule.allow:
                    return True
                # A deny decides "join" only when it bans the identity from every peer.
                if (rule.source_matches(sid) and rule.to is None) or (
                    rule.to_matches(sid) and rule.source is None
                ):
                    return False
        return False

    def may_link(self, a: SpiffeId | str, b: SpiffeId | str) -> bool:
        """Whether nodes ``a`` and ``b`` may build a link (order does not matter)."""
        sa, sb = self._id(a), self._id(b)
        if sa is None or sb is None:
            return False
        for rule in self._link:
            if (rule.source_matches(sa) and rule.to_matches(sb)) or (
                rule.source_matches(sb) and rule.to_matches(sa)
            ):
                return rule.allow
        return False

    def may_talk(self, source: SpiffeId | str, destination: SpiffeId | str) -> bool:
        """Whether ``source`` may send application traffic to ``destination``."""
        ss, sd = self._id(source), self._id(destination)
        if ss is None or sd is None:
            return False
        for rule in self._talk:
            if rule.source_matches(ss) and rule.to_matches(sd):
                return rule.allow
        return False


def default_policy() -> Policy:
    """The policy in force while none was ever written: the trust domain may do everything."""
    return Policy(
        rules=(
            PolicyRule(source=ANY, to=ANY, action="link", allow=True),
            PolicyRule(source=ANY, to=ANY, action="talk", allow=True),
        )
    )
