"""The embedded issuer's certificate authority and JWT signing key.

Both keys are EC P-256 (SPIRE's default key type). They live in ``<state-dir>/identity/``::

    ca.key.pem   CA private key, PKCS#8 PEM, mode 0600
    ca.crt.pem   self-signed CA certificate (URI SAN = spiffe://<trust-domain>)
    jwt.key.pem  JWT-SVID signing key, PKCS#8 PEM, mode 0600

The directory is created with mode 0700 and refused if group or others can access it, or if
a key file is readable by them; keys are reused across restarts, so SVIDs issued before a
restart still verify against the bundle after it. A CA certificate of another trust domain,
or one that is about to expire, is replaced by a fresh CA (the old files are overwritten).

X.509-SVIDs are issued directly by the CA (no intermediate), with exactly one URI SAN,
``digitalSignature`` key usage and server/client EKUs, as SPIRE issues them; JWT-SVIDs are
ES256 JWS with ``sub``, ``aud``, ``exp`` and ``iat`` and a ``kid`` equal to the RFC 7638
thumbprint of the signing key, which is also the key's ``kid`` in the JWKS bundle.
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import json
import os
import stat
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import jwt
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from spiffe import JwtBundle, SpiffeId, TrustDomain, X509Bundle

from x0tta6bl4.identity.errors import IssuerStateError

__all__ = ["Authority", "IssuedX509Svid"]

_STATE_SUBDIR = "identity"
_CA_KEY = "ca.key.pem"
_CA_CERT = "ca.crt.pem"
_JWT_KEY = "jwt.key.pem"
_CA_LIFETIME = dt.timedelta(days=365)
_BACKDATE = dt.timedelta(seconds=10)  # clock skew allowance, as SPIRE does


@dataclass(frozen=True)
class IssuedX509Svid:
    """One X.509-SVID as served: certificate, its PKCS#8 DER key, and when to rotate it."""

    spiffe_id: SpiffeId
    certificate: x509.Certificate
    key_der: bytes
    issued_at: float
    expires_at: float

    @property
    def serial(self) -> int:
        """The certificate serial number."""
        return self.certificate.serial_number

    @property
    def rotate_at(self) -> float:
        """Half-life: the time (seconds since the epoch) at which it is replaced."""
        return self.issued_at + (self.expires_at - self.issued_at) / 2

    @property
    def certificate_der(self) -> bytes:
        """The certificate, DER encoded."""
        return self.certificate.public_bytes(serialization.Encoding.DER)


def _b64url_uint(value: int) -> str:
    raw = value.to_bytes(32, "big")
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii")


def _check_private(path: Path, *, directory: bool) -> None:
    st = path.lstat()
    expected = stat.S_ISDIR if directory else stat.S_ISREG
    if not expected(st.st_mode):
        kind = "directory" if directory else "regular file"
        raise IssuerStateError(f"{path} is not a {kind}")
    if st.st_mode & 0o077:
        raise IssuerStateError(
            f"{path} is accessible by group or others (mode {stat.S_IMODE(st.st_mode):04o}); "
            f"run: chmod {'700' if directory else '600'} {path}"
        )
    if st.st_uid != os.geteuid():
        raise IssuerStateError(f"{path} is owned by uid {st.st_uid}, not by us ({os.geteuid()})")


