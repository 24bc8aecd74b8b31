"""SPIFFE/SPIRE identity over real Unix sockets: the embedded issuer and the Workload API source.

Every test runs a real :class:`EmbeddedIssuer` (gRPC over a Unix socket behind the
SO_PEERCRED relay) and talks to it with py-spiffe's stock ``WorkloadApiClient``, raw gRPC
stubs or our :class:`WorkloadSource`. Rotation waits poll with a generous deadline.
"""

from __future__ import annotations

import base64
import contextlib
import datetime as dt
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
from collections.abc import Callable, Iterator
from pathlib import Path

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
# with a foreign one fails; an SVID rotation leaves established mesh links up.

CONTROLLER_AUDIENCE = "x0tta6bl4-controller"
FOREIGN_TD = "foreign.example"
MESH_NODES = ("n1", "n2", "n3")


@contextlib.contextmanager
def running_controller(workdir: Path, issuer: EmbeddedIssuer) -> Iterator[str]:
    """``x0tta6bl4 controller`` (SQLite, local CA) on loopback using ``issuer``'s JWT bundles."""
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    log = workdir / "controller.log"
    proc = spawn_controller(
        [
            "--listen", f"127.0.0.1:{port}",
            "--store", f"sqlite:///{workdir / 'controller.db'}",
            "--local-ca",
            "--state-dir", str(workdir / "controller"),
            "--trust-domain", TD,
        ],
        env={"SPIFFE_ENDPOINT_SOCKET": f"unix://{issuer.socket_path}", "X0_LOG_FORMAT": "json"},
        log=log,
    )  # fmt: skip
    try:
        try:
            wait_ready(base, proc, timeout=90)
        except AssertionError as err:
            raise AssertionError(f"{err}\n{log.read_text(errors='replace')[-3000:]}") from None
        yield base
    finally:
        proc.terminate()
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)


def node_token(issuer: EmbeddedIssuer, trust_domain: str = TD) -> str:
    """A JWT-SVID for the controller audience, fetched from ``issuer`` over its Unix socket."""
    source = WorkloadSource(issuer.socket_path, trust_domain=trust_domain, backoff=FAST)
    token: str = source.fetch_jwt_svid(CONTROLLER_AUDIENCE).token
    return token


def test_registration_with_a_real_jwt_svid_succeeds_at_a_real_controller(
    make_issuer: IssuerFactory, workdir: Path
) -> None:
    issuer = make_issuer(entries=[Entry(os.geteuid(), NODE_ID)])
    key = SigningKey.generate()
    with running_controller(workdir, issuer) as base:
        response = httpx.post(
            f"{base}/api/v1/nodes/register",
            json=register_body(key, spiffe_id=str(NODE_ID), node_id="real-node"),
            headers=bearer(node_token(issuer)),
            timeout=30,
        )
        assert response.status_code == 200, response.text
        admission = response.json()
        assert admission["spiffe_id"] == str(NODE_ID)
        # The PQ SVID chains to the returned CA bundle and certifies our key and node ID.
        bundle = TrustBundle.from_pem(admission["trust_domain"], admission["ca_bundle"].encode())
        cert = x509.load_pem_x509_certificate(admission["pq_svid"].encode())
        verified = verify_svid(cert.public_bytes(serialization.Encoding.DER), bundle, time.time())
        assert verified.public_key_bytes == key.public_bytes
        assert verified.node_id == "real-node"
        assert verified.spiffe_id == str(NODE_ID)
        stored = httpx.get(
            f"{base}/api/v1/nodes/real-node", headers=bearer(node_token(issuer)), timeout=30
        )
    assert stored.status_code == 200, stored.text
    assert stored.json()["spiffe_id"] == str(NODE_ID)
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
    with running_controller(workdir, issuer) as base:
        before = httpx.get(
            f"{base}/api/v1/nodes", headers=bearer(node_token(issuer)), timeout=30
        ).json()
        token = node_token(foreign, foreign_td)
        response = httpx.post(
            f"{base}/api/v1/nodes/register",
            json=register_body(key, spiffe_id=str(foreign_id), node_id="intruder"),
            headers=bearer(token),
            timeout=30,
        )
        assert response.status_code in (401, 403), response.text
        assert token not in response.text
        after = httpx.get(
            f"{base}/api/v1/nodes", headers=bearer(node_token(issuer)), timeout=30
        ).json()
        missing = httpx.get(
            f"{base}/api/v1/nodes/intruder", headers=bearer(node_token(issuer)), timeout=30
        )
    assert after == before
    assert "intruder" not in {n["node_id"] for n in after["nodes"]}
    assert missing.status_code == 404
    assert token not in (workdir / "controller.log").read_text(errors="replace")


