"""The cluster's certificates, made with the openssl command (ECDSA P-256, 1 year).

Like kubeadm's ``certs`` phase: one cluster CA signs the API server's serving certificate and
every client certificate (identities are CN = user, O = group, as the API server's x509
authenticator reads them); a separate front-proxy CA signs the aggregation layer's client; the
service-account token key pair is an EC key. Each file is made only if missing.
"""

from __future__ import annotations

from pathlib import Path

from clusterlib.util import run

__all__ = ["Pki"]

DAYS = "365"


class Pki:
    def __init__(self, root: Path) -> None:
        self.root = root
        root.mkdir(parents=True, exist_ok=True)

    def path(self, name: str) -> tuple[Path, Path]:
        return self.root / f"{name}.crt", self.root / f"{name}.key"

    def _key(self, key: Path) -> None:
        if not key.exists():
            key.parent.mkdir(parents=True, exist_ok=True)
            run(
                ["openssl", "ecparam", "-name", "prime256v1", "-genkey", "-noout", "-out", str(key)]
            )
            key.chmod(0o600)

    def ca(self, name: str, cn: str) -> tuple[Path, Path]:
        crt, key = self.path(name)
        if crt.exists():
            return crt, key
        self._key(key)
        run([
            "openssl", "req", "-x509", "-new", "-key", str(key), "-subj", f"/CN={cn}",
            "-days", DAYS, "-out", str(crt),
            "-addext", "basicConstraints=critical,CA:TRUE",
            "-addext", "keyUsage=critical,keyCertSign,cRLSign,digitalSignature",
        ])  # fmt: skip
        return crt, key

    def cert(
        self,
        name: str,
        ca: str,
        cn: str,
        *,
        orgs: tuple[str, ...] = (),
        server: bool = False,
        client: bool = True,
        ips: tuple[str, ...] = (),
        dns: tuple[str, ...] = (),
    ) -> tuple[Path, Path]:
        crt, key = self.path(name)
        if crt.exists():
            return crt, key
        self._key(key)
        subj = "".join(f"/O={o}" for o in orgs) + f"/CN={cn}"
        usages = [u for u, on in (("serverAuth", server), ("clientAuth", client)) if on]
        exts = [
            "-addext", "basicConstraints=critical,CA:FALSE",
            "-addext", "keyUsage=critical,digitalSignature,keyEncipherment",
            "-addext", "extendedKeyUsage=" + ",".join(usages),
        ]  # fmt: skip
        sans = [f"IP:{i}" for i in ips] + [f"DNS:{d}" for d in dns]
        if sans:
            exts += ["-addext", "subjectAltName=" + ",".join(sans)]
        csr = self.root / f"{name}.csr"
        run(["openssl", "req", "-new", "-key", str(key), "-subj", subj, "-out", str(csr), *exts])
        ca_crt, ca_key = self.path(ca)
        run([
            "openssl", "x509", "-req", "-in", str(csr), "-CA", str(ca_crt), "-CAkey", str(ca_key),
            "-CAcreateserial", "-days", DAYS, "-copy_extensions", "copyall", "-out", str(crt),
        ])  # fmt: skip
        csr.unlink()
        return crt, key

    def service_account_key(self) -> tuple[Path, Path]:
        key = self.root / "sa.key"
        pub = self.root / "sa.pub"
        self._key(key)
        if not pub.exists():
            run(["openssl", "ec", "-in", str(key), "-pubout", "-out", str(pub)])
        return pub, key
