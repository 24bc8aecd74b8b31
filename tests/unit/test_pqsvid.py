"""PQ X.509-SVIDs: issuing, the certificate profile, every rejection and proof of possession."""

from __future__ import annotations

import datetime
import hashlib
import struct
from collections.abc import Sequence

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, mldsa
from cryptography.x509 import verification
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID, SignatureAlgorithmOID
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.pqfixtures import (
    CA_CREATED_AT,
    NOW,
    default_spiffe_id,
    make_bundle,
    make_ca,
    make_key,
    make_node_credential,
)
from x0tta6bl4.crypto import pqsvid
from x0tta6bl4.crypto.errors import BadSignatureError, CryptoError, InvalidKeyError
from x0tta6bl4.crypto.pqsvid import (
    POP_VERSION,
    CaAsLeafError,
    ExpiredError,
    InvalidNodeIdError,
    KeyMismatchError,
    MalformedCertificateError,
    MeshCA,
    MissingSpiffeIdError,
    MultipleSpiffeIdsError,
    NotCaError,
    NotMlDsaKeyError,
    NotYetValidError,
    PqSvidError,
    TrustBundle,
    UnknownIssuerError,
    pop_message,
    proof_of_possession,
    verify_proof_of_possession,
    verify_svid,
)
from x0tta6bl4.crypto.suite import SignatureContext, SigningKey
from x0tta6bl4.identity.errors import (
    InvalidSpiffeIdError,
    InvalidTrustDomainError,
    WrongTrustDomainError,
)

TD = "x0tta6bl4.mesh"
SID = default_spiffe_id(TD)
Key = mldsa.MLDSA65PrivateKey | mldsa.MLDSA44PrivateKey | ec.EllipticCurvePrivateKey


def utc(ts: float) -> datetime.datetime:
    return datetime.datetime.fromtimestamp(ts, tz=datetime.UTC)


def ski_of(cert: x509.Certificate) -> bytes:
    return cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value.digest


def build_cert(
    *,
    issuer: MeshCA | None = None,
    issuer_key: Key | None = None,
    issuer_name: x509.Name | None = None,
    aki: bytes | None = None,
    subject_public_key: object | None = None,
    uris: Sequence[str] = (SID,),
    dns: Sequence[str] = (),
    cns: Sequence[str] = ("node-1",),
    ca: bool = False,
    key_cert_sign: bool = False,
    not_before: float = NOW - 60,
    not_after: float = NOW + 3600,
    with_aki: bool = True,
) -> bytes:
    """A leaf built directly with cryptography's builder, to make certificates that
    MeshCA.issue refuses to make. Defaults: a well-formed SVID issued by the default CA."""
    if issuer is None and issuer_key is None:
        issuer = make_ca()
    signer: Key = issuer.key.key if issuer is not None else issuer_key  # type: ignore[assignment]
    name = issuer_name if issuer_name is not None else issuer.cert.subject  # type: ignore[union-attr]
    if aki is None and issuer is not None:
        aki = ski_of(issuer.cert)
    public = (
        subject_public_key
        if subject_public_key is not None
        else make_key("build/leaf").key.public_key()
    )
    builder = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn) for cn in cns]))
        .issuer_name(name)
        .public_key(public)  # type: ignore[arg-type]
        .serial_number(x509.random_serial_number())
        .not_valid_before(utc(not_before))
        .not_valid_after(utc(not_after))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=key_cert_sign,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
    )
    if with_aki and aki is not None:
        builder = builder.add_extension(
            x509.AuthorityKeyIdentifier(aki, None, None), critical=False
        )
    names: list[x509.GeneralName] = [x509.UniformResourceIdentifier(u) for u in uris]
    names += [x509.DNSName(d) for d in dns]
    if names:
        builder = builder.add_extension(x509.SubjectAlternativeName(names), critical=False)
    algorithm = hashes.SHA256() if isinstance(signer, ec.EllipticCurvePrivateKey) else None
    cert = builder.sign(signer, algorithm)
    return cert.public_bytes(serialization.Encoding.DER)


# --- round trip and profile -------------------------------------------------------------------


