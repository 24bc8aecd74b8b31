"""TLS between controllers and etcd, and between etcd members: files, credentials, PKI.

The controllers' store holds the membership and every key binding; whoever can write it can
add a node. So etcd speaks TLS and requires a client certificate on its client port (the
controllers) and on its peer port (the other members), all signed by one etcd CA that signs
nothing else:

- :class:`EtcdTlsFiles` — the CA bundle, certificate and key a controller presents
  (``--etcd-ca-file``, ``--etcd-cert-file``, ``--etcd-key-file`` with an ``etcds://`` store
  URL); :meth:`EtcdTlsFiles.channel_credentials` reads them (again at every reconnect, so a
  rotated Secret is picked up) into gRPC channel credentials. gRPC checks the member's
  certificate against the host name of the endpoint.
- :func:`write_etcd_pki` — a fresh etcd CA (EC P-256), a certificate for the members (serving
  client and peer traffic, names given), and a client certificate for the controllers; what
  ``x0tta6bl4 controller etcd-certs`` (for the chart's Secrets), ``up --store etcd`` and the
  tests use.
- :func:`member_tls_args` — the etcd flags for a member serving both ports with TLS and
  client-certificate authentication.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import ipaddress
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aetcd
import aetcd.watcher
import grpc
from aetcd import rpc
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from x0tta6bl4.controller.store.errors import InvalidStoreUrlError

__all__ = [
    "CA_CERT",
    "CA_KEY",
    "CLIENT_CERT",
    "CLIENT_KEY",
    "SERVER_CERT",
    "SERVER_KEY",
    "EtcdPki",
    "EtcdTlsFiles",
    "TlsEtcdClient",
    "chart_hosts",
    "member_tls_args",
    "write_etcd_pki",
]

CA_CERT = "ca.crt"
CA_KEY = "ca.key"
SERVER_CERT = "server.crt"
SERVER_KEY = "server.key"
CLIENT_CERT = "client.crt"
CLIENT_KEY = "client.key"


@dataclass(frozen=True)
class EtcdTlsFiles:
    """The files a controller needs to reach etcd over TLS with a client certificate."""

    ca_file: Path
    cert_file: Path
    key_file: Path

    def check(self) -> None:
        """Raise :class:`InvalidStoreUrlError` naming a file that cannot be read or parsed."""
        self._read()

    def _read(self) -> tuple[bytes, bytes, bytes]:
        parts: list[bytes] = []
        for what, path in (
            ("--etcd-ca-file", self.ca_file),
            ("--etcd-cert-file", self.cert_file),
            ("--etcd-key-file", self.key_file),
        ):
            try:
                data = Path(path).read_bytes()
            except OSError as err:
                raise InvalidStoreUrlError(f"{what} {path}: {err.strerror}") from None
            if b"-----BEGIN" not in data:
                raise InvalidStoreUrlError(f"{what} {path} is not PEM")
            parts.append(data)
        ca, cert, key = parts
        try:
            x509.load_pem_x509_certificates(ca)
            x509.load_pem_x509_certificates(cert)
            serialization.load_pem_private_key(key, password=None)
        except (ValueError, TypeError) as err:
            raise InvalidStoreUrlError(f"etcd TLS files: {err}") from None
        return ca, cert, key

    def channel_credentials(self) -> grpc.ChannelCredentials:
        """gRPC channel credentials: verify the member with the CA, present the client cert."""
        ca, cert, key = self._read()
        return grpc.ssl_channel_credentials(
            root_certificates=ca, private_key=key, certificate_chain=cert
        )


@dataclass(frozen=True)
class EtcdPki:
    """Where :func:`write_etcd_pki` put the files."""

    directory: Path

    @property
    def ca(self) -> Path:
        return self.directory / CA_CERT

    @property
    def server_cert(self) -> Path:
        return self.directory / SERVER_CERT

    @property
    def server_key(self) -> Path:
        return self.directory / SERVER_KEY

    @property
    def client(self) -> EtcdTlsFiles:
        """The controllers' files."""
        return EtcdTlsFiles(
            self.directory / CA_CERT, self.directory / CLIENT_CERT, self.directory / CLIENT_KEY
        )


def chart_hosts(namespace: str, replicas: int, statefulset: str = "x0tta6bl4-etcd") -> list[str]:
    """The names the chart's etcd members are reached by (client and peer URLs)."""
    names = [statefulset, f"{statefulset}.{namespace}.svc"]
    for index in range(replicas):
        member = f"{statefulset}-{index}.{statefulset}"
        names += [member, f"{member}.{namespace}.svc", f"{member}.{namespace}.svc.cluster.local"]
    return [*names, "localhost", "127.0.0.1"]


