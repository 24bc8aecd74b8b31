"""Fuzz harness: PQ X.509-SVIDs — ``verify_svid`` (the leaf every handshake peer presents) and
``TrustBundle.from_pem`` (the bundle a node loads).

The first input byte chooses the mode, the rest is its input:

* 0, 3, 4, …: a DER certificate verified against the fixture CA's bundle at ``fuzzlib.NOW``;
* 1: a DER ``TBSCertificate`` that the harness signs with the fixture CA's real ML-DSA-65 key
  and wraps into a certificate, so every check after the signature (validity, SAN, SPIFFE ID,
  CN/node ID, critical extensions …) sees fuzzed values; signing makes these inputs slow;
* 2: PEM text parsed as a trust bundle.

Checked: only ``PqSvidError`` subclasses escape (docs/pqsvid.md); a certificate that verifies
gives an identity whose ``cert_der`` is the input and verifies again to the same identity.

    python fuzz/pqsvid.py [libFuzzer flags] [corpus dirs]
"""

from __future__ import annotations

import fuzzlib

with fuzzlib.instrumented():
    from x0tta6bl4.crypto.pqsvid import PqSvidError, TrustBundle, UnknownIssuerError, verify_svid
    from x0tta6bl4.crypto.suite import MLDSA65_SIGNATURE_SIZE

_BUNDLE = TrustBundle.from_pem(fuzzlib.TRUST_DOMAIN, fuzzlib.ca_cert_pem())
_CA_KEY = fuzzlib.signing_key("ca").key
#: AlgorithmIdentifier { id-ml-dsa-65 } (RFC 9881: no parameters).
_ALG = bytes.fromhex("300b0609608648016503040312")


def _der(tag: int, body: bytes) -> bytes:
    n = len(body)
    if n < 0x80:
        head = bytes([n])
    else:
        raw = n.to_bytes((n.bit_length() + 7) // 8, "big")
        head = bytes([0x80 | len(raw)]) + raw
    return bytes([tag]) + head + body


def wrap_tbs(tbs: bytes, signature: bytes) -> bytes:
    """``Certificate ::= SEQUENCE { tbs, algorithm, BIT STRING signature }``."""
    return _der(0x30, tbs + _ALG + _der(0x03, b"\x00" + signature))


def sign_tbs(tbs: bytes) -> bytes:
    """``tbs`` wrapped into a certificate signed by the fixture CA's key."""
    return wrap_tbs(tbs, _CA_KEY.sign(tbs))


def _verify(der: bytes) -> None:
    try:
        identity = verify_svid(der, _BUNDLE, fuzzlib.NOW)
    except PqSvidError:
        return
    assert identity.cert_der == der
    assert verify_svid(identity.cert_der, _BUNDLE, fuzzlib.NOW) == identity


def test_one_input(data: bytes) -> None:
    if not data:
        return
    mode, rest = data[0], data[1:]
    if mode == 1:
        # Sign only a TBS that reaches the signature check (with a placeholder signature it
        # fails there, as UnknownIssuerError): signing costs milliseconds, the checks before
        # it (parse, CA as leaf, key and algorithm) need no valid signature.
        try:
            verify_svid(wrap_tbs(rest, bytes(MLDSA65_SIGNATURE_SIZE)), _BUNDLE, fuzzlib.NOW)
        except UnknownIssuerError:
            _verify(sign_tbs(rest))
        except PqSvidError:
            return
    elif mode == 2:
        try:
            bundle = TrustBundle.from_pem(fuzzlib.TRUST_DOMAIN, rest)
        except PqSvidError:
            return
        assert TrustBundle.from_pem(fuzzlib.TRUST_DOMAIN, bundle.to_pem()).cas == bundle.cas
    else:
        _verify(rest)


if __name__ == "__main__":
    fuzzlib.run(test_one_input)