def test_issue_verify_round_trip() -> None:
    ca = make_ca()
    cred = make_node_credential(ca, "node-1")
    ident = verify_svid(cred.cert_der, ca.bundle(), NOW)
    assert ident.spiffe_id == SID
    assert ident.node_id == "node-1"
    assert ident.trust_domain == TD
    assert ident.public_key_bytes == cred.key.public_bytes
    assert ident.public_key.public_bytes_raw() == cred.key.public_bytes
    assert ident.not_before == NOW - 60
    assert ident.not_after == NOW + 3600
    assert ident.cert_der == cred.cert_der
    assert ident.serial.bit_length() == 128


def test_verified_key_checks_the_nodes_signatures() -> None:
    cred = make_node_credential(make_ca(), "node-sig")
    ident = cred.identity()
    sig = cred.key.sign(SignatureContext.HANDSHAKE_INITIATOR, b"transcript")
    ident.public_key.verify(sig, b"transcript", SignatureContext.HANDSHAKE_INITIATOR.value)


def test_leaf_profile() -> None:
    ca = make_ca()
    cred = make_node_credential(ca, "node-1")
    cert = x509.load_der_x509_certificate(cred.cert_der)
    ext = cert.extensions
    assert cert.version is x509.Version.v3
    assert cert.signature_algorithm_oid == SignatureAlgorithmOID.ML_DSA_65
    assert isinstance(cert.public_key(), mldsa.MLDSA65PublicKey)
    assert cert.subject.rfc4514_string() == "CN=node-1"
    assert cert.issuer == ca.cert.subject
    bc = ext.get_extension_for_class(x509.BasicConstraints)
    assert bc.critical
    assert bc.value.ca is False
    ku = ext.get_extension_for_class(x509.KeyUsage)
    assert ku.critical
    assert ku.value.digital_signature
    assert not (ku.value.key_cert_sign)
    assert not ku.value.crl_sign
    assert not ku.value.content_commitment
    eku = ext.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert set(eku) == {ExtendedKeyUsageOID.CLIENT_AUTH, ExtendedKeyUsageOID.SERVER_AUTH}
    ski = ext.get_extension_for_class(x509.SubjectKeyIdentifier).value
    assert ski == x509.SubjectKeyIdentifier.from_public_key(cert.public_key())
    aki = ext.get_extension_for_class(x509.AuthorityKeyIdentifier).value
    assert aki.key_identifier == ski_of(ca.cert)
    san = ext.get_extension_for_class(x509.SubjectAlternativeName).value
    assert list(san) == [x509.UniformResourceIdentifier(SID)]
    assert len(ext) == 6
    cert.verify_directly_issued_by(ca.cert)


def test_ca_profile() -> None:
    ca = MeshCA.create("example.org", now=NOW, ttl_seconds=86400, common_name="Example CA")
    cert = ca.cert
    assert ca.trust_domain == "example.org"
    assert cert.subject == cert.issuer
    assert cert.subject.rfc4514_string() == "CN=Example CA"
    assert cert.signature_algorithm_oid == SignatureAlgorithmOID.ML_DSA_65
    bc = cert.extensions.get_extension_for_class(x509.BasicConstraints)
    assert bc.critical
    assert bc.value.ca
    assert bc.value.path_length == 0
    ku = cert.extensions.get_extension_for_class(x509.KeyUsage)
    assert ku.critical
    assert ku.value.key_cert_sign
    assert ku.value.crl_sign
    assert not ku.value.digital_signature
    aki = cert.extensions.get_extension_for_class(x509.AuthorityKeyIdentifier).value
    assert aki.key_identifier == ski_of(cert)
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert list(san) == [x509.UniformResourceIdentifier("spiffe://example.org")]
    assert cert.not_valid_before_utc == utc(NOW - 60)
    assert cert.not_valid_after_utc == utc(NOW + 86400)
    cert.verify_directly_issued_by(cert)
    assert "PRIVATE" not in repr(ca)


