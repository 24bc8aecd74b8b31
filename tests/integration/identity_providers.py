"""The two identity providers the SPIFFE integration suite runs against, behind one interface.

- ``embedded``: :class:`~x0tta6bl4.identity.issuer.EmbeddedIssuer` in this process. Its
  entries select by uid only, so every process of this uid is every workload at once: all
  workloads share one SPIFFE ID (``shared_id``), as ``up --identity embedded`` does.
- ``spire``: a real ``spire-server`` and ``spire-agent`` (:class:`~x0tta6bl4.local.spire.
  LocalSpire`, the code ``up --identity spire`` runs) with one registration entry per
  workload, selected by ``unix:uid`` + ``unix:gid``: each workload has its own SPIFFE ID and
  group id, and a process runs as it by starting with that gid (:func:`spawn_kwargs`). The
  test process itself (uid 0, its own gid) is the workload ``"self"``.

Tests name workloads (``"self"``, ``"controller"``, ``"n1"`` …) and ask the provider for each
one's :class:`Workload`; whether names share an identity is the provider's business.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from spiffe import SpiffeId, TrustDomain
from spiffe.bundle.jwt_bundle.jwt_bundle import JwtBundle

from x0tta6bl4.identity import Backoff, IdentityError, WorkloadSource
from x0tta6bl4.identity.issuer import EmbeddedIssuer, Entry, IssuerConfig
from x0tta6bl4.identity.spire import find_spire
from x0tta6bl4.local.ports import PortAllocator
from x0tta6bl4.local.spire import LocalSpire, SpireSettings
from x0tta6bl4.local.supervisor import Supervisor
from x0tta6bl4.local.workloads import LocalWorkload

__all__ = [
    "PROVIDERS",
    "EmbeddedProvider",
    "Provider",
    "ProviderFactory",
    "SpireProvider",
    "Workload",
    "provider_factory",
    "require_spire_here",
    "spawn_kwargs",
]

PROVIDERS = ("embedded", "spire")
TD = "x0tta6bl4.mesh"
#: Group ids of the test workloads under SPIRE (unallocated, below up's own range).
_TEST_GID_BASE = 1_800_000_000


@dataclass(frozen=True)
class Workload:
    """Who a process is: its SPIFFE ID, and the group id it must run with (None: any
    process of this uid, the embedded issuer's attestation)."""

    spiffe_id: SpiffeId
    gid: int | None


def spawn_kwargs(workload: Workload) -> dict[str, Any]:
    """``subprocess.Popen`` keyword arguments that make a child this workload."""
    if workload.gid is None:
        return {}
    return {"group": workload.gid, "extra_groups": []}


def require_spire_here() -> None:
    """Skip (or, under ``make test``, fail) when SPIRE cannot run here."""
    if os.geteuid() != 0:
        pytest.skip("SPIRE's workloads are told apart by group id: starting them needs root")
    if find_spire() is None:
        message = "SPIRE binaries not built: run scripts/components/build spire"
        if os.environ.get("X0_REQUIRE_SPIRE") == "1":
            pytest.fail(message + " (X0_REQUIRE_SPIRE=1: make test builds them first)")
        pytest.skip(message)


class Provider:
    """What the suite needs from an identity provider."""

    name: str
    per_workload: bool  # True: each workload its own SPIFFE ID

    def __init__(self, workdir: Path, trust_domain: str) -> None:
        self.workdir = workdir
        self.trust_domain = trust_domain
        self.workloads: dict[str, Workload] = {}

    @property
    def socket_path(self) -> Path:
        raise NotImplementedError

    @property
    def endpoint(self) -> str:
        return f"unix://{self.socket_path}"

    def __getitem__(self, name: str) -> Workload:
        return self.workloads[name]

    def x509_authorities(self) -> set[bytes]:
        """DER of the X.509 authorities, from the provider itself (not the Workload API)."""
        raise NotImplementedError

    def jwt_key_ids(self) -> set[str]:
        """Key IDs of the JWT authorities, from the provider itself."""
        raise NotImplementedError

    def stop_agent(self) -> None:
        raise NotImplementedError

    def start_agent(self) -> None:
        raise NotImplementedError

    def close(self) -> None:
        raise NotImplementedError


class EmbeddedProvider(Provider):
    name = "embedded"
    per_workload = False

    def __init__(
        self,
        workdir: Path,
        names: Mapping[str, SpiffeId],
        *,
        trust_domain: str = TD,
        svid_ttl: float = 3600.0,
        shared_id: SpiffeId | None = None,
    ) -> None:
        super().__init__(workdir, trust_domain)
        # One uid, so one identity for every workload (the first one named, or shared_id).
        shared = shared_id or next(iter(names.values()))
        self.workloads = {name: Workload(shared, None) for name in names}
        self.issuer = EmbeddedIssuer(
            IssuerConfig(
                socket_path=workdir / "embedded.sock",
                state_dir=workdir / "embedded-state",
                trust_domain=TrustDomain(trust_domain),
                entries=[Entry(os.geteuid(), shared)],
                svid_ttl=svid_ttl,
            )
        )
        self.issuer.start()

    @property
    def socket_path(self) -> Path:
        return self.issuer.socket_path

    def x509_authorities(self) -> set[bytes]:
        from cryptography.hazmat.primitives.serialization import Encoding

        return {c.public_bytes(Encoding.DER) for c in self.issuer.x509_bundle().x509_authorities}

    def jwt_key_ids(self) -> set[str]:
        bundle: JwtBundle = self.issuer.jwt_bundle()
        return set(bundle.jwt_authorities)

    def stop_agent(self) -> None:
        self.issuer.stop()

    def start_agent(self) -> None:
        self.issuer.start()

    def close(self) -> None:
        self.issuer.stop()


class SpireProvider(Provider):
    name = "spire"
    per_workload = True

    def __init__(
        self,
        workdir: Path,
        names: Mapping[str, SpiffeId],
        *,
        trust_domain: str = TD,
        svid_ttl: float = 3600.0,
        jwt_ttl: float | None = None,
        shared_id: SpiffeId | None = None,
    ) -> None:
        super().__init__(workdir, trust_domain)
        binaries = find_spire()
        assert binaries is not None
        # Sockets need a short path (107 bytes): a fresh directory under /tmp.
        self.runtime = Path(tempfile.mkdtemp(prefix="x0sp-", dir="/tmp"))
        self.runtime.chmod(0o755)
        self.supervisor = Supervisor()
        self.spire = LocalSpire(
            binaries,
            trust_domain=trust_domain,
            base=workdir / "spire",
            runtime=self.runtime,
            logs=workdir / "logs",
            ports=PortAllocator("127.0.0.1"),
            settings=SpireSettings(
                x509_svid_ttl=svid_ttl,
                jwt_svid_ttl=jwt_ttl if jwt_ttl is not None else min(svid_ttl, 300.0),
                sync_interval=1.0,
                cache_reload_interval=1.0,
            ),
        )
        local: dict[str, LocalWorkload] = {}
        for index, (name, sid) in enumerate(names.items()):
            gid = os.getegid() if name == "self" else _TEST_GID_BASE + index
            local[name] = LocalWorkload(name, str(sid), os.geteuid(), gid)
            self.workloads[name] = Workload(sid, gid)
        self.local = local
        try:
            self.spire.start(self.supervisor, local.values(), timeout=90)
            if "self" in names:
                self._wait_served(names["self"])
        except BaseException:
            self.close()
            raise

    def _wait_served(self, spiffe_id: SpiffeId, timeout: float = 60.0) -> None:
        """Until the agent serves this process its SVID: its /ready says the agent is up, not
        that its first sync with the server brought our entry."""
        once = Backoff(initial=0.1, max_delay=0.5, attempts=1)
        source = WorkloadSource(self.socket_path, trust_domain=self.trust_domain, backoff=once)
        deadline = time.monotonic() + timeout
        while True:
            try:
                if source.fetch_x509_svid().spiffe_id == spiffe_id:
                    return
            except IdentityError:
                pass
            assert time.monotonic() < deadline, f"SPIRE never served {spiffe_id}"
            time.sleep(0.1)

    @property
    def socket_path(self) -> Path:
        return self.spire.agent_socket

    @property
    def admin(self) -> Any:
        return self.spire.admin

    def x509_authorities(self) -> set[bytes]:
        pem = self.spire.admin.bundle_pem().encode()
        from cryptography.hazmat.primitives.serialization import Encoding

        return {c.public_bytes(Encoding.DER) for c in x509.load_pem_x509_certificates(pem)}

    def jwt_key_ids(self) -> set[str]:
        bundle = self.spire.admin.bundle()
        return {str(k["key_id"]) for k in bundle.get("jwt_authorities", [])}

    def delete_entry(self, name: str) -> None:
        """Delete ``name``'s registration entry in SPIRE."""
        self.spire.admin.delete_entries([self.spire.entry_ids[name]])

    def stop_agent(self) -> None:
        self.supervisor.stop(["spire-agent"], timeout=10)

    def start_agent(self) -> None:
        agent = self.supervisor.restart("spire-agent")
        deadline = time.monotonic() + 60
        while not self.spire.agent_ready():
            assert agent.running, agent.log_tail()
            assert time.monotonic() < deadline, "spire-agent did not come back"
            time.sleep(0.1)

    def log(self, name: str) -> str:
        return (self.workdir / "logs" / f"{name}.log").read_text(errors="replace")

    def close(self) -> None:
        survivors = self.supervisor.stop_all(["spire-agent", "spire-server"], timeout=10)
        shutil.rmtree(self.runtime, ignore_errors=True)
        assert survivors == [], f"SPIRE processes survived: {survivors}"


class ProviderFactory:
    """``factory(names, **options) -> Provider`` for one ``kind``; closes what it made."""

    def __init__(self, kind: str, workdir: Path) -> None:
        self.kind = kind
        self.workdir = workdir
        self.made: list[Provider] = []

    def __call__(self, names: Mapping[str, SpiffeId], **options: Any) -> Provider:
        cls: type[EmbeddedProvider] | type[SpireProvider] = (
            SpireProvider if self.kind == "spire" else EmbeddedProvider
        )
        provider = cls(self.workdir / f"{self.kind}-{len(self.made)}", names, **options)
        self.made.append(provider)
        return provider

    def close(self) -> None:
        for provider in self.made:
            provider.close()


def provider_factory(kind: str, workdir: Path) -> Iterator[ProviderFactory]:
    """Yields a :class:`ProviderFactory` (a fixture body) and closes what it made."""
    if kind == "spire":
        require_spire_here()
    factory = ProviderFactory(kind, workdir)
    try:
        yield factory
    finally:
        factory.close()
