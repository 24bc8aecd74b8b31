"""Regenerate the seed corpora under ``fuzz/corpus/<harness>/`` from real messages.

    python fuzz/make_corpus.py [HARNESS ...]     (default: every harness)

First the fixtures in ``fuzz/fixtures/`` (the mesh CA certificate and two node PQ SVIDs, all
from the deterministic keys of :func:`fuzzlib.signing_key`, so harnesses verify what the corpus
holds), then, per harness, inputs built by running the real code: a real handshake between two
nodes (every datagram captured), sealed transport packets, signed adverts, registration bodies
… Each seed file is named by the SHA-1 of its bytes. Certificates carry random serials and
handshakes random keys, so a rerun gives different bytes of the same kinds; existing seeds
(including the inputs of past findings, kept under ``fuzz/corpus/<harness>/``) are never
deleted.
"""

from __future__ import annotations

import hashlib
import sys
from collections.abc import Callable, Iterable
from pathlib import Path

import fuzzlib

ROOT = Path(__file__).resolve().parent
CORPUS = ROOT / "corpus"
GENERATORS: dict[str, Callable[[], Iterable[bytes]]] = {}


def generator(
    name: str,
) -> Callable[[Callable[[], Iterable[bytes]]], Callable[[], Iterable[bytes]]]:
    def register(fn: Callable[[], Iterable[bytes]]) -> Callable[[], Iterable[bytes]]:
        GENERATORS[name] = fn
        return fn

    return register


def write(name: str, seeds: Iterable[bytes]) -> int:
    directory = CORPUS / name
    directory.mkdir(parents=True, exist_ok=True)
    count = 0
    for seed in seeds:
        (directory / hashlib.sha1(seed).hexdigest()).write_bytes(seed)
        count += 1
    return count


# --- fixtures ---------------------------------------------------------------------------------


def make_fixtures() -> None:
    from x0tta6bl4.crypto.pqsvid import MeshCA

    fuzzlib.FIXTURES.mkdir(exist_ok=True)
    ca_file = fuzzlib.FIXTURES / "ca.pem"
    if ca_file.exists():
        ca = fuzzlib.mesh_ca()
    else:
        ca = MeshCA.create(
            fuzzlib.TRUST_DOMAIN,
            now=fuzzlib.NOW - 86400,
            common_name="x0tta6bl4 fuzz CA",
            key=fuzzlib.signing_key("ca"),
        )
        ca_file.write_bytes(ca.cert_pem())
    for name in ("node-a", "node-b"):
        path = fuzzlib.FIXTURES / f"{name}.der"
        if not path.exists():
            path.write_bytes(
                ca.issue(
                    spiffe_id=f"spiffe://{fuzzlib.TRUST_DOMAIN}/ns/x0tta6bl4/sa/{name}",
                    node_id=name,
                    public_key=fuzzlib.signing_key(f"node/{name}").public_bytes,
                    now=fuzzlib.NOW,
                )
            )


# --- a real handshake, every datagram captured ------------------------------------------------


class Capture:
    """The datagrams of one real handshake node-a → node-b (through the listener)."""

    def __init__(self, *, under_load: bool = False) -> None:
        from handshake_messages import ADDR, INITIATOR_INDEX, RESPONDER_INDEX
        from x0tta6bl4.protocol.handshake import InitiatorHandshake
        from x0tta6bl4.protocol.listener import HandshakeListener

        alice = fuzzlib.handshake_config("node-a")
        bob = fuzzlib.handshake_config("node-b")
        initiator = InitiatorHandshake(alice, 0.0, local_index=INITIATOR_INDEX)
        listener = HandshakeListener(bob, 0.0, new_index=lambda: RESPONDER_INDEX)
        listener.force_under_load = under_load
        now = 0.01
        # Address validation first: INIT without a cookie draws a COOKIE_REPLY, then the
        # initiator sends INIT again echoing it (docs/protocol.md section 6).
        self.init = initiator.datagrams_to_send()
        for datagram in self.init:
            listener.receive_datagram(datagram, ADDR, now)
        self.cookie_replies = [d for d, _ in listener.datagrams_to_send()]
        now += 0.2
        initiator.receive_datagram(self.cookie_replies[0], now)
        self.init_with_cookie = initiator.datagrams_to_send()
        responder = None
        for datagram in self.init_with_cookie:
            responder = listener.receive_datagram(datagram, ADDR, now) or responder
        assert responder is not None
        self.resp = responder.datagrams_to_send()
        for datagram in self.resp:
            initiator.receive_datagram(datagram, now)
        self.finish = initiator.datagrams_to_send()
        for datagram in self.finish:
            responder.receive_datagram(datagram, now)
        assert responder.next_event() is not None and initiator.next_event() is not None
        self.init_message = responder.init_message
        self.initiator = initiator
        self.responder = responder