def test_cryptography_path_validation_accepts_the_chain() -> None:
    """pyca/cryptography's RFC 5280 verifier (which supports ML-DSA) accepts our profile."""
    ca = make_ca()
    leaf = x509.load_der_x509_certificate(make_node_credential(ca, "node-1").cert_der)
    verifier = (
        verification.PolicyBuilder()
        .store(verification.Store([ca.cert]))
        .time(utc(NOW))
        .build_client_verifier()
    )
    verified = verifier.verify(leaf, [])
    assert verified.subjects is not None
    assert x509.UniformResourceIdentifier(SID) in verified.subjects


def test_not_after_capped_at_ca_expiry() -> None:
    ca = make_ca(name="short", now=NOW, ttl_seconds=1800)
    cred = make_node_credential(ca, "node-1", ttl_seconds=3600)
    ident = verify_svid(cred.cert_der, ca.bundle(), NOW)
    assert ident.not_after == ca.not_after == NOW + 1800


def test_issue_refuses_when_ca_not_valid() -> None:
    ca = make_ca(name="short", now=NOW, ttl_seconds=1800)
    key = make_key("node/x")
    with pytest.raises(ExpiredError):
        ca.issue(spiffe_id=SID, node_id="n", public_key=key.public_bytes, now=NOW + 1801)
    with pytest.raises(NotYetValidError):
        ca.issue(spiffe_id=SID, node_id="n", public_key=key.public_bytes, now=NOW - 61)


@pytest.mark.parametrize(
    ("kwargs", "error"),
    [
        ({"node_id": ""}, InvalidNodeIdError),
        ({"node_id": "n" * 65}, InvalidNodeIdError),
        ({"node_id": "bad node"}, InvalidNodeIdError),
        ({"node_id": "node\n"}, InvalidNodeIdError),
        ({"node_id": "nöde"}, InvalidNodeIdError),
        ({"spiffe_id": "https://x0tta6bl4.mesh/ns/a/sa/b"}, InvalidSpiffeIdError),
        ({"spiffe_id": "spiffe://x0tta6bl4.mesh"}, InvalidSpiffeIdError),
        ({"spiffe_id": "spiffe://X0TTA6BL4.mesh/ns/a/sa/b"}, InvalidSpiffeIdError),
        ({"spiffe_id": "spiffe://x0tta6bl4.mesh/ns/../sa/b"}, InvalidSpiffeIdError),
        ({"spiffe_id": "spiffe://other.mesh/ns/a/sa/b"}, WrongTrustDomainError),
        ({"public_key": b"\x00" * 32}, InvalidKeyError),
        ({"ttl_seconds": 0}, ValueError),
    ],
)
def test_issue_rejects_bad_input(kwargs: dict[str, object], error: type[Exception]) -> None:
    args: dict[str, object] = {
        "spiffe_id": SID,
        "node_id": "node-1",
        "public_key": make_key("node/node-1").public_bytes,
        "now": NOW,
    }
    args.update(kwargs)
    with pytest.raises(error):
        make_ca().issue(**args)  # type: ignore[arg-type]


def test_node_id_boundaries_accepted() -> None:
    ca = make_ca()
    for node_id in ("a", "n" * 64, "ip-10-0-0-1.ec2_internal"):
        cred = make_node_credential(ca, node_id)
        assert verify_svid(cred.cert_der, ca.bundle(), NOW).node_id == node_id


# --- rejections -------------------------------------------------------------------------------


def test_another_ca_is_unknown_issuer() -> None:
    other = make_ca(name="other")
    cred = make_node_credential(other, "node-1")
    with pytest.raises(UnknownIssuerError, match="not a CA of"):
        verify_svid(cred.cert_der, make_ca().bundle(), NOW)


def test_forged_issuer_name_and_aki_fail_on_signature() -> None:
    """A CA that copies the real CA's name and key identifier still cannot sign for it."""
    real = make_ca()
    other = make_ca(name="other")
    der = build_cert(issuer_key=other.key.key, issuer_name=real.cert.subject, aki=ski_of(real.cert))
    with pytest.raises(UnknownIssuerError, match="signature"):
        verify_svid(der, real.bundle(), NOW)


