"""Fuzz harness: SPIFFE IDs, trust domains, ID patterns and the policy engine that uses them.

Input: up to four strings separated by :data:`fuzzlib.SEP` (UTF-8, invalid bytes replaced):
``pattern``, ``id``, ``other id``, ``trust domain``. The harness parses each with
``parse_trust_domain``, ``parse_spiffe_id``, ``SpiffeIdPattern`` (and ``workload_id`` on the
id's path pieces), matches the pattern against both IDs, and builds a :class:`PolicyEngine`
from a policy whose rules use the pattern, then asks it ``may_join/may_link/may_talk``.

The new linear-time matcher is checked against the documented semantics written as a plain
regular expression (a differential oracle, on paths short enough for backtracking).

Checked: only ``IdentityError`` (``InvalidSpiffeIdError``, ``InvalidTrustDomainError``,
``WrongTrustDomainError``) or, for the policy, ``ModelError``/``InvalidPolicyError`` escape;
a parsed ID or pattern prints to text that parses to an equal value; matching and the
engine's answers are plain booleans. libFuzzer's ``-timeout`` makes a pattern that takes
seconds to match a finding.

    python fuzz/spiffe_ids.py [libFuzzer flags] [corpus dirs]
"""

from __future__ import annotations

import contextlib
import re

import fuzzlib

with fuzzlib.instrumented():
    from x0tta6bl4.identity.errors import IdentityError
    from x0tta6bl4.identity.spiffe_ids import (
        SpiffeIdPattern,
        parse_spiffe_id,
        parse_trust_domain,
        workload_id,
    )
    from x0tta6bl4.policy import InvalidPolicyError, Policy, PolicyEngine, PolicyRule
    from x0tta6bl4.records import ModelError


_SEGMENT = r"A-Za-z0-9._\-"
#: The backtracking reference is only asked about short paths (it is exponential in general).
_REFERENCE_MAX_PATH = 160


def _reference(pattern: str, path: str) -> bool:
    """The documented glob semantics as a plain regular expression (the matcher before the
    linear one): a differential oracle for :meth:`SpiffeIdPattern.matches`."""
    _, sep, rest = pattern[len("spiffe://") :].partition("/")
    parts: list[str] = []
    if sep:
        for segment in rest.split("/"):
            if segment == "**":
                parts.append(rf"(?:/[{_SEGMENT}]+)*")
                continue
            parts.append(
                "/"
                + "".join(
                    rf"[{_SEGMENT}]*"
                    if ch == "*"
                    else rf"[{_SEGMENT}]"
                    if ch == "?"
                    else re.escape(ch)
                    for ch in segment
                )
            )
    return re.fullmatch("".join(parts), path) is not None


def _text(parts: list[bytes], i: int, default: str) -> str:
    return parts[i].decode("utf-8", "replace") if i < len(parts) else default


def test_one_input(data: bytes) -> None:
    parts = fuzzlib.split(data, 4)
    pattern = _text(parts, 0, "")
    ids = [_text(parts, 1, ""), _text(parts, 2, "spiffe://x0tta6bl4.mesh/ns/a/sa/b")]
    td = _text(parts, 3, fuzzlib.TRUST_DOMAIN)
    try:
        trust_domain = parse_trust_domain(td)
        assert parse_trust_domain(trust_domain.name) == trust_domain
    except IdentityError:
        trust_domain = None
    for value in ids:
        try:
            sid = parse_spiffe_id(value, require_path=False)
        except IdentityError:
            continue
        assert parse_spiffe_id(str(sid), require_path=False) == sid
        pieces = sid.path.split("/")
        if trust_domain is not None and len(pieces) >= 3:
            with contextlib.suppress(IdentityError):
                workload_id(trust_domain, pieces[1], pieces[-1])
    try:
        compiled = SpiffeIdPattern(pattern)
    except IdentityError:
        compiled = None
    if compiled is not None:
        assert SpiffeIdPattern(str(compiled)) == compiled
        for value in ids:
            with contextlib.suppress(IdentityError):
                matched = compiled.matches(value)
                sid = parse_spiffe_id(value, require_path=False)
                if len(sid.path) <= _REFERENCE_MAX_PATH:
                    expected = sid.trust_domain == compiled.trust_domain and _reference(
                        str(compiled), sid.path
                    )
                    assert matched == expected, f"{compiled} vs {value}: {matched}"
    try:
        policy = Policy(
            rules=(
                PolicyRule(source=pattern, to="*", action="join", allow=True),
                PolicyRule(
                    source=pattern, to=ids[1] or "*", action="link", allow=bool(data[:1] == b"l")
                ),
                PolicyRule(source="*", to=pattern, action="talk", allow=True),
            )
        )
        engine = PolicyEngine(policy, trust_domain.name if trust_domain else fuzzlib.TRUST_DOMAIN)
    except (ModelError, InvalidPolicyError):
        return
    for a in ids:
        assert engine.may_join(a) in (True, False)
        for b in ids:
            assert engine.may_link(a, b) in (True, False)
            assert engine.may_talk(a, b) in (True, False)


if __name__ == "__main__":
    fuzzlib.run(test_one_input)