def joined(datagrams: Iterable[bytes]) -> bytes:
    return fuzzlib.SEP.join(datagrams)


@generator("fragments")
def _fragments() -> Iterable[bytes]:
    plain, loaded = Capture(), Capture(under_load=True)
    for cap in (plain, loaded):
        for flight in (cap.init, cap.resp, cap.finish, cap.init_with_cookie):
            if flight:
                yield joined(flight)
                yield joined(reversed(flight))
                yield flight[0]
    yield joined(plain.resp[:2] + plain.resp[:1] + plain.resp[2:])  # a duplicate


@generator("handshake_messages")
def _handshake_messages() -> Iterable[bytes]:
    from x0tta6bl4.protocol.fragments import Reassembler, parse_fragment

    cap, loaded = Capture(), Capture(under_load=True)

    def whole(flight: list[bytes]) -> bytes:
        r = Reassembler()
        out = None
        for d in flight:
            out = r.add(parse_fragment(d), 0.0) or out
        assert out is not None
        return out

    resp, finish = whole(cap.resp), whole(cap.finish)
    yield b"\x00" + cap.init_message
    yield b"\x01" + resp
    yield b"\x02" + finish
    yield b"\x04" + cap.cookie_replies[0]
    # 5: cookies made valid by the harness; 7: as sent, under load
    yield b"\x05" + joined(cap.init_with_cookie)
    yield b"\x05" + joined(cap.init_with_cookie + cap.finish)
    yield b"\x05" + joined(cap.init_with_cookie + cap.init_with_cookie[:1] + cap.finish)
    yield b"\x07" + joined(loaded.init + loaded.init_with_cookie)
    yield b"\x06" + joined(cap.resp)
    yield b"\x06" + joined(cap.cookie_replies + cap.resp)


@generator("handshake_sealed")
def _handshake_sealed() -> Iterable[bytes]:
    from x0tta6bl4.protocol.messages import AuthPayload

    for name in ("node-a", "node-b"):
        cert = fuzzlib.node_cert_der(name)
        signature = fuzzlib.signing_key(f"node/{name}").sign(
            __import__(
                "x0tta6bl4.crypto.suite", fromlist=["x"]
            ).SignatureContext.HANDSHAKE_RESPONDER,
            b"not the transcript",
        )
        payload = AuthPayload(certificate=cert, signature=signature).encode()
        yield b"\x00" + payload
        yield b"\x01" + payload


@generator("frames")
def _frames() -> Iterable[bytes]:
    yield from _frame_samples()


def _frame_samples() -> list[bytes]:
    from x0tta6bl4.node.reassembly import split_frame
    from x0tta6bl4.protocol import frames as f
    from x0tta6bl4.protocol.lsa import LinkStateAdvert, encode_signed

    advert = encode_signed(
        LinkStateAdvert("node-a", 7, 1_800_000_000_000, (("node-b", 10), ("node-c", 3))),
        fuzzlib.signing_key("node/node-a"),
    )
    entries = (("node-a", 7), ("node-b", 3), ("ñode-c", 2**64 - 1))
    samples = [
        f.encode_frames([]),
        f.encode_frames([f.Padding(12)]),
        f.encode_frames([f.Heartbeat(1), f.Heartbeat(2, 1, 250, probe=True)]),
        f.encode_frames([f.AppData(7, b"hello")]),
        f.encode_frames([f.Routed("node-a", "node-b", 16, 0, b"\x04" + bytes(40))]),
        f.encode_frames([f.LsdbSummary(entries)]),
        f.encode_frames([f.LsdbAnnounce(entries[:1])]),
        f.encode_frames([f.LsdbRequest(entries[1:])]),
        f.encode_frames([f.Heartbeat(9), f.AppData(1, b"x"), f.Padding(3)]),
        bytes([0x81, 0, 2, 1, 2]) + f.encode_frames([f.Heartbeat(3)]),  # an ignorable frame
    ]
    samples += split_frame(f.encode_frames([f.LinkStateAdvert(advert)]), 5, 1400)[:2]
    samples.append(joined(split_frame(f.encode_frames([f.LinkStateAdvert(advert)]), 6, 1400)))
    return samples