def test_leaf_without_aki_is_unknown_issuer() -> None:
    with pytest.raises(UnknownIssuerError, match="authority key identifier"):
        verify_svid(build_cert(with_aki=False), make_ca().bundle(), NOW)


def test_builder_control_cert_verifies() -> None:
    """The hand-built certificates below differ from this one only in what they test."""
    ident = verify_svid(build_cert(), make_ca().bundle(), NOW)
    assert (ident.spiffe_id, ident.node_id) == (SID, "node-1")


def test_expired_and_not_yet_valid() -> None:
    ca = make_ca()
    der = make_node_credential(ca, "node-1").cert_der
    bundle = ca.bundle()
    verify_svid(der, bundle, NOW + 3600)  # notAfter is inclusive
    verify_svid(der, bundle, NOW - 60)  # notBefore is inclusive (60 s clock skew)
    with pytest.raises(ExpiredError, match="certificate expired"):
        verify_svid(der, bundle, NOW + 3601)
    with pytest.raises(NotYetValidError, match="certificate is not valid before"):
        verify_svid(der, bundle, NOW - 61)


def test_ca_validity_is_checked_too() -> None:
    ca = make_ca(name="short", now=NOW, ttl_seconds=1800)
    long_leaf = build_cert(issuer=ca, not_before=NOW - 7200, not_after=NOW + 7200)
    bundle = ca.bundle()
    verify_svid(long_leaf, bundle, NOW)
    with pytest.raises(ExpiredError, match="issuing CA"):
        verify_svid(long_leaf, bundle, NOW + 3600)
    with pytest.raises(NotYetValidError, match="issuing CA"):
        verify_svid(long_leaf, bundle, NOW - 3600)


@pytest.mark.parametrize(
    ("uris", "dns"), [((), ()), ((), ("node-1.x0tta6bl4.mesh",))], ids=["no-san", "dns-only"]
)
def test_missing_spiffe_id(uris: tuple[str, ...], dns: tuple[str, ...]) -> None:
    with pytest.raises(MissingSpiffeIdError):
        verify_svid(build_cert(uris=uris, dns=dns), make_ca().bundle(), NOW)


@pytest.mark.parametrize(
    "uri",
    [
        "https://x0tta6bl4.mesh/ns/a/sa/b",
        "spiffe://x0tta6bl4.mesh",
        "spiffe://x0tta6bl4.mesh/ns//sa/b",
        "spiffe://x0tta6bl4.mesh/ns/a/sa/b/",
        "spiffe://X0TTA6BL4.mesh/ns/a/sa/b",
        "spiffe://x0tta6bl4.mesh/ns/a%20b",
        "spiffe://user@x0tta6bl4.mesh/ns/a",
    ],
)
def test_invalid_spiffe_id(uri: str) -> None:
    with pytest.raises(InvalidSpiffeIdError):
        verify_svid(build_cert(uris=(uri,)), make_ca().bundle(), NOW)


def test_two_spiffe_ids() -> None:
    der = build_cert(uris=(SID, f"spiffe://{TD}/ns/other/sa/other"))
    with pytest.raises(MultipleSpiffeIdsError):
        verify_svid(der, make_ca().bundle(), NOW)


def test_wrong_trust_domain() -> None:
    der = build_cert(uris=("spiffe://evil.example/ns/x0tta6bl4/sa/x0tta6bl4-node",))
    with pytest.raises(WrongTrustDomainError):
        verify_svid(der, make_ca().bundle(), NOW)
    # One vocabulary: the identity error catches it, and so does the data plane's
    # ``except CryptoError`` (everything wrong with a certificate is one).
    with pytest.raises(pqsvid.ForeignTrustDomainError) as info:
        verify_svid(der, make_ca().bundle(), NOW)
    assert isinstance(info.value, CryptoError)
    bad = build_cert(uris=("spiffe://X0TTA6BL4.mesh/ns/a/sa/b",))
    with pytest.raises(pqsvid.SpiffeIdSanError) as san:
        verify_svid(bad, make_ca().bundle(), NOW)
    assert isinstance(san.value, InvalidSpiffeIdError)
    assert isinstance(san.value, CryptoError)


