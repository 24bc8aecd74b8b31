"""Post-quantum X.509-SVIDs: the mesh CA, trust bundles and leaf verification.

A PQ X.509-SVID is a standard X.509 v3 certificate whose subject key and signature are
ML-DSA-65 (FIPS 204, RFC 9881 encoding: empty context string), with the node's SPIFFE ID as its
only URI SAN and the node ID as subject CN. ``docs/pqsvid.md`` lists every field and extension.

Errors about a certificate are :class:`~x0tta6bl4.crypto.errors.CryptoError` (so one
``except CryptoError`` covers everything wrong with a certificate)::

    PqSvidError
    ├── MalformedCertificateError  not DER, unparseable, or missing a required field
    ├── CaAsLeafError              a CA certificate (or a certificate-signing key) as a leaf
    ├── NotMlDsaKeyError           a subject key or signature that is not ML-DSA-65
    ├── UnknownIssuerError         not signed by any CA of the trust bundle
    ├── ExpiredError               the leaf (or its CA) expired before ``now``
    ├── NotYetValidError           the leaf (or its CA) is not valid yet at ``now``
    ├── MissingSpiffeIdError       no URI SAN
    ├── SpiffeIdSanError           the URI SAN is not a canonical SPIFFE ID with a path
    │                              (also an identity InvalidSpiffeIdError)
    ├── MultipleSpiffeIdsError     more than one URI SAN
    ├── ForeignTrustDomainError    a leaf or CA of another trust domain
    │                              (also an identity WrongTrustDomainError)
    ├── InvalidNodeIdError         missing/invalid subject CN (node ID)
    ├── NotCaError                 a non-CA certificate where a CA is required
    └── KeyMismatchError           a CA private key that does not match its certificate

SPIFFE IDs and trust domains given as arguments are parsed by
:mod:`x0tta6bl4.identity.spiffe_ids` (canonical form required) and refused with its errors:
:class:`~x0tta6bl4.identity.errors.InvalidSpiffeIdError`,
:class:`~x0tta6bl4.identity.errors.InvalidTrustDomainError`,
:class:`~x0tta6bl4.identity.errors.WrongTrustDomainError` (one vocabulary: ``except`` the
identity error and it catches the certificate's too).

Time is always passed in as ``now``: wall-clock UNIX seconds (``time.time()``), because X.509
validity is absolute time. Messages never contain key material.
"""

from __future__ import annotations

import datetime
import hashlib
import hmac
import re
import secrets
import struct
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final, TypeVar

from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.mldsa import MLDSA65PublicKey
from cryptography.utils import CryptographyDeprecationWarning
from cryptography.x509.oid import (
    ExtendedKeyUsageOID,
    ExtensionOID,
    NameOID,
    SignatureAlgorithmOID,
)

from x0tta6bl4.crypto.errors import BadSignatureError, CryptoError
from x0tta6bl4.crypto.suite import (
    MLDSA65_SIGNATURE_SIZE,
    SignatureContext,
    SigningKey,
    load_verifying_key,
    verify_signature,
)
from x0tta6bl4.defaults import DEFAULT_TRUST_DOMAIN
from x0tta6bl4.identity.errors import (
    IdentityError,
    InvalidSpiffeIdError,
    WrongTrustDomainError,
)
from x0tta6bl4.identity.spiffe_ids import parse_spiffe_id, parse_trust_domain

__all__ = [
    "CLOCK_SKEW_SECONDS",
    "DEFAULT_CA_TTL_SECONDS",
    "DEFAULT_LEAF_TTL_SECONDS",
    "NODE_ID_MAX_LENGTH",
    "POP_VERSION",
    "CaAsLeafError",
    "ExpiredError",
    "ForeignTrustDomainError",
    "InvalidNodeIdError",
    "KeyMismatchError",
    "MalformedCertificateError",
    "MeshCA",
    "MissingSpiffeIdError",
    "MultipleSpiffeIdsError",
    "NotCaError",
    "NotMlDsaKeyError",
    "NotYetValidError",
    "PeerIdentity",
    "PqSvidError",
    "SpiffeIdSanError",
    "TrustBundle",
    "UnknownIssuerError",
    "pop_message",
    "proof_of_possession",
    "rotation_nonce",
    "rotation_proof",
    "validate_node_id",
    "verify_proof_of_possession",
    "verify_svid",
]

