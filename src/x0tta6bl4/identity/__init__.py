"""SPIFFE identity for x0tta6bl4: IDs, the Workload API source, SVID verification.

In a cluster SPIRE serves the SPIFFE Workload API; locally the embedded development issuer
(:mod:`x0tta6bl4.identity.issuer`, ``x0tta6bl4 identity serve``) serves the same API, so the
same client code runs in both places. See ``docs/identity.md``.
"""

from __future__ import annotations

from x0tta6bl4.identity.errors import (
    IdentityError,
    InvalidEntryError,
    InvalidJwtSvidError,
    InvalidSpiffeIdError,
    InvalidTrustDomainError,
    IssuerError,
    IssuerStateError,
    JwtAudienceError,
    JwtExpiredError,
    JwtSvidError,
    NoIdentityError,
    SocketNotFoundError,
    SocketPermissionError,
    SocketRefusedError,
    SvidExpiredError,
    SvidVerificationError,
    UntrustedSvidError,
    WorkloadApiError,
    WorkloadApiRejectedError,
    WorkloadApiUnavailableError,
    WrongTrustDomainError,
)
from x0tta6bl4.identity.spiffe_ids import (
    DEFAULT_TRUST_DOMAIN,
    SpiffeIdPattern,
    parse_spiffe_id,
    parse_trust_domain,
    require_trust_domain,
    workload_id,
)
from x0tta6bl4.identity.verify import (
    NODE_API_AUDIENCE,
    check_x509_svid_validity,
    validate_jwt_svid,
    verify_x509_svid,
)
from x0tta6bl4.identity.workload_source import (
    DEFAULT_SOCKET,
    Backoff,
    ErrorListener,
    RotationListener,
    SvidUpdate,
    WorkloadSource,
    probe_socket,
    resolve_socket_path,
)

__all__ = [
    "DEFAULT_SOCKET",
    "DEFAULT_TRUST_DOMAIN",
    "NODE_API_AUDIENCE",
    "Backoff",
    "ErrorListener",
    "IdentityError",
    "InvalidEntryError",
    "InvalidJwtSvidError",
    "InvalidSpiffeIdError",
    "InvalidTrustDomainError",
    "IssuerError",
    "IssuerStateError",
    "JwtAudienceError",
    "JwtExpiredError",
    "JwtSvidError",
    "NoIdentityError",
    "RotationListener",
    "SocketNotFoundError",
    "SocketPermissionError",
    "SocketRefusedError",
    "SpiffeIdPattern",
    "SvidExpiredError",
    "SvidUpdate",
    "SvidVerificationError",
    "UntrustedSvidError",
    "WorkloadApiError",
    "WorkloadApiRejectedError",
    "WorkloadApiUnavailableError",
    "WorkloadSource",
    "WrongTrustDomainError",
    "check_x509_svid_validity",
    "parse_spiffe_id",
    "parse_trust_domain",
    "probe_socket",
    "require_trust_domain",
    "resolve_socket_path",
    "validate_jwt_svid",
    "verify_x509_svid",
    "workload_id",
]
