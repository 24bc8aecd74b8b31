"""TLS credentials of the control channel: an X.509-SVID to present and the bundle to trust.

:class:`TlsCredentials` is one immutable snapshot: the certificate chain (leaf first) and key
this side presents — a SPIFFE X.509-SVID from the Workload API — and the X.509 authorities of
its trust domain, against which the other side's SVID is verified. A client that only needs
to verify the controller (``x0tta6bl4 check --local`` with a trust bundle file) has no chain.

:class:`CredentialSource` hands out the current snapshot and a generation number that grows at
every rotation. :class:`WorkloadCredentials` follows a
:class:`~x0tta6bl4.identity.workload_source.WorkloadSource`: SPIRE (or the embedded issuer)
rotates the SVID at half-life, each rotation becomes a new snapshot, and every TLS context
built from an older generation is rebuilt for the next connection. Established connections
keep the certificate they were authenticated with (a TLS handshake is never redone), which is
what lets the controller's certificate rotate without dropping node sessions.
"""

from __future__ import annotations

import hashlib
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import dsa, ec, ed448, ed25519, rsa
from spiffe import SpiffeId, TrustDomain, X509Bundle, X509BundleSet, X509Svid
from spiffe.workloadapi.x509_context import X509Context

from x0tta6bl4.identity.errors import IdentityError, UntrustedSvidError, WrongTrustDomainError
from x0tta6bl4.identity.spiffe_ids import parse_trust_domain
from x0tta6bl4.identity.verify import verify_x509_svid

__all__ = [
    "CredentialSource",
    "StaticCredentials",
    "TlsCredentials",
    "WorkloadCredentials",
    "load_bundle_pem",
]


TlsPrivateKey = (
    ec.EllipticCurvePrivateKey
    | rsa.RSAPrivateKey
    | ed25519.Ed25519PrivateKey
    | ed448.Ed448PrivateKey
    | dsa.DSAPrivateKey
)
"""Private key types OpenSSL can use for an X.509-SVID in TLS (SPIRE issues EC P-256)."""
_TLS_KEYS = (
    ec.EllipticCurvePrivateKey,
    rsa.RSAPrivateKey,
    ed25519.Ed25519PrivateKey,
    ed448.Ed448PrivateKey,
    dsa.DSAPrivateKey,
)


@dataclass(frozen=True)
class TlsCredentials:
    """What one side presents (``chain`` + ``key``, possibly none) and whom it trusts."""

    trust_domain: TrustDomain
    authorities: tuple[x509.Certificate, ...]
    chain: tuple[x509.Certificate, ...] = ()
    key: TlsPrivateKey | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        if not self.authorities:
            raise UntrustedSvidError(
                f"no X.509 authority for trust domain {self.trust_domain.name!r}"
            )
        if bool(self.chain) != (self.key is not None):
            raise ValueError("a certificate chain and its key go together")

    @classmethod
    def from_svid(
        cls, svid: X509Svid, bundles: X509BundleSet, trust_domain: str | TrustDomain
    ) -> TlsCredentials:
        """Present ``svid``; trust the bundle of ``trust_domain`` (the SVID's own, checked)."""
        td = parse_trust_domain(trust_domain)
        bundle = bundles.get_bundle_for_trust_domain(td)
        if bundle is None:
            raise WrongTrustDomainError(f"no X.509 bundle for trust domain {td.name!r}")
        authorities = tuple(_sorted(bundle.x509_authorities))
        verify_x509_svid(svid, bundles, trust_domain=td)
        key = svid.private_key
        if not isinstance(key, _TLS_KEYS):
            raise UntrustedSvidError(
                f"an X.509-SVID key of type {type(key).__name__} cannot do TLS"
            )
        return cls(td, authorities, tuple(svid.cert_chain), key)

    @classmethod
    def from_context(cls, ctx: X509Context, trust_domain: str | TrustDomain) -> TlsCredentials:
        """The default SVID of a Workload API X.509 context."""
        return cls.from_svid(ctx.default_svid, ctx.x509_bundle_set, trust_domain)

    @classmethod
    def trust_only(
        cls, authorities: Sequence[x509.Certificate], trust_domain: str | TrustDomain
    ) -> TlsCredentials:
        """Present nothing; trust ``authorities`` (a client verifying the controller only)."""
        return cls(parse_trust_domain(trust_domain), tuple(_sorted(authorities)))

    @property
    def leaf_sha256(self) -> bytes | None:
        """SHA-256 of the presented certificate's DER (what the controller's
        ``Principal.credential_sha256`` is under mutual TLS); None when nothing is presented."""
        if not self.chain:
            return None
        return hashlib.sha256(self.chain[0].public_bytes(serialization.Encoding.DER)).digest()

    @property
    def spiffe_id(self) -> SpiffeId | None:
        """The SPIFFE ID presented (None without a chain)."""
        if not self.chain:
            return None
        return verify_x509_svid(list(self.chain), self.bundle_set)

    @property
    def bundle_set(self) -> X509BundleSet:
        """The authorities as a py-spiffe bundle set (for :func:`verify_x509_svid`)."""
        return X509BundleSet.of([X509Bundle(self.trust_domain, set(self.authorities))])

    @property
    def not_after(self) -> float | None:
        """When the presented chain stops being valid (None without a chain)."""
        if not self.chain:
            return None
        return min(c.not_valid_after_utc for c in self.chain).timestamp()

    @property
    def serial(self) -> int | None:
        """The serial number of the presented leaf (None without a chain)."""
        return self.chain[0].serial_number if self.chain else None