@generator("transport")
def _transport() -> Iterable[bytes]:
    from transport import peer_session

    session = peer_session()
    for i, plaintext in enumerate(_frame_samples()[:10]):
        yield b"\x00" + session.seal(plaintext, 1.0 + i)
        yield b"\x01" + plaintext


def _adverts() -> list[tuple[bytes, bytes]]:
    """(signed advert, its unsigned body) of node-a and node-b, with 0, 1 and 3 neighbours."""
    from x0tta6bl4.protocol.lsa import LinkStateAdvert, encode_signed, encode_unsigned

    out = []
    for origin, others in (("node-a", ("node-b", "node-c", "node-d")), ("node-b", ("node-a",))):
        for n in (0, 1, len(others)):
            lsa = LinkStateAdvert(
                origin,
                5 + n,
                1_800_000_000_000,
                tuple((o, 10 + i) for i, o in enumerate(others[:n])),
            )
            out.append(
                (encode_signed(lsa, fuzzlib.signing_key(f"node/{origin}")), encode_unsigned(lsa))
            )
    return out


@generator("lsa")
def _lsa() -> Iterable[bytes]:
    for signed, body in _adverts():
        yield b"\x00" + signed
        yield b"\x01" + body


@generator("flooding")
def _flooding() -> Iterable[bytes]:
    from x0tta6bl4.protocol import frames as f

    adverts = [signed for signed, _ in _adverts()]
    entries = (("node-a", 8), ("node-b", 6))
    # first byte: the neighbour (0 node-a, 1 node-b, 2 node-c) and clock steps (>> 2)
    yield joined(
        [
            b"\x01" + f.encode_frames([f.LsdbAnnounce(entries)]),
            b"\x42" + f.encode_frames([f.LinkStateAdvert(adverts[2])]),
            b"\x02" + f.encode_frames([f.LsdbRequest(entries)]),
            b"\x80" + f.encode_frames([f.LsdbSummary((("node-z", 1),))]),
        ]
    )
    yield joined(b"\x00" + f.encode_frames([f.LinkStateAdvert(a)]) for a in adverts)
    yield joined(
        [
            b"\x00" + f.encode_frames([f.LsdbAnnounce((("node-d", 3), ("node-a", 9)))]),
            b"\xff" + f.encode_frames([f.LsdbAnnounce((("node-d", 4),))]),
            b"\xfe" + f.encode_frames([f.LsdbRequest((("node-z", 0), ("node-a", 1)))]),
        ]
    )


@generator("pqsvid")
def _pqsvid() -> Iterable[bytes]:
    from cryptography import x509
    from cryptography.hazmat.primitives.serialization import Encoding

    ca = fuzzlib.mesh_ca()
    certs = [fuzzlib.node_cert_der("node-a"), fuzzlib.node_cert_der("node-b")]
    key = fuzzlib.signing_key("node/node-c").public_bytes
    for sid, nid, now in (
        ("spiffe://x0tta6bl4.mesh/ns/a/sa/b", "n", fuzzlib.NOW),
        ("spiffe://x0tta6bl4.mesh/x", "node-c.example", fuzzlib.NOW - 43200),  # expired
    ):
        certs.append(
            ca.issue(spiffe_id=sid, node_id=nid, public_key=key, now=now, ttl_seconds=3600)
        )
    ca_der = ca.cert.public_bytes(Encoding.DER)
    for der in [*certs, ca_der]:
        yield b"\x00" + der
        yield b"\x01" + x509.load_der_x509_certificate(der).tbs_certificate_bytes
    yield b"\x02" + ca.cert_pem()
    yield (
        b"\x02"
        + ca.cert_pem()
        + x509.load_der_x509_certificate(certs[0]).public_bytes(Encoding.PEM)
    )