def test_unknown_critical_extension_is_malformed() -> None:
    ca = make_ca()
    leaf = x509.load_der_x509_certificate(build_cert())
    builder = (
        x509.CertificateBuilder()
        .subject_name(leaf.subject)
        .issuer_name(leaf.issuer)
        .public_key(leaf.public_key())
        .serial_number(leaf.serial_number)
        .not_valid_before(leaf.not_valid_before_utc)
        .not_valid_after(leaf.not_valid_after_utc)
    )
    for ext in leaf.extensions:
        builder = builder.add_extension(ext.value, ext.critical)
    unknown = x509.UnrecognizedExtension(x509.ObjectIdentifier("1.3.6.1.4.1.99999.1"), b"\x05\x00")
    bundle = ca.bundle()
    verify_svid(
        builder.add_extension(unknown, critical=False)
        .sign(ca.key.key, None)
        .public_bytes(serialization.Encoding.DER),
        bundle,
        NOW,
    )
    critical = builder.add_extension(unknown, critical=True).sign(ca.key.key, None)
    with pytest.raises(MalformedCertificateError, match="critical extension"):
        verify_svid(critical.public_bytes(serialization.Encoding.DER), bundle, NOW)


@pytest.mark.parametrize("cns", [(), ("bad node",), ("a", "b")], ids=["none", "invalid", "two"])
def test_missing_or_invalid_node_id(cns: tuple[str, ...]) -> None:
    with pytest.raises(InvalidNodeIdError):
        verify_svid(build_cert(cns=cns), make_ca().bundle(), NOW)


def test_ca_certificate_as_leaf() -> None:
    ca = make_ca()
    for candidate in (ca, make_ca(name="other")):
        der = candidate.cert.public_bytes(serialization.Encoding.DER)
        with pytest.raises(CaAsLeafError):
            verify_svid(der, ca.bundle(), NOW)
    with pytest.raises(CaAsLeafError):
        verify_svid(build_cert(ca=True), ca.bundle(), NOW)
    with pytest.raises(CaAsLeafError):
        verify_svid(build_cert(key_cert_sign=True), ca.bundle(), NOW)


@pytest.mark.parametrize(
    "public_key",
    [
        ed25519.Ed25519PrivateKey.generate().public_key(),
        ec.generate_private_key(ec.SECP256R1()).public_key(),
        mldsa.MLDSA44PrivateKey.generate().public_key(),
    ],
    ids=["ed25519", "p256", "ml-dsa-44"],
)
def test_non_mldsa65_leaf_key(public_key: object) -> None:
    with pytest.raises(NotMlDsaKeyError):
        verify_svid(build_cert(subject_public_key=public_key), make_ca().bundle(), NOW)


def test_mldsa_leaf_signed_by_ec_ca() -> None:
    """Even naming the real CA as issuer, an ECDSA signature is refused as non-ML-DSA."""
    real = make_ca()
    ec_key = ec.generate_private_key(ec.SECP256R1())
    der = build_cert(issuer_key=ec_key, issuer_name=real.cert.subject, aki=ski_of(real.cert))
    with pytest.raises(NotMlDsaKeyError, match="not ML-DSA-65"):
        verify_svid(der, real.bundle(), NOW)


@pytest.mark.parametrize(
    "data",
    [b"", b"garbage", b"\x30\x03\x02\x01\x01", b"\x30\x82\xff\xff" + b"\x00" * 100],
    ids=["empty", "text", "tiny-sequence", "bad-length"],
)
def test_garbage_der(data: bytes) -> None:
    with pytest.raises(MalformedCertificateError):
        verify_svid(data, make_ca().bundle(), NOW)


def test_truncated_and_pem_input_are_malformed() -> None:
    ca = make_ca()
    der = make_node_credential(ca, "node-1").cert_der
    with pytest.raises(MalformedCertificateError):
        verify_svid(der[:-1], ca.bundle(), NOW)
    pem = x509.load_der_x509_certificate(der).public_bytes(serialization.Encoding.PEM)
    with pytest.raises(MalformedCertificateError):
        verify_svid(pem, ca.bundle(), NOW)


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=2000))
def test_arbitrary_bytes_raise_only_pqsvid_errors(data: bytes) -> None:
    with pytest.raises(PqSvidError):
        verify_svid(data, make_ca().bundle(), NOW)


