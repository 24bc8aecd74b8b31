"""The cryptographic suite: hybrid KEM, ML-DSA-65 contexts, HKDF labels, AEAD, key handling.

A note on tampering with ML-KEM: ML-KEM decapsulation uses *implicit rejection* (FIPS 203): a
modified ciphertext does not raise, it yields a pseudo-random secret unrelated to the real
one. So a tampered responder share shows up as a *different* shared secret (and, in the
protocol, as a transcript/AEAD failure), never as a success with the right secret. Tampering
that breaks the encoding of a key (wrong size, coefficients out of range, an X25519 point of
small order) raises :class:`InvalidKeyError`.
"""

from __future__ import annotations

import hashlib
import hmac
import itertools
import struct

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, mldsa
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.pqfixtures import make_key
from x0tta6bl4.crypto import errors, suite
from x0tta6bl4.crypto.errors import BadSignatureError, CryptoError, DecryptError, InvalidKeyError
from x0tta6bl4.crypto.suite import (
    AEAD_NONCE_SIZE,
    AEAD_TAG_SIZE,
    INITIATOR_SHARE_SIZE,
    MLDSA65_PUBLIC_KEY_SIZE,
    MLDSA65_SIGNATURE_SIZE,
    MLKEM768_CIPHERTEXT_SIZE,
    MLKEM768_ENCAPSULATION_KEY_SIZE,
    RESPONDER_SHARE_SIZE,
    SHARED_SECRET_SIZE,
    Aead,
    HybridKemKeyPair,
    SignatureContext,
    SigningKey,
    constant_time_equal,
    counter_nonce,
    hash_bytes,
    hkdf_expand_label,
    hkdf_extract,
    hybrid_encapsulate,
    load_verifying_key,
    verify_signature,
)

# One long-lived initiator key pair for the fuzz tests (decapsulation does not consume it).
_KP = HybridKemKeyPair()


def flip(data: bytes, index: int, mask: int = 1) -> bytes:
    out = bytearray(data)
    out[index] ^= mask
    return bytes(out)


def test_public_api_is_complete() -> None:
    for module in (suite, errors):
        for name in module.__all__:
            assert hasattr(module, name), name


# --- hybrid KEM -------------------------------------------------------------------------------


def test_hybrid_kem_round_trip() -> None:
    kp = HybridKemKeyPair()
    assert len(kp.share) == INITIATOR_SHARE_SIZE == 1216
    share, secret = hybrid_encapsulate(kp.share)
    assert len(share) == RESPONDER_SHARE_SIZE == 1120
    assert len(secret) == SHARED_SECRET_SIZE
    assert kp.decapsulate(share) == secret
    # Fresh randomness on both sides: another exchange gives another secret.
    share2, secret2 = hybrid_encapsulate(kp.share)
    assert share2 != share
    assert secret2 != secret
    assert kp.decapsulate(share2) == secret2


def test_hybrid_secret_is_mlkem_then_x25519() -> None:
    """The secret is ML-KEM secret ‖ X25519 secret: each half depends only on its own part."""
    kp = HybridKemKeyPair()
    share, secret = hybrid_encapsulate(kp.share)
    other_share, other_secret = hybrid_encapsulate(kp.share)
    mixed = share[:MLKEM768_CIPHERTEXT_SIZE] + other_share[MLKEM768_CIPHERTEXT_SIZE:]
    got = kp.decapsulate(mixed)
    assert got[:32] == secret[:32]
    assert got[32:] == other_secret[32:]


def test_tampered_mlkem_ciphertext_gives_another_secret() -> None:
    """Implicit rejection: no exception, but the ML-KEM half of the secret is unrelated."""
    kp = HybridKemKeyPair()
    share, secret = hybrid_encapsulate(kp.share)
    for index in (0, 500, MLKEM768_CIPHERTEXT_SIZE - 1):
        got = kp.decapsulate(flip(share, index))
        assert got[:32] != secret[:32]
        assert got != secret


def test_tampered_x25519_share_gives_another_secret_or_fails() -> None:
    kp = HybridKemKeyPair()
    share, secret = hybrid_encapsulate(kp.share)
    got = kp.decapsulate(flip(share, MLKEM768_CIPHERTEXT_SIZE + 3))
    assert got[32:] != secret[32:]
    # The all-zero point has small order: X25519 refuses it.
    zero_point = share[:MLKEM768_CIPHERTEXT_SIZE] + bytes(32)
    with pytest.raises(InvalidKeyError):
        kp.decapsulate(zero_point)