@generator("jwt_svid")
def _jwt_svid() -> Iterable[bytes]:
    import json

    from spiffe import SpiffeId

    from jwt_svid import ADMIN_ID, ADMIN_TOKEN, AUDIENCE, AUTHORITY, default_header

    now = fuzzlib.NOW
    node = f"spiffe://{fuzzlib.TRUST_DOMAIN}/ns/x0tta6bl4/sa/x0tta6bl4-node"
    for sid, audience, ttl in (
        (node, AUDIENCE, 300),
        (ADMIN_ID, AUDIENCE, 300),
        (node, "another-audience", 300),
        ("spiffe://other.domain/ns/a/sa/b", AUDIENCE, 300),
    ):
        token = AUTHORITY.sign_jwt_svid(SpiffeId(sid), [AUDIENCE, audience], ttl, now)
        yield b"\x00Bearer " + token.encode()
    yield b"\x00Bearer " + ADMIN_TOKEN
    yield b"\x00Basic dXNlcjpwYXNz"
    claims = {"sub": node, "aud": [AUDIENCE], "iat": 1, "exp": 4_000_000_000}
    yield b"\x01" + json.dumps(claims).encode()
    yield b"\x01" + json.dumps({**claims, "sub": ADMIN_ID, "aud": AUDIENCE}).encode()
    yield b"\x01" + json.dumps({**claims, "exp": 10}).encode()
    yield b"\x01" + default_header() + fuzzlib.SEP + json.dumps(claims).encode()


def _node_records() -> list[bytes]:
    import dataclasses
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives.serialization import Encoding

    from x0tta6bl4.controller.models import LinkStatus, NodeRecord, NodeStatus, dumps

    pem = x509.load_der_x509_certificate(fuzzlib.node_cert_der("node-a")).public_bytes(Encoding.PEM)
    record = NodeRecord(
        node_id="node-a",
        spiffe_id=f"spiffe://{fuzzlib.TRUST_DOMAIN}/ns/x0tta6bl4/sa/node-a",
        endpoint="10.0.0.7:7810",
        overlay_ip=ipaddress.IPv4Address("100.96.0.7"),
        pq_svid_pem=pem.decode(),
        pq_svid_not_after=fuzzlib.NOW + 3600,
        ml_dsa_public_key=fuzzlib.signing_key("node/node-a").public_bytes,
        registered_at=fuzzlib.NOW,
        last_seen=fuzzlib.NOW + 5.5,
        status=NodeStatus(
            links=(LinkStatus("node-b", True, 0.25), LinkStatus("node-c", False, None))
        ),
    )
    v6 = dataclasses.replace(record, endpoint="[fd00::7]:7810", status=NodeStatus())
    return [dumps(record.to_json()), dumps(v6.to_json())]


def _policies() -> list[bytes]:
    from x0tta6bl4.controller.models import dumps
    from x0tta6bl4.policy import Policy, PolicyRule

    td = fuzzlib.TRUST_DOMAIN
    return [
        dumps(Policy().to_json()),
        dumps(
            Policy(
                rules=(
                    PolicyRule(f"spiffe://{td}/ns/*/sa/x0tta6bl4-app", "*", "join", True),
                    PolicyRule(f"spiffe://{td}/ns/dev/**", "*", "link", False),
                    PolicyRule("*", f"spiffe://{td}/ns/db/**", "talk", False),
                    PolicyRule("*", "*", "talk", True),
                )
            ).to_json()
        ),
    ]


@generator("store_records")
def _store_records() -> Iterable[bytes]:
    for raw in _node_records():
        yield b"\x00" + raw
    for raw in _policies():
        yield b"\x01" + raw
    # Finding: json raised RecursionError (not ModelError) for nesting this deep.
    yield b"\x00" + b"[" * 2000
    yield b"\x01" + b'{"rules":' * 1500


