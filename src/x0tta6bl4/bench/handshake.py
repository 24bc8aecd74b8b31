"""``x0tta6bl4 bench handshake``: full in-memory handshakes vs their primitives alone.

Each iteration runs one complete handshake between two in-memory nodes — initiator, listener,
responder; the cookie round trip that validates the initiator's address; INIT, RESP and FINISH
fragmented and reassembled; both certificates verified with
:func:`~x0tta6bl4.crypto.pqsvid.verify_svid` — and then, in the same process, the same
cryptographic operations called directly on pyca/cryptography:

* ML-KEM-768 keygen, encapsulate, decapsulate; 2 × (X25519 keygen + exchange);
* 2 × ML-DSA-65 sign and 2 × verify (the transcript signatures);
* 2 × ``verify_svid`` (the certificates);
* the HKDF calls of both key schedules; 2 × AES-256-GCM seal + open of the sealed payloads
  (with key setup); SHA-256 over both transcripts.

Both are measured in CPU time (:func:`time.process_time`), interleaved so that both see the
same machine. ``ratio`` = handshake CPU ÷ primitive CPU: what the protocol machinery costs on
top of the cryptography (target ≤ 1.25).
"""

from __future__ import annotations

import hashlib
import statistics
import time
from dataclasses import dataclass
from typing import Any

from cryptography.hazmat.primitives.asymmetric import mlkem
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from x0tta6bl4.crypto.pqsvid import MeshCA, PeerIdentity, TrustBundle, verify_svid
from x0tta6bl4.crypto.suite import (
    MLDSA65_SIGNATURE_SIZE,
    SignatureContext,
    SigningKey,
    hkdf_expand_label,
    hkdf_extract,
)
from x0tta6bl4.protocol.constants import MessageType
from x0tta6bl4.protocol.events import HandshakeCompleted
from x0tta6bl4.protocol.handshake import (
    Credential,
    HandshakeConfig,
    InitiatorHandshake,
    ResponderHandshake,
)
from x0tta6bl4.protocol.listener import HandshakeListener

__all__ = ["format_table", "run"]

_ADDR = b"\x7f\x00\x00\x01\xb7\x98"
#: HKDF calls per side: 2 extracts; 2 traffic secrets, 2 × (key, iv), 1 derived, 2 transport.
_EXTRACTS_PER_SIDE = 2
_EXPANDS_PER_SIDE = 9


@dataclass(frozen=True, slots=True)
class _Node:
    config: HandshakeConfig
    key: SigningKey
    cert_der: bytes


def _nodes(now_wall: float) -> tuple[_Node, _Node, TrustBundle]:
    ca = MeshCA.create(now=now_wall)
    bundle = ca.bundle()

    def verify_peer(der: bytes) -> PeerIdentity:
        return verify_svid(der, bundle, now_wall)

    def make(name: str) -> _Node:
        key = SigningKey.generate()
        der = ca.issue(
            spiffe_id=f"spiffe://{ca.trust_domain}/ns/x0tta6bl4/sa/{name}",
            node_id=name,
            public_key=key.public_bytes,
            now=now_wall,
        )
        config = HandshakeConfig(
            credential=Credential(cert_der=der, signing_key=key),
            verify_peer=verify_peer,
            authorize=lambda _peer: True,
        )
        return _Node(config=config, key=key, cert_der=der)

    return make("bench-a"), make("bench-b"), bundle


def _handshake(a: _Node, listener: HandshakeListener, now: float) -> ResponderHandshake:
    """One complete handshake, no loss; raises RuntimeError if it does not complete."""
    initiator = InitiatorHandshake(a.config, now)
    responder: ResponderHandshake | None = None
    for datagram in initiator.datagrams_to_send():  # INIT: answered with a cookie
        listener.receive_datagram(datagram, _ADDR, now)
    for reply, _ in listener.datagrams_to_send():
        initiator.receive_datagram(reply, now)
    for datagram in initiator.datagrams_to_send():  # INIT with the cookie: RESP
        responder = listener.receive_datagram(datagram, _ADDR, now) or responder
    if responder is None:
        raise RuntimeError("the listener did not answer INIT")
    for datagram in responder.datagrams_to_send():
        initiator.receive_datagram(datagram, now)
    for datagram in initiator.datagrams_to_send():
        if datagram[0] == MessageType.HANDSHAKE_FINISH:
            responder.receive_datagram(datagram, now)
    if not (
        isinstance(initiator.next_event(), HandshakeCompleted)
        and isinstance(responder.next_event(), HandshakeCompleted)
    ):
        raise RuntimeError("the benchmark handshake did not complete")
    initiator.confirm(now)
    return responder


