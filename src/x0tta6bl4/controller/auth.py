"""Who is calling: JWT-SVID bearer tokens and the admin token.

Every authenticated request carries ``Authorization: Bearer <credential>``. The credential is
either

- a **JWT-SVID** for the audience ``x0tta6bl4-controller``, validated against the JWT bundle
  of the controller's own trust domain (fetched from its Workload API, refreshed on rotation
  by the bundle provider); its ``sub`` is the caller's SPIFFE ID, which must be in the trust
  domain; the caller is an admin if that SPIFFE ID is listed in ``--admin-spiffe-id``; or
- the **admin token** read from ``--admin-token-file``, compared in constant time.

:class:`Authenticator` raises :class:`~x0tta6bl4.controller.errors.AuthError` with a machine
reason from :class:`~x0tta6bl4.controller.errors.AuthFailure` (``missing_credentials``,
``invalid_token``, ``token_expired``, ``wrong_audience``, ``wrong_trust_domain``,
``identity_unavailable``, ``admin_required``, ``spiffe_identity_required``); the API answers
401, 403 or 503 for it. Tokens never reach a log or an error message.
"""

from __future__ import annotations

import hmac
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

from spiffe import JwtBundleSet, SpiffeId

from x0tta6bl4.controller.config import JWT_AUDIENCE
from x0tta6bl4.controller.errors import AuthError, AuthFailure
from x0tta6bl4.identity.errors import (
    IdentityError,
    InvalidJwtSvidError,
    JwtAudienceError,
    JwtExpiredError,
    WrongTrustDomainError,
)
from x0tta6bl4.identity.spiffe_ids import parse_spiffe_id, parse_trust_domain
from x0tta6bl4.identity.verify import validate_jwt_svid

__all__ = [
    "Authenticator",
    "JwtBundleProvider",
    "Principal",
    "read_admin_token",
]

JwtBundleProvider = Callable[[], JwtBundleSet | None]
"""Returns the current JWT bundles (None while none has been fetched yet)."""

_MIN_ADMIN_TOKEN = 16


@dataclass(frozen=True, slots=True)
class Principal:
    """An authenticated caller: a SPIFFE ID (JWT-SVID) or the admin token (``spiffe_id`` None)."""

    spiffe_id: SpiffeId | None
    admin: bool

    @property
    def name(self) -> str:
        """A loggable name for the caller."""
        return str(self.spiffe_id) if self.spiffe_id is not None else "admin-token"


def read_admin_token(path: Path) -> bytes:
    """Read the admin token from ``path`` (surrounding whitespace stripped).

    Raises :class:`ValueError` if the file is unreadable, empty or shorter than 16 bytes; the
    message never contains the token.
    """
    try:
        token = path.read_bytes().strip()
    except OSError as err:
        raise ValueError(f"cannot read admin token file {path}: {err.strerror}") from None
    if len(token) < _MIN_ADMIN_TOKEN:
        raise ValueError(
            f"admin token in {path} is too short (at least {_MIN_ADMIN_TOKEN} bytes required)"
        )
    return token


class Authenticator:
    """Turns an ``Authorization`` header into a :class:`Principal`, or raises AuthError."""

    def __init__(
        self,
        *,
        trust_domain: str,
        bundles: JwtBundleProvider,
        admin_token: bytes | None = None,
        admin_spiffe_ids: Iterable[str] = (),
        audience: str = JWT_AUDIENCE,
        refresh_bundles: Callable[[], Awaitable[bool]] | None = None,
    ) -> None:
        self._trust_domain = parse_trust_domain(trust_domain)
        self._bundles = bundles
        self._refresh = refresh_bundles
        self._admin_token = admin_token
        self._admin_ids = frozenset(str(parse_spiffe_id(i)) for i in admin_spiffe_ids)
        self._audience = audience

    async def authenticate(self, authorization: str | None) -> Principal:
        """Validate the ``Authorization`` header value.

        A token that fails only because its signing key is unknown triggers one bundle
        refresh (the issuer may have rotated its key) and one more validation.
        """
        if not authorization:
            raise AuthError(
                AuthFailure.MISSING_CREDENTIALS, "an Authorization: Bearer header is needed"
            )
        scheme, _, credential = authorization.partition(" ")
        credential = credential.strip()
        if scheme.lower() != "bearer" or not credential:
            raise AuthError(
                AuthFailure.MISSING_CREDENTIALS, "the Authorization scheme must be Bearer"
            )
        if self._admin_token is not None and hmac.compare_digest(
            credential.encode("utf-8", "surrogateescape"), self._admin_token
        ):
            return Principal(spiffe_id=None, admin=True)
        try:
            try:
                spiffe_id = self._validate(credential)
            except InvalidJwtSvidError:
                if self._refresh is None or not await self._refresh():
                    raise
                spiffe_id = self._validate(credential)
        except WrongTrustDomainError as err:
            raise AuthError(AuthFailure.WRONG_TRUST_DOMAIN, str(err)) from None
        except JwtExpiredError as err:
            raise AuthError(AuthFailure.TOKEN_EXPIRED, str(err)) from None
        except JwtAudienceError as err:
            raise AuthError(AuthFailure.WRONG_AUDIENCE, str(err)) from None
        except IdentityError as err:
            raise AuthError(AuthFailure.INVALID_TOKEN, str(err)) from None
        return Principal(spiffe_id=spiffe_id, admin=str(spiffe_id) in self._admin_ids)

    def _validate(self, credential: str) -> SpiffeId:
        bundles = self._bundles()
        if bundles is None:
            raise AuthError(
                AuthFailure.IDENTITY_UNAVAILABLE,
                "the controller has no JWT bundle from its Workload API yet",
            )
        return validate_jwt_svid(
            credential, self._audience, bundles, trust_domain=self._trust_domain
        )

    async def require_admin(self, authorization: str | None) -> Principal:
        """Like :meth:`authenticate`, but the caller must be an admin."""
        principal = await self.authenticate(authorization)
        if not principal.admin:
            raise AuthError(
                AuthFailure.ADMIN_REQUIRED, f"{principal.name} is not an admin of this controller"
            )
        return principal

    async def require_node(self, authorization: str | None) -> Principal:
        """Like :meth:`authenticate`, but the caller must be a SPIFFE identity (a node)."""
        principal = await self.authenticate(authorization)
        if principal.spiffe_id is None:
            raise AuthError(
                AuthFailure.SPIFFE_IDENTITY_REQUIRED,
                "this operation needs a JWT-SVID, not a token",
            )
        return principal