def test_tampered_initiator_share_never_agrees() -> None:
    kp = HybridKemKeyPair()
    for index in (0, 700, MLKEM768_ENCAPSULATION_KEY_SIZE - 1, INITIATOR_SHARE_SIZE - 2):
        for mask in (0x01, 0x80):
            try:
                share, secret = hybrid_encapsulate(flip(kp.share, index, mask))
            except InvalidKeyError:
                continue
            assert kp.decapsulate(share) != secret


def test_x25519_ignores_the_top_bit_so_the_transcript_must_bind_the_share() -> None:
    """RFC 7748 §5 masks bit 255 of an X25519 public key: flipping it gives the *same* secret.

    The suite therefore never uses the secret alone; HKDF binds it to the transcript, which
    holds the exact share bytes, so such a flip still changes every derived key.
    """
    kp = HybridKemKeyPair()
    share, secret = hybrid_encapsulate(flip(kp.share, INITIATOR_SHARE_SIZE - 1, 0x80))
    assert kp.decapsulate(share) == secret
    transcript = hash_bytes(kp.share, share)
    tampered_transcript = hash_bytes(flip(kp.share, INITIATOR_SHARE_SIZE - 1, 0x80), share)
    assert hkdf_extract(transcript, secret) != hkdf_extract(tampered_transcript, secret)


def test_invalid_encapsulation_key_is_rejected() -> None:
    # 12-bit coefficients of 4095 are >= q = 3329: not a valid ML-KEM-768 encapsulation key.
    bad = b"\xff" * MLKEM768_ENCAPSULATION_KEY_SIZE + _KP.share[-32:]
    with pytest.raises(InvalidKeyError):
        hybrid_encapsulate(bad)
    with pytest.raises(InvalidKeyError):
        hybrid_encapsulate(_KP.share[:MLKEM768_ENCAPSULATION_KEY_SIZE] + bytes(32))


@pytest.mark.parametrize("delta", [-1, 1, -INITIATOR_SHARE_SIZE])
def test_wrong_share_sizes(delta: int) -> None:
    with pytest.raises(InvalidKeyError, match="wrong size"):
        hybrid_encapsulate(b"\x01" * (INITIATOR_SHARE_SIZE + delta))
    with pytest.raises(InvalidKeyError, match="wrong size"):
        _KP.decapsulate(b"\x01" * max(0, RESPONDER_SHARE_SIZE + delta))


# --- signatures -------------------------------------------------------------------------------


def test_sign_verify_each_context() -> None:
    key = make_key("suite/signer")
    for context in SignatureContext:
        sig = key.sign(context, b"message")
        assert len(sig) == MLDSA65_SIGNATURE_SIZE
        verify_signature(key.public_bytes, context, b"message", sig)
        verify_signature(load_verifying_key(key.public_bytes), context, b"message", sig)


def test_signature_contexts_do_not_cross() -> None:
    key = make_key("suite/signer")
    contexts = list(SignatureContext)
    assert len({c.value for c in contexts}) == len(contexts)
    for signed, checked in itertools.permutations(contexts, 2):
        sig = key.sign(signed, b"transcript")
        with pytest.raises(BadSignatureError):
            verify_signature(key.public_bytes, checked, b"transcript", sig)


def test_handshake_signature_is_not_an_lsa_signature() -> None:
    key = make_key("suite/signer")
    sig = key.sign(SignatureContext.HANDSHAKE_RESPONDER, b"payload")
    with pytest.raises(BadSignatureError):
        verify_signature(key.public_bytes, SignatureContext.LINK_STATE_ADVERT, b"payload", sig)
    # And the raw, context-free ML-DSA check fails too (the context is part of the message).
    with pytest.raises(BadSignatureError):
        verify_signature(key.public_bytes, SignatureContext.HANDSHAKE_RESPONDER, b"payload!", sig)