def test_every_single_bit_flip_is_rejected() -> None:
    """All 45 000 single-bit flips of a valid SVID raise a PqSvidError (and nothing else)."""
    ca = make_ca()
    der = make_node_credential(ca, "node-1").cert_der
    bundle = ca.bundle()
    accepted = []
    for position in range(len(der) * 8):
        flipped = bytearray(der)
        flipped[position // 8] ^= 1 << (position % 8)
        try:
            verify_svid(bytes(flipped), bundle, NOW)
        except PqSvidError:
            continue
        accepted.append(position)
    assert accepted == []


def test_errors_are_crypto_errors() -> None:
    for name in pqsvid.__all__:
        obj = getattr(pqsvid, name)
        if isinstance(obj, type) and issubclass(obj, Exception):
            assert issubclass(obj, PqSvidError)
            assert issubclass(obj, CryptoError)


# --- trust bundles and CA rotation ------------------------------------------------------------


def test_rotation_bundle_verifies_leaves_of_both_cas() -> None:
    old = make_ca(name="old")
    new = make_ca(name="new")
    old_leaf = make_node_credential(old, "node-a").cert_der
    new_leaf = make_node_credential(new, "node-b").cert_der
    bundle = TrustBundle.from_pem(TD, old.cert_pem() + new.cert_pem())
    assert len(bundle) == 2
    assert verify_svid(old_leaf, bundle, NOW).node_id == "node-a"
    assert verify_svid(new_leaf, bundle, NOW).node_id == "node-b"
    with pytest.raises(UnknownIssuerError):
        verify_svid(old_leaf, new.bundle(), NOW)
    again = TrustBundle.from_pem(TD, bundle.to_pem())
    assert again.cas == bundle.cas
    assert verify_svid(old_leaf, again, NOW).node_id == "node-a"


def test_renewed_ca_with_the_same_key() -> None:
    """A CA re-issued with the same key (same name and SKI) verifies old leaves."""
    short = make_ca(name="renew", now=NOW, ttl_seconds=7200)
    renewed = MeshCA.create(
        TD, now=NOW + 3600, common_name=short.cert.subject.rfc4514_string()[3:], key=short.key
    )
    leaf = build_cert(issuer=short, not_before=NOW, not_after=NOW + 86400)
    bundle = make_bundle(short, renewed)
    verify_svid(leaf, bundle, NOW + 10000)  # only the renewed CA is valid then
    with pytest.raises(ExpiredError, match="issuing CA"):
        verify_svid(leaf, short.bundle(), NOW + 10000)


def test_bundle_deduplicates() -> None:
    ca = make_ca()
    assert len(TrustBundle(TD, [ca.cert, ca.cert])) == 1


def test_bundle_validation() -> None:
    ca = make_ca()
    with pytest.raises(MalformedCertificateError):
        TrustBundle(TD, [])
    with pytest.raises(MalformedCertificateError):
        TrustBundle.from_pem(TD, b"not pem")
    with pytest.raises(InvalidTrustDomainError):
        TrustBundle("Not A Domain", [ca.cert])
    with pytest.raises(WrongTrustDomainError):
        TrustBundle("other.mesh", [ca.cert])
    leaf = x509.load_der_x509_certificate(make_node_credential(ca, "node-1").cert_der)
    with pytest.raises(NotCaError):
        TrustBundle(TD, [leaf])


def test_bundle_rejects_non_mldsa_ca() -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "EC CA")])
    ec_ca = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(1)
        .not_valid_before(utc(NOW - 60))
        .not_valid_after(utc(NOW + 86400))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), False)
        .sign(key, hashes.SHA256())
    )
    with pytest.raises(NotMlDsaKeyError):
        TrustBundle(TD, [ec_ca])


# --- MeshCA.load ------------------------------------------------------------------------------