class NodeProcesses:
    """``x0tta6bl4 node`` subprocesses on loopback, logging to files."""

    def __init__(self, workdir: Path, base: str, issuer: EmbeddedIssuer) -> None:
        self.workdir = workdir
        self.base = base
        self.env = {
            **os.environ,
            "SPIFFE_ENDPOINT_SOCKET": f"unix://{issuer.socket_path}",
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
            extra=("--heartbeat-interval", "0.1", "--dead-after", "30"),
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

    def close(self) -> None:
        for proc in self.procs.values():
            proc.terminate()
        for proc in self.procs.values():
            try:
                proc.wait(20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(10)


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


def test_svid_rotation_leaves_established_mesh_links_up(
    make_issuer: IssuerFactory, workdir: Path
) -> None:
    # X.509-SVIDs live 5 s and rotate at half-life; JWT-SVIDs live min(ttl, 300 s) = 5 s, so
    # the nodes' control-plane calls run on ever new SVIDs while the test watches the links.
    issuer = make_issuer(entries=[Entry(os.geteuid(), NODE_ID)], svid_ttl=5.0)
    with running_controller(workdir, issuer) as base:
        nodes = NodeProcesses(workdir, base, issuer)
        try:
            for name in MESH_NODES:
                nodes.start(name)

            def linked() -> bool:
                for name in MESH_NODES:
                    status = nodes.status(name)
                    others = set(MESH_NODES) - {name}
                    routes = status.get("routes", [])
                    assert isinstance(routes, list)
                    if {p for p, s in _links(status).items() if s == "up"} != others:
                        return False
                    if {str(r["dest"]) for r in routes} != others:
                        return False
                return True

            nodes.wait(linked, "three nodes fully linked")
            downs = {name: _link_downs(nodes, name) for name in MESH_NODES}

            updates: list[SvidUpdate] = []
            source = WorkloadSource(issuer.socket_path, trust_domain=TD, backoff=FAST)
            source.on_rotate(updates.append)
            samples = 0
            with source:
                first = source.current
                assert first is not None
                first_serial = first.default_svid.leaf.serial_number

                def rotated_and_refetched() -> bool:
                    # Every sample while we wait: every link of every node is still up.
                    nonlocal samples
                    for name in MESH_NODES:
                        links = _links(nodes.status(name))
                        assert set(links.values()) == {"up"}, (name, links)
                        samples += 1
                    serials = {u.svid.leaf.serial_number for u in updates}
                    if len(serials - {first_serial}) < 2:
                        return False
                    # Each node authenticated to the controller (PUT .../status every 5 s,
                    # with a JWT-SVID fetched for that call) after the first rotation.
                    listing = httpx.get(
                        f"{base}/api/v1/nodes", headers=bearer(node_token(issuer)), timeout=10
                    ).json()
                    seen = {n["node_id"]: float(n["last_seen"]) for n in listing["nodes"]}
                    return all(seen.get(name, 0.0) > rotated_at for name in MESH_NODES)

                wait_until(lambda: len(updates) >= 2, "the first SVID rotation", 60)
                rotated_at = time.time()
                nodes.wait(rotated_and_refetched, "a second rotation and node re-authentication")
                served = source.fetch_x509_svid().leaf.serial_number
            assert served != first_serial
            assert samples >= 3 * len(MESH_NODES)

            for name in MESH_NODES:
                after = nodes.status(name)
                assert _link_downs(nodes, name) == downs[name], name
                assert set(_links(after).values()) == {"up"}
                assert after["registered"] is True
                assert after["controller_reachable"] is True
            for src, dst in (("n1", "n3"), ("n3", "n2"), ("n2", "n1")):
                answer = httpx.get(
                    f"http://127.0.0.1:{nodes.http[src]}/v1/ping",
                    params={"target": dst, "count": "3", "timeout": "5"},
                    timeout=60,
                ).json()
                assert answer["received"] == 3, answer
        finally:
            nodes.close()
