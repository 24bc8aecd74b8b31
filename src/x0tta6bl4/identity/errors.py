"""Errors raised by :mod:`x0tta6bl4.identity`.

Every error is an :class:`IdentityError`; catch that to handle any identity failure. Messages
name the offending value (a SPIFFE ID, a trust domain, a socket path) but never a key or a
token.

::

    IdentityError
    ├── InvalidSpiffeIdError          malformed SPIFFE ID, namespace, service account or pattern
    ├── InvalidTrustDomainError       malformed trust domain name
    ├── WrongTrustDomainError         well-formed, but not the trust domain we expect
    ├── IssuerError                   the embedded development issuer
    │   ├── InvalidEntryError         a bad ``--entry UID=SPIFFE_ID``
    │   └── IssuerStateError          state directory unusable (permissions, corrupt files)
    ├── SpireError                    running or administering a real SPIRE server/agent
    │   ├── SpireNotFoundError        spire-server / spire-agent binaries not found
    │   └── SpireCommandError         a ``spire-server`` admin command failed
    ├── WorkloadApiError              talking to a SPIFFE Workload API endpoint
    │   ├── SocketNotFoundError       the socket path does not exist
    │   ├── SocketPermissionError     the socket exists but we may not connect to it
    │   ├── SocketRefusedError        nothing listens on it (or it is not a socket)
    │   ├── WorkloadApiUnavailableError  the endpoint failed and retries ran out
    │   ├── NoIdentityError           attested, but no identity is issued to this workload
    │   └── WorkloadApiRejectedError  the endpoint rejected the request (InvalidArgument, …)
    ├── SvidVerificationError         an X.509-SVID we could not verify
    │   ├── SvidExpiredError          expired (or not yet valid)
    │   └── UntrustedSvidError        not signed by an authority of its trust domain's bundle
    └── JwtSvidError                  a JWT-SVID we could not verify
        ├── JwtAudienceError          valid token, but not for this audience
        ├── JwtExpiredError           expired
        └── InvalidJwtSvidError       malformed, bad signature, unknown key
"""

from __future__ import annotations

__all__ = [
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
    "SocketNotFoundError",
    "SocketPermissionError",
    "SocketRefusedError",
    "SpireCommandError",
    "SpireError",
    "SpireNotFoundError",
    "SvidExpiredError",
    "SvidVerificationError",
    "UntrustedSvidError",
    "WorkloadApiError",
    "WorkloadApiRejectedError",
    "WorkloadApiUnavailableError",
    "WrongTrustDomainError",
]


class IdentityError(Exception):
    """Base class of every identity error."""


class InvalidSpiffeIdError(IdentityError, ValueError):
    """A SPIFFE ID (or a part of one, or an ID pattern) is malformed."""


class InvalidTrustDomainError(IdentityError, ValueError):
    """A trust domain name is malformed."""


class WrongTrustDomainError(IdentityError):
    """A well-formed identity belongs to a trust domain we do not accept."""


class IssuerError(IdentityError):
    """The embedded development issuer cannot run as configured."""


class InvalidEntryError(IssuerError, ValueError):
    """A registration entry (``UID=SPIFFE_ID``) is malformed."""


class IssuerStateError(IssuerError):
    """The issuer's state directory is unusable."""


class SpireError(IdentityError):
    """Running or administering a real SPIRE server or agent failed."""


class SpireNotFoundError(SpireError):
    """The ``spire-server`` / ``spire-agent`` binaries are not installed or not built."""


class SpireCommandError(SpireError):
    """A ``spire-server`` admin command failed; the message quotes SPIRE's own error."""

    def __init__(self, command: str, message: str) -> None:
        self.command = command
        super().__init__(f"spire-server {command}: {message}")


class WorkloadApiError(IdentityError):
    """A SPIFFE Workload API call failed."""


class SocketNotFoundError(WorkloadApiError):
    """The Workload API socket does not exist."""


class SocketPermissionError(WorkloadApiError):
    """The Workload API socket exists but this process may not connect to it."""


class SocketRefusedError(WorkloadApiError):
    """The Workload API socket refuses connections (nothing listens, or not a socket)."""


class WorkloadApiUnavailableError(WorkloadApiError):
    """The Workload API kept failing until the retry budget ran out."""


class NoIdentityError(WorkloadApiError):
    """The Workload API answered PermissionDenied: no identity is issued to this workload."""


class WorkloadApiRejectedError(WorkloadApiError):
    """The Workload API rejected the request (for example InvalidArgument)."""


class SvidVerificationError(IdentityError):
    """An X.509-SVID could not be verified."""


class SvidExpiredError(SvidVerificationError):
    """An X.509-SVID is outside its validity period."""


class UntrustedSvidError(SvidVerificationError):
    """An X.509-SVID does not chain to an authority of its trust domain's bundle."""


class JwtSvidError(IdentityError):
    """A JWT-SVID could not be verified."""


class JwtAudienceError(JwtSvidError):
    """A JWT-SVID is not issued for the expected audience."""


class JwtExpiredError(JwtSvidError):
    """A JWT-SVID has expired."""


class InvalidJwtSvidError(JwtSvidError):
    """A JWT-SVID is malformed, badly signed or signed by an unknown key."""
