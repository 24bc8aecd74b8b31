"""SVID verification, socket resolution and backoff (x0tta6bl4.identity.verify / workload_source).

Certificates and tokens come from the issuer's real :class:`Authority` in a temporary state dir.
"""

from __future__ import annotations

import datetime as dt
import time
from pathlib import Path

import jwt
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from spiffe import JwtBundleSet, TrustDomain, X509BundleSet

from x0tta6bl4.identity import (
    DEFAULT_SOCKET,
    Backoff,
    InvalidJwtSvidError,
    InvalidSpiffeIdError,
    JwtAudienceError,
    JwtExpiredError,
    UntrustedSvidError,
    WorkloadApiError,
    WrongTrustDomainError,
    resolve_socket_path,
    validate_jwt_svid,
    verify_x509_svid,
    workload_id,
)
from x0tta6bl4.identity.issuer import Authority

TD = TrustDomain("x0tta6bl4.mesh")
SID = workload_id(TD, "x0tta6bl4", "x0tta6bl4-app")
AUD = "x0tta6bl4-controller"


@pytest.fixture(scope="module")
def authority(tmp_path_factory: pytest.TempPathFactory) -> Authority:
    return Authority.load_or_create(tmp_path_factory.mktemp("state"), TD)


def test_authority_is_reloaded_not_regenerated(authority: Authority, tmp_path: Path) -> None:
    first = Authority.load_or_create(tmp_path, TD)
    second = Authority.load_or_create(tmp_path, TD)
    assert first.ca_certificate == second.ca_certificate
    assert first.jwt_key_id == second.jwt_key_id
    other = Authority.load_or_create(tmp_path, TrustDomain("other.mesh"))
    assert other.ca_certificate != first.ca_certificate  # another trust domain: a new CA


def test_jwt_svid_round_trip_and_header(authority: Authority) -> None:
    token = authority.sign_jwt_svid(SID, [AUD, "extra"], 60, time.time())
    header = jwt.get_unverified_header(token)
    assert header["alg"] == "ES256"
    assert header["kid"] == authority.jwt_key_id
    bundles = JwtBundleSet.of([authority.jwt_bundle()])
    assert validate_jwt_svid(token, AUD, bundles, trust_domain=TD) == SID
    assert validate_jwt_svid(token, "extra", bundles) == SID


def test_expired_jwt_svid(authority: Authority) -> None:
    token = authority.sign_jwt_svid(SID, [AUD], 10, time.time() - 3600)
    with pytest.raises(JwtExpiredError, match="expired"):
        validate_jwt_svid(token, AUD, JwtBundleSet.of([authority.jwt_bundle()]))


def test_wrong_audience_and_wrong_trust_domain(authority: Authority) -> None:
    token = authority.sign_jwt_svid(SID, ["someone-else"], 60, time.time())
    bundles = JwtBundleSet.of([authority.jwt_bundle()])
    with pytest.raises(JwtAudienceError):
        validate_jwt_svid(token, AUD, bundles)
    with pytest.raises(JwtAudienceError):
        validate_jwt_svid(token, "", bundles)
    with pytest.raises(WrongTrustDomainError):
        validate_jwt_svid(token, "someone-else", bundles, trust_domain="other.mesh")


@pytest.mark.parametrize(
    "claims",
    [
        {"sub": str(SID), "aud": [AUD]},  # no exp
        {"sub": str(SID), "exp": 2**40},  # no aud
        {"aud": [AUD], "exp": 2**40},  # no sub
        {"sub": "not-a-spiffe-id", "aud": [AUD], "exp": 2**40},
    ],
)
def test_tokens_missing_required_claims_are_invalid(claims: dict[str, object]) -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    token = jwt.encode(claims, key, algorithm="ES256", headers={"kid": "k"})
    with pytest.raises(InvalidJwtSvidError):
        validate_jwt_svid(token, AUD, JwtBundleSet.of([]))