def test_load_round_trip() -> None:
    ca = make_ca()
    loaded = MeshCA.load(ca.cert_pem(), ca.key_pem())
    assert loaded.trust_domain == TD
    assert loaded.cert == ca.cert
    cred = loaded.issue(
        spiffe_id=SID, node_id="n1", public_key=make_key("node/n1").public_bytes, now=NOW
    )
    assert verify_svid(cred, ca.bundle(), NOW).node_id == "n1"


def test_load_rejects_mismatched_key() -> None:
    ca = make_ca()
    other = make_ca(name="other")
    with pytest.raises(KeyMismatchError):
        MeshCA.load(ca.cert_pem(), other.key_pem())


def test_load_rejects_bad_inputs() -> None:
    ca = make_ca()
    with pytest.raises(MalformedCertificateError):
        MeshCA.load(b"junk", ca.key_pem())
    with pytest.raises(InvalidKeyError):
        MeshCA.load(ca.cert_pem(), b"junk")
    ec_pem = ec.generate_private_key(ec.SECP256R1()).private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    with pytest.raises(InvalidKeyError):
        MeshCA.load(ca.cert_pem(), ec_pem)
    cred = make_node_credential(ca, "node-1")
    leaf_pem = x509.load_der_x509_certificate(cred.cert_der).public_bytes(
        serialization.Encoding.PEM
    )
    with pytest.raises(NotCaError):
        MeshCA.load(leaf_pem, cred.key.to_pem(), trust_domain=TD)
    with pytest.raises(WrongTrustDomainError):
        MeshCA.load(ca.cert_pem(), ca.key_pem(), trust_domain="other.mesh")


def test_create_rejects_bad_trust_domain() -> None:
    with pytest.raises(InvalidTrustDomainError):
        MeshCA.create("spiffe://x0tta6bl4.mesh/path", now=NOW)
    with pytest.raises(InvalidTrustDomainError):
        MeshCA.create("", now=NOW)


# --- proof of possession ----------------------------------------------------------------------

CRED = hashlib.sha256(b"the client certificate's DER").digest()
POP = {
    "spiffe_id": SID,
    "node_id": "node-1",
    "nonce": b"n" * 32,
    "timestamp": int(NOW),
    "credential_sha256": CRED,
}


def _v1_message() -> bytes:
    """The format-1 message (no credential): what an older node signed."""
    sid, nid, nonce = SID.encode(), b"node-1", b"n" * 32
    return (
        b"x0tta6bl4-pop-v1"
        + struct.pack("!H", len(sid))
        + sid
        + struct.pack("!H", len(nid))
        + nid
        + struct.pack("!H", len(nonce))
        + nonce
        + struct.pack("!Q", int(NOW))
    )


def test_pop_message_layout() -> None:
    sid, nid, nonce = SID.encode(), b"node-1", b"n" * 32
    expected = (
        b"x0tta6bl4-pop-v2"
        + struct.pack("!H", len(sid))
        + sid
        + struct.pack("!H", len(nid))
        + nid
        + struct.pack("!H", len(nonce))
        + nonce
        + struct.pack("!H", 32)
        + CRED
        + struct.pack("!Q", int(NOW))
    )
    assert pop_message(**POP) == expected  # type: ignore[arg-type]
    assert POP_VERSION == 2


def test_a_format_1_proof_does_not_verify() -> None:
    """The version tag separates the formats: a proof over the format-1 message (no
    credential) is no format-2 proof, whatever credential the verifier binds it to."""
    key = make_key("node/node-1")
    old = key.sign(SignatureContext.PROOF_OF_POSSESSION, _v1_message())
    with pytest.raises(BadSignatureError):
        verify_proof_of_possession(key.public_bytes, old, **POP)  # type: ignore[arg-type]


def test_pop_encoding_is_unambiguous() -> None:
    a = pop_message(
        spiffe_id="spiffe://td/ab", node_id="c", nonce=b"x", timestamp=1, credential_sha256=CRED
    )
    b = pop_message(
        spiffe_id="spiffe://td/a", node_id="bc", nonce=b"x", timestamp=1, credential_sha256=CRED
    )
    assert a != b


