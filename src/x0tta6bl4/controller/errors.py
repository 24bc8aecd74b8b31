"""Why the controller refuses a request: closed sets of reasons and the errors carrying them.

The domain (:mod:`.auth`, :mod:`.registration`) raises these; it knows nothing of HTTP. The API
(:mod:`.api.errors`) maps each reason to its status code and headers, and answers
``{"error": reason, "detail": detail}``. The reasons are contracts (``docs/api.md``, and the
``reason`` label of ``x0tta6bl4_registrations_rejected_total``): adding one is a member here
plus its line in the API's table, which a test holds complete.
"""

from __future__ import annotations

import enum

__all__ = ["AdmissionError", "AdmissionRefusal", "AuthError", "AuthFailure", "RequestRefusedError"]


class AuthFailure(enum.StrEnum):
    """Why a caller is not authenticated (or not authorised for the operation)."""

    MISSING_CREDENTIALS = "missing_credentials"
    INVALID_TOKEN = "invalid_token"  # noqa: S105 - a reason, not a secret
    TOKEN_EXPIRED = "token_expired"  # noqa: S105 - a reason, not a secret
    WRONG_AUDIENCE = "wrong_audience"
    WRONG_TRUST_DOMAIN = "wrong_trust_domain"
    IDENTITY_UNAVAILABLE = "identity_unavailable"
    ADMIN_REQUIRED = "admin_required"
    SPIFFE_IDENTITY_REQUIRED = "spiffe_identity_required"
    CLIENT_CERTIFICATE_REQUIRED = "client_certificate_required"
    CERTIFICATE_EXPIRED = "certificate_expired"
    IDENTITY_CONFLICT = "identity_conflict"


class AdmissionRefusal(enum.StrEnum):
    """Why a registration or renewal is refused."""

    INVALID_REQUEST = "invalid_request"
    CLOCK_SKEW = "clock_skew"
    POLICY_DENIED = "policy_denied"
    IDENTITY_MISMATCH = "identity_mismatch"
    NODE_ID_TAKEN = "node_id_taken"
    NODE_ID_NOT_BOUND = "node_id_not_bound"
    NODE_NOT_FOUND = "node_not_found"
    POP_INVALID = "pop_invalid"
    PROOF_NOT_BOUND = "proof_not_bound"
    POP_REPLAYED = "pop_replayed"
    CIDR_EXHAUSTED = "cidr_exhausted"
    CA_UNAVAILABLE = "ca_unavailable"


class RequestRefusedError(Exception):
    """A refused request: a machine ``reason`` and a ``detail`` for humans (never a secret)."""

    reason: AuthFailure | AdmissionRefusal

    def __init__(self, reason: AuthFailure | AdmissionRefusal, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


class AuthError(RequestRefusedError):
    """The caller is not authenticated, or not allowed what it asks."""

    reason: AuthFailure

    def __init__(self, reason: AuthFailure, detail: str) -> None:
        super().__init__(reason, detail)


class AdmissionError(RequestRefusedError):
    """A registration or renewal is refused; nothing was written."""

    reason: AdmissionRefusal

    def __init__(self, reason: AdmissionRefusal, detail: str) -> None:
        super().__init__(reason, detail)