#: Certificates start this many seconds before ``now`` to tolerate clock skew between nodes.
CLOCK_SKEW_SECONDS: Final = 60
DEFAULT_LEAF_TTL_SECONDS: Final = 3600
DEFAULT_CA_TTL_SECONDS: Final = 10 * 365 * 86400
#: X.509's upper bound for a common name (``ub-common-name``).
NODE_ID_MAX_LENGTH: Final = 64
_NODE_ID_RE: Final = re.compile(r"[A-Za-z0-9._-]{1,64}")
_MAX_POP_FIELD: Final = 0xFFFF
# BIT STRING, long length 0x0cee (3310), 0 unused bits: the tail of every ML-DSA-65 certificate.
_MLDSA65_SIGNATURE_PREFIX: Final = (
    b"\x03\x82" + (MLDSA65_SIGNATURE_SIZE + 1).to_bytes(2, "big") + b"\x00"
)


# Critical extensions a leaf may carry (RFC 5280 §4.2: reject any other critical extension).
_UNDERSTOOD_CRITICAL: Final = frozenset(
    {
        ExtensionOID.BASIC_CONSTRAINTS,
        ExtensionOID.KEY_USAGE,
        ExtensionOID.EXTENDED_KEY_USAGE,
        ExtensionOID.SUBJECT_ALTERNATIVE_NAME,
    }
)


# --- errors -----------------------------------------------------------------------------------


class PqSvidError(CryptoError):
    """Base class of every PQ X.509-SVID error."""


class MalformedCertificateError(PqSvidError):
    """Not DER, unparseable, or missing a field the profile requires."""


class CaAsLeafError(PqSvidError):
    """A CA certificate was presented where a leaf SVID is required."""


class NotMlDsaKeyError(PqSvidError):
    """The subject key or the signature algorithm is not ML-DSA-65."""


class UnknownIssuerError(PqSvidError):
    """The certificate was not issued by any CA of the trust bundle."""


class ExpiredError(PqSvidError):
    """The certificate (or its issuing CA) is past its ``notAfter``."""


class NotYetValidError(PqSvidError):
    """The certificate (or its issuing CA) is before its ``notBefore``."""


class MissingSpiffeIdError(PqSvidError):
    """The certificate carries no URI SAN."""


class SpiffeIdSanError(PqSvidError, InvalidSpiffeIdError):
    """A certificate's URI SAN is not a valid (canonical, non-root) SPIFFE ID."""


class MultipleSpiffeIdsError(PqSvidError):
    """The certificate carries more than one URI SAN."""


class ForeignTrustDomainError(PqSvidError, WrongTrustDomainError):
    """A certificate (a leaf's SPIFFE ID, or a CA) belongs to another trust domain."""


class InvalidNodeIdError(PqSvidError):
    """The node ID (subject CN) is missing or not 1-64 characters of ``[A-Za-z0-9._-]``."""


class NotCaError(PqSvidError):
    """A certificate used as a CA is not a CA certificate."""


class KeyMismatchError(PqSvidError):
    """A CA private key does not belong to the CA certificate."""


# --- helpers ----------------------------------------------------------------------------------


def _utc(ts: float) -> datetime.datetime:
    """UNIX seconds to an aware UTC datetime, truncated to whole seconds (X.509 precision)."""
    return datetime.datetime.fromtimestamp(int(ts), tz=datetime.UTC)


def _serial() -> int:
    """A random positive 128-bit serial number (top bit set, 127 random bits)."""
    return (1 << 127) | secrets.randbits(127)


def _parse_trust_domain(trust_domain: str) -> str:
    """A canonical trust domain name, else an identity error."""
    return str(parse_trust_domain(trust_domain, canonical=True).name)


def _san_spiffe_id(uri: str, trust_domain: str) -> str:
    """A leaf's URI SAN as a canonical SPIFFE ID of ``trust_domain``, else a PqSvidError."""
    try:
        parsed = parse_spiffe_id(uri, canonical=True)
    except IdentityError as exc:
        raise SpiffeIdSanError(f"URI SAN is not a valid SPIFFE ID: {exc}") from exc
    td = str(parsed.trust_domain.name)
    if td != trust_domain:
        raise ForeignTrustDomainError(
            f"SPIFFE ID {str(parsed)!r} is in trust domain {td!r}, expected {trust_domain!r}"
        )
    return str(parsed)


def validate_node_id(node_id: str) -> str:
    """Return ``node_id`` if it is 1-64 characters of ``[A-Za-z0-9._-]``.

    Raises :class:`InvalidNodeIdError` otherwise.
    """
    if not isinstance(node_id, str) or _NODE_ID_RE.fullmatch(node_id) is None:
        shown = node_id[:80] if isinstance(node_id, str) else type(node_id).__name__
        raise InvalidNodeIdError(
            f"node ID {shown!r} must be 1-{NODE_ID_MAX_LENGTH} characters of [A-Za-z0-9._-]"
        )
    return node_id