def _san(hosts: Sequence[str]) -> x509.SubjectAlternativeName:
    entries: list[x509.GeneralName] = []
    for host in hosts:
        try:
            entries.append(x509.IPAddress(ipaddress.ip_address(host)))
        except ValueError:
            entries.append(x509.DNSName(host))
    return x509.SubjectAlternativeName(entries)


def _write(path: Path, data: bytes, mode: int) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    with os.fdopen(fd, "wb") as out:
        out.write(data)
    os.replace(tmp, path)


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def _leaf(
    ca_key: ec.EllipticCurvePrivateKey,
    *,
    ca_cert: x509.Certificate,
    common_name: str,
    usages: list[x509.ObjectIdentifier],
    hosts: Sequence[str],
    now: dt.datetime,
    days: int,
) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    key = ec.generate_private_key(ec.SECP256R1())
    builder = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)]))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=True,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=False,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.ExtendedKeyUsage(usages), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
            critical=False,
        )
    )
    if hosts:
        builder = builder.add_extension(_san(hosts), critical=False)
    return key, builder.sign(ca_key, hashes.SHA256())


def write_etcd_pki(directory: Path, hosts: Sequence[str], *, days: int = 730) -> EtcdPki:
    """Write a new etcd CA, a member certificate for ``hosts`` and a controller client
    certificate into ``directory`` (keys 0600, never overwritten: an existing ``ca.crt``
    raises FileExistsError)."""
    directory.mkdir(parents=True, exist_ok=True)
    if (directory / CA_CERT).exists():
        raise FileExistsError(f"{directory / CA_CERT} exists; refusing to overwrite etcd PKI")
    now = dt.datetime.now(dt.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "x0tta6bl4 etcd CA")])
    ca_cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=days + 365))
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
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), False)
        .sign(ca_key, hashes.SHA256())
    )
    server_key, server_cert = _leaf(
        ca_key,
        ca_cert=ca_cert,
        common_name="x0tta6bl4-etcd",
        usages=[ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH],
        hosts=hosts,
        now=now,
        days=days,
    )
    client_key, client_cert = _leaf(
        ca_key,
        ca_cert=ca_cert,
        common_name="x0tta6bl4-controller",
        usages=[ExtendedKeyUsageOID.CLIENT_AUTH],
        hosts=(),
        now=now,
        days=days,
    )
    pem = serialization.Encoding.PEM
    _write(directory / CA_KEY, _key_pem(ca_key), 0o600)
    _write(directory / SERVER_KEY, _key_pem(server_key), 0o600)
    _write(directory / CLIENT_KEY, _key_pem(client_key), 0o600)
    _write(directory / SERVER_CERT, server_cert.public_bytes(pem), 0o644)
    _write(directory / CLIENT_CERT, client_cert.public_bytes(pem), 0o644)
    _write(directory / CA_CERT, ca_cert.public_bytes(pem), 0o644)
    return EtcdPki(directory)


def member_tls_args(ca: Path, cert: Path, key: Path) -> list[str]:
    """etcd flags: TLS with client-certificate authentication on the client and peer ports."""
    return [
        f"--cert-file={cert}",
        f"--key-file={key}",
        f"--trusted-ca-file={ca}",
        "--client-cert-auth",
        f"--peer-cert-file={cert}",
        f"--peer-key-file={key}",
        f"--peer-trusted-ca-file={ca}",
        "--peer-client-cert-auth",
    ]


class TlsEtcdClient(aetcd.Client):  # type: ignore[misc]  # aetcd is untyped
    """``aetcd.Client`` over a TLS channel (aetcd itself only opens insecure channels).

    ``credentials`` is called at every (re)connect, so rotated certificate files are used by
    the next connection. Same attributes as aetcd's own ``connect`` sets up.
    """

    _is_connecting: bool

    def __init__(self, *args: Any, credentials: Callable[[], grpc.ChannelCredentials], **kw: Any):
        super().__init__(*args, **kw)
        self._x0_credentials = credentials

    async def connect(self) -> None:
        if self._connected.is_set():
            return
        if self._is_connecting:
            await asyncio.wait_for(self._connected.wait(), self._connect_wait_timeout)
            return
        try:
            self._is_connecting = True
            target = f"{self._host}:{self._port}"
            self.channel = rpc.secure_channel(
                target, self._x0_credentials(), options=self._options.items()
            )
            self.kvstub = rpc.KVStub(self.channel)
            self.clusterstub = rpc.ClusterStub(self.channel)
            self.leasestub = rpc.LeaseStub(self.channel)
            self.maintenancestub = rpc.MaintenanceStub(self.channel)
            self._watcher = aetcd.watcher.Watcher(
                rpc.WatchStub(self.channel), timeout=self._timeout, metadata=self.metadata
            )
            self._connected.set()
        finally:
            self._is_connecting = False
