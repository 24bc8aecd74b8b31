"""Who is calling: the client certificate (mutual TLS), JWT-SVIDs and the admin token.

Every authenticated route is served on the TLS listener only (``docs/api.md``, Transport). A
caller is authenticated by

- its **X.509-SVID** presented in the TLS handshake (mutual TLS; verified by the TLS layer
  against the trust domain's bundle — :class:`~x0tta6bl4.tls.server.TlsPeer`): its SPIFFE ID
  is the caller's; a certificate whose notAfter has passed on a kept-alive connection is
  refused (``certificate_expired``). This is how nodes authenticate, and node operations
  (register, renew, status, release) require it (``client_certificate_required``);
- and/or ``Authorization: Bearer <credential>``:

  - a **JWT-SVID** for the audience ``x0tta6bl4-controller``, validated against the JWT
    bundle of the controller's own trust domain (fetched from its Workload API, refreshed on
    rotation); its ``sub`` is the caller's SPIFFE ID. With a client certificate the two must
    name the same SPIFFE ID (``identity_conflict``). Without one it authenticates reads and
    admin operations (a tool behind a TLS-terminating proxy), never node operations;
  - the **admin token** read from ``--admin-token-file``, compared in constant time.

The caller is an admin with the admin token, or if its SPIFFE ID is listed in
``--admin-spiffe-id``. :class:`Principal` carries ``credential_sha256``, the SHA-256 of what
authenticated it (the client certificate's DER, else the JWT-SVID). Node operations need
mutual TLS (the X.509-SVID's private key) *and* a proof of possession by the node ID's bound
ML-DSA-65 key with a fresh, single-use nonce — and that proof (format 2, like a rotation
proof) signs ``credential_sha256``: the registrar refuses a proof bound to any other credential
(``proof_not_bound``). So a proof is worth nothing apart from the credential it was sent with:
captured with a JWT-SVID it fails without the client certificate, and replayed under another
certificate — even another valid X.509-SVID of the same SPIFFE ID, e.g. a stolen one — it no
longer matches (``docs/api.md``, "Key binding").

:class:`Authenticator` raises :class:`~x0tta6bl4.controller.errors.AuthError` with a machine
reason from :class:`~x0tta6bl4.controller.errors.AuthFailure`; the API answers 401, 403 or 503
for it. Tokens never reach a log or an error message.
"""

from __future__ import annotations

import hashlib
import hmac
import time
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
from x0tta6bl4.tls.server import TlsPeer

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
    """An authenticated caller: a SPIFFE ID (client certificate or JWT-SVID), or the admin
    token alone (``spiffe_id`` None)."""

    spiffe_id: SpiffeId | None
    admin: bool
    #: Authenticated by its client certificate (mutual TLS).
    mtls: bool = False
    #: SHA-256 of the credential that authenticated it (certificate DER, else the JWT-SVID).
    credential_sha256: bytes | None = None

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

    async def authenticate(
        self, authorization: str | None, peer: TlsPeer | None = None, now: float | None = None
    ) -> Principal:
        """Authenticate the client certificate of ``peer`` (the TLS connection) and/or the
        ``Authorization`` header value (see the module docstring).

        A token that fails only because its signing key is unknown triggers one bundle
        refresh (the issuer may have rotated its key) and one more validation.
        """
        cert_id = self._certificate(peer, time.time() if now is None else now)
        if not authorization:
            if cert_id is None:
                raise AuthError(
                    AuthFailure.MISSING_CREDENTIALS,
                    "a client certificate (mutual TLS) or an Authorization: Bearer header is "
                    "needed",
                )
            assert peer is not None
            return Principal(
                spiffe_id=cert_id,
                admin=str(cert_id) in self._admin_ids,
                mtls=True,
                credential_sha256=peer.cert_sha256,
            )
        scheme, _, credential = authorization.partition(" ")
        credential = credential.strip()
        if scheme.lower() != "bearer" or not credential:
            raise AuthError(
                AuthFailure.MISSING_CREDENTIALS, "the Authorization scheme must be Bearer"
            )
        cert_hash = None if cert_id is None or peer is None else peer.cert_sha256
        if self._admin_token is not None and hmac.compare_digest(
            credential.encode("utf-8", "surrogateescape"), self._admin_token
        ):
            return Principal(
                spiffe_id=cert_id,
                admin=True,
                mtls=cert_id is not None,
                credential_sha256=cert_hash,
            )
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
        if cert_id is not None and spiffe_id != cert_id:
            raise AuthError(
                AuthFailure.IDENTITY_CONFLICT,
                f"the JWT-SVID names {spiffe_id}, the client certificate {cert_id}",
            )
        return Principal(
            spiffe_id=spiffe_id,
            admin=str(spiffe_id) in self._admin_ids,
            mtls=cert_id is not None,
            credential_sha256=cert_hash
            if cert_hash is not None
            else hashlib.sha256(credential.encode("utf-8", "surrogateescape")).digest(),
        )

    def _certificate(self, peer: TlsPeer | None, now: float) -> SpiffeId | None:
        """The SPIFFE ID of the client certificate of ``peer`` (None without one)."""
        if peer is None or peer.spiffe_id is None:
            return None
        if peer.not_after is None or now >= peer.not_after:
            raise AuthError(
                AuthFailure.CERTIFICATE_EXPIRED,
                "the client certificate of this connection has expired: connect again with "
                "the current X.509-SVID",
            )
        try:
            return parse_spiffe_id(peer.spiffe_id, trust_domain=self._trust_domain)
        except IdentityError as err:  # the TLS layer checked it; this is belt and braces
            raise AuthError(AuthFailure.WRONG_TRUST_DOMAIN, str(err)) from None

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

    async def require_admin(
        self, authorization: str | None, peer: TlsPeer | None = None, now: float | None = None
    ) -> Principal:
        """Like :meth:`authenticate`, but the caller must be an admin."""
        principal = await self.authenticate(authorization, peer, now)
        if not principal.admin:
            raise AuthError(
                AuthFailure.ADMIN_REQUIRED, f"{principal.name} is not an admin of this controller"
            )
        return principal

    async def require_node(
        self, authorization: str | None, peer: TlsPeer | None = None, now: float | None = None
    ) -> Principal:
        """Like :meth:`authenticate`, but the caller must be a SPIFFE identity (a node) that
        presented its X.509-SVID as client certificate."""
        principal = await self.authenticate(authorization, peer, now)
        if principal.spiffe_id is None:
            raise AuthError(
                AuthFailure.SPIFFE_IDENTITY_REQUIRED,
                "this operation needs the node's SPIFFE identity, not an admin token",
            )
        if not principal.mtls:
            raise AuthError(
                AuthFailure.CLIENT_CERTIFICATE_REQUIRED,
                "node operations need the node's X.509-SVID as TLS client certificate (a "
                "JWT-SVID alone does not do)",
            )
        return principal