def test_pop_round_trip() -> None:
    key = make_key("node/node-1")
    sig = proof_of_possession(key, **POP)  # type: ignore[arg-type]
    verify_proof_of_possession(key.public_bytes, sig, **POP)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("spiffe_id", f"spiffe://{TD}/ns/x0tta6bl4/sa/other"),
        ("node_id", "node-2"),
        ("nonce", b"m" + b"n" * 31),
        ("timestamp", int(NOW) + 1),
        ("credential_sha256", hashlib.sha256(b"another client certificate").digest()),
    ],
)
def test_pop_tampered_field_fails(field: str, value: object) -> None:
    key = make_key("node/node-1")
    sig = proof_of_possession(key, **POP)  # type: ignore[arg-type]
    tampered = {**POP, field: value}
    with pytest.raises(BadSignatureError):
        verify_proof_of_possession(key.public_bytes, sig, **tampered)  # type: ignore[arg-type]


def test_pop_tampered_signature_or_other_key_fails() -> None:
    key = make_key("node/node-1")
    sig = proof_of_possession(key, **POP)  # type: ignore[arg-type]
    bad = bytes([sig[0] ^ 1]) + sig[1:]
    with pytest.raises(BadSignatureError):
        verify_proof_of_possession(key.public_bytes, bad, **POP)  # type: ignore[arg-type]
    with pytest.raises(BadSignatureError):
        verify_proof_of_possession(key.public_bytes, sig[:-1], **POP)  # type: ignore[arg-type]
    other = make_key("node/node-2")
    with pytest.raises(BadSignatureError):
        verify_proof_of_possession(other.public_bytes, sig, **POP)  # type: ignore[arg-type]
    with pytest.raises(InvalidKeyError):
        verify_proof_of_possession(b"short", sig, **POP)  # type: ignore[arg-type]


def test_pop_needs_its_context() -> None:
    """The same message signed for another purpose is not a proof of possession."""
    key = make_key("node/node-1")
    message = pop_message(**POP)  # type: ignore[arg-type]
    for context in SignatureContext:
        if context is not SignatureContext.PROOF_OF_POSSESSION:
            with pytest.raises(BadSignatureError):
                verify_proof_of_possession(
                    key.public_bytes,
                    key.sign(context, message),
                    **POP,  # type: ignore[arg-type]
                )


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("nonce", b""),
        ("timestamp", -1),
        ("timestamp", 2**64),
        ("node_id", "x" * 70000),
        ("credential_sha256", b""),
        ("credential_sha256", CRED[:31]),
        ("credential_sha256", CRED + b"x"),
    ],
)
def test_pop_unencodable_fields(field: str, value: object) -> None:
    key = make_key("node/node-1")
    fields = {**POP, field: value}
    with pytest.raises(ValueError):
        proof_of_possession(key, **fields)  # type: ignore[arg-type]
    sig = proof_of_possession(key, **POP)  # type: ignore[arg-type]
    with pytest.raises(BadSignatureError):
        verify_proof_of_possession(key.public_bytes, sig, **fields)  # type: ignore[arg-type]


def test_signing_key_is_still_usable_after_issue() -> None:
    """issue() never mutates the CA: two issues of the same request differ only by serial."""
    ca = make_ca()
    key = make_key("node/n2")
    a = ca.issue(spiffe_id=SID, node_id="n2", public_key=key.public_bytes, now=NOW)
    b = ca.issue(spiffe_id=SID, node_id="n2", public_key=key.public_bytes, now=NOW)
    ia, ib = verify_svid(a, ca.bundle(), NOW), verify_svid(b, ca.bundle(), NOW)
    assert ia.serial != ib.serial
    assert (ia.spiffe_id, ia.node_id, ia.not_after) == (ib.spiffe_id, ib.node_id, ib.not_after)


def test_fixture_ca_dates() -> None:
    ca = make_ca()
    assert ca.cert.not_valid_before_utc == utc(CA_CREATED_AT - 60)
    assert isinstance(ca.key, SigningKey)