def _sorted(certs: Sequence[x509.Certificate] | set[x509.Certificate]) -> list[x509.Certificate]:
    return sorted(certs, key=lambda c: (c.not_valid_before_utc, c.serial_number))


def load_bundle_pem(path: Path) -> list[x509.Certificate]:
    """The certificates of a PEM bundle file; :class:`IdentityError` if none or unreadable."""
    try:
        data = path.read_bytes()
    except OSError as err:
        raise IdentityError(f"cannot read trust bundle {path}: {err.strerror}") from None
    try:
        certs = x509.load_pem_x509_certificates(data)
    except ValueError:
        raise IdentityError(f"trust bundle {path} holds no PEM certificate") from None
    return certs


class CredentialSource(Protocol):
    """Hands out the current credentials and their generation (grows at each rotation)."""

    def current(self) -> tuple[int, TlsCredentials]:
        """``(generation, credentials)``; raises IdentityError if there are none (yet)."""
        ...


class StaticCredentials:
    """Credentials that never rotate (tests; a client with a trust bundle file)."""

    def __init__(self, credentials: TlsCredentials) -> None:
        self._credentials = credentials
        self._generation = 1
        self._lock = threading.Lock()

    def current(self) -> tuple[int, TlsCredentials]:
        with self._lock:
            return self._generation, self._credentials

    def replace(self, credentials: TlsCredentials) -> None:
        """Swap in new credentials (a new generation)."""
        with self._lock:
            self._credentials = credentials
            self._generation += 1


class WorkloadCredentials:
    """Credentials following a Workload API source's rotations (see the module docstring).

    ``source`` is a :class:`~x0tta6bl4.identity.workload_source.WorkloadSource` (or anything
    with ``start()``, ``stop()``, ``current`` and ``on_rotate``); :meth:`start` fetches the
    first SVID (raising what went wrong) and subscribes to rotations.
    """

    def __init__(self, source: _Source, trust_domain: str | TrustDomain) -> None:
        self._source = source
        self._trust_domain = parse_trust_domain(trust_domain)
        self._lock = threading.Lock()
        self._generation = 0
        self._credentials: TlsCredentials | None = None
        self._unsubscribe: Callable[[], None] | None = None
        self._listeners: list[Callable[[TlsCredentials], None]] = []

    def start(self) -> TlsCredentials:
        """Fetch the first SVID and follow rotations; returns the first credentials."""
        ctx = self._source.start()
        self._unsubscribe = self._source.on_rotate(lambda update: self._update(update.current))
        self._update(ctx)
        _, credentials = self.current()
        return credentials

    def stop(self) -> None:
        """Stop following rotations (the last credentials stay available)."""
        if self._unsubscribe is not None:
            self._unsubscribe()
            self._unsubscribe = None
        self._source.stop()

    def on_change(self, listener: Callable[[TlsCredentials], None]) -> None:
        """Call ``listener(credentials)`` after every rotation (on the source's thread)."""
        self._listeners.append(listener)

    def _update(self, ctx: X509Context) -> None:
        credentials = TlsCredentials.from_context(ctx, self._trust_domain)
        with self._lock:
            old = self._credentials
            if (
                old is not None
                and old.chain == credentials.chain
                and old.authorities == credentials.authorities
            ):
                return
            self._credentials = credentials
            self._generation += 1
            listeners = list(self._listeners)
        for listener in listeners:
            listener(credentials)

    def current(self) -> tuple[int, TlsCredentials]:
        with self._lock:
            if self._credentials is None:
                raise IdentityError("no X.509-SVID from the Workload API yet")
            return self._generation, self._credentials


class _Source(Protocol):
    def start(self) -> X509Context: ...

    def stop(self) -> None: ...

    def on_rotate(self, listener: Callable[[_Update], None]) -> Callable[[], None]: ...


class _Update(Protocol):
    @property
    def current(self) -> X509Context: ...