def _write_private(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _load_key(path: Path) -> ec.EllipticCurvePrivateKey:
    _check_private(path, directory=False)
    try:
        key = serialization.load_pem_private_key(path.read_bytes(), password=None)
    except (ValueError, TypeError) as err:
        raise IssuerStateError(f"{path} does not hold a readable PEM private key") from err
    if not isinstance(key, ec.EllipticCurvePrivateKey) or key.curve.name != "secp256r1":
        raise IssuerStateError(f"{path} does not hold an EC P-256 private key")
    return key


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


class Authority:
    """CA certificate and key, and JWT signing key, of one trust domain.

    Thread-safe: every method only reads immutable state.
    """

    def __init__(
        self,
        trust_domain: TrustDomain,
        ca_key: ec.EllipticCurvePrivateKey,
        ca_cert: x509.Certificate,
        jwt_key: ec.EllipticCurvePrivateKey,
    ) -> None:
        self._trust_domain = trust_domain
        self._ca_key = ca_key
        self._ca_cert = ca_cert
        self._jwt_key = jwt_key
        numbers = jwt_key.public_key().public_numbers()
        self._jwk: dict[str, str] = {
            "kty": "EC",
            "crv": "P-256",
            "x": _b64url_uint(numbers.x),
            "y": _b64url_uint(numbers.y),
        }
        canonical = json.dumps(self._jwk, sort_keys=True, separators=(",", ":")).encode()
        digest = hashlib.sha256(canonical).digest()
        self._kid = base64.urlsafe_b64encode(digest).rstrip(b"=").decode("ascii")

    # -- construction -------------------------------------------------------------------

    @classmethod
    def load_or_create(
        cls,
        state_dir: Path,
        trust_domain: TrustDomain,
        *,
        min_remaining: dt.timedelta = dt.timedelta(days=1),
    ) -> Authority:
        """Load the keys from ``state_dir/identity``, creating what is missing.

        Raises :class:`IssuerStateError` if the directory or a key file is unsafe or corrupt.
        """
        directory = Path(state_dir) / _STATE_SUBDIR
        try:
            Path(state_dir).mkdir(mode=0o700, parents=True, exist_ok=True)
            directory.mkdir(mode=0o700, exist_ok=True)
        except OSError as err:
            raise IssuerStateError(f"cannot create state directory {directory}: {err}") from err
        _check_private(directory, directory=True)
        ca_key_path, ca_cert_path, jwt_key_path = (
            directory / _CA_KEY,
            directory / _CA_CERT,
            directory / _JWT_KEY,
        )
        if jwt_key_path.exists():
            jwt_key = _load_key(jwt_key_path)
        else:
            jwt_key = ec.generate_private_key(ec.SECP256R1())
            _write_private(jwt_key_path, _key_pem(jwt_key))
        ca_key: ec.EllipticCurvePrivateKey | None = None
        ca_cert: x509.Certificate | None = None
        if ca_key_path.exists() and ca_cert_path.exists():
            ca_key = _load_key(ca_key_path)
            try:
                ca_cert = x509.load_pem_x509_certificate(ca_cert_path.read_bytes())
            except ValueError as err:
                raise IssuerStateError(f"{ca_cert_path} is not a PEM certificate") from err
            if ca_cert.public_key() != ca_key.public_key():
                raise IssuerStateError(f"{ca_cert_path} does not match {ca_key_path}")
            now = dt.datetime.now(dt.UTC)
            if (
                cls._cert_trust_domain(ca_cert) != trust_domain.as_spiffe_id()
                or ca_cert.not_valid_after_utc - now < min_remaining
            ):
                ca_cert = None  # another trust domain, or about to expire: start afresh
        if ca_key is None or ca_cert is None:
            ca_key = ec.generate_private_key(ec.SECP256R1())
            ca_cert = cls._make_ca(ca_key, trust_domain)
            _write_private(ca_key_path, _key_pem(ca_key))
            _write_private(ca_cert_path, ca_cert.public_bytes(serialization.Encoding.PEM))
        return cls(trust_domain, ca_key, ca_cert, jwt_key)

    @staticmethod
    def _cert_trust_domain(cert: x509.Certificate) -> str | None:
        try:
            san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        except x509.ExtensionNotFound:
            return None
        uris = san.get_values_for_type(x509.UniformResourceIdentifier)
        return uris[0] if len(uris) == 1 else None

    @staticmethod
    def _make_ca(key: ec.EllipticCurvePrivateKey, trust_domain: TrustDomain) -> x509.Certificate:
        now = dt.datetime.now(dt.UTC)
        name = x509.Name(
            [
                x509.NameAttribute(NameOID.ORGANIZATION_NAME, "x0tta6bl4"),
                x509.NameAttribute(
                    NameOID.COMMON_NAME, f"x0tta6bl4 development issuer {trust_domain.name}"[:64]
                ),
            ]
        )
        ski = x509.SubjectKeyIdentifier.from_public_key(key.public_key())
        return (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(name)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - _BACKDATE)
            .not_valid_after(now + _CA_LIFETIME)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=True,
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
            .add_extension(
                x509.SubjectAlternativeName(
                    [x509.UniformResourceIdentifier(trust_domain.as_spiffe_id())]
                ),
                critical=False,
            )
            .add_extension(ski, critical=False)
            .sign(key, hashes.SHA256())
        )

    # -- accessors ----------------------------------------------------------------------

    @property
    def trust_domain(self) -> TrustDomain:
        """The trust domain this authority issues for."""
        return self._trust_domain

    @property
    def ca_certificate(self) -> x509.Certificate:
        """The self-signed CA certificate (the X.509 bundle's only authority)."""
        return self._ca_cert

    @property
    def jwt_key_id(self) -> str:
        """The ``kid`` of the JWT signing key (RFC 7638 thumbprint)."""
        return self._kid

    def x509_bundle_der(self) -> bytes:
        """The X.509 bundle as the Workload API carries it: concatenated DER certificates."""
        return self._ca_cert.public_bytes(serialization.Encoding.DER)

    def x509_bundle(self) -> X509Bundle:
        """The X.509 bundle as a py-spiffe object."""
        return X509Bundle(self._trust_domain, {self._ca_cert})

    def jwt_bundle_json(self) -> bytes:
        """The JWT bundle as the Workload API carries it: an RFC 7517 JWKS document."""
        jwk = {**self._jwk, "kid": self._kid, "use": "jwt-svid"}
        return json.dumps({"keys": [jwk]}, separators=(",", ":")).encode()

    def jwt_bundle(self) -> JwtBundle:
        """The JWT bundle as a py-spiffe object."""
        return JwtBundle(self._trust_domain, {self._kid: self._jwt_key.public_key()})

    # -- issuing ------------------------------------------------------------------------

    def issue_x509_svid(self, spiffe_id: SpiffeId, ttl: float, now: float) -> IssuedX509Svid:
        """Issue an X.509-SVID for ``spiffe_id`` valid for ``ttl`` seconds from ``now``."""
        key = ec.generate_private_key(ec.SECP256R1())
        issued = dt.datetime.fromtimestamp(now, dt.UTC)
        expires = min(issued + dt.timedelta(seconds=ttl), self._ca_cert.not_valid_after_utc)
        cert = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "x0tta6bl4")]))
            .issuer_name(self._ca_cert.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(issued - _BACKDATE)
            .not_valid_after(expires)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=True,
                    content_commitment=False,
                    key_encipherment=True,
                    data_encipherment=False,
                    key_agreement=True,
                    key_cert_sign=False,
                    crl_sign=False,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            )
            .add_extension(
                x509.ExtendedKeyUsage(
                    [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]
                ),
                critical=False,
            )
            .add_extension(
                x509.SubjectAlternativeName([x509.UniformResourceIdentifier(str(spiffe_id))]),
                critical=True,
            )
            .add_extension(
                x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False
            )
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(self._ca_key.public_key()),
                critical=False,
            )
            .sign(self._ca_key, hashes.SHA256())
        )
        key_der = key.private_bytes(
            serialization.Encoding.DER,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        return IssuedX509Svid(
            spiffe_id=spiffe_id,
            certificate=cert,
            key_der=key_der,
            issued_at=now,
            expires_at=expires.timestamp(),
        )

    def sign_jwt_svid(
        self, spiffe_id: SpiffeId, audience: Sequence[str], ttl: float, now: float
    ) -> str:
        """Sign an ES256 JWT-SVID for ``spiffe_id`` and ``audience``, valid for ``ttl`` s."""
        claims = {
            "sub": str(spiffe_id),
            "aud": list(audience),
            "iat": int(now),
            "exp": int(now + ttl),
        }
        return jwt.encode(
            claims, self._jwt_key, algorithm="ES256", headers={"kid": self._kid, "typ": "JWT"}
        )
