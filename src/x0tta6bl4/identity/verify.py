"""Verifying SVIDs against trust bundles.

:func:`verify_x509_svid` checks an X.509-SVID chain against the X.509 bundle of the SVID's own
trust domain; :func:`validate_jwt_svid` checks a JWT-SVID's signature, expiry and audience
against the JWT bundle of the token's trust domain. Both return the verified SPIFFE ID and
raise a specific :class:`~x0tta6bl4.identity.errors.IdentityError` otherwise: nothing should
proceed on an identity that did not come out of one of these functions.
"""

from __future__ import annotations

import datetime as dt
import itertools
from collections.abc import Sequence

import jwt
from cryptography import x509
from cryptography.exceptions import InvalidSignature
from spiffe import JwtBundleSet, JwtSvid, SpiffeId, TrustDomain, X509BundleSet, X509Svid
from spiffe.errors import PySpiffeError

from x0tta6bl4.identity.errors import (
    InvalidJwtSvidError,
    InvalidSpiffeIdError,
    JwtAudienceError,
    JwtExpiredError,
    SvidExpiredError,
    UntrustedSvidError,
    WrongTrustDomainError,
)
from x0tta6bl4.identity.spiffe_ids import parse_spiffe_id, parse_trust_domain

__all__ = [
    "NODE_API_AUDIENCE",
    "check_x509_svid_validity",
    "validate_jwt_svid",
    "verify_x509_svid",
]

NODE_API_AUDIENCE = "x0tta6bl4-node"
"""The audience of JWT-SVIDs sent to a mesh node's HTTP API (``/v1/ping``)."""

_MAX_TOKEN_LENGTH = 16 * 1024


def _now(now: dt.datetime | None) -> dt.datetime:
    return now if now is not None else dt.datetime.now(dt.UTC)


def check_x509_svid_validity(svid: X509Svid, *, now: dt.datetime | None = None) -> None:
    """Raise :class:`SvidExpiredError` if any certificate of ``svid`` is outside its validity."""
    moment = _now(now)
    for cert in svid.cert_chain:
        if moment >= cert.not_valid_after_utc:
            raise SvidExpiredError(
                f"X.509-SVID {str(svid.spiffe_id)!r} expired at "
                f"{cert.not_valid_after_utc.isoformat()}"
            )
        if moment < cert.not_valid_before_utc:
            raise SvidExpiredError(
                f"X.509-SVID {str(svid.spiffe_id)!r} is not valid before "
                f"{cert.not_valid_before_utc.isoformat()}"
            )


def _leaf_spiffe_id(chain: Sequence[x509.Certificate]) -> SpiffeId:
    if not chain:
        raise UntrustedSvidError("X.509-SVID chain is empty")
    try:
        san = chain[0].extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound as err:
        raise InvalidSpiffeIdError("X.509-SVID has no SubjectAlternativeName extension") from err
    uris = san.get_values_for_type(x509.UniformResourceIdentifier)
    if len(uris) != 1:
        raise InvalidSpiffeIdError(
            f"X.509-SVID must have exactly one URI SAN (a SPIFFE ID), found {len(uris)}"
        )
    return parse_spiffe_id(uris[0])


