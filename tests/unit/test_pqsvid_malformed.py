"""Certificates whose malformed parts cryptography parses only when first used: loading them
into a trust bundle (what a node does with the controller's ``ca_bundle``) or a mesh CA raises
MalformedCertificateError, never a bare ValueError. Found by ``fuzz/pqsvid.py``."""

from __future__ import annotations

import base64

import pytest
from cryptography.hazmat.primitives.serialization import Encoding

from tests.pqfixtures import NOW, make_ca, make_key, make_node_credential
from x0tta6bl4.crypto.pqsvid import MalformedCertificateError, MeshCA, TrustBundle, verify_svid

_CN = b"x0tta6bl4 test CA default"


def _pem(der: bytes) -> bytes:
    return (
        b"-----BEGIN CERTIFICATE-----\n" + base64.encodebytes(der) + b"-----END CERTIFICATE-----\n"
    )


def _bad_subject_ca() -> bytes:
    """The test CA with invalid UTF-8 in its subject CN (a UTF8String): the certificate
    loads, its subject does not parse (what the fuzzer found, with the issuer intact)."""
    der = make_ca().cert.public_bytes(Encoding.DER)
    at = der.index(_CN)  # the issuer's CN comes first, then the subject's
    at = der.index(_CN, at + 1)
    return der[:at] + b"\xff" + der[at + 1 :]


def test_bundle_with_an_unparseable_subject_is_malformed() -> None:
    with pytest.raises(MalformedCertificateError, match="trust bundle CA is not valid DER"):
        TrustBundle.from_pem("x0tta6bl4.mesh", _pem(_bad_subject_ca()))


def test_mesh_ca_with_an_unparseable_subject_is_malformed() -> None:
    key = make_key("ca/x0tta6bl4.mesh/default/1799913600.0/315360000")
    with pytest.raises(MalformedCertificateError, match="mesh CA certificate is not valid DER"):
        MeshCA.load(_pem(_bad_subject_ca()), key.to_pem())


def test_the_good_ca_still_loads() -> None:
    ca = make_ca()
    assert len(TrustBundle.from_pem("x0tta6bl4.mesh", ca.cert_pem())) == 1


def test_leaf_whose_issuer_name_holds_a_bit_string_is_malformed() -> None:
    """cryptography raises TypeError (not ValueError) for a name attribute that is a BIT
    STRING under another OID than uniqueIdentifier; verify_svid let it escape (found by
    ``fuzz/pqsvid.py`` after 139,024 inputs)."""
    ca = make_ca()
    der = make_node_credential(ca, "node-bits").cert_der
    at = der.index(_CN)  # the leaf's issuer CN, a UTF8String
    assert der[at - 2] == 0x0C
    bad = der[: at - 2] + b"\x03" + der[at - 1 : at] + b"\x00" + der[at + 1 :]
    with pytest.raises(MalformedCertificateError, match="not valid DER"):
        verify_svid(bad, ca.bundle(), NOW)


def _version_4_ca() -> bytes:
    """The test CA with its version field set to 3 (X.509 "v4", which does not exist):
    cryptography raises ``InvalidVersion`` (not a ValueError) while loading it."""
    der = make_ca().cert.public_bytes(Encoding.DER)
    at = der.index(bytes.fromhex("a003020102"))  # [0] EXPLICIT INTEGER 2 (v3), first in TBS
    return der[:at] + bytes.fromhex("a003020103") + der[at + 5 :]


def test_bundle_with_an_unknown_version_is_malformed() -> None:
    """``x509.InvalidVersion`` escaped TrustBundle.from_pem (found by ``fuzz/pqsvid.py``
    after 487,329 inputs)."""
    with pytest.raises(MalformedCertificateError, match="trust bundle is not a list"):
        TrustBundle.from_pem("x0tta6bl4.mesh", _pem(_version_4_ca()))


def test_mesh_ca_with_an_unknown_version_is_malformed() -> None:
    key = make_key("ca/x0tta6bl4.mesh/default/1799913600.0/315360000")
    with pytest.raises(MalformedCertificateError, match="not a PEM certificate"):
        MeshCA.load(_pem(_version_4_ca()), key.to_pem())