_E = TypeVar("_E", bound=x509.ExtensionType)


def _ext(cert: x509.Certificate, kind: type[_E]) -> x509.Extension[_E] | None:
    try:
        return cert.extensions.get_extension_for_class(kind)
    except x509.ExtensionNotFound:
        return None


def _is_ca(cert: x509.Certificate) -> bool:
    bc = _ext(cert, x509.BasicConstraints)
    return bc is not None and bool(bc.value.ca)


def _ski(cert: x509.Certificate) -> bytes | None:
    ext = _ext(cert, x509.SubjectKeyIdentifier)
    return None if ext is None else bytes(ext.value.digest)


def _aki(cert: x509.Certificate) -> bytes | None:
    ext = _ext(cert, x509.AuthorityKeyIdentifier)
    if ext is None or ext.value.key_identifier is None:
        return None
    return bytes(ext.value.key_identifier)


def _require_mldsa_ca(cert: x509.Certificate, what: str) -> MLDSA65PublicKey:
    """Check that ``cert`` is an ML-DSA-65 CA certificate with an SKI; return its key."""
    try:
        is_ca = _is_ca(cert)
        ski = _ski(cert)
    except ValueError as exc:
        raise MalformedCertificateError(f"{what} has malformed extensions: {exc}") from exc
    if not is_ca:
        raise NotCaError(f"{what} is not a CA certificate (BasicConstraints ca=false or absent)")
    try:
        key = cert.public_key()
    except (ValueError, UnsupportedAlgorithm) as exc:
        raise NotMlDsaKeyError(f"{what} has an unsupported public key") from exc
    if not isinstance(key, MLDSA65PublicKey):
        raise NotMlDsaKeyError(f"{what} has a {type(key).__name__}, not an ML-DSA-65 key")
    if cert.signature_algorithm_oid != SignatureAlgorithmOID.ML_DSA_65:
        raise NotMlDsaKeyError(f"{what} is not signed with ML-DSA-65")
    if ski is None:
        raise MalformedCertificateError(f"{what} has no subject key identifier")
    return key


def _ca_trust_domain(cert: x509.Certificate) -> str | None:
    """The trust domain named by a CA's ``spiffe://<td>`` URI SAN, if it has one."""
    try:
        san = _ext(cert, x509.SubjectAlternativeName)
    except ValueError as exc:
        raise MalformedCertificateError(f"CA certificate has a malformed SAN: {exc}") from exc
    if san is None:
        return None
    for uri in san.value.get_values_for_type(x509.UniformResourceIdentifier):
        if isinstance(uri, str) and uri.startswith("spiffe://"):
            try:
                return str(parse_spiffe_id(uri, require_path=False).trust_domain.name)
            except IdentityError as exc:
                raise SpiffeIdSanError(f"CA URI SAN is not a SPIFFE ID: {exc}") from exc
    return None


#: What cryptography raises for a certificate part it parses only when first used (the name,
#: the validity, the extensions; the warning only where warnings are errors, e.g. a
#: non-positive serial number).
_MALFORMED: Final = (
    ValueError,
    TypeError,  # a name attribute holding a BIT STRING under an OID other than uniqueIdentifier
    x509.InvalidVersion,
    x509.DuplicateExtension,
    x509.UnsupportedGeneralNameType,
    CryptographyDeprecationWarning,
)


def _parse_lazily_parsed_fields(cert: x509.Certificate, what: str) -> None:
    """Touch every part of ``cert`` that cryptography parses lazily, so that a malformed one
    raises :class:`MalformedCertificateError` here instead of a ``ValueError`` later."""
    try:
        _ = (
            cert.subject.rfc4514_string(),
            cert.issuer.rfc4514_string(),
            cert.not_valid_before_utc,
            cert.not_valid_after_utc,
            cert.serial_number,
            cert.version,
            cert.signature_algorithm_oid,
            list(cert.extensions),
        )
    except _MALFORMED as exc:
        raise MalformedCertificateError(f"{what} is not valid DER X.509: {exc}") from exc


def _check_window(cert: x509.Certificate, now: float, what: str) -> None:
    not_before = cert.not_valid_before_utc.timestamp()
    not_after = cert.not_valid_after_utc.timestamp()
    if now < not_before:
        raise NotYetValidError(
            f"{what} is not valid before {cert.not_valid_before_utc.isoformat()} "
            f"(now {_utc(now).isoformat()})"
        )
    if now > not_after:
        raise ExpiredError(
            f"{what} expired at {cert.not_valid_after_utc.isoformat()} "
            f"(now {_utc(now).isoformat()})"
        )