def _primitives(a: _Node, b: _Node, bundle: TrustBundle, now_wall: float) -> None:
    """The cryptographic work of one handshake, both sides, called directly."""
    # Initiator ephemeral keys; responder encapsulation and exchange; initiator decapsulation.
    kem = mlkem.MLKEM768PrivateKey.generate()
    x_i = X25519PrivateKey.generate()
    ek = kem.public_key().public_bytes_raw()
    x_i_pub = x_i.public_key().public_bytes_raw()
    _, ct = mlkem.MLKEM768PublicKey.from_public_bytes(ek).encapsulate()
    x_r = X25519PrivateKey.generate()
    ss_r = x_r.exchange(X25519PublicKey.from_public_bytes(x_i_pub))
    kem.decapsulate(ct)
    ss_i = x_i.exchange(X25519PublicKey.from_public_bytes(x_r.public_key().public_bytes_raw()))
    # Key schedules of both sides.
    secret = ss_i + ss_r + ss_i + ss_r
    for _ in range(2 * _EXTRACTS_PER_SIDE):
        secret = hkdf_extract(secret[:32], secret)
    for _ in range(2 * _EXPANDS_PER_SIDE):
        secret = hkdf_expand_label(secret[:32], "bench", secret[:32], 32)
    # Transcript signatures and certificate checks.
    th = hashlib.sha256(secret).digest()
    sig_r = b.key.sign(SignatureContext.HANDSHAKE_RESPONDER, th)
    sig_i = a.key.sign(SignatureContext.HANDSHAKE_INITIATOR, th)
    peer_b = verify_svid(b.cert_der, bundle, now_wall)
    peer_b.public_key.verify(sig_r, th, SignatureContext.HANDSHAKE_RESPONDER.value)
    peer_a = verify_svid(a.cert_der, bundle, now_wall)
    peer_a.public_key.verify(sig_i, th, SignatureContext.HANDSHAKE_INITIATOR.value)
    # Sealed payloads (certificate + signature) and transcripts.
    nonce = secret[:12]
    transcript = hashlib.sha256()
    for cert, sig in ((b.cert_der, sig_r), (a.cert_der, sig_i)):
        payload = cert + sig
        sealed = AESGCM(secret).encrypt(nonce, payload, ek[:64])
        AESGCM(secret).decrypt(nonce, sealed, ek[:64])
        transcript.update(payload)
    transcript.update(ek + ct)
    transcript.digest()
    assert len(sig_r) == len(sig_i) == MLDSA65_SIGNATURE_SIZE


def _percentile(samples: list[float], fraction: float) -> float:
    ordered = sorted(samples)
    index = min(len(ordered) - 1, max(0, round(fraction * (len(ordered) - 1))))
    return ordered[index]


def run(iterations: int = 200, *, warmup: int = 5) -> dict[str, Any]:
    """Run the benchmark; return the JSON-ready result."""
    if iterations < 1:
        raise ValueError("iterations must be at least 1")
    now_wall = time.time()
    a, b, bundle = _nodes(now_wall)
    listener = HandshakeListener(b.config, 0.0, under_load_threshold=1 << 30)
    clock = 0.0
    for _ in range(warmup):
        _handshake(a, listener, clock).handle_timer(clock + 3600)
        _primitives(a, b, bundle, now_wall)
    handshake_samples: list[float] = []
    primitive_samples: list[float] = []
    for _ in range(iterations):
        clock += 1.0
        t0 = time.process_time()
        responder = _handshake(a, listener, clock)
        t1 = time.process_time()
        _primitives(a, b, bundle, now_wall)
        t2 = time.process_time()
        responder.handle_timer(clock + 3600)  # closed: the listener forgets it
        handshake_samples.append(t1 - t0)
        primitive_samples.append(t2 - t1)
    handshake_total = sum(handshake_samples)
    primitive_total = sum(primitive_samples)
    return {
        "iterations": iterations,
        "handshakes_per_second": iterations / handshake_total if handshake_total else 0.0,
        "p50_ms": statistics.median(handshake_samples) * 1000,
        "p99_ms": _percentile(handshake_samples, 0.99) * 1000,
        "handshake_ms": handshake_total / iterations * 1000,
        "primitive_ms": primitive_total / iterations * 1000,
        "ratio": handshake_total / primitive_total if primitive_total else 0.0,
        "clock": "process_time",
    }


def format_table(result: dict[str, Any]) -> str:
    """A readable table of :func:`run`'s result."""
    rows = [
        ("iterations", f"{result['iterations']}"),
        ("handshakes/s (CPU)", f"{result['handshakes_per_second']:.1f}"),
        ("handshake p50", f"{result['p50_ms']:.3f} ms"),
        ("handshake p99", f"{result['p99_ms']:.3f} ms"),
        ("handshake mean", f"{result['handshake_ms']:.3f} ms"),
        ("primitives mean", f"{result['primitive_ms']:.3f} ms"),
        ("ratio (target <= 1.25)", f"{result['ratio']:.3f}"),
    ]
    width = max(len(name) for name, _ in rows)
    lines = ["handshake benchmark (CPU time, both sides, certificates verified)"]
    lines += [f"  {name:<{width}}  {value}" for name, value in rows]
    return "\n".join(lines)
