"""SPIFFE/SPIRE identity over real Unix sockets: the embedded issuer and the Workload API source.

Every test runs a real :class:`EmbeddedIssuer` (gRPC over a Unix socket behind the
SO_PEERCRED relay) and talks to it with py-spiffe's stock ``WorkloadApiClient``, raw gRPC
stubs or our :class:`WorkloadSource`. Rotation waits poll with a generous deadline.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import datetime as dt
import itertools
import os
import shutil
import signal
import socket
import subprocess
import sys
import sysconfig
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, Protocol

import grpc
import httpx
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from spiffe import SpiffeId, TrustDomain, WorkloadApiClient, X509BundleSet
from spiffe._proto import workload_pb2, workload_pb2_grpc
from spiffe.workloadapi.errors import FetchX509SvidError, ValidateJwtSvidError

from tests.integration.controller_support import (
    bearer,
    free_port,
    register_body,
    spawn_controller,
    spawn_node,
    wait_ready,
)
from tests.integration.identity_providers import (
    PROVIDERS,
    Provider,
    ProviderFactory,
    SpireProvider,
    Workload,
    provider_factory,
    spawn_kwargs,
)
from x0tta6bl4.crypto.pqsvid import TrustBundle, verify_svid
from x0tta6bl4.crypto.suite import SigningKey
from x0tta6bl4.identity import (
    Backoff,
    IdentityError,
    InvalidEntryError,
    InvalidJwtSvidError,
    IssuerError,
    IssuerStateError,
    JwtAudienceError,
    NoIdentityError,
    SocketNotFoundError,
    SocketPermissionError,
    SocketRefusedError,
    SvidExpiredError,
    SvidUpdate,
    UntrustedSvidError,
    WorkloadSource,
    WrongTrustDomainError,
    check_x509_svid_validity,
    validate_jwt_svid,
    verify_x509_svid,
    workload_id,
)
from x0tta6bl4.identity.issuer import EmbeddedIssuer, Entry, IssuerConfig, parse_entry
from x0tta6bl4.identity.node_ids import CONTROLLER_ROLE, node_spiffe_id, role_spiffe_id
from x0tta6bl4.tls.client import PEER_INFO, tls_client
from x0tta6bl4.tls.credentials import StaticCredentials, TlsCredentials

ROOT = Path(__file__).resolve().parents[2]
TD = "x0tta6bl4.mesh"
APP_ID = workload_id(TD, "x0tta6bl4", "x0tta6bl4-app")
NODE_ID = workload_id(TD, "x0tta6bl4", "x0tta6bl4-node")
NOBODY = 65534
HEADER = (("workload.spiffe.io", "true"),)
FAST = Backoff(initial=0.05, factor=2.0, max_delay=0.3, attempts=1)
DEADLINE = 30.0

IssuerFactory = Callable[..., EmbeddedIssuer]


def wait_until(predicate: Callable[[], bool], what: str, deadline: float = DEADLINE) -> None:
    """Poll ``predicate`` until it holds; fail (naming ``what``) after a generous deadline."""
    end = time.monotonic() + deadline
    while not predicate():
        if time.monotonic() > end:
            pytest.fail(f"timed out waiting for {what}")
        time.sleep(0.02)


@pytest.fixture
def workdir() -> Iterator[Path]:
    """A directory under /tmp that other uids may traverse (for the cross-uid tests)."""
    path = Path(tempfile.mkdtemp(prefix="x0-id-", dir="/tmp"))
    path.chmod(0o755)
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def make_issuer(workdir: Path) -> Iterator[IssuerFactory]:
    started: list[EmbeddedIssuer] = []

    def factory(
        *,
        entries: list[Entry] | None = None,
        trust_domain: str = TD,
        svid_ttl: float = 3600.0,
        name: str = "api",
        state: str = "state",
        start: bool = True,
    ) -> EmbeddedIssuer:
        config = IssuerConfig(
            socket_path=workdir / f"{name}.sock",
            state_dir=workdir / state,
            trust_domain=TrustDomain(trust_domain),
            entries=[Entry(os.geteuid(), APP_ID)] if entries is None else entries,
            svid_ttl=svid_ttl,
        )
        issuer = EmbeddedIssuer(config)
        started.append(issuer)
        if start:
            issuer.start()
        return issuer

    yield factory
    for issuer in started:
        issuer.stop()


@pytest.fixture
def issuer(make_issuer: IssuerFactory) -> EmbeddedIssuer:
    return make_issuer()


@pytest.fixture(params=PROVIDERS)
def make_provider(request: pytest.FixtureRequest, workdir: Path) -> Iterator[ProviderFactory]:
    """Each test using it runs twice: against the embedded issuer and against real SPIRE."""
    yield from provider_factory(request.param, workdir)


@pytest.fixture
def make_spire(workdir: Path) -> Iterator[ProviderFactory]:
    """Real SPIRE only (what the embedded issuer does not have: entries deleted at run time,
    CA rotation, per-process selectors)."""
    yield from provider_factory("spire", workdir)


def stock_client(issuer: EmbeddedIssuer) -> WorkloadApiClient:
    return WorkloadApiClient(issuer.endpoint, default_timeout=10)


def raw_stub(path: Path) -> tuple[grpc.Channel, workload_pb2_grpc.SpiffeWorkloadAPIStub]:
    channel = grpc.insecure_channel(f"unix:{path}")
    return channel, workload_pb2_grpc.SpiffeWorkloadAPIStub(channel)


def unprivileged_python() -> str:
    """A Python interpreter uid 65534 may execute, with this venv's packages importable."""
    version = f"python{sys.version_info.major}.{sys.version_info.minor}"
    for candidate in (sys.executable, f"/usr/bin/{version}", f"/usr/local/bin/{version}"):
        real = os.path.realpath(candidate)
        try:
            probe = subprocess.run(
                [real, "-c", "import grpc, spiffe"],
                user=NOBODY,
                group=NOBODY,
                extra_groups=[],
                env=unprivileged_env(),
                capture_output=True,
                check=False,
            )
        except OSError:  # not executable by that uid (e.g. a pyenv under /root)
            continue
        if probe.returncode == 0:
            return real
    pytest.skip(f"no {version} interpreter executable by uid {NOBODY} that can import grpc")


def unprivileged_env() -> dict[str, str]:
    site = sysconfig.get_paths()["purelib"]
    return {"PATH": "/usr/bin:/bin", "HOME": "/tmp", "PYTHONPATH": f"{site}:{ROOT / 'src'}"}