@generator("spiffe_ids")
def _spiffe_ids() -> Iterable[bytes]:
    td = fuzzlib.TRUST_DOMAIN
    for pattern, sid, other, domain in (
        (
            f"spiffe://{td}/ns/*/sa/x0tta6bl4-app",
            f"spiffe://{td}/ns/prod/sa/x0tta6bl4-app",
            f"spiffe://{td}/ns/dev/sa/x",
            td,
        ),
        (f"spiffe://{td}/ns/dev/**", f"spiffe://{td}/ns/dev/sa/a/b", "spiffe://other/ns/dev", td),
        (
            f"spiffe://{td}/n?/*a*b/**/x",
            f"spiffe://{td}/ns/cab/q/x",
            "spiffe://X0TTA6BL4.MESH/a",
            "spiffe://" + td,
        ),
        ("*", f"spiffe://{td}", "spiffe://td/%41", "bad/td"),
    ):
        yield fuzzlib.SEP.join(s.encode() for s in (pattern, sid, other, domain))


@generator("api")
def _api() -> Iterable[bytes]:
    import base64
    import json
    import secrets

    from api import NODE_ID, ROUTES
    from x0tta6bl4.crypto.pqsvid import proof_of_possession

    route = {f"{m} {t}": bytes([i]) for i, (m, t) in enumerate(ROUTES)}
    key = fuzzlib.signing_key("node/node-a")

    def pop(node_id: str) -> dict[str, object]:
        nonce = secrets.token_bytes(32)
        # The harness's client certificate is made afresh each run, so the corpus cannot name
        # it: these proofs are bound to a fixed hash (refused as proof_not_bound).
        bound = bytes(32)
        signature = proof_of_possession(
            key,
            spiffe_id=NODE_ID,
            node_id=node_id,
            nonce=nonce,
            timestamp=int(fuzzlib.NOW),
            credential_sha256=bound,
        )
        return {
            "nonce": base64.b64encode(nonce).decode(),
            "timestamp": int(fuzzlib.NOW),
            "signature": base64.b64encode(signature).decode(),
            "credential_sha256": bound.hex(),
        }

    register = {
        "node_id": "node-a",
        "endpoint": "10.0.0.7:7810",
        "ml_dsa_public_key": base64.b64encode(key.public_bytes).decode(),
        "pop": pop("node-a"),
    }
    renew = {"ml_dsa_public_key": register["ml_dsa_public_key"], "pop": pop("node-a")}
    status = {"links": [{"peer": "node-b", "up": True, "rtt_ms": 0.4}]}
    policy = json.loads(_policies()[1])
    sep = fuzzlib.SEP

    def enc(doc: object) -> bytes:
        return json.dumps(doc).encode()

    # byte 1: 0 no credential, 1 admin token, 2 node JWT-SVID, 3 admin JWT-SVID, 4 fuzzed
    yield route["POST /api/v1/nodes/register"] + b"\x02" + b"" + sep + enc(register)
    yield route["POST /api/v1/nodes/{p}/renew"] + b"\x02node-a" + sep + enc(renew)
    yield route["PUT /api/v1/nodes/{p}/status"] + b"\x02node-a" + sep + enc(status)
    yield route["PUT /api/v1/policy"] + b"\x01" + sep + b'{"rules":' + b"[" * 3000
    yield route["GET /api/v1/nodes"] + b"\x03"
    yield route["GET /api/v1/nodes/{p}"] + b"\x01node-a"
    yield route["DELETE /api/v1/nodes/{p}"] + b"\x01node-b"
    yield route["GET /api/v1/topology"] + b"\x02"
    yield route["GET /api/v1/policy"] + b"\x00"
    yield route["PUT /api/v1/policy"] + b"\x01" + sep + enc(policy) + sep + b'"1"'
    yield route["GET /api/v1/watch?from_revision={p}&timeout=0"] + b"\x022"
    yield route["GET /api/v1/bundle"] + b"\x02"
    yield route["GET /ready"] + b"\x00"
    yield route["GET /metrics"] + b"\x00"
    yield route["GET /ui/topology.json"] + b"\x00"
    yield (
        route["RAW {p}"] + b"\x04POST /api/v1/nodes/register?x=1" + sep + b"{}" + sep + b"Bearer x"
    )
    yield route["RAW {p}"] + b"\x05PATCH /api/v1/policy" + sep + b"[]" + sep + b"text/plain"