# --- mesh CA ----------------------------------------------------------------------------------


@dataclass(frozen=True, eq=False, repr=False)
class MeshCA:
    """The mesh certificate authority: an ML-DSA-65 self-signed CA (path length 0).

    Build one with :meth:`create` or :meth:`load`; the constructor validates that ``cert`` is
    an ML-DSA-65 CA whose key is ``key`` and whose SPIFFE URI SAN (if any) names
    ``trust_domain``. Immutable; safe to share between threads.
    """

    trust_domain: str
    cert: x509.Certificate
    key: SigningKey

    def __post_init__(self) -> None:
        _parse_trust_domain(self.trust_domain)
        _parse_lazily_parsed_fields(self.cert, "mesh CA certificate")
        cert_key = _require_mldsa_ca(self.cert, "mesh CA certificate")
        if not hmac.compare_digest(cert_key.public_bytes_raw(), self.key.public_bytes):
            raise KeyMismatchError("the CA private key does not match the CA certificate")
        named = _ca_trust_domain(self.cert)
        if named is not None and named != self.trust_domain:
            raise ForeignTrustDomainError(
                f"CA certificate names trust domain {named!r}, expected {self.trust_domain!r}"
            )

    @classmethod
    def create(
        cls,
        trust_domain: str = DEFAULT_TRUST_DOMAIN,
        *,
        now: float,
        ttl_seconds: int = DEFAULT_CA_TTL_SECONDS,
        common_name: str = "x0tta6bl4 mesh CA",
        key: SigningKey | None = None,
    ) -> MeshCA:
        """Generate a key (unless given) and a self-signed CA valid from ``now - 60 s``."""
        td = _parse_trust_domain(trust_domain)
        if ttl_seconds <= 0:
            raise ValueError("ttl_seconds must be positive")
        if not common_name or len(common_name) > 64:
            raise ValueError("common_name must be 1-64 characters")
        signing_key = key if key is not None else SigningKey.generate()
        public = signing_key.key.public_key()
        ski = x509.SubjectKeyIdentifier.from_public_key(public)
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
        cert = (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(name)
            .public_key(public)
            .serial_number(_serial())
            .not_valid_before(_utc(now - CLOCK_SKEW_SECONDS))
            .not_valid_after(_utc(now + ttl_seconds))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=False,
                    content_commitment=False,
                    key_encipherment=False,
                    data_encipherment=False,
                    key_agreement=False,
                    key_cert_sign=True,
                    crl_sign=True,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            )
            .add_extension(ski, critical=False)
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski),
                critical=False,
            )
            .add_extension(
                x509.SubjectAlternativeName([x509.UniformResourceIdentifier(f"spiffe://{td}")]),
                critical=False,
            )
            .sign(signing_key.key, None)
        )
        return cls(td, cert, signing_key)

    @classmethod
    def load(cls, cert_pem: bytes, key_pem: bytes, *, trust_domain: str | None = None) -> MeshCA:
        """Load a CA from PEM; validates: CA, ML-DSA-65, key matches the certificate.

        The trust domain comes from the CA's ``spiffe://<td>`` URI SAN (as :meth:`create`
        writes it); pass ``trust_domain`` for a CA without one. Raises
        :class:`MalformedCertificateError`, :class:`NotCaError`, :class:`NotMlDsaKeyError`,
        :class:`KeyMismatchError`, :class:`ForeignTrustDomainError` or
        :class:`~x0tta6bl4.crypto.errors.InvalidKeyError` (an unreadable or non-ML-DSA key).
        """
        try:
            cert = x509.load_pem_x509_certificate(cert_pem)
        except _MALFORMED as exc:
            raise MalformedCertificateError("CA certificate is not a PEM certificate") from exc
        key = SigningKey.from_pem(key_pem)
        named = _ca_trust_domain(cert)
        td = trust_domain if trust_domain is not None else named
        if td is None:
            raise MalformedCertificateError(
                "CA certificate has no spiffe://<trust-domain> URI SAN; pass trust_domain="
            )
        return cls(td, cert, key)

    def cert_pem(self) -> bytes:
        return self.cert.public_bytes(serialization.Encoding.PEM)

    def key_pem(self) -> bytes:
        """PKCS#8 PEM, unencrypted: store it with 0600 permissions."""
        return self.key.to_pem()

    @property
    def not_after(self) -> float:
        return self.cert.not_valid_after_utc.timestamp()

    def bundle(self) -> TrustBundle:
        """A trust bundle holding only this CA."""
        return TrustBundle(self.trust_domain, [self.cert])

    def issue(
        self,
        *,
        spiffe_id: str,
        node_id: str,
        public_key: bytes,
        now: float,
        ttl_seconds: int = DEFAULT_LEAF_TTL_SECONDS,
    ) -> bytes:
        """Issue a DER leaf PQ SVID for ``public_key`` (raw ML-DSA-65, 1952 bytes).

        Valid from ``now - 60 s`` to ``min(now + ttl_seconds, CA notAfter)``. Raises
        :class:`InvalidNodeIdError`, the identity errors
        :class:`~x0tta6bl4.identity.errors.InvalidSpiffeIdError` and
        :class:`~x0tta6bl4.identity.errors.WrongTrustDomainError` (``spiffe_id`` is not a
        canonical SPIFFE ID of the CA's trust domain),
        :class:`~x0tta6bl4.crypto.errors.InvalidKeyError`,
        :class:`ExpiredError`/:class:`NotYetValidError` (the CA at ``now``), or
        :class:`ValueError` for a non-positive ``ttl_seconds``.
        """
        validate_node_id(node_id)
        sid = str(parse_spiffe_id(spiffe_id, canonical=True, trust_domain=self.trust_domain))
        subject_key = load_verifying_key(public_key)
        if ttl_seconds <= 0:
            raise ValueError("ttl_seconds must be positive")
        _check_window(self.cert, now, "mesh CA")
        ca_ski = _ski(self.cert)
        assert ca_ski is not None  # checked in __post_init__
        not_after = min(_utc(now + ttl_seconds), self.cert.not_valid_after_utc)
        not_before = max(_utc(now - CLOCK_SKEW_SECONDS), self.cert.not_valid_before_utc)
        der: bytes = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, node_id)]))
            .issuer_name(self.cert.subject)
            .public_key(subject_key)
            .serial_number(_serial())
            .not_valid_before(not_before)
            .not_valid_after(not_after)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=True,
                    content_commitment=False,
                    key_encipherment=False,
                    data_encipherment=False,
                    key_agreement=False,
                    key_cert_sign=False,
                    crl_sign=False,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            )
            .add_extension(
                x509.ExtendedKeyUsage(
                    [ExtendedKeyUsageOID.CLIENT_AUTH, ExtendedKeyUsageOID.SERVER_AUTH]
                ),
                critical=False,
            )
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(subject_key), critical=False)
            .add_extension(
                x509.AuthorityKeyIdentifier(
                    key_identifier=ca_ski,
                    authority_cert_issuer=None,
                    authority_cert_serial_number=None,
                ),
                critical=False,
            )
            .add_extension(
                x509.SubjectAlternativeName([x509.UniformResourceIdentifier(sid)]), critical=False
            )
            .sign(self.key.key, None)
            .public_bytes(serialization.Encoding.DER)
        )
        return der

    def __repr__(self) -> str:
        return f"MeshCA(trust_domain={self.trust_domain!r}, serial={self.cert.serial_number:x})"