def test_bad_signatures() -> None:
    key = make_key("suite/signer")
    ctx = SignatureContext.LINK_STATE_ADVERT
    sig = key.sign(ctx, b"data")
    with pytest.raises(BadSignatureError, match="wrong size"):
        verify_signature(key.public_bytes, ctx, b"data", sig[:-1])
    with pytest.raises(BadSignatureError):
        verify_signature(key.public_bytes, ctx, b"data", flip(sig, 100))
    with pytest.raises(BadSignatureError):
        verify_signature(make_key("suite/other").public_bytes, ctx, b"data", sig)


def test_load_verifying_key_rejects_bad_keys() -> None:
    with pytest.raises(InvalidKeyError, match="wrong size"):
        load_verifying_key(b"\x00" * (MLDSA65_PUBLIC_KEY_SIZE - 1))
    assert isinstance(
        load_verifying_key(make_key("suite/signer").public_bytes), mldsa.MLDSA65PublicKey
    )


def test_signing_key_pem_round_trip() -> None:
    key = make_key("suite/signer")
    pem = key.to_pem()
    assert pem.startswith(b"-----BEGIN PRIVATE KEY-----")
    loaded = SigningKey.from_pem(pem)
    assert loaded.public_bytes == key.public_bytes
    sig = loaded.sign(SignatureContext.PROOF_OF_POSSESSION, b"x")
    verify_signature(key.public_bytes, SignatureContext.PROOF_OF_POSSESSION, b"x", sig)


def test_signing_key_from_bad_pem() -> None:
    with pytest.raises(InvalidKeyError):
        SigningKey.from_pem(b"not a key")
    ec_pem = ec.generate_private_key(ec.SECP256R1()).private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    with pytest.raises(InvalidKeyError, match="not ML-DSA-65"):
        SigningKey.from_pem(ec_pem)
    encrypted = make_key("suite/signer").key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.BestAvailableEncryption(b"pw"),
    )
    with pytest.raises(InvalidKeyError):
        SigningKey.from_pem(encrypted)


def test_reprs_leak_no_key_material() -> None:
    key = make_key("suite/signer")
    seed = key.key.private_bytes_raw()
    pem = key.to_pem()
    for text in (repr(key), str(key)):
        assert seed.hex() not in text
        assert seed.hex().upper() not in text
        assert pem.decode() not in text
        assert key.public_bytes.hex() not in text
        assert "PRIVATE" not in text
    secret = bytes(range(32))
    aead = Aead(secret)
    for text in (repr(aead), str(aead)):
        assert secret.hex() not in text
        assert repr(secret) not in text


# --- KDF --------------------------------------------------------------------------------------


def _hkdf_expand(prk: bytes, info: bytes, length: int) -> bytes:
    """RFC 5869 HKDF-Expand with SHA-256, written out with hmac."""
    out, block, counter = b"", b"", 1
    while len(out) < length:
        block = hmac.new(prk, block + info + bytes([counter]), hashlib.sha256).digest()
        out += block
        counter += 1
    return out[:length]


@pytest.mark.parametrize(
    ("label", "context", "length"),
    [
        ("key i2r", b"", 32),
        ("iv r2i", bytes(32), 12),
        ("handshake secret", b"\x01\x02\x03", 64),
        ("", b"", 1),
        ("x" * 245, b"c" * 255, 100),
    ],
)
def test_hkdf_expand_label_info_layout(label: str, context: bytes, length: int) -> None:
    secret = hashlib.sha256(b"secret").digest()
    full = b"x0tta6bl4 " + label.encode()
    info = length.to_bytes(2, "big") + bytes([len(full)]) + full + bytes([len(context)]) + context
    assert hkdf_expand_label(secret, label, context, length) == _hkdf_expand(secret, info, length)


def test_hkdf_expand_label_separates_labels_and_contexts() -> None:
    secret = bytes(32)
    outputs = {
        hkdf_expand_label(secret, "a", b"", 32),
        hkdf_expand_label(secret, "b", b"", 32),
        hkdf_expand_label(secret, "a", b"\x00", 32),
        hkdf_expand_label(secret, "a", b"", 33)[:32],  # the length is part of the info
    }
    assert len(outputs) == 4


def test_hkdf_expand_label_limits() -> None:
    with pytest.raises(ValueError, match="too long"):
        hkdf_expand_label(bytes(32), "x" * 246, b"", 32)
    with pytest.raises(ValueError, match="too long"):
        hkdf_expand_label(bytes(32), "x", b"c" * 256, 32)