@generator("workload_api")
def _workload_api() -> Iterable[bytes]:
    from spiffe import SpiffeId
    from spiffe._proto import workload_pb2

    from jwt_svid import AUTHORITY

    node = f"spiffe://{fuzzlib.TRUST_DOMAIN}/ns/x0tta6bl4/sa/node-a"
    token = AUTHORITY.sign_jwt_svid(SpiffeId(node), ["x0tta6bl4-controller"], 300, fuzzlib.NOW)
    yield (
        b"\x00" + workload_pb2.JWTSVIDRequest(audience=["x0tta6bl4-controller"]).SerializeToString()
    )
    yield (
        b"\x00"
        + workload_pb2.JWTSVIDRequest(audience=["a", "b"], spiffe_id=node).SerializeToString()
    )
    yield b"\x80" + workload_pb2.JWTSVIDRequest(audience=["a"]).SerializeToString()
    yield (
        b"\x01"
        + workload_pb2.ValidateJWTSVIDRequest(
            audience="x0tta6bl4-controller", svid=token
        ).SerializeToString()
    )
    yield b"\x02" + workload_pb2.X509SVIDRequest().SerializeToString()
    yield b"\x03"
    yield b"\x04"


@generator("node_http")
def _node_http() -> Iterable[bytes]:
    yield b"\x00"
    yield b"\x01"
    yield b"\x02"
    yield b"\x03"
    yield b"\x04target=peer-000&count=2&timeout=1"
    yield b"\x04target=spiffe://x0tta6bl4.mesh/ns/x0tta6bl4/sa/x0tta6bl4-app&count=1"
    yield b"\x04target=100.96.0.9"
    yield b"\x04target=nobody&count=0"
    yield b"\x05POST /v1/ping?target=peer-000"
    yield b"\x05GET /v1/status?verbose=1"


@generator("node_core")
def _node_core() -> Iterable[bytes]:
    from x0tta6bl4.protocol import frames as f
    from x0tta6bl4.protocol.lsa import LinkStateAdvert, encode_signed

    samples = _frame_samples()
    for sample in samples:
        yield b"\x01" + sample
    advert = encode_signed(
        LinkStateAdvert("node-b", 99, 1_800_000_000_000, (("node-a", 10),)),
        fuzzlib.signing_key("node/node-b"),
    )
    yield b"\x01" + f.encode_frames([f.LinkStateAdvert(advert)])
    yield b"\x01" + f.encode_frames([f.Routed("node-b", "node-a", 8, 0, b"\x01" + bytes(40))])
    yield b"\x01" + f.encode_frames([f.Heartbeat(7, 3, 100, probe=True)])
    cap = Capture()
    yield b"\x00" + joined(cap.init)
    yield b"\x00" + joined(cap.resp + cap.finish)
    yield b"\x00" + joined(_transport_datagrams()[:3])


def _transport_datagrams() -> list[bytes]:
    from transport import peer_session

    session = peer_session()
    return [session.seal(p, 1.0) for p in _frame_samples()[:5]]


@generator("native_dataplane")
def _native_dataplane() -> Iterable[bytes]:
    from native_dataplane import _pair
    from x0tta6bl4.protocol.session import Session

    samples = _frame_samples()
    sender = _pair(Session, sender=True)
    for plaintext in samples[:10]:
        yield b"\x00" + plaintext
        yield b"\x01" + sender.seal(plaintext, 1.0)
        yield b"\x02" + plaintext
    counters = [0, 1, 5, 3, 200, 8200, 8100, 2**40, 2**40 - 9000, 2**64 - 2**13 - 2]
    yield b"\x03" + b"".join(c.to_bytes(8, "big") for c in counters)


def main(names: list[str]) -> None:
    make_fixtures()
    for name in names or sorted(GENERATORS):
        count = write(name, GENERATORS[name]())
        print(f"{name}: {count} seeds in {CORPUS / name}", file=sys.stderr)


if __name__ == "__main__":
    main(sys.argv[1:])