# --- trust bundle -----------------------------------------------------------------------------


class TrustBundle:
    """The CA certificates a node trusts for one trust domain (several during CA rotation).

    Immutable after construction; safe to share between threads.
    """

    __slots__ = ("_by_ski", "_cas", "trust_domain")

    def __init__(self, trust_domain: str, cas: Sequence[x509.Certificate]) -> None:
        """Validate that every certificate is an ML-DSA-65 CA of ``trust_domain``.

        Raises :class:`~x0tta6bl4.identity.errors.InvalidTrustDomainError`,
        :class:`NotCaError`, :class:`NotMlDsaKeyError`, :class:`MalformedCertificateError` (no
        SKI, or no CA at all) or :class:`ForeignTrustDomainError` (a CA whose SPIFFE URI SAN
        names another domain).
        """
        self.trust_domain: str = _parse_trust_domain(trust_domain)
        unique: dict[bytes, x509.Certificate] = {}
        for cert in cas:
            if not isinstance(cert, x509.Certificate):
                raise TypeError("trust bundle entries must be x509.Certificate objects")
            unique.setdefault(cert.public_bytes(serialization.Encoding.DER), cert)
        if not unique:
            raise MalformedCertificateError("trust bundle contains no CA certificate")
        by_ski: dict[bytes, list[tuple[x509.Certificate, MLDSA65PublicKey]]] = {}
        for cert in unique.values():
            _parse_lazily_parsed_fields(cert, "trust bundle CA")
            what = f"trust bundle CA {cert.subject.rfc4514_string()!r}"
            key = _require_mldsa_ca(cert, what)
            named = _ca_trust_domain(cert)
            if named is not None and named != self.trust_domain:
                raise ForeignTrustDomainError(
                    f"{what} names trust domain {named!r}, expected {self.trust_domain!r}"
                )
            ski = _ski(cert)
            assert ski is not None  # checked by _require_mldsa_ca
            by_ski.setdefault(ski, []).append((cert, key))
        self._cas: tuple[x509.Certificate, ...] = tuple(unique.values())
        self._by_ski = by_ski

    @classmethod
    def from_pem(cls, trust_domain: str, pem: bytes) -> TrustBundle:
        """Parse one or more concatenated PEM CA certificates (old + new during rotation)."""
        try:
            certs = x509.load_pem_x509_certificates(pem)
        except _MALFORMED as exc:
            raise MalformedCertificateError(
                "trust bundle is not a list of PEM certificates"
            ) from exc
        return cls(trust_domain, certs)

    def to_pem(self) -> bytes:
        return b"".join(c.public_bytes(serialization.Encoding.PEM) for c in self._cas)

    @property
    def cas(self) -> tuple[x509.Certificate, ...]:
        return self._cas

    def __len__(self) -> int:
        return len(self._cas)

    def __repr__(self) -> str:
        return f"TrustBundle(trust_domain={self.trust_domain!r}, cas={len(self._cas)})"

    def _issuer_of(self, leaf: x509.Certificate, now: float) -> x509.Certificate:
        """The bundle CA whose key signed ``leaf`` (preferring one valid at ``now``)."""
        aki = _aki(leaf)
        if aki is None:
            raise UnknownIssuerError("certificate has no authority key identifier")
        candidates = [
            (ca, key) for ca, key in self._by_ski.get(aki, ()) if ca.subject == leaf.issuer
        ]
        if not candidates:
            raise UnknownIssuerError(
                f"certificate issuer {leaf.issuer.rfc4514_string()!r} is not a CA of the "
                f"{self.trust_domain!r} trust bundle"
            )
        signature = leaf.signature
        tbs = leaf.tbs_certificate_bytes
        verified: list[x509.Certificate] = []
        if len(signature) == MLDSA65_SIGNATURE_SIZE:
            for ca, key in candidates:
                try:
                    key.verify(signature, tbs)  # X.509 ML-DSA: empty context (RFC 9881)
                except InvalidSignature:
                    continue
                verified.append(ca)
        if not verified:
            raise UnknownIssuerError(
                "certificate signature does not verify under any CA of the trust bundle"
            )
        for ca in verified:
            nb = ca.not_valid_before_utc.timestamp()
            na = ca.not_valid_after_utc.timestamp()
            if nb <= now <= na:
                return ca
        return verified[0]


