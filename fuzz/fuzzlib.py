"""Shared plumbing of the fuzz harnesses under ``fuzz/`` (atheris, coverage-guided).

Every harness is a standalone script, ``python fuzz/<name>.py [libFuzzer flags] [corpus dirs]``,
that imports the code under test inside :func:`instrumented` (so only x0tta6bl4's own modules
carry coverage instrumentation) and hands its ``test_one_input`` to :func:`run`.

The contract each harness checks: a parser given arbitrary bytes returns a value or raises the
project's own documented error. Harnesses catch exactly those errors; anything else escapes
``test_one_input`` and atheris reports it as a crash with the input that caused it.

This module imports nothing from x0tta6bl4 at import time (modules imported before
:func:`instrumented` would stay uninstrumented); the fixture helpers import lazily.
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import os
import shutil
import sys
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import atheris

__all__ = [
    "FIXTURES",
    "NOW",
    "SEP",
    "TRUST_DOMAIN",
    "ca_cert_pem",
    "handshake_config",
    "instrumented",
    "jwt_authority",
    "mesh_ca",
    "node_cert_der",
    "run",
    "scratch",
    "signing_key",
    "split",
]

#: Separates the datagrams (or messages) of one input in sequence harnesses.
SEP = b"\xff|FZ|\xff"
#: Certificates the corpora were generated with (``fuzz/make_corpus.py`` writes them).
FIXTURES = Path(__file__).resolve().parent / "fixtures"
#: The fixed wall-clock instant the fixture certificates are valid at.
NOW = 1_800_000_000.0
TRUST_DOMAIN = "x0tta6bl4.mesh"


@contextlib.contextmanager
def instrumented() -> Iterator[None]:
    """Import the code under test inside this block: x0tta6bl4's modules get coverage."""
    with atheris.instrument_imports(include=["x0tta6bl4"]):
        yield


def run(test_one_input: Callable[[bytes], None]) -> None:
    """Hand ``test_one_input`` to libFuzzer with this process's command line."""
    atheris.Setup(sys.argv, test_one_input)
    atheris.Fuzz()


def split(data: bytes, limit: int = 64) -> list[bytes]:
    """The parts of a sequence input (at most ``limit``; the rest is ignored)."""
    return data.split(SEP, limit)[:limit]


def scratch(what: str) -> Path:
    """A new temporary directory for this process (``$TMPDIR/x0-fuzz-<pid>-<what>-…``).

    libFuzzer ends the process without running ``atexit`` handlers, so a harness cannot clean
    up after itself; instead, directories left by harness processes that are gone are removed
    here. ``make fuzz`` and the tests run harnesses in a private ``TMPDIR`` they remove.
    """
    base = Path(tempfile.gettempdir())
    for old in base.glob("x0-fuzz-*-*"):
        pid = old.name.split("-")[2]
        if pid.isdigit() and not Path(f"/proc/{pid}").exists():
            shutil.rmtree(old, ignore_errors=True)
    return Path(tempfile.mkdtemp(prefix=f"x0-fuzz-{os.getpid()}-{what}-"))


def signing_key(label: str) -> Any:
    """A deterministic ML-DSA-65 key per ``label`` (the corpora were made with the same)."""
    from cryptography.hazmat.primitives.asymmetric import mldsa

    from x0tta6bl4.crypto.suite import SigningKey

    seed = hashlib.sha256(b"x0tta6bl4-fuzz/" + label.encode()).digest()
    return SigningKey(mldsa.MLDSA65PrivateKey.from_seed_bytes(seed))


def ca_cert_pem() -> bytes:
    """The fixture mesh CA certificate (its key is ``signing_key("ca")``)."""
    return (FIXTURES / "ca.pem").read_bytes()


def mesh_ca() -> Any:
    """The fixture :class:`~x0tta6bl4.crypto.pqsvid.MeshCA` (certificate and key)."""
    from x0tta6bl4.crypto.pqsvid import MeshCA

    return MeshCA.load(ca_cert_pem(), signing_key("ca").to_pem())


def node_cert_der(name: str) -> bytes:
    """The fixture PQ SVID of node ``name`` (its key is ``signing_key("node/<name>")``)."""
    return (FIXTURES / f"{name}.der").read_bytes()


def jwt_authority() -> Any:
    """The embedded issuer's :class:`~x0tta6bl4.identity.issuer.authority.Authority` with a
    deterministic JWT signing key (EC P-256), so corpus tokens verify."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    from x0tta6bl4.identity.issuer.authority import Authority
    from x0tta6bl4.identity.spiffe_ids import parse_trust_domain

    secret = int.from_bytes(hashlib.sha256(b"x0tta6bl4-fuzz/jwt").digest(), "big")
    key = ec.derive_private_key(secret % (2**255), ec.SECP256R1())
    state = scratch("issuer")
    identity = state / "identity"
    identity.mkdir(mode=0o700)
    pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    (identity / "jwt.key.pem").write_bytes(pem)
    (identity / "jwt.key.pem").chmod(0o600)
    return Authority.load_or_create(state, parse_trust_domain(TRUST_DOMAIN))


def handshake_config(name: str, *, memo: int = 0) -> Any:
    """A :class:`~x0tta6bl4.protocol.handshake.HandshakeConfig` for fixture node ``name``
    that trusts the fixture CA at :data:`NOW` and authorizes every verified peer.

    ``memo``: remember the verdicts of ``verify_svid`` for that many certificates (it is
    deterministic; a fuzzer sends the same certificate again and again, and each check costs
    an ML-DSA verification).
    """
    from x0tta6bl4.crypto.errors import CryptoError
    from x0tta6bl4.crypto.pqsvid import TrustBundle, verify_svid
    from x0tta6bl4.protocol.handshake import Credential, HandshakeConfig

    bundle = TrustBundle.from_pem(TRUST_DOMAIN, ca_cert_pem())
    verdicts: dict[bytes, Any] = {}

    def verify_peer(der: bytes) -> Any:
        verdict = verdicts.get(der)
        if verdict is None:
            try:
                verdict = verify_svid(der, bundle, NOW)
            except CryptoError as exc:
                verdict = exc
            if len(verdicts) >= memo:
                verdicts.clear()
            if memo:
                verdicts[der] = verdict
        if isinstance(verdict, CryptoError):
            raise copy.copy(verdict)  # a fresh exception: no traceback piling up
        return verdict

    return HandshakeConfig(
        credential=Credential(
            cert_der=node_cert_der(name), signing_key=signing_key(f"node/{name}")
        ),
        verify_peer=verify_peer,
        authorize=lambda _peer: True,
    )