def test_hkdf_extract_is_hmac() -> None:
    salt, ikm = b"salt" * 8, b"input keying material"
    assert hkdf_extract(salt, ikm) == hmac.new(salt, ikm, hashlib.sha256).digest()


def test_hash_and_compare() -> None:
    assert hash_bytes(b"ab", b"c") == hashlib.sha256(b"abc").digest()
    assert hash_bytes() == hashlib.sha256(b"").digest()
    assert constant_time_equal(b"abc", b"abc")
    assert not constant_time_equal(b"abc", b"abd")
    assert not constant_time_equal(b"abc", b"ab")


# --- AEAD -------------------------------------------------------------------------------------


def test_counter_nonce_layout() -> None:
    assert counter_nonce(1) == bytes(4) + struct.pack("!Q", 1)
    assert counter_nonce(2**64 - 1, b"\xaa\xbb\xcc\xdd") == b"\xaa\xbb\xcc\xdd" + b"\xff" * 8
    assert len(counter_nonce(0)) == AEAD_NONCE_SIZE


def test_aead_round_trip() -> None:
    aead = Aead(bytes(range(32)))
    nonce = counter_nonce(7)
    plaintext = b"\x00" * 1400
    sealed = aead.seal(nonce, plaintext, b"header")
    assert len(sealed) == len(plaintext) + AEAD_TAG_SIZE
    assert aead.open(nonce, sealed, b"header") == plaintext
    assert aead.open(nonce, aead.seal(nonce, b"", b""), b"") == b""


def test_aead_detects_tampering() -> None:
    aead = Aead(bytes(range(32)))
    nonce = counter_nonce(7)
    sealed = aead.seal(nonce, b"routed packet", b"header")
    for index in (0, len(sealed) - AEAD_TAG_SIZE, len(sealed) - 1):
        with pytest.raises(DecryptError):
            aead.open(nonce, flip(sealed, index), b"header")
    with pytest.raises(DecryptError):
        aead.open(nonce, sealed, b"headeR")
    with pytest.raises(DecryptError):
        aead.open(counter_nonce(8), sealed, b"header")
    with pytest.raises(DecryptError):
        Aead(bytes(32)).open(nonce, sealed, b"header")
    with pytest.raises(DecryptError):
        aead.open(nonce, sealed[: AEAD_TAG_SIZE - 1], b"header")


@pytest.mark.parametrize("size", [0, 16, 31, 33])
def test_aead_key_size(size: int) -> None:
    with pytest.raises(InvalidKeyError):
        Aead(bytes(size))


# --- fuzzing: arbitrary bytes raise only CryptoError ------------------------------------------


def _sized(size: int) -> st.SearchStrategy[bytes]:
    """Arbitrary bytes, often of exactly ``size`` (so the parsers get past the size check)."""
    return st.one_of(st.binary(max_size=size + 64), st.binary(min_size=size, max_size=size))


@settings(max_examples=150, deadline=None)
@given(_sized(RESPONDER_SHARE_SIZE))
def test_fuzz_decapsulate(data: bytes) -> None:
    try:
        secret = _KP.decapsulate(data)
    except CryptoError:
        return
    assert len(secret) == SHARED_SECRET_SIZE


@settings(max_examples=150, deadline=None)
@given(_sized(INITIATOR_SHARE_SIZE))
def test_fuzz_hybrid_encapsulate(data: bytes) -> None:
    try:
        share, secret = hybrid_encapsulate(data)
    except CryptoError:
        return
    assert (len(share), len(secret)) == (RESPONDER_SHARE_SIZE, SHARED_SECRET_SIZE)


@settings(max_examples=150, deadline=None)
@given(_sized(MLDSA65_PUBLIC_KEY_SIZE))
def test_fuzz_load_verifying_key(data: bytes) -> None:
    try:
        load_verifying_key(data)
    except CryptoError:
        return


@settings(max_examples=150, deadline=None)
@given(
    st.one_of(_sized(MLDSA65_PUBLIC_KEY_SIZE), st.just(make_key("suite/signer").public_bytes)),
    st.sampled_from(SignatureContext),
    st.binary(max_size=64),
    _sized(MLDSA65_SIGNATURE_SIZE),
)
def test_fuzz_verify_signature(
    key: bytes, context: SignatureContext, data: bytes, signature: bytes
) -> None:
    with pytest.raises(CryptoError):
        verify_signature(key, context, data, signature)