# --- verification -----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class PeerIdentity:
    """A verified PQ SVID: who the peer is and the key it must sign with."""

    spiffe_id: str
    node_id: str
    public_key: MLDSA65PublicKey
    public_key_bytes: bytes
    not_before: float  #: UNIX seconds
    not_after: float  #: UNIX seconds
    serial: int
    cert_der: bytes

    @property
    def trust_domain(self) -> str:
        return self.spiffe_id[len("spiffe://") :].split("/", 1)[0]


def verify_svid(cert_der: bytes, bundle: TrustBundle, now: float) -> PeerIdentity:
    """Verify a DER leaf PQ SVID against ``bundle`` at wall-clock time ``now``.

    Checks, in this order, each with its own error: parse (:class:`MalformedCertificateError`);
    a CA presented as a leaf (:class:`CaAsLeafError`); ML-DSA-65 subject key and signature
    algorithm (:class:`NotMlDsaKeyError`); issued by a CA of the bundle: issuer name, AKI = CA
    SKI, signature (:class:`UnknownIssuerError`); the leaf's validity window, then the CA's
    (:class:`NotYetValidError`, :class:`ExpiredError`); exactly one URI SAN
    (:class:`MissingSpiffeIdError`, :class:`MultipleSpiffeIdsError`) that is a canonical SPIFFE
    ID with a path (:class:`SpiffeIdSanError`) in the bundle's trust domain
    (:class:`ForeignTrustDomainError`); exactly one subject CN that is a valid node ID
    (:class:`InvalidNodeIdError`).
    """
    # 1. parse (cryptography parses some parts lazily: touch everything used below)
    if not isinstance(cert_der, bytes | bytearray | memoryview):
        raise MalformedCertificateError("certificate must be DER bytes")
    try:
        cert = x509.load_der_x509_certificate(bytes(cert_der))
        extensions = cert.extensions
        subject = cert.subject
        _ = (cert.issuer, cert.not_valid_before_utc, cert.not_valid_after_utc, cert.serial_number)
        sig_oid = cert.signature_algorithm_oid
        version = cert.version
    except _MALFORMED as exc:
        raise MalformedCertificateError(f"certificate is not valid DER X.509: {exc}") from exc
    if cert.serial_number <= 0:
        raise MalformedCertificateError("certificate serial number is not positive")
    if version is not x509.Version.v3:
        raise MalformedCertificateError("certificate is not X.509 v3")
    for extension in extensions:
        if extension.critical and extension.oid not in _UNDERSTOOD_CRITICAL:
            raise MalformedCertificateError(
                f"certificate has an unsupported critical extension {extension.oid.dotted_string}"
            )

    # 2. a CA certificate presented as a leaf
    bc = _ext(cert, x509.BasicConstraints)
    ku = _ext(cert, x509.KeyUsage)
    if (bc is not None and bc.value.ca) or (ku is not None and ku.value.key_cert_sign):
        raise CaAsLeafError("a CA certificate was presented as a leaf SVID")

    # 3. ML-DSA-65 key and signature
    try:
        public_key = cert.public_key()
    except (ValueError, UnsupportedAlgorithm) as exc:
        raise NotMlDsaKeyError("certificate has an unsupported public key algorithm") from exc
    if not isinstance(public_key, MLDSA65PublicKey):
        raise NotMlDsaKeyError(
            f"certificate has a {type(public_key).__name__}, not an ML-DSA-65 key"
        )
    if sig_oid != SignatureAlgorithmOID.ML_DSA_65:
        raise NotMlDsaKeyError(f"certificate is signed with {sig_oid.dotted_string}, not ML-DSA-65")

    # The signature BIT STRING must be the canonical DER encoding (0 unused bits); otherwise
    # the same signature would verify inside different certificate bytes.
    if not bytes(cert_der).endswith(_MLDSA65_SIGNATURE_PREFIX + cert.signature):
        raise MalformedCertificateError("certificate signature is not a DER ML-DSA-65 signature")

    # 4. issued by a CA of the bundle
    ca = bundle._issuer_of(cert, now)

    # 5-6. validity of the leaf, then of the CA
    _check_window(cert, now, "certificate")
    _check_window(ca, now, "issuing CA")

    # 7-8. exactly one URI SAN: a SPIFFE ID of the bundle's trust domain
    try:
        san = extensions.get_extension_for_class(x509.SubjectAlternativeName)
        uris = san.value.get_values_for_type(x509.UniformResourceIdentifier)
    except x509.ExtensionNotFound:
        uris = []
    if not uris:
        raise MissingSpiffeIdError("certificate has no URI SAN (SPIFFE ID)")
    if len(uris) > 1:
        raise MultipleSpiffeIdsError(
            f"certificate has {len(uris)} URI SANs; a PQ SVID has exactly one SPIFFE ID"
        )
    spiffe_id = _san_spiffe_id(uris[0], bundle.trust_domain)

    # 9. node ID = the only subject CN
    cns = subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    if len(cns) != 1:
        raise InvalidNodeIdError(f"certificate subject has {len(cns)} CNs; expected one node ID")
    node_id = cns[0].value
    if not isinstance(node_id, str):
        raise InvalidNodeIdError("certificate subject CN is not a string")
    validate_node_id(node_id)

    return PeerIdentity(
        spiffe_id=spiffe_id,
        node_id=node_id,
        public_key=public_key,
        public_key_bytes=public_key.public_bytes_raw(),
        not_before=cert.not_valid_before_utc.timestamp(),
        not_after=cert.not_valid_after_utc.timestamp(),
        serial=cert.serial_number,
        cert_der=bytes(cert_der),
    )


