"""SPIFFE IDs, trust domains, patterns and Kubernetes names with a newline are refused.

py-spiffe (and our own checks until now) validated with ``re.match("^[…]+$")``, and ``$`` also
matches before a trailing newline: ``spiffe://x0tta6bl4.mesh/ns/prod\\n/sa/x0tta6bl4-app``
parsed as a SPIFFE ID and matched the pattern ``…/ns/*/sa/x0tta6bl4-app`` as if it were
``…/ns/prod/sa/…``. Found by ``fuzz/spiffe_ids.py``; the input is in its seed corpus.
"""

from __future__ import annotations

import pytest

from x0tta6bl4.identity.errors import (
    IdentityError,
    InvalidSpiffeIdError,
    InvalidTrustDomainError,
)
from x0tta6bl4.identity.spiffe_ids import (
    SpiffeIdPattern,
    parse_spiffe_id,
    parse_trust_domain,
    workload_id,
)


@pytest.mark.parametrize(
    "value",
    [
        "spiffe://x0tta6bl4.mesh/ns/prod\n/sa/x0tta6bl4-app",
        "spiffe://x0tta6bl4.mesh/ns/prod/sa/x0tta6bl4-app\n",
        "spiffe://x0tta6bl4.mesh\n/ns/prod",
        "spiffe://x0tta6bl4.mesh/ns/prod\r\n/sa/x",
    ],
)
def test_spiffe_id_with_a_newline_is_refused(value: str) -> None:
    with pytest.raises(InvalidSpiffeIdError):
        parse_spiffe_id(value)


def test_pattern_does_not_match_an_id_with_a_newline() -> None:
    pattern = SpiffeIdPattern("spiffe://x0tta6bl4.mesh/ns/*/sa/x0tta6bl4-app")
    assert pattern.matches("spiffe://x0tta6bl4.mesh/ns/prod/sa/x0tta6bl4-app")
    with pytest.raises(InvalidSpiffeIdError):
        pattern.matches("spiffe://x0tta6bl4.mesh/ns/prod\n/sa/x0tta6bl4-app")


@pytest.mark.parametrize(
    "pattern", ["spiffe://x0tta6bl4.mesh/ns/prod\n/**", "spiffe://x0tta6bl4.mesh\n/ns/*"]
)
def test_pattern_with_a_newline_is_refused(pattern: str) -> None:
    with pytest.raises(InvalidSpiffeIdError):
        SpiffeIdPattern(pattern)


def test_trust_domain_with_a_newline_is_refused() -> None:
    with pytest.raises(InvalidTrustDomainError):
        parse_trust_domain("x0tta6bl4.mesh\n")


@pytest.mark.parametrize(("namespace", "account"), [("mesh\n", "node"), ("mesh", "node\n")])
def test_kubernetes_names_with_a_newline_are_refused(namespace: str, account: str) -> None:
    with pytest.raises(IdentityError):
        workload_id("x0tta6bl4.mesh", namespace, account)


def test_valid_ids_still_parse() -> None:
    assert str(parse_spiffe_id("spiffe://x0tta6bl4.mesh/ns/Prod_1/sa/a.b-c")) == (
        "spiffe://x0tta6bl4.mesh/ns/Prod_1/sa/a.b-c"
    )
    assert str(workload_id("x0tta6bl4.mesh", "mesh", "node.a")) == (
        "spiffe://x0tta6bl4.mesh/ns/mesh/sa/node.a"
    )
