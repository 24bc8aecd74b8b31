"""Fuzz harness: the embedded issuer's SPIFFE Workload API — request bytes in over gRPC.

One :class:`EmbeddedIssuer` runs in this process (its own thread and loop, the attesting
relay on a Unix socket in a temporary directory, an entry for this uid). Every input is one
call over a real gRPC channel whose request bytes are the fuzzer's, unserialised: byte 0
picks the RPC (``FetchJWTSVID``, ``ValidateJWTSVID``, ``FetchX509SVID``, ``FetchX509Bundles``,
``FetchJWTBundles``) and whether the ``workload.spiffe.io`` security header is sent; the rest
is the protobuf request (``JWTSVIDRequest``/``ValidateJWTSVIDRequest``: audience, spiffe_id,
svid). Streams are read for their first message, then cancelled.

Checked: every call ends OK, ``INVALID_ARGUMENT`` or ``PERMISSION_DENIED`` (as SPIRE answers);
any other end — ``UNKNOWN`` from an exception escaping a servicer method, ``INTERNAL`` — is a
finding, except gRPC's own answer to undecodable request bytes (raised by protobuf in gRPC's
deserializer, before any of our code runs).

    python fuzz/workload_api.py [libFuzzer flags] [corpus dirs]
"""

from __future__ import annotations

import atexit
import os

import grpc

import fuzzlib

with fuzzlib.instrumented():
    from x0tta6bl4.identity.issuer import EmbeddedIssuer, IssuerConfig
    from x0tta6bl4.identity.issuer.entries import parse_entry
    from x0tta6bl4.identity.spiffe_ids import parse_trust_domain

NODE_ID = f"spiffe://{fuzzlib.TRUST_DOMAIN}/ns/x0tta6bl4/sa/node-a"
#: (method, is a stream)
RPCS = (
    ("/SpiffeWorkloadAPI/FetchJWTSVID", False),
    ("/SpiffeWorkloadAPI/ValidateJWTSVID", False),
    ("/SpiffeWorkloadAPI/FetchX509SVID", True),
    ("/SpiffeWorkloadAPI/FetchX509Bundles", True),
    ("/SpiffeWorkloadAPI/FetchJWTBundles", True),
)
_ALLOWED = {grpc.StatusCode.OK, grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.PERMISSION_DENIED}


def _start() -> tuple[EmbeddedIssuer, grpc.Channel]:
    directory = fuzzlib.scratch("wl")
    td = parse_trust_domain(fuzzlib.TRUST_DOMAIN)
    issuer = EmbeddedIssuer(
        IssuerConfig(
            socket_path=directory / "workload.sock",
            state_dir=directory / "state",
            trust_domain=td,
            entries=(parse_entry(f"{os.getuid()}={NODE_ID}", td),),
        )
    )
    issuer.start()
    atexit.register(issuer.stop)
    return issuer, grpc.insecure_channel(f"unix:{issuer.socket_path}")


ISSUER, CHANNEL = _start()
_CALLS = [
    CHANNEL.unary_stream(method) if stream else CHANNEL.unary_unary(method)
    for method, stream in RPCS
]


def _undecodable(code: grpc.StatusCode, details: str) -> bool:
    """gRPC's own answer to bytes that are not the request message (before our code runs):
    INTERNAL for unary calls, UNKNOWN naming protobuf's DecodeError for streams."""
    if code is grpc.StatusCode.INTERNAL:
        return "deserializ" in details.lower()
    return code is grpc.StatusCode.UNKNOWN and "google.protobuf.message.DecodeError" in details


def test_one_input(data: bytes) -> None:
    if not data:
        return
    index = data[0] % len(RPCS)
    metadata = () if data[0] & 0x80 else (("workload.spiffe.io", "true"),)
    call = _CALLS[index]
    try:
        if RPCS[index][1]:
            stream = call(data[1:], metadata=metadata, timeout=10)
            try:
                next(stream)
            finally:
                stream.cancel()
        else:
            call(data[1:], metadata=metadata, timeout=10)
    except grpc.RpcError as exc:
        code, details = exc.code(), exc.details() or ""
        if code is grpc.StatusCode.CANCELLED:
            return
        if _undecodable(code, details):
            return
        assert code in _ALLOWED, f"{RPCS[index][0]} ended {code}: {details}"


if __name__ == "__main__":
    fuzzlib.run(test_one_input)