# --- proof of possession ----------------------------------------------------------------------


POP_VERSION: Final = 2
"""The proof-of-possession format: version 2 binds the credential it is sent with."""

_POP_TAG: Final = b"x0tta6bl4-pop-v2"
_CREDENTIAL_HASH_SIZE: Final = 32


def pop_message(
    *, spiffe_id: str, node_id: str, nonce: bytes, timestamp: int, credential_sha256: bytes
) -> bytes:
    """The canonical encoding signed by a proof of possession (version 2).

    ``"x0tta6bl4-pop-v2" ‖ u16(len(sid)) ‖ sid ‖ u16(len(nid)) ‖ nid ‖ u16(len(nonce)) ‖ nonce
    ‖ u16(32) ‖ credential_sha256 ‖ u64(timestamp)`` with UTF-8 strings and big-endian
    integers. ``credential_sha256`` is the SHA-256 of the credential the request is
    authenticated with (the client certificate's DER under mutual TLS), so a proof is worth
    nothing sent with another credential. Raises :class:`ValueError` for an empty or
    longer-than-65535-byte field, a credential hash that is not 32 bytes, or a timestamp
    outside ``0 … 2**64-1``.
    """
    parts: list[bytes] = [_POP_TAG]
    for name, value in (
        ("spiffe_id", spiffe_id.encode("utf-8")),
        ("node_id", node_id.encode("utf-8")),
        ("nonce", bytes(nonce)),
    ):
        if not 0 < len(value) <= _MAX_POP_FIELD:
            raise ValueError(f"{name} must be 1-{_MAX_POP_FIELD} bytes")
        parts.append(struct.pack("!H", len(value)) + value)
    credential = bytes(credential_sha256)
    if len(credential) != _CREDENTIAL_HASH_SIZE:
        raise ValueError("credential_sha256 must be a 32-byte SHA-256 digest")
    parts.append(struct.pack("!H", len(credential)) + credential)
    if isinstance(timestamp, bool) or not isinstance(timestamp, int):
        raise ValueError("timestamp must be an int")
    if not 0 <= timestamp < 2**64:
        raise ValueError("timestamp must be within 0 … 2**64-1")
    parts.append(struct.pack("!Q", timestamp))
    return b"".join(parts)


