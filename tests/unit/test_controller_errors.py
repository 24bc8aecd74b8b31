"""The controller's domain refusals and the HTTP answers the API gives them (a contract)."""

from __future__ import annotations

from x0tta6bl4.controller.api.errors import REFUSALS, from_refusal
from x0tta6bl4.controller.errors import AdmissionError, AdmissionRefusal, AuthError, AuthFailure

WWW = {"WWW-Authenticate": 'Bearer realm="x0tta6bl4"'}

EXPECTED: dict[str, tuple[int, dict[str, str]]] = {
    "missing_credentials": (401, WWW),
    "invalid_token": (401, WWW),
    "token_expired": (401, WWW),
    "wrong_audience": (401, WWW),
    "wrong_trust_domain": (401, WWW),
    "identity_unavailable": (503, {"Retry-After": "1"}),
    "admin_required": (403, {}),
    "spiffe_identity_required": (403, {}),
    "client_certificate_required": (401, {}),
    "certificate_expired": (401, {}),
    "identity_conflict": (401, {}),
    "invalid_request": (422, {}),
    "clock_skew": (401, {}),
    "policy_denied": (403, {}),
    "identity_mismatch": (403, {}),
    "node_id_taken": (409, {}),
    "node_id_not_bound": (403, {}),
    "node_not_found": (404, {}),
    "pop_invalid": (401, {}),
    "proof_not_bound": (401, {}),
    "pop_replayed": (401, {}),
    "cidr_exhausted": (409, {}),
    "ca_unavailable": (503, {"Retry-After": "5"}),
}


def test_every_refusal_has_exactly_its_documented_answer() -> None:
    assert set(REFUSALS) == set(AuthFailure) | set(AdmissionRefusal)
    assert {str(k): (s, dict(h)) for k, (s, h) in REFUSALS.items()} == EXPECTED


def test_a_refusal_becomes_an_api_error_with_its_reason_and_detail() -> None:
    err = from_refusal(AuthError(AuthFailure.TOKEN_EXPIRED, "expired 3 s ago"))
    assert (err.status, err.reason, err.detail, err.headers) == (
        401,
        "token_expired",
        "expired 3 s ago",
        WWW,
    )
    err = from_refusal(AdmissionError(AdmissionRefusal.CA_UNAVAILABLE, "no CA"))
    assert (err.status, err.reason, err.headers) == (503, "ca_unavailable", {"Retry-After": "5"})
    assert type(err.reason) is str
