"""Loading the mesh CA (ML-DSA-65) the controller signs PQ SVIDs with.

Sources, in order:

1. ``--ca-cert-file`` + ``--ca-key-file`` (in Kubernetes the Secret ``x0tta6bl4-mesh-ca``,
   keys ``ca.crt`` and ``ca.key``, produced by ``x0tta6bl4 controller ca init``);
2. ``--local-ca``: ``<state-dir>/ca/ca.crt`` and ``ca.key``, created on the first start (local
   mode only: every replica would create its own CA, so HA deployments use 1.).

Without either the controller refuses to start: a CA key is never generated implicitly.

**Rotation** publishes the old and the new CA together. The certificate file may hold several
PEM certificates: the one whose public key matches the key file signs new SVIDs; all of them
that are still valid form the trust bundle handed to nodes, so SVIDs issued by the previous
CA keep verifying until they expire. ``x0tta6bl4 controller ca rotate`` writes such a pair.
:class:`CaHolder` re-reads the files when they change (a Secret update), so a rotation needs
no restart.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from x0tta6bl4.crypto.errors import CryptoError
from x0tta6bl4.crypto.pqsvid import MeshCA, TrustBundle
from x0tta6bl4.crypto.suite import SigningKey
from x0tta6bl4.identity.errors import IdentityError

__all__ = [
    "CA_CERT_NAME",
    "CA_KEY_NAME",
    "CaConfigError",
    "CaHolder",
    "LoadedCa",
    "init_ca_dir",
    "load_ca_files",
    "rotate_ca_dir",
]

CA_CERT_NAME = "ca.crt"
CA_KEY_NAME = "ca.key"


class CaConfigError(Exception):
    """The mesh CA cannot be loaded or created as configured (message says why)."""


@dataclass(frozen=True, slots=True)
class LoadedCa:
    """The signing CA and the bundle published to nodes (signing CA + older, valid CAs)."""

    signer: MeshCA
    bundle: TrustBundle

    @property
    def bundle_pem(self) -> str:
        """The trust bundle as concatenated PEM (signing CA first)."""
        return self.bundle.to_pem().decode("ascii")


def _write_private(path: Path, data: bytes, mode: int) -> None:
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    try:
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)


def load_ca_files(
    cert_file: Path, key_file: Path, *, trust_domain: str, now: float | None = None
) -> LoadedCa:
    """Load the CA from PEM files (see the module docstring for multi-certificate files).

    Raises :class:`CaConfigError` with a message that names the file but no key material.
    """
    moment = time.time() if now is None else now
    try:
        cert_pem = cert_file.read_bytes()
        key_pem = key_file.read_bytes()
    except OSError as err:
        raise CaConfigError(f"cannot read mesh CA file {err.filename}: {err.strerror}") from None
    try:
        certs = x509.load_pem_x509_certificates(cert_pem)
    except (ValueError, x509.InvalidVersion):
        raise CaConfigError(f"{cert_file} holds no PEM certificate") from None
    try:
        key = SigningKey.from_pem(key_pem)
    except (CryptoError, ValueError):
        raise CaConfigError(f"{key_file} is not an ML-DSA-65 private key (PEM)") from None
    signer: MeshCA | None = None
    for cert in certs:
        try:
            candidate = MeshCA(trust_domain, cert, key)
        except (CryptoError, IdentityError):
            continue
        signer = candidate
        break
    if signer is None:
        raise CaConfigError(
            f"no certificate in {cert_file} is an ML-DSA-65 CA of trust domain "
            f"{trust_domain!r} matching the key in {key_file}"
        )
    if not signer.cert.not_valid_before_utc.timestamp() <= moment < signer.not_after:
        raise CaConfigError(f"the mesh CA in {cert_file} is not valid now")
    published = [signer.cert] + [
        c for c in certs if c is not signer.cert and c.not_valid_after_utc.timestamp() > moment
    ]
    try:
        bundle = TrustBundle(trust_domain, published)
    except (CryptoError, IdentityError) as err:
        raise CaConfigError(f"{cert_file}: {err}") from None
    return LoadedCa(signer=signer, bundle=bundle)


def init_ca_dir(out: Path, *, trust_domain: str, now: float | None = None) -> MeshCA:
    """Create a new mesh CA in ``out`` (``ca.crt`` 0644, ``ca.key`` 0600).

    Refuses (:class:`CaConfigError`) to overwrite an existing ``ca.crt`` or ``ca.key``.
    """
    out.mkdir(parents=True, exist_ok=True)
    cert_path, key_path = out / CA_CERT_NAME, out / CA_KEY_NAME
    for path in (cert_path, key_path):
        if path.exists():
            raise CaConfigError(f"{path} already exists; refusing to overwrite a CA")
    ca = MeshCA.create(trust_domain, now=time.time() if now is None else now)
    _write_private(key_path, ca.key_pem(), 0o600)
    _write_private(cert_path, ca.cert_pem(), 0o644)
    return ca


def rotate_ca_dir(directory: Path, *, trust_domain: str, now: float | None = None) -> MeshCA:
    """Rotate the CA in ``directory``: a new key signs; ``ca.crt`` = new CA + previous CAs.

    The previous certificates stay in ``ca.crt`` (so nodes keep trusting SVIDs they signed)
    until they expire; expired ones are dropped.
    """
    moment = time.time() if now is None else now
    cert_path, key_path = directory / CA_CERT_NAME, directory / CA_KEY_NAME
    current = load_ca_files(cert_path, key_path, trust_domain=trust_domain, now=moment)
    new = MeshCA.create(trust_domain, now=moment)
    pem = new.cert_pem() + b"".join(
        c.public_bytes(serialization.Encoding.PEM) for c in current.bundle.cas
    )
    # Certificates first: a reader that sees the new certificates with the old key still
    # finds the old signer among them; then the new key makes the new CA the signer.
    _write_private(cert_path, pem, 0o644)
    _write_private(key_path, new.key_pem(), 0o600)
    return new


class CaHolder:
    """The current :class:`LoadedCa`, re-read when its files change (checked on access)."""

    def __init__(
        self,
        cert_file: Path,
        key_file: Path,
        *,
        trust_domain: str,
        check_interval: float = 5.0,
    ) -> None:
        self._cert_file = cert_file
        self._key_file = key_file
        self._trust_domain = trust_domain
        self._check_interval = check_interval
        self._loaded: LoadedCa | None = None
        self._stamp: tuple[float, float] | None = None
        self._checked = 0.0
        self.error: str | None = None
        self.pending = False
        """True while a local CA is to be created (by :meth:`create_pending`) once the store
        has been checked: a new CA is never made while the store holds nodes."""

    @property
    def cert_file(self) -> Path:
        """The CA certificate file."""
        return self._cert_file

    @property
    def key_file(self) -> Path:
        """The CA key file."""
        return self._key_file

    def create_pending(self, trust_domain: str) -> LoadedCa:
        """Create the pending local CA (see :attr:`pending`) and load it."""
        directory = self._cert_file.parent
        directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        init_ca_dir(directory, trust_domain=trust_domain)
        self.pending = False
        return self.load()

    @classmethod
    def from_settings(
        cls,
        *,
        trust_domain: str,
        state_dir: Path,
        ca_cert_file: Path | None,
        ca_key_file: Path | None,
        local_ca: bool,
        defer_create: bool = False,
    ) -> CaHolder:
        """Pick the CA source from the settings; creates the local CA if asked to (with
        ``defer_create`` only marks it :attr:`pending`, for the caller to create once it has
        checked that no node was issued by a lost CA)."""
        if ca_cert_file is not None and ca_key_file is not None:
            return cls(ca_cert_file, ca_key_file, trust_domain=trust_domain)
        if local_ca:
            directory = state_dir / "ca"
            holder = cls(
                directory / CA_CERT_NAME, directory / CA_KEY_NAME, trust_domain=trust_domain
            )
            if not (directory / CA_CERT_NAME).exists() and not (directory / CA_KEY_NAME).exists():
                if defer_create:
                    holder.pending = True
                else:
                    holder.create_pending(trust_domain)
            return holder
        raise CaConfigError(
            "no mesh CA configured: pass --ca-cert-file and --ca-key-file (the Secret "
            "x0tta6bl4-mesh-ca), or --local-ca to create one under the state directory"
        )

    def _file_stamp(self) -> tuple[float, float]:
        return (self._cert_file.stat().st_mtime, self._key_file.stat().st_mtime)

    def load(self) -> LoadedCa:
        """(Re)load now; raises :class:`CaConfigError`."""
        try:
            stamp = self._file_stamp()
        except OSError as err:
            self.error = f"cannot stat mesh CA file {err.filename}: {err.strerror}"
            raise CaConfigError(self.error) from None
        loaded = load_ca_files(self._cert_file, self._key_file, trust_domain=self._trust_domain)
        self._loaded, self._stamp, self.error = loaded, stamp, None
        return loaded

    def current(self) -> LoadedCa | None:
        """The loaded CA (reloading it if the files changed), or None if none is usable."""
        now = time.monotonic()
        if self._loaded is not None and now - self._checked < self._check_interval:
            return self._loaded
        self._checked = now
        try:
            stamp = self._file_stamp()
        except OSError:
            return self._loaded
        if self._loaded is None or stamp != self._stamp:
            try:
                return self.load()
            except CaConfigError as err:
                self.error = str(err)
        return self._loaded