def proof_of_possession(
    key: SigningKey,
    *,
    spiffe_id: str,
    node_id: str,
    nonce: bytes,
    timestamp: int,
    credential_sha256: bytes,
) -> bytes:
    """Sign :func:`pop_message` with ``SignatureContext.PROOF_OF_POSSESSION``.

    The node sends this with its ML-DSA-65 public key at registration; the controller checks
    it with :func:`verify_proof_of_possession` against the credential that authenticated the
    request, then checks that ``nonce`` is unused and ``timestamp`` recent (this module does
    neither).
    """
    message = pop_message(
        spiffe_id=spiffe_id,
        node_id=node_id,
        nonce=nonce,
        timestamp=timestamp,
        credential_sha256=credential_sha256,
    )
    return key.sign(SignatureContext.PROOF_OF_POSSESSION, message)


def verify_proof_of_possession(
    public_key: bytes,
    signature: bytes,
    *,
    spiffe_id: str,
    node_id: str,
    nonce: bytes,
    timestamp: int,
    credential_sha256: bytes,
) -> None:
    """Raise :class:`~x0tta6bl4.crypto.errors.BadSignatureError` unless ``signature`` is a
    proof of possession of ``public_key`` for these fields.

    Fields that cannot be encoded (so cannot have been signed) also raise
    :class:`BadSignatureError`; a malformed ``public_key`` raises
    :class:`~x0tta6bl4.crypto.errors.InvalidKeyError`.
    """
    key = load_verifying_key(public_key)
    try:
        message = pop_message(
            spiffe_id=spiffe_id,
            node_id=node_id,
            nonce=nonce,
            timestamp=timestamp,
            credential_sha256=credential_sha256,
        )
    except (ValueError, TypeError, AttributeError, UnicodeError) as exc:
        raise BadSignatureError("proof of possession fields are not encodable") from exc
    verify_signature(key, SignatureContext.PROOF_OF_POSSESSION, message, signature)


_ROTATION = b"x0tta6bl4-rotate-v1"


def rotation_nonce(nonce: bytes, new_public_key: bytes) -> bytes:
    """What the previous key signs (as the ``nonce`` of a proof of possession, with the same
    SPIFFE ID, node ID and timestamp as the request's own proof) to hand the node ID over to
    ``new_public_key``: ``"x0tta6bl4-rotate-v1" ‖ nonce ‖ SHA-256(new key)``."""
    return _ROTATION + nonce + hashlib.sha256(new_public_key).digest()


def rotation_proof(
    previous: SigningKey,
    new_public_key: bytes,
    *,
    spiffe_id: str,
    node_id: str,
    nonce: bytes,
    timestamp: int,
    credential_sha256: bytes,
) -> bytes:
    """The rotation proof's signature (see :func:`rotation_nonce`), bound like the request's
    own proof to the credential it is sent with."""
    return proof_of_possession(
        previous,
        spiffe_id=spiffe_id,
        node_id=node_id,
        nonce=rotation_nonce(nonce, new_public_key),
        timestamp=timestamp,
        credential_sha256=credential_sha256,
    )