def test_garbage_and_unsigned_tokens_are_invalid(authority: Authority) -> None:
    bundles = JwtBundleSet.of([authority.jwt_bundle()])
    for token in ("", "a.b.c", "x" * 20000):
        with pytest.raises(InvalidJwtSvidError):
            validate_jwt_svid(token, AUD, bundles)
    unsigned = jwt.encode({"sub": str(SID), "aud": [AUD], "exp": 2**40}, key=None, algorithm="none")
    with pytest.raises(InvalidJwtSvidError) as info:
        validate_jwt_svid(unsigned, AUD, bundles)
    assert unsigned not in str(info.value)


def test_x509_svid_chain_checks(authority: Authority) -> None:
    issued = authority.issue_x509_svid(SID, 60, time.time())
    bundles = X509BundleSet.of([authority.x509_bundle()])
    assert verify_x509_svid([issued.certificate], bundles) == SID
    with pytest.raises(WrongTrustDomainError):
        verify_x509_svid([issued.certificate], bundles, trust_domain="other.mesh")
    with pytest.raises(UntrustedSvidError, match="empty"):
        verify_x509_svid([], bundles)
    # a chain that claims the CA but whose link is broken
    with pytest.raises(UntrustedSvidError, match="broken"):
        verify_x509_svid([issued.certificate, issued.certificate], bundles)


def _self_signed(uris: list[str]) -> x509.Certificate:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([])
    now = dt.datetime.now(dt.UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(1)
        .not_valid_before(now - dt.timedelta(minutes=1))
        .not_valid_after(now + dt.timedelta(minutes=1))
    )
    if uris:
        builder = builder.add_extension(
            x509.SubjectAlternativeName([x509.UniformResourceIdentifier(u) for u in uris]),
            critical=False,
        )
    return builder.sign(key, hashes.SHA256())


def test_x509_svid_needs_exactly_one_spiffe_uri(authority: Authority) -> None:
    bundles = X509BundleSet.of([authority.x509_bundle()])
    for uris in ([], [str(SID), str(SID) + "2"], ["https://example.org/x"]):
        with pytest.raises(InvalidSpiffeIdError):
            verify_x509_svid([_self_signed(uris)], bundles)
    with pytest.raises(UntrustedSvidError):
        verify_x509_svid([_self_signed([str(SID)])], bundles)


def test_socket_resolution_order(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("SPIFFE_ENDPOINT_SOCKET", raising=False)
    monkeypatch.delenv("X0_SPIFFE_SOCKET", raising=False)
    assert resolve_socket_path() == Path(DEFAULT_SOCKET)
    assert DEFAULT_SOCKET == "/run/spire/agent-sockets/spire-agent.sock"
    monkeypatch.setenv("X0_SPIFFE_SOCKET", "/x0/agent.sock")
    assert resolve_socket_path() == Path("/x0/agent.sock")
    monkeypatch.setenv("SPIFFE_ENDPOINT_SOCKET", "unix:///spiffe/agent.sock")
    assert resolve_socket_path() == Path("/spiffe/agent.sock")
    assert resolve_socket_path("unix:/explicit.sock") == Path("/explicit.sock")
    assert resolve_socket_path(Path("/explicit.sock")) == Path("/explicit.sock")


@pytest.mark.parametrize("endpoint", ["tcp://127.0.0.1:8081", "relative/agent.sock"])
def test_unsupported_endpoints_are_refused(endpoint: str) -> None:
    with pytest.raises(WorkloadApiError):
        resolve_socket_path(endpoint)


def test_backoff_grows_and_caps() -> None:
    delays = Backoff(initial=0.1, factor=2, max_delay=0.5).delays()
    assert [round(next(delays), 3) for _ in range(5)] == [0.1, 0.2, 0.4, 0.5, 0.5]
    for bad in ({"initial": 0}, {"factor": 0.5}, {"attempts": 0}, {"max_delay": 0.01}):
        with pytest.raises(ValueError, match="backoff"):
            Backoff(**bad)  # type: ignore[arg-type]