def run_as_nobody(code: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    if os.geteuid() != 0:
        pytest.skip("switching to another uid needs root")
    return subprocess.run(
        [unprivileged_python(), "-c", code],
        user=NOBODY,
        group=NOBODY,
        extra_groups=[],
        env=unprivileged_env(),
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


# -- both providers: SVIDs, bundles, attestation, JWT validation, rotation -----------------


def _der(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.DER)


def test_provider_issues_x509_svids_and_its_bundle(make_provider: ProviderFactory) -> None:
    provider = make_provider({"self": APP_ID}, svid_ttl=120)
    with WorkloadApiClient(provider.endpoint, default_timeout=10) as client:
        ctx = client.fetch_x509_context()
        bundles = client.fetch_x509_bundles()
    svid = ctx.default_svid
    assert svid.spiffe_id == APP_ID
    bundle = bundles.get_bundle_for_trust_domain(TrustDomain(TD))
    assert bundle is not None
    # The bundle the Workload API serves is the provider's own (SPIRE: `bundle show`).
    assert {_der(c) for c in bundle.x509_authorities} == provider.x509_authorities()
    assert verify_x509_svid(svid, bundles) == APP_ID
    assert verify_x509_svid(svid, ctx.x509_bundle_set) == APP_ID
    # Shaped the same by both: EC P-256 key, one URI SAN, the asked lifetime (+ a cushion).
    assert isinstance(svid.private_key, ec.EllipticCurvePrivateKey)
    assert svid.private_key.curve.name == "secp256r1"
    sans = svid.leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert sans.get_values_for_type(x509.UniformResourceIdentifier) == [str(APP_ID)]
    lifetime = svid.leaf.not_valid_after_utc - svid.leaf.not_valid_before_utc
    assert dt.timedelta(seconds=120) <= lifetime <= dt.timedelta(seconds=131)
    assert svid.leaf.issuer in {
        x509.load_der_x509_certificate(der).subject for der in provider.x509_authorities()
    }


def test_provider_jwt_svids_validate_against_its_bundle(make_provider: ProviderFactory) -> None:
    provider = make_provider({"self": APP_ID})
    source = WorkloadSource(provider.socket_path, backoff=FAST)
    token = source.fetch_jwt_svid(CONTROLLER_AUDIENCE).token
    bundles = source.fetch_jwt_bundles()
    bundle = bundles.get_bundle_for_trust_domain(TrustDomain(TD))
    assert bundle is not None
    assert set(bundle.jwt_authorities) == provider.jwt_key_ids()
    assert validate_jwt_svid(token, CONTROLLER_AUDIENCE, bundles) == APP_ID
    assert source.validate_jwt_svid(token, CONTROLLER_AUDIENCE) == APP_ID
    with pytest.raises(JwtAudienceError, match=CONTROLLER_AUDIENCE) as info:
        validate_jwt_svid(source.fetch_jwt_svid("another-service").token, CONTROLLER_AUDIENCE,
                          bundles)  # fmt: skip
    assert token not in str(info.value)
    with WorkloadApiClient(provider.endpoint, default_timeout=10) as client:
        assert client.validate_jwt_svid(token, CONTROLLER_AUDIENCE).spiffe_id == APP_ID
        with pytest.raises(ValidateJwtSvidError, match="INVALID_ARGUMENT"):
            client.validate_jwt_svid(token, "someone-else")
        with pytest.raises(ValidateJwtSvidError, match="INVALID_ARGUMENT"):
            client.validate_jwt_svid(token[:-4] + "AAAA", CONTROLLER_AUDIENCE)


_DENIED_PROBE = (
    "import grpc\n"
    "from spiffe._proto import workload_pb2 as pb, workload_pb2_grpc as rpc\n"
    "ch = grpc.insecure_channel('unix:{path}')\n"
    "stub = rpc.SpiffeWorkloadAPIStub(ch)\n"
    "try:\n"
    "    next(stub.FetchX509SVID(pb.X509SVIDRequest(), timeout=10,\n"
    "        metadata=[('workload.spiffe.io', 'true')]))\n"
    "    print('ISSUED')\n"
    "except grpc.RpcError as e:\n"
    "    print(e.code().name, e.details())\n"
)


def test_provider_refuses_an_unregistered_workload(make_provider: ProviderFactory) -> None:
    provider = make_provider({"self": APP_ID})
    result = run_as_nobody(_DENIED_PROBE.format(path=provider.socket_path))
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "PERMISSION_DENIED no identity issued"
    code = (
        "from x0tta6bl4.identity import Backoff, NoIdentityError, WorkloadSource\n"
        "try:\n"
        f"    WorkloadSource({str(provider.socket_path)!r}, backoff=Backoff(attempts=1))"
        ".fetch_jwt_svid('aud')\n"
        "except NoIdentityError as e:\n"
        "    print('NoIdentityError:', e)\n"
    )
    result = run_as_nobody(code)
    assert result.stdout.startswith("NoIdentityError: "), result
    assert "has no identity for this workload (uid 65534" in result.stdout


def test_provider_rotates_short_lived_svids_on_the_stream(make_provider: ProviderFactory) -> None:
    # SPIRE backdates every X.509-SVID by 10 s and rotates at (jittered) half-life of the
    # whole lifetime, so a 20 s entry is replaced about every 5 s; the embedded issuer's 2 s
    # SVIDs every 1 s.
    ttl = 20.0 if make_provider.kind == "spire" else 2.0
    provider = make_provider({"self": APP_ID}, svid_ttl=ttl)
    serials: list[int] = []
    seen: list[float] = []
    errors: list[Exception] = []

    def on_context(ctx: object) -> None:
        serials.append(ctx.default_svid.leaf.serial_number)  # type: ignore[attr-defined]
        seen.append(time.monotonic())

    with WorkloadApiClient(provider.endpoint, default_timeout=10) as client:
        handle = client.stream_x509_contexts(on_context, errors.append)
        try:
            wait_until(lambda: len(set(serials)) >= 3, "three distinct serials on the stream", 90)
        finally:
            handle.cancel()
    assert errors == []
    assert len(serials) == len(set(serials))  # only changes are pushed
    gaps = [round(b - a, 2) for a, b in itertools.pairwise(seen)]
    print(f"{provider.name}: X.509-SVID ttl {ttl:g} s, rotated after {gaps} s")
    assert all(0 < gap < ttl for gap in gaps)


# -- fetching SVIDs and bundles -------------------------------------------------------------


def test_stock_client_fetches_x509_svid_and_bundle(issuer: EmbeddedIssuer) -> None:
    with stock_client(issuer) as client:
        ctx = client.fetch_x509_context()
        bundles = client.fetch_x509_bundles()
    svid = ctx.default_svid
    assert svid.spiffe_id == APP_ID
    bundle = bundles.get_bundle_for_trust_domain(TrustDomain(TD))
    assert bundle is not None
    assert bundle == issuer.x509_bundle()
    assert verify_x509_svid(svid, bundles) == APP_ID
    assert verify_x509_svid(svid, ctx.x509_bundle_set) == APP_ID


def test_svid_has_the_configured_spiffe_id_and_trust_domain(make_issuer: IssuerFactory) -> None:
    sid = workload_id("staging.example", "mesh", "node-agent")
    issuer = make_issuer(trust_domain="staging.example", entries=[Entry(os.geteuid(), sid)])
    with WorkloadSource(issuer.socket_path, trust_domain="staging.example") as source:
        svid = source.fetch_x509_svid()
        jwt_svid = source.fetch_jwt_svid("x0tta6bl4-controller")
    assert str(svid.spiffe_id) == "spiffe://staging.example/ns/mesh/sa/node-agent"
    assert svid.spiffe_id.trust_domain.name == "staging.example"
    assert jwt_svid.spiffe_id == sid


def test_svid_is_shaped_like_spire_issues_it(make_issuer: IssuerFactory) -> None:
    issuer = make_issuer(svid_ttl=120)
    with stock_client(issuer) as client:
        svid = client.fetch_x509_svid()
    leaf = svid.leaf
    assert isinstance(svid.private_key, ec.EllipticCurvePrivateKey)
    assert svid.private_key.curve.name == "secp256r1"
    assert svid.private_key.public_key() == leaf.public_key()
    lifetime = leaf.not_valid_after_utc - leaf.not_valid_before_utc
    assert dt.timedelta(seconds=120) <= lifetime <= dt.timedelta(seconds=131)
    ca = issuer.x509_bundle().x509_authorities.pop()
    assert isinstance(ca.public_key(), ec.EllipticCurvePublicKey)


def test_multiple_entries_for_one_uid_give_one_svid_each(make_issuer: IssuerFactory) -> None:
    uid = os.geteuid()
    issuer = make_issuer(entries=[Entry(uid, APP_ID), Entry(uid, NODE_ID)])
    with stock_client(issuer) as client:
        svids = client.fetch_x509_svids()
        jwt_node = client.fetch_jwt_svid({"aud"}, subject=NODE_ID)
    assert [s.spiffe_id for s in svids] == [APP_ID, NODE_ID]
    assert jwt_node.spiffe_id == NODE_ID


# -- attestation and the metadata header ----------------------------------------------------


def test_caller_without_entry_gets_permission_denied(make_issuer: IssuerFactory) -> None:
    issuer = make_issuer(entries=[Entry(NOBODY, NODE_ID)])  # nothing for our own uid
    with stock_client(issuer) as client, pytest.raises(FetchX509SvidError) as info:
        client.fetch_x509_svid()
    assert "PERMISSION_DENIED" in str(info.value)
    assert "no identity issued" in str(info.value)
    with pytest.raises(NoIdentityError, match=r"no identity for this workload \(uid"):
        WorkloadSource(issuer.socket_path, backoff=FAST).fetch_x509_svid()


def test_other_uid_is_attested_by_its_peer_credentials(make_issuer: IssuerFactory) -> None:
    issuer = make_issuer(entries=[Entry(os.geteuid(), APP_ID), Entry(NOBODY, NODE_ID)])
    result = run_as_nobody(
        "from spiffe import WorkloadApiClient\n"
        f"c = WorkloadApiClient({issuer.endpoint!r}, default_timeout=10)\n"
        "print(c.fetch_x509_svid().spiffe_id)\n"
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == str(NODE_ID)


def test_other_uid_without_entry_gets_permission_denied(issuer: EmbeddedIssuer) -> None:
    result = run_as_nobody(
        "import grpc\n"
        "from spiffe._proto import workload_pb2 as pb, workload_pb2_grpc as rpc\n"
        f"ch = grpc.insecure_channel('unix:{issuer.socket_path}')\n"
        "stub = rpc.SpiffeWorkloadAPIStub(ch)\n"
        "try:\n"
        "    next(stub.FetchX509SVID(pb.X509SVIDRequest(), timeout=10,\n"
        "        metadata=[('workload.spiffe.io', 'true')]))\n"
        "except grpc.RpcError as e:\n"
        "    print(e.code().name, e.details())\n"
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "PERMISSION_DENIED no identity issued"


def test_call_without_security_header_is_rejected(issuer: EmbeddedIssuer) -> None:
    channel, stub = raw_stub(issuer.socket_path)
    with channel:
        with pytest.raises(grpc.RpcError) as info:
            next(stub.FetchX509SVID(workload_pb2.X509SVIDRequest(), timeout=10))
        assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "security header" in info.value.details()
        with pytest.raises(grpc.RpcError) as info:
            stub.FetchJWTSVID(
                workload_pb2.JWTSVIDRequest(audience=["a"]),
                timeout=10,
                metadata=(("workload.spiffe.io", "false"),),
            )
        assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        response = next(
            stub.FetchX509SVID(workload_pb2.X509SVIDRequest(), timeout=10, metadata=HEADER)
        )
        assert response.svids[0].spiffe_id == str(APP_ID)


def test_connection_bypassing_the_attesting_relay_is_refused(issuer: EmbeddedIssuer) -> None:
    private = issuer.private_socket_path
    assert private is not None
    assert private.exists()
    channel, stub = raw_stub(private)
    with channel, pytest.raises(grpc.RpcError) as info:
        next(stub.FetchX509SVID(workload_pb2.X509SVIDRequest(), timeout=10, metadata=HEADER))
    assert info.value.code() == grpc.StatusCode.PERMISSION_DENIED
    assert "could not attest" in info.value.details()


# -- rotation -------------------------------------------------------------------------------


def test_rotation_is_pushed_on_the_stream_and_listeners_are_told(
    make_issuer: IssuerFactory,
) -> None:
    issuer = make_issuer(svid_ttl=2)
    updates: list[SvidUpdate] = []
    source = WorkloadSource(issuer.socket_path, backoff=FAST)
    source.on_rotate(updates.append)
    with source:
        first = source.current
        assert first is not None
        old_serial = first.default_svid.leaf.serial_number
        wait_until(lambda: len(updates) >= 2, "two SVID updates")
        rotation = updates[1]
        assert rotation.previous is not None
        assert rotation.svid.leaf.serial_number != rotation.previous.default_svid.leaf.serial_number
        assert rotation.spiffe_id == APP_ID
        assert verify_x509_svid(rotation.svid, rotation.current.x509_bundle_set) == APP_ID
        served = source.fetch_x509_svid().leaf.serial_number
    assert updates[0].previous is None
    assert served != old_serial


def test_stock_client_stream_receives_rotated_svids(make_issuer: IssuerFactory) -> None:
    issuer = make_issuer(svid_ttl=2)
    serials: list[int] = []
    errors: list[Exception] = []
    with stock_client(issuer) as client:
        handle = client.stream_x509_contexts(
            lambda ctx: serials.append(ctx.default_svid.leaf.serial_number), errors.append
        )
        try:
            wait_until(lambda: len(set(serials)) >= 3, "three distinct serials on the stream")
        finally:
            handle.cancel()
    assert errors == []
    assert len(serials) == len(set(serials))  # only changes are pushed


def test_failing_and_unsubscribed_listeners_do_not_stop_rotation(
    make_issuer: IssuerFactory,
) -> None:
    issuer = make_issuer(svid_ttl=2)
    good: list[SvidUpdate] = []
    removed: list[SvidUpdate] = []

    def broken(update: SvidUpdate) -> None:
        raise RuntimeError("listener bug")

    source = WorkloadSource(issuer.socket_path, backoff=FAST)
    source.on_rotate(broken)
    unsubscribe = source.on_rotate(removed.append)
    source.on_rotate(good.append)
    unsubscribe()
    with source:
        wait_until(lambda: len(good) >= 2, "rotation despite a broken listener")
    assert removed == []


# -- JWT-SVIDs ------------------------------------------------------------------------------


def test_jwt_svid_for_the_right_audience_validates(issuer: EmbeddedIssuer) -> None:
    source = WorkloadSource(issuer.socket_path, backoff=FAST)
    token = source.fetch_jwt_svid("x0tta6bl4-controller").token
    bundles = source.fetch_jwt_bundles()
    assert validate_jwt_svid(token, "x0tta6bl4-controller", bundles) == APP_ID
    assert source.validate_jwt_svid(token, "x0tta6bl4-controller") == APP_ID
    bundle = bundles.get_bundle_for_trust_domain(TrustDomain(TD))
    assert bundle is not None
    assert bundle == issuer.jwt_bundle()


def test_jwt_svid_for_another_audience_fails(issuer: EmbeddedIssuer) -> None:
    source = WorkloadSource(issuer.socket_path, backoff=FAST)
    token = source.fetch_jwt_svid("some-other-service").token
    with pytest.raises(JwtAudienceError, match="x0tta6bl4-controller") as info:
        validate_jwt_svid(token, "x0tta6bl4-controller", source.fetch_jwt_bundles())
    assert token not in str(info.value)


def test_validate_jwt_svid_rpc_checks_audience(issuer: EmbeddedIssuer) -> None:
    with stock_client(issuer) as client:
        token = client.fetch_jwt_svid({"x0tta6bl4-controller"}).token
        assert client.validate_jwt_svid(token, "x0tta6bl4-controller").spiffe_id == APP_ID
        with pytest.raises(ValidateJwtSvidError, match="INVALID_ARGUMENT"):
            client.validate_jwt_svid(token, "someone-else")
        with pytest.raises(ValidateJwtSvidError, match="INVALID_ARGUMENT"):
            client.validate_jwt_svid(token[:-4] + "AAAA", "x0tta6bl4-controller")


def test_jwt_svid_from_a_foreign_issuer_fails(make_issuer: IssuerFactory) -> None:
    home = make_issuer()
    foreign = make_issuer(
        name="foreign",
        state="foreign-state",
        trust_domain="other.mesh",
        entries=[Entry(os.geteuid(), workload_id("other.mesh", "x", "y"))],
    )
    impostor = make_issuer(name="impostor", state="impostor-state")  # same TD, other keys
    bundles = WorkloadSource(home.socket_path, backoff=FAST).fetch_jwt_bundles()
    foreign_token = WorkloadSource(foreign.socket_path, trust_domain=None).fetch_jwt_svid("aud")
    with pytest.raises(WrongTrustDomainError, match=r"other\.mesh"):
        validate_jwt_svid(foreign_token.token, "aud", bundles)
    impostor_token = WorkloadSource(impostor.socket_path).fetch_jwt_svid("aud")
    with pytest.raises(InvalidJwtSvidError):
        validate_jwt_svid(impostor_token.token, "aud", bundles)


# -- X.509 bundle validation across trust domains -------------------------------------------


def test_foreign_trust_domain_svid_fails_bundle_validation(make_issuer: IssuerFactory) -> None:
    home = make_issuer()
    foreign = make_issuer(
        name="foreign",
        state="foreign-state",
        trust_domain="other.mesh",
        entries=[Entry(os.geteuid(), workload_id("other.mesh", "x0tta6bl4", "x0tta6bl4-app"))],
    )
    home_bundles = WorkloadSource(home.socket_path).fetch_x509_bundles()
    foreign_svid = WorkloadSource(foreign.socket_path, trust_domain="other.mesh").fetch_x509_svid()
    with pytest.raises(WrongTrustDomainError, match=r"other\.mesh"):
        verify_x509_svid(foreign_svid, home_bundles)
    with pytest.raises(WrongTrustDomainError):
        WorkloadSource(foreign.socket_path, backoff=FAST).fetch_x509_svid()


def test_svid_from_another_ca_of_the_same_trust_domain_is_untrusted(
    make_issuer: IssuerFactory,
) -> None:
    home = make_issuer()
    impostor = make_issuer(name="impostor", state="impostor-state")
    home_bundles = WorkloadSource(home.socket_path).fetch_x509_bundles()
    impostor_svid = WorkloadSource(impostor.socket_path).fetch_x509_svid()
    assert impostor_svid.spiffe_id == APP_ID
    with pytest.raises(UntrustedSvidError, match="not signed by any authority"):
        verify_x509_svid(impostor_svid, home_bundles)
    assert verify_x509_svid(impostor_svid, X509BundleSet.of([impostor.x509_bundle()])) == APP_ID


# -- the socket going away and coming back --------------------------------------------------


def test_source_reports_a_vanished_socket_and_recovers(make_issuer: IssuerFactory) -> None:
    issuer = make_issuer()
    updates: list[SvidUpdate] = []
    errors: list[IdentityError] = []
    source = WorkloadSource(issuer.socket_path, backoff=FAST)
    source.on_rotate(updates.append)
    source.on_error(errors.append)
    with source:
        assert len(updates) == 1
        issuer.stop()
        assert not issuer.socket_path.exists()
        with pytest.raises(SocketNotFoundError, match="does not exist"):
            source.fetch_x509_svid()
        wait_until(
            lambda: any(isinstance(e, SocketNotFoundError) for e in errors),
            "the watcher to report the missing socket",
        )
        assert source.current is not None  # the last good SVID is kept
        issuer.start()  # same socket, same state directory: a restarted agent
        wait_until(lambda: len(updates) >= 2, "the watcher to reconnect")
        assert source.fetch_x509_svid().spiffe_id == APP_ID
    assert updates[1].svid.leaf.serial_number != updates[0].svid.leaf.serial_number


def test_fetch_retries_with_backoff_until_the_socket_appears(make_issuer: IssuerFactory) -> None:
    issuer = make_issuer(start=False)
    patient = WorkloadSource(
        issuer.socket_path, backoff=Backoff(initial=0.05, max_delay=0.2, attempts=200)
    )
    outcome: list[object] = []

    def fetch() -> None:
        try:
            outcome.append(patient.fetch_x509_svid().spiffe_id)
        except IdentityError as err:
            outcome.append(err)

    worker = threading.Thread(target=fetch)
    worker.start()
    time.sleep(0.3)  # let a few attempts fail against the missing socket
    issuer.start()
    worker.join(timeout=DEADLINE)
    assert outcome == [APP_ID]


def test_concurrent_clients_and_streams(make_issuer: IssuerFactory) -> None:
    issuer = make_issuer(svid_ttl=600)
    results: list[object] = []
    lock = threading.Lock()

    def work() -> None:
        try:
            with stock_client(issuer) as client:
                streamed: list[int] = []
                handle = client.stream_x509_contexts(
                    lambda ctx: streamed.append(ctx.default_svid.leaf.serial_number),
                    lambda err: None,
                )
                try:
                    svid = client.fetch_x509_svid()
                    token = client.fetch_jwt_svid({"x0tta6bl4-controller"}).token
                    bundles = client.fetch_jwt_bundles()
                    wait_until(lambda: bool(streamed), "a streamed SVID")
                finally:
                    handle.cancel()
            checked = validate_jwt_svid(token, "x0tta6bl4-controller", bundles)
            outcome: object = (svid.spiffe_id, checked, streamed[0] == svid.leaf.serial_number)
        except Exception as err:  # reported below with the other results
            outcome = err
        with lock:
            results.append(outcome)

    workers = [threading.Thread(target=work) for _ in range(12)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(timeout=DEADLINE)
    assert results == [(APP_ID, APP_ID, True)] * 12


# -- bad input: each gets its own error -----------------------------------------------------


def test_malformed_ids_and_wrong_trust_domains_in_entries() -> None:
    td = TrustDomain(TD)
    assert parse_entry(f"0={APP_ID}", td) == Entry(0, APP_ID)
    assert parse_entry(f"nobody={NODE_ID}", td).uid == NOBODY
    with pytest.raises(InvalidEntryError, match="UID=SPIFFE_ID"):
        parse_entry(str(APP_ID), td)
    with pytest.raises(InvalidEntryError, match="neither a numeric uid"):
        parse_entry(f"no-such-user-x0={APP_ID}", td)
    with pytest.raises(InvalidEntryError, match="must start with 'spiffe://'"):
        parse_entry("0=https://x0tta6bl4.mesh/ns/a/sa/b", td)
    with pytest.raises(WrongTrustDomainError, match=r"evil\.mesh"):
        parse_entry("0=spiffe://evil.mesh/ns/a/sa/b", td)


def test_wrong_trust_domain_svid_is_refused_by_the_source(issuer: EmbeddedIssuer) -> None:
    with pytest.raises(WrongTrustDomainError, match=r"expected 'staging\.example'"):
        WorkloadSource(issuer.socket_path, trust_domain="staging.example").fetch_x509_svid()


def test_missing_socket_gives_a_clear_error(workdir: Path) -> None:
    path = workdir / "nowhere" / "agent.sock"
    with pytest.raises(SocketNotFoundError) as info:
        WorkloadSource(path, backoff=FAST).fetch_x509_svid()
    message = str(info.value)
    assert str(path) in message
    assert "SPIFFE_ENDPOINT_SOCKET" in message
    assert "gave up after 1 attempt" in message


def test_refusing_socket_and_non_socket_give_clear_errors(workdir: Path) -> None:
    dead = workdir / "dead.sock"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.bind(str(dead))  # bound, never listening: connect() is refused
    try:
        with pytest.raises(SocketRefusedError, match="nothing is listening"):
            WorkloadSource(dead, backoff=FAST).fetch_x509_svid()
    finally:
        sock.close()
    regular = workdir / "file.sock"
    regular.write_text("not a socket")
    with pytest.raises(SocketRefusedError, match="not a Unix socket"):
        WorkloadSource(f"unix://{regular}", backoff=FAST).fetch_x509_svid()


def test_unreadable_socket_gives_a_permission_error(issuer: EmbeddedIssuer) -> None:
    issuer.socket_path.chmod(0o600)
    result = run_as_nobody(
        "from x0tta6bl4.identity import Backoff, SocketPermissionError, WorkloadSource\n"
        "try:\n"
        f"    WorkloadSource({str(issuer.socket_path)!r},\n"
        "        backoff=Backoff(attempts=1)).fetch_x509_svid()\n"
        "except SocketPermissionError as e:\n"
        "    print('SocketPermissionError:', e)\n"
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("SocketPermissionError:"), result.stdout
    assert "permission denied" in result.stdout
    assert issubclass(SocketPermissionError, IdentityError)


def test_expired_svid_is_refused(make_issuer: IssuerFactory) -> None:
    issuer = make_issuer(svid_ttl=60)
    ctx = WorkloadSource(issuer.socket_path).fetch_x509_context()
    svid = ctx.default_svid
    later = svid.leaf.not_valid_after_utc + dt.timedelta(seconds=1)
    with pytest.raises(SvidExpiredError, match="expired"):
        check_x509_svid_validity(svid, now=later)
    with pytest.raises(SvidExpiredError):
        verify_x509_svid(svid, ctx.x509_bundle_set, now=later)
    earlier = svid.leaf.not_valid_before_utc - dt.timedelta(seconds=1)
    with pytest.raises(SvidExpiredError, match="not valid before"):
        check_x509_svid_validity(svid, now=earlier)


# -- the issuer's state and lifecycle -------------------------------------------------------


def test_state_is_private_and_reused_across_restarts(make_issuer: IssuerFactory) -> None:
    issuer = make_issuer()
    before = WorkloadSource(issuer.socket_path).fetch_x509_context()
    issuer.stop()
    issuer.start()
    after = WorkloadSource(issuer.socket_path).fetch_x509_context()
    assert after.x509_bundle_set.get_bundle_for_trust_domain(
        TrustDomain(TD)
    ) == before.x509_bundle_set.get_bundle_for_trust_domain(TrustDomain(TD))
    assert verify_x509_svid(before.default_svid, after.x509_bundle_set) == APP_ID
    state = issuer.config.state_dir / "identity"
    assert state.stat().st_mode & 0o777 == 0o700
    for key in ("ca.key.pem", "jwt.key.pem"):
        assert (state / key).stat().st_mode & 0o777 == 0o600
    assert issuer.socket_path.stat().st_mode & 0o777 == 0o777


def test_unsafe_state_and_busy_socket_are_refused(make_issuer: IssuerFactory) -> None:
    issuer = make_issuer()
    twin = make_issuer(state="twin-state", start=False)  # same socket path
    with pytest.raises(IssuerError, match="in use"):
        twin.start()
    assert WorkloadSource(issuer.socket_path).fetch_x509_svid().spiffe_id == APP_ID
    issuer.stop()
    state = issuer.config.state_dir / "identity"
    state.chmod(0o755)
    with pytest.raises(IssuerStateError, match="chmod 700"):
        issuer.start()
    assert not issuer.socket_path.exists()
    state.chmod(0o700)
    (state / "ca.key.pem").chmod(0o644)
    with pytest.raises(IssuerStateError, match="chmod 600"):
        issuer.start()


def test_issuer_config_rejects_bad_values(workdir: Path) -> None:
    with pytest.raises(IssuerError, match="between"):
        IssuerConfig(socket_path=workdir / "a.sock", state_dir=workdir, svid_ttl=0.1)
    with pytest.raises(IssuerError, match="not in trust domain"):
        IssuerConfig(
            socket_path=workdir / "a.sock",
            state_dir=workdir,
            entries=[Entry(0, SpiffeId("spiffe://other.mesh/a"))],
        )
    with pytest.raises(IssuerError, match="too long"):
        IssuerConfig(socket_path=workdir / ("x" * 120), state_dir=workdir)


# -- the CLI --------------------------------------------------------------------------------


def _serve(args: list[str], env: dict[str, str] | None = None) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "x0tta6bl4", "identity", "serve", *args],
        env={**os.environ, **(env or {})},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _fetch_when_up(path: Path, proc: subprocess.Popen[str]) -> SpiffeId:
    def up() -> bool:
        assert proc.poll() is None, proc.communicate()[1]
        return path.exists()

    wait_until(up, "the CLI issuer's socket")
    with WorkloadApiClient(f"unix://{path}", default_timeout=10) as client:
        return client.fetch_x509_svid().spiffe_id


def test_cli_identity_serve_answers_the_stock_client(workdir: Path) -> None:
    path = workdir / "cli.sock"
    proc = _serve(
        [
            "--socket",
            str(path),
            "--entry",
            f"{os.geteuid()}={APP_ID}",
            "--entry",
            f"{NOBODY}={NODE_ID}",
            "--svid-ttl",
            "30",
            "--state-dir",
            str(workdir / "cli-state"),
        ]
    )
    try:
        assert _fetch_when_up(path, proc) == APP_ID
        with WorkloadApiClient(f"unix://{path}", default_timeout=10) as client:
            token = client.fetch_jwt_svid({"x0tta6bl4-controller"}).token
            bundles = client.fetch_jwt_bundles()
        assert validate_jwt_svid(token, "x0tta6bl4-controller", bundles) == APP_ID
    finally:
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=DEADLINE)
    assert proc.returncode == 0, err
    assert "serving the SPIFFE Workload API" in err
    assert not path.exists()
    assert token not in err


def test_cli_takes_its_settings_from_environment_variables(workdir: Path) -> None:
    path = workdir / "env.sock"
    proc = _serve(
        [],
        env={
            "X0_IDENTITY_SOCKET": str(path),
            "X0_TRUST_DOMAIN": "env.example",
            "X0_IDENTITY_ENTRIES": f"{os.geteuid()}=spiffe://env.example/ns/a/sa/b",
            "X0_SVID_TTL": "20",
            "X0_STATE_DIR": str(workdir / "env-state"),
        },
    )
    try:
        assert str(_fetch_when_up(path, proc)) == "spiffe://env.example/ns/a/sa/b"
    finally:
        proc.send_signal(signal.SIGINT)
        proc.communicate(timeout=DEADLINE)
    assert proc.returncode == 0
    assert (workdir / "env-state" / "identity" / "ca.key.pem").exists()


def test_cli_rejects_bad_entries_without_serving(workdir: Path) -> None:
    path = workdir / "bad.sock"
    proc = _serve(
        ["--socket", str(path), "--state-dir", str(workdir / "s"), "--entry", "0=not-an-id"]
    )
    _, err = proc.communicate(timeout=DEADLINE)
    assert proc.returncode == 2
    assert "error: entry '0=not-an-id'" in err
    assert "Traceback" not in err
    assert not path.exists()
    assert not (workdir / "s").exists()


# -- with a real controller and real mesh nodes ---------------------------------------------
# Issue 3: "once the controller and node exist": registration with a real SVID succeeds and
# with a foreign one fails; an SVID rotation leaves established mesh links up. Issue 15: the
# same against real SPIRE, plus SPIRE's own operations (entry deletion, CA rotation, agent
# restart) with the mesh running.

CONTROLLER_AUDIENCE = "x0tta6bl4-controller"
FOREIGN_TD = "foreign.example"
MESH_NODES = ("n1", "n2", "n3")
CONTROLLER_ID = role_spiffe_id(TD, "x0tta6bl4", "x0tta6bl4-node", CONTROLLER_ROLE)


def mesh_node_id(name: str) -> SpiffeId:
    """Node ``name``'s own SPIFFE ID (one per node, docs/identity.md "Names")."""
    return node_spiffe_id(TD, "x0tta6bl4", "x0tta6bl4-node", name)


def mesh_workloads() -> dict[str, SpiffeId]:
    """The test process (``self``), the controller and every mesh node. The embedded issuer
    gives them all the first ID (one uid); SPIRE each its own."""
    return {
        "self": NODE_ID,
        "controller": CONTROLLER_ID,
        **{name: mesh_node_id(name) for name in MESH_NODES},
    }


class HasSocket(Protocol):
    @property
    def socket_path(self) -> Path: ...


@contextlib.contextmanager
def running_controller(
    workdir: Path,
    issuer: HasSocket,
    *,
    workload: Workload | None = None,
    extra: Sequence[str] = (),
) -> Iterator[str]:
    """``x0tta6bl4 controller`` (SQLite, local CA) on loopback, its X.509-SVID and JWT bundles
    from ``issuer``, running as ``workload`` (its group id, under SPIRE); yields its
    ``https://`` API URL."""
    port, tls_port = free_port(), free_port()
    base = f"http://127.0.0.1:{port}"
    log = workdir / "controller.log"
    if not getattr(issuer, "per_workload", False):
        # The embedded issuer selects by uid only: every workload shares one SPIFFE ID, the
        # legacy shared-identity mode, where node IDs cannot be bound to SPIFFE IDs by name.
        extra = ("--node-id-mapping", "none", *extra)
    proc = spawn_controller(
        [
            "--listen", f"127.0.0.1:{port}",
            "--tls-listen", f"127.0.0.1:{tls_port}",
            "--store", f"sqlite:///{workdir / 'controller.db'}",
            "--local-ca",
            "--state-dir", str(workdir / "controller"),
            "--trust-domain", TD,
            *extra,
        ],
        env={"SPIFFE_ENDPOINT_SOCKET": f"unix://{issuer.socket_path}", "X0_LOG_FORMAT": "json"},
        log=log,
        popen=spawn_kwargs(workload) if workload is not None else None,
    )  # fmt: skip
    try:
        try:
            wait_ready(base, proc, timeout=90)
        except AssertionError as err:
            raise AssertionError(f"{err}\n{log.read_text(errors='replace')[-3000:]}") from None
        yield f"https://127.0.0.1:{tls_port}"
    finally:
        proc.terminate()
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)


def mine(issuer: HasSocket, trust_domain: str = TD) -> StaticCredentials:
    """This process's X.509-SVID from ``issuer`` as TLS credentials."""
    source = WorkloadSource(issuer.socket_path, trust_domain=trust_domain, backoff=FAST)
    return StaticCredentials(TlsCredentials.from_context(source.fetch_x509_context(), trust_domain))


def _call(
    api: str,
    credentials: StaticCredentials,
    method: str,
    path: str,
    controller: SpiffeId | str = CONTROLLER_ID,
    **kw: Any,
) -> httpx.Response:
    """One request over mutual TLS to the controller at ``api`` (expected as ``controller``)."""

    async def go() -> httpx.Response:
        async with tls_client(api, credentials, str(controller), timeout=30) as client:
            return await client.request(method, path, **kw)

    return asyncio.run(go())


def _controller_serial(api: str, credentials: StaticCredentials, controller: SpiffeId) -> int:
    """The serial of the X.509-SVID the controller presents to a new connection."""

    async def go() -> int:
        async with tls_client(api, credentials, str(controller), timeout=30) as client:
            response = await client.get("/health")
            peer = response.extensions["network_stream"].get_extra_info(PEER_INFO)
            assert peer is not None
            assert peer.serial is not None
            return int(peer.serial)

    return asyncio.run(go())


def node_token(issuer: HasSocket, trust_domain: str = TD) -> str:
    """A JWT-SVID for the controller audience, fetched from ``issuer`` over its Unix socket."""
    source = WorkloadSource(issuer.socket_path, trust_domain=trust_domain, backoff=FAST)
    token: str = source.fetch_jwt_svid(CONTROLLER_AUDIENCE).token
    return token


def test_registration_with_a_real_x509_svid_succeeds_at_a_real_controller(
    make_provider: ProviderFactory, workdir: Path
) -> None:
    """The node's X.509-SVID as TLS client certificate registers it (mutual TLS). The test
    process is node real-node (its SPIFFE ID …/node/real-node is bound to that node ID)."""
    provider = make_provider({**mesh_workloads(), "self": mesh_node_id("real-node")})
    me = provider["self"].spiffe_id
    controller = provider["controller"].spiffe_id
    key = SigningKey.generate()
    with running_controller(workdir, provider, workload=provider["controller"]) as api:
        svid = mine(provider)
        response = _call(
            api,
            svid,
            "POST",
            "/api/v1/nodes/register",
            controller,
            json=register_body(
                key,
                spiffe_id=str(me),
                node_id="real-node",
                credential_sha256=svid.current()[1].leaf_sha256,
            ),
        )
        assert response.status_code == 200, response.text
        admission = response.json()
        assert admission["spiffe_id"] == str(me)
        # The PQ SVID chains to the returned CA bundle and certifies our key and node ID.
        bundle = TrustBundle.from_pem(admission["trust_domain"], admission["ca_bundle"].encode())
        cert = x509.load_pem_x509_certificate(admission["pq_svid"].encode())
        verified = verify_svid(cert.public_bytes(serialization.Encoding.DER), bundle, time.time())
        assert verified.public_key_bytes == key.public_bytes
        assert verified.node_id == "real-node"
        assert verified.spiffe_id == str(me)
        stored = _call(api, svid, "GET", "/api/v1/nodes/real-node", controller)
    assert stored.status_code == 200, stored.text
    assert stored.json()["spiffe_id"] == str(me)
    assert stored.json()["ml_dsa_public_key"] == base64.b64encode(key.public_bytes).decode()


@pytest.mark.parametrize(
    "foreign_td",
    [
        pytest.param(FOREIGN_TD, id="foreign-trust-domain"),
        pytest.param(TD, id="same-trust-domain-other-issuer"),
    ],
)
def test_registration_with_a_foreign_svid_is_refused_and_nothing_is_stored(
    make_issuer: IssuerFactory, workdir: Path, foreign_td: str
) -> None:
    issuer = make_issuer(entries=[Entry(os.geteuid(), NODE_ID)])
    foreign_id = workload_id(foreign_td, "x0tta6bl4", "x0tta6bl4-node")
    foreign = make_issuer(
        entries=[Entry(os.geteuid(), foreign_id)],
        trust_domain=foreign_td,
        name="foreign",
        state="foreign-state",
    )
    key = SigningKey.generate()
    body = register_body(key, spiffe_id=str(foreign_id), node_id="intruder")
    with running_controller(workdir, issuer) as api:
        svid = mine(issuer)
        before = _call(api, svid, "GET", "/api/v1/nodes", NODE_ID).json()
        # The foreign X.509-SVID as client certificate: the TLS handshake fails (the
        # controller trusts only its trust domain's bundle), no request is answered. The
        # client trusts our controller (our bundle) but presents the foreign certificate.
        foreign_svid = mine(foreign, foreign_td).current()[1]
        ours = svid.current()[1]
        presenting = StaticCredentials(
            TlsCredentials(
                ours.trust_domain, ours.authorities, foreign_svid.chain, foreign_svid.key
            )
        )
        with pytest.raises(httpx.HTTPError):
            _call(api, presenting, "POST", "/api/v1/nodes/register", NODE_ID, json=body)
        # The foreign JWT-SVID as bearer token over TLS: refused, never echoed.
        token = node_token(foreign, foreign_td)
        response = _call(api, svid, "POST", "/api/v1/nodes/register", NODE_ID, json=body,
                         headers=bearer(token))  # fmt: skip
        assert response.status_code in (401, 403), response.text
        assert token not in response.text
        after = _call(api, svid, "GET", "/api/v1/nodes", NODE_ID).json()
        missing = _call(api, svid, "GET", "/api/v1/nodes/intruder", NODE_ID)
    assert after == before
    assert "intruder" not in {n["node_id"] for n in after["nodes"]}
    assert missing.status_code == 404
    assert token not in (workdir / "controller.log").read_text(errors="replace")


class NodeProcesses:
    """``x0tta6bl4 node`` subprocesses on loopback, logging to files, each running as its
    provider workload (under SPIRE: its own group id, so its own SPIFFE ID)."""

    def __init__(self, workdir: Path, base: str, provider: Provider, dead_after: int = 30) -> None:
        self.workdir = workdir
        self.base = base
        self.provider = provider
        self.dead_after = dead_after
        self.env = {
            **os.environ,
            "SPIFFE_ENDPOINT_SOCKET": f"unix://{provider.socket_path}",
            "X0_LOG_FORMAT": "json",
        }
        self.http = {name: free_port() for name in MESH_NODES}
        self.procs: dict[str, subprocess.Popen[bytes]] = {}

    def start(self, name: str) -> None:
        self.procs[name] = spawn_node(
            self.base,
            name,
            f"127.0.0.1:{free_port()}",
            self.http[name],
            self.workdir / name,
            env=self.env,
            log=self.workdir / f"{name}.log",
            # 3 s of silence before a link is declared down (default 0.4 s): a CPU-starved
            # test machine must not pass for a link the rotation dropped.
            extra=(
                *("--heartbeat-interval", "0.1", "--dead-after", str(self.dead_after)),
                *("--controller-spiffe-id", str(self.provider["controller"].spiffe_id)),
            ),
            popen=spawn_kwargs(self.provider[name]),
        )

    def status(self, name: str) -> dict[str, object]:
        body: dict[str, object] = httpx.get(
            f"http://127.0.0.1:{self.http[name]}/v1/status", timeout=10
        ).json()
        return body

    def wait(self, predicate: Callable[[], bool], what: str, deadline: float = 90.0) -> None:
        def check() -> bool:
            for name, proc in self.procs.items():
                assert proc.poll() is None, (self.workdir / f"{name}.log").read_text()[-3000:]
            try:
                return predicate()
            except httpx.HTTPError:
                return False

        wait_until(check, what, deadline)

    def linked(self, names: Sequence[str] = MESH_NODES) -> bool:
        """Every node of ``names`` has a link up and a route to every other one."""
        for name in names:
            status = self.status(name)
            others = set(names) - {name}
            routes = status.get("routes", [])
            assert isinstance(routes, list)
            if not others <= {p for p, s in _links(status).items() if s == "up"}:
                return False
            if not others <= {str(r["dest"]) for r in routes}:
                return False
        return True

    def all_links_up(self, names: Sequence[str] = MESH_NODES) -> None:
        """Assert (now) that every link of every node of ``names`` is up."""
        for name in names:
            links = _links(self.status(name))
            assert set(links.values()) == {"up"}, (name, links)

    def ping(self, src: str, dst: str, count: int = 3) -> dict[str, Any]:
        answer: dict[str, Any] = httpx.get(
            f"http://127.0.0.1:{self.http[src]}/v1/ping",
            params={"target": dst, "count": str(count), "timeout": "5"},
            timeout=60,
        ).json()
        return answer

    def close(self) -> None:
        for proc in self.procs.values():
            proc.terminate()
        for proc in self.procs.values():
            try:
                proc.wait(20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(10)


@contextlib.contextmanager
def running_mesh(
    provider: Provider, workdir: Path, controller_args: Sequence[str] = ()
) -> Iterator[tuple[str, NodeProcesses]]:
    """A controller and the three mesh nodes, fully linked."""
    with running_controller(
        workdir, provider, workload=provider["controller"], extra=controller_args
    ) as base:
        nodes = NodeProcesses(workdir, base, provider)
        try:
            for name in MESH_NODES:
                nodes.start(name)
            nodes.wait(nodes.linked, "three nodes fully linked")
            yield base, nodes
        finally:
            nodes.close()


def _links(status: dict[str, object]) -> dict[str, str]:
    links = status.get("links", [])
    assert isinstance(links, list)
    return {str(link["peer"]): str(link["state"]) for link in links}


def _link_downs(nodes: NodeProcesses, name: str) -> float:
    """The node's ``x0tta6bl4_node_link_down_events_total`` from its /metrics."""
    text = httpx.get(f"http://127.0.0.1:{nodes.http[name]}/metrics", timeout=10).text
    for line in text.splitlines():
        metric, _, value = line.partition(" ")
        if metric == "x0tta6bl4_node_link_down_events_total":
            return float(value)
    raise AssertionError(f"{name} exports no x0tta6bl4_node_link_down_events_total")


def _listing(base: str, provider: Provider) -> dict[str, Any]:
    """``GET /api/v1/nodes`` over mutual TLS as this process."""
    answer = _call(base, mine(provider), "GET", "/api/v1/nodes", provider["controller"].spiffe_id)
    listing: dict[str, Any] = answer.json()
    return listing


def _last_seen(base: str, provider: Provider) -> dict[str, float]:
    listing = _listing(base, provider)
    return {n["node_id"]: float(n["last_seen"]) for n in listing["nodes"]}


def _spiffe_ids(base: str, provider: Provider) -> dict[str, str]:
    listing = _listing(base, provider)
    return {n["node_id"]: str(n["spiffe_id"]) for n in listing["nodes"]}


def test_svid_rotation_leaves_established_mesh_links_up(
    make_provider: ProviderFactory, workdir: Path
) -> None:
    # Embedded: X.509-SVIDs live 5 s and rotate at half-life; JWT-SVIDs live min(ttl, 300 s).
    # SPIRE: 20 s entries (plus SPIRE's 10 s not-before cushion: a new X.509-SVID about every
    # 5 s; JWT-SVIDs 20 s). Either way the nodes' control-plane calls run on ever new SVIDs
    # while the test watches the links.
    spire = make_provider.kind == "spire"
    ttl = 20.0 if spire else 5.0
    provider = make_provider(mesh_workloads(), svid_ttl=ttl)
    with running_mesh(provider, workdir) as (base, nodes):
        downs = {name: _link_downs(nodes, name) for name in MESH_NODES}
        ids = _spiffe_ids(base, provider)
        assert ids == {n: str(provider[n].spiffe_id) for n in MESH_NODES}
        if spire:  # one SPIFFE ID per node, from its own registration entry
            assert len(set(ids.values())) == len(MESH_NODES)

        updates: list[SvidUpdate] = []
        source = WorkloadSource(provider.socket_path, trust_domain=TD, backoff=FAST)
        source.on_rotate(updates.append)
        samples = 0
        controller = provider["controller"].spiffe_id
        controller_serials = {_controller_serial(base, mine(provider), controller)}
        with source:
            first = source.current
            assert first is not None
            first_serial = first.default_svid.leaf.serial_number

            def rotated_and_refetched() -> bool:
                # Every sample while we wait: every link of every node is still up.
                nonlocal samples
                nodes.all_links_up()
                samples += len(MESH_NODES)
                serials = {u.svid.leaf.serial_number for u in updates}
                if len(serials - {first_serial}) < 2:
                    return False
                # Past two JWT lifetimes, each node authenticated to the controller
                # (PUT .../status every 5 s, with a JWT-SVID for that call) with a token
                # minted after the first rotation.
                if time.time() < rotated_at + ttl:
                    return False
                controller_serials.add(_controller_serial(base, mine(provider), controller))
                seen = _last_seen(base, provider)
                return all(seen.get(name, 0.0) > rotated_at + ttl for name in MESH_NODES)

            wait_until(lambda: len(updates) >= 2, "the first SVID rotation", 90)
            rotated_at = time.time()
            nodes.wait(rotated_and_refetched, "a second rotation and node re-authentication", 150)
            served = source.fetch_x509_svid().leaf.serial_number
        assert served != first_serial
        assert samples >= 3 * len(MESH_NODES)
        gaps = [b.svid.leaf.not_valid_before_utc - a.svid.leaf.not_valid_before_utc
                for a, b in itertools.pairwise(updates[1:])]  # fmt: skip
        print(f"{provider.name}: X.509-SVID rotation every {[g.total_seconds() for g in gaps]} s")
        # The controller's own X.509-SVID rotated too (every new connection got the current
        # one) while the nodes stayed registered and linked, and kept reporting.
        assert len(controller_serials) >= 2, controller_serials

        for name in MESH_NODES:
            after = nodes.status(name)
            assert _link_downs(nodes, name) == downs[name], name
            assert set(_links(after).values()) == {"up"}
            assert after["registered"] is True
            assert after["controller_reachable"] is True
        for src, dst in (("n1", "n3"), ("n3", "n2"), ("n2", "n1")):
            answer = nodes.ping(src, dst)
            assert answer["received"] == 3, answer


def test_agent_restart_mid_run_keeps_the_mesh(
    make_provider: ProviderFactory, workdir: Path
) -> None:
    """The Workload API goes away under a running mesh and comes back: links stay up
    throughout, and the nodes authenticate to the controller again afterwards (SPIRE: the
    agent restarts with its own SVID from its data directory, no new join token)."""
    provider = make_provider(mesh_workloads())
    with running_mesh(provider, workdir) as (base, nodes):
        downs = {name: _link_downs(nodes, name) for name in MESH_NODES}
        errors: list[IdentityError] = []
        updates: list[SvidUpdate] = []
        source = WorkloadSource(provider.socket_path, trust_domain=TD, backoff=FAST)
        source.on_error(errors.append)
        source.on_rotate(updates.append)
        with source:
            provider.stop_agent()
            wait_until(lambda: bool(errors), "the source to notice the agent is gone")
            stopped_at = time.time()
            for _ in range(3):  # the data plane does not need the agent
                nodes.all_links_up()
                time.sleep(0.5)
            provider.start_agent()
            wait_until(lambda: len(updates) >= 2, "the source to reconnect", 60)
            assert source.fetch_x509_svid().spiffe_id == provider["self"].spiffe_id

            def reauthenticated() -> bool:
                nodes.all_links_up()
                seen = _last_seen(base, provider)
                return all(seen.get(n, 0.0) > stopped_at + 1 for n in MESH_NODES)

            nodes.wait(reauthenticated, "every node to authenticate after the restart", 60)
        for name in MESH_NODES:
            assert _link_downs(nodes, name) == downs[name], name
            assert nodes.status(name)["controller_reachable"] is True
        assert nodes.ping("n1", "n3")["received"] == 3


# -- SPIRE's own operations -------------------------------------------------------------------


def _fetch_as(workload: Workload, socket_path: Path) -> subprocess.CompletedProcess[str]:
    """Fetch an X.509-SVID as ``workload`` (a child with its group id): prints
    ``OK <spiffe id> <serial>`` or ``<grpc status> <details>``."""
    code = (
        "import grpc\n"
        "from spiffe._proto import workload_pb2 as pb, workload_pb2_grpc as rpc\n"
        f"ch = grpc.insecure_channel('unix:{socket_path}')\n"
        "stub = rpc.SpiffeWorkloadAPIStub(ch)\n"
        "try:\n"
        "    r = next(stub.FetchX509SVID(pb.X509SVIDRequest(), timeout=10,\n"
        "        metadata=[('workload.spiffe.io', 'true')]))\n"
        "    from cryptography import x509\n"
        "    c = x509.load_der_x509_certificate(r.svids[0].x509_svid)\n"
        "    print('OK', r.svids[0].spiffe_id, c.serial_number)\n"
        "except grpc.RpcError as e:\n"
        "    print(e.code().name, e.details())\n"
    )
    return subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        **spawn_kwargs(workload),
    )


def test_spire_tells_workloads_apart_by_their_selectors(make_spire: ProviderFactory) -> None:
    provider = make_spire(mesh_workloads())
    for name in ("controller", *MESH_NODES):
        result = _fetch_as(provider[name], provider.socket_path)
        assert result.stdout.split()[:2] == ["OK", str(provider[name].spiffe_id)], result
    stranger = Workload(APP_ID, gid=1_799_999_999)  # our uid, a group id no entry selects
    result = _fetch_as(stranger, provider.socket_path)
    assert result.stdout.strip() == "PERMISSION_DENIED no identity issued", result


def test_spire_validates_the_configuration_it_runs(make_spire: ProviderFactory) -> None:
    provider = make_spire({"self": APP_ID})
    assert isinstance(provider, SpireProvider)
    spire = provider.spire
    for binary, conf in (
        (spire.binaries.server, spire.base / "server.conf"),
        (spire.binaries.agent, spire.base / "agent.conf"),
    ):
        done = subprocess.run(
            [str(binary), "validate", "-config", str(conf)],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert done.returncode == 0, done.stdout + done.stderr
    assert "join_token =" not in (spire.base / "agent.conf").read_text()
    assert (spire.token_path.stat().st_mode & 0o777) == 0o600
    assert spire.binaries.version().startswith("1.13")


def test_deleted_entry_is_not_renewed_and_the_node_leaves_the_mesh(
    make_spire: ProviderFactory, workdir: Path
) -> None:
    """Deleting n3's entry in SPIRE: the agent stops serving n3 any SVID, n3 can no longer
    authenticate, the controller expires its record (``--node-ttl``) and n1, n2 drop it while
    keeping their own link."""
    provider = make_spire(mesh_workloads(), svid_ttl=30.0)
    assert isinstance(provider, SpireProvider)
    # --node-ttl 15: three missed status reports (every 5 s) before a record expires.
    with running_mesh(provider, workdir, controller_args=("--node-ttl", "15")) as (base, nodes):
        assert _fetch_as(provider["n3"], provider.socket_path).stdout.startswith("OK")
        deleted_at = time.monotonic()
        provider.delete_entry("n3")

        def refused() -> bool:
            out = _fetch_as(provider["n3"], provider.socket_path).stdout.strip()
            return out == "PERMISSION_DENIED no identity issued"

        wait_until(refused, "the agent to stop serving n3", 60)
        refused_s = time.monotonic() - deleted_at

        def gone() -> bool:
            members = {n["node_id"] for n in _listing(base, provider)["nodes"]}
            assert {"n1", "n2"} <= members, members
            if "n3" in members:
                return False
            return all(_links(nodes.status(name)).get("n3") != "up" for name in ("n1", "n2"))

        nodes.wait(gone, "n3 to leave the mesh", 120)
        left_s = time.monotonic() - deleted_at
        print(f"spire: entry deleted -> no SVID after {refused_s:.1f} s, out of the mesh after "
              f"{left_s:.1f} s (controller --node-ttl 15)")  # fmt: skip
        assert _links(nodes.status("n1")).get("n2") == "up"
        assert nodes.ping("n1", "n2")["received"] == 3
        assert nodes.status("n3")["controller_reachable"] is False


def test_ca_rotation_keeps_the_mesh_linked(make_spire: ProviderFactory, workdir: Path) -> None:
    """SPIRE's CA rotation, the way an operator does it: prepare a new X.509 and JWT
    authority (published in the bundle first), activate it, taint the old one (agents replace
    every SVID it signed) and revoke it (gone from the bundle). The mesh stays linked and the
    nodes keep authenticating with JWT-SVIDs of the new key."""
    provider = make_spire(mesh_workloads(), svid_ttl=60.0, jwt_ttl=30.0)
    assert isinstance(provider, SpireProvider)
    admin = provider.admin
    with running_mesh(provider, workdir) as (base, nodes):
        downs = {name: _link_downs(nodes, name) for name in MESH_NODES}
        source = WorkloadSource(provider.socket_path, trust_domain=TD, backoff=FAST)
        with source:
            old = admin.authorities("x509")["active"]
            old_jwt = admin.authorities("jwt")["active"]
            assert old is not None
            assert old_jwt is not None
            prepared = admin.prepare_authority("x509")
            prepared_jwt = admin.prepare_authority("jwt")

            def bundle_size(n: int) -> Callable[[], bool]:
                def check() -> bool:
                    nodes.all_links_up()
                    ctx = source.current
                    assert ctx is not None
                    bundle = ctx.x509_bundle_set.get_bundle_for_trust_domain(TrustDomain(TD))
                    return bundle is not None and len(bundle.x509_authorities) == n

                return check

            nodes.wait(bundle_size(2), "the prepared authority in the agents' bundle", 60)
            admin.activate_authority("x509", prepared.authority_id)
            admin.activate_authority("jwt", prepared_jwt.authority_id)
            admin.taint_authority("x509", old.authority_id)
            admin.taint_authority("jwt", old_jwt.authority_id)
            new_ca = set(provider.x509_authorities())

            def resigned() -> bool:
                nodes.all_links_up()
                ctx = source.current
                assert ctx is not None
                issuer = ctx.default_svid.leaf.issuer
                return any(
                    x509.load_der_x509_certificate(der).subject == issuer
                    and x509.load_der_x509_certificate(der).not_valid_before_utc
                    > dt.datetime.now(dt.UTC) - dt.timedelta(minutes=5)
                    for der in new_ca
                )

            nodes.wait(resigned, "our SVID re-signed by the new authority", 90)
            admin.revoke_authority("x509", old.authority_id)
            admin.revoke_authority("jwt", old_jwt.authority_id)
            nodes.wait(bundle_size(1), "the old authority gone from the agents' bundle", 60)
            revoked_at = time.time()
            assert provider.jwt_key_ids() == {prepared_jwt.authority_id}

            def reauthenticated() -> bool:
                nodes.all_links_up()
                seen = _last_seen(base, provider)
                return all(seen.get(n, 0.0) > revoked_at + 1 for n in MESH_NODES)

            nodes.wait(reauthenticated, "the nodes to authenticate with the new JWT key", 90)
        for name in MESH_NODES:
            assert _link_downs(nodes, name) == downs[name], name
        assert nodes.ping("n1", "n3")["received"] == 3
