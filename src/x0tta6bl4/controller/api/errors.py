"""The controller API's error answers: ``{"error": "<machine_reason>", "detail": "..."}``.

Handlers raise :class:`ApiError`; the domain raises
:class:`~x0tta6bl4.controller.errors.RequestRefusedError`, which :func:`from_refusal` turns into
one with the status and headers :data:`REFUSALS` gives its reason. The app turns both (and
request validation failures, unknown routes, oversized bodies) into that JSON shape.
``error`` is a stable machine-readable reason listed in ``docs/api.md``; ``detail`` is for
humans and never holds a token or a key.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from types import MappingProxyType

from x0tta6bl4.controller.errors import AdmissionRefusal, AuthFailure, RequestRefusedError

__all__ = [
    "REFUSALS",
    "REGISTRATION_REJECTIONS",
    "ApiError",
    "RequestFailure",
    "error_body",
    "from_refusal",
]

_WWW_AUTH: Mapping[str, str] = MappingProxyType({"WWW-Authenticate": 'Bearer realm="x0tta6bl4"'})
_NONE: Mapping[str, str] = MappingProxyType({})

REFUSALS: Mapping[AuthFailure | AdmissionRefusal, tuple[int, Mapping[str, str]]] = MappingProxyType(
    {
        AuthFailure.MISSING_CREDENTIALS: (401, _WWW_AUTH),
        AuthFailure.INVALID_TOKEN: (401, _WWW_AUTH),
        AuthFailure.TOKEN_EXPIRED: (401, _WWW_AUTH),
        AuthFailure.WRONG_AUDIENCE: (401, _WWW_AUTH),
        AuthFailure.WRONG_TRUST_DOMAIN: (401, _WWW_AUTH),
        AuthFailure.IDENTITY_UNAVAILABLE: (503, MappingProxyType({"Retry-After": "1"})),
        AuthFailure.ADMIN_REQUIRED: (403, _NONE),
        AuthFailure.SPIFFE_IDENTITY_REQUIRED: (403, _NONE),
        AuthFailure.CLIENT_CERTIFICATE_REQUIRED: (401, _NONE),
        AuthFailure.CERTIFICATE_EXPIRED: (401, _NONE),
        AuthFailure.IDENTITY_CONFLICT: (401, _NONE),
        AdmissionRefusal.INVALID_REQUEST: (422, _NONE),
        AdmissionRefusal.CLOCK_SKEW: (401, _NONE),
        AdmissionRefusal.POLICY_DENIED: (403, _NONE),
        AdmissionRefusal.IDENTITY_MISMATCH: (403, _NONE),
        AdmissionRefusal.NODE_ID_TAKEN: (409, _NONE),
        AdmissionRefusal.NODE_ID_NOT_BOUND: (403, _NONE),
        AdmissionRefusal.NODE_NOT_FOUND: (404, _NONE),
        AdmissionRefusal.POP_INVALID: (401, _NONE),
        AdmissionRefusal.PROOF_NOT_BOUND: (401, _NONE),
        AdmissionRefusal.POP_REPLAYED: (401, _NONE),
        AdmissionRefusal.CIDR_EXHAUSTED: (409, _NONE),
        AdmissionRefusal.CA_UNAVAILABLE: (503, MappingProxyType({"Retry-After": "5"})),
    }
)
"""Each domain refusal's HTTP status and extra headers."""


class RequestFailure(enum.StrEnum):
    """Refusals of the API layer itself (the request never reached the domain)."""

    MALFORMED_JSON = "malformed_json"
    UNKNOWN_FIELD = "unknown_field"
    INVALID_REQUEST = "invalid_request"
    STORE_UNAVAILABLE = "store_unavailable"
    STORE_CORRUPT = "store_corrupt"
    TLS_REQUIRED = "tls_required"


REGISTRATION_REJECTIONS: frozenset[str] = (
    frozenset(AuthFailure) | frozenset(AdmissionRefusal) | frozenset(RequestFailure)
) - {AuthFailure.ADMIN_REQUIRED}  # registration needs a node's JWT-SVID, never an admin
"""Every ``reason`` of ``x0tta6bl4_registrations_rejected_total`` (``docs/metrics.md`` lists
exactly these; a test holds them equal)."""


class ApiError(Exception):
    """An HTTP error answer with a machine-readable ``reason``."""

    def __init__(
        self,
        status: int,
        reason: str,
        detail: str,
        *,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(f"{status} {reason}: {detail}")
        self.status = status
        self.reason = reason
        self.detail = detail
        self.headers = dict(headers or {})


def from_refusal(refusal: RequestRefusedError) -> ApiError:
    """The answer to a refusal of the domain."""
    status, headers = REFUSALS[refusal.reason]
    return ApiError(status, refusal.reason.value, refusal.detail, headers=headers)


def error_body(reason: str, detail: str) -> dict[str, str]:
    """The JSON body of an error answer."""
    return {"error": reason, "detail": detail}