def verify_x509_svid(
    svid: X509Svid | Sequence[x509.Certificate],
    bundles: X509BundleSet,
    *,
    trust_domain: str | TrustDomain | None = None,
    now: dt.datetime | None = None,
) -> SpiffeId:
    """Verify an X.509-SVID chain (leaf first) against ``bundles``; return its SPIFFE ID.

    The chain must be currently valid, each certificate signed by the next one and the last
    one signed by an X.509 authority of the bundle for the leaf's trust domain. With
    ``trust_domain`` the leaf must also belong to that trust domain.

    Raises :class:`WrongTrustDomainError` (not the expected trust domain, or no bundle for
    it), :class:`SvidExpiredError`, :class:`UntrustedSvidError` or
    :class:`InvalidSpiffeIdError`.
    """
    chain = list(svid.cert_chain) if isinstance(svid, X509Svid) else list(svid)
    spiffe_id = _leaf_spiffe_id(chain)
    if trust_domain is not None:
        parse_spiffe_id(spiffe_id, trust_domain=trust_domain)
    bundle = bundles.get_bundle_for_trust_domain(spiffe_id.trust_domain)
    if bundle is None:
        raise WrongTrustDomainError(
            f"no X.509 bundle for trust domain {spiffe_id.trust_domain.name!r} "
            f"(SVID {str(spiffe_id)!r} is from a trust domain we do not trust)"
        )
    moment = _now(now)
    for cert in chain:
        if not cert.not_valid_before_utc <= moment < cert.not_valid_after_utc:
            raise SvidExpiredError(
                f"X.509-SVID {str(spiffe_id)!r}: a certificate of the chain is valid only "
                f"from {cert.not_valid_before_utc.isoformat()} "
                f"to {cert.not_valid_after_utc.isoformat()}"
            )
    for child, parent in itertools.pairwise(chain):
        try:
            child.verify_directly_issued_by(parent)
        except (ValueError, TypeError, InvalidSignature) as err:
            raise UntrustedSvidError(f"X.509-SVID {str(spiffe_id)!r}: the chain is broken") from err
    top = chain[-1]
    for authority in bundle.x509_authorities:
        try:
            top.verify_directly_issued_by(authority)
        except (ValueError, TypeError, InvalidSignature):
            continue
        return spiffe_id
    raise UntrustedSvidError(
        f"X.509-SVID {str(spiffe_id)!r} is not signed by any authority of the bundle for "
        f"trust domain {spiffe_id.trust_domain.name!r}"
    )


def validate_jwt_svid(
    token: str,
    audience: str,
    bundles: JwtBundleSet,
    *,
    trust_domain: str | TrustDomain | None = None,
) -> SpiffeId:
    """Validate a JWT-SVID for ``audience`` against ``bundles``; return its SPIFFE ID.

    This is the one call a server needs: the signature is checked with the key named by the
    token's ``kid`` in the JWT bundle of the subject's trust domain, then expiry and audience.
    With ``trust_domain`` the subject must belong to it.

    Raises :class:`JwtAudienceError`, :class:`JwtExpiredError`,
    :class:`WrongTrustDomainError` or :class:`InvalidJwtSvidError`. The token never appears in
    an error message.
    """
    if not audience:
        raise JwtAudienceError("expected audience is empty")
    if not isinstance(token, str) or not token:
        raise InvalidJwtSvidError("JWT-SVID is empty")
    if len(token) > _MAX_TOKEN_LENGTH:
        raise InvalidJwtSvidError(f"JWT-SVID is longer than {_MAX_TOKEN_LENGTH} characters")
    try:
        unverified = jwt.decode(token, options={"verify_signature": False})
    except jwt.PyJWTError as err:
        raise InvalidJwtSvidError("JWT-SVID is not a well-formed JWT") from err
    for claim in ("exp", "aud"):
        if claim not in unverified:
            raise InvalidJwtSvidError(f"JWT-SVID has no {claim!r} claim")
    sub = unverified.get("sub")
    if not isinstance(sub, str) or not sub:
        raise InvalidJwtSvidError("JWT-SVID has no 'sub' claim")
    try:
        subject = parse_spiffe_id(sub)
    except InvalidSpiffeIdError as err:
        raise InvalidJwtSvidError(f"JWT-SVID subject is not a SPIFFE ID: {err}") from err
    if trust_domain is not None:
        parse_spiffe_id(subject, trust_domain=parse_trust_domain(trust_domain))
    bundle = bundles.get_bundle_for_trust_domain(subject.trust_domain)
    if bundle is None:
        raise WrongTrustDomainError(
            f"no JWT bundle for trust domain {subject.trust_domain.name!r} "
            f"(JWT-SVID subject {str(subject)!r})"
        )
    try:
        svid = JwtSvid.parse_and_validate(token, bundle, {audience})
    except PySpiffeError as err:
        cause = err.__cause__
        if isinstance(cause, jwt.InvalidAudienceError):
            raise JwtAudienceError(
                f"JWT-SVID of {str(subject)!r} is not issued for audience {audience!r}"
            ) from err
        if isinstance(cause, jwt.ExpiredSignatureError):
            raise JwtExpiredError(f"JWT-SVID of {str(subject)!r} has expired") from err
        raise InvalidJwtSvidError(
            f"JWT-SVID of {str(subject)!r} failed verification: {type(err).__name__}"
        ) from err
    if svid.spiffe_id != subject:  # pragma: no cover - same claim, verified this time
        raise InvalidJwtSvidError("JWT-SVID subject changed during verification")
    return subject
