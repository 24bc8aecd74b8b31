"""``x0tta6bl4 bench api``: the controller's HTTP throughput and latency against a bare app.

In one run:

1. a mesh CA is created and 1000 nodes are written to a fresh SQLite store through the
   store interface (``register_node``), each with a real PQ SVID signed by that CA (the
   1000 ML-DSA-65 signatures of the full API path are spent here, without the HTTP and
   proof-of-possession round trips);
2. an embedded SPIFFE issuer serves the Workload API: the controller's X.509-SVID for its TLS
   listener, and the reader's, so ``GET /api/v1/nodes`` is called over mutual TLS (the
   hybrid X25519MLKEM768 key exchange, one kept-alive connection) with a real JWT-SVID as
   well, which the controller validates on every request;
3. ``x0tta6bl4 controller`` runs as a subprocess on loopback, and a bare ASGI app that
   returns a constant (:func:`bare_app`) runs as another subprocess on the same server stack
   (uvicorn with the same defaults);
4. one load generator — raw HTTP/1.1 over asyncio with keep-alive connections — drives
   ``GET /health`` on both with the same connection count, in alternating rounds (the best
   round of each side counts: noise from other processes only slows a round down) on the
   plain-HTTP port, then ``GET /api/v1/nodes`` (all 1000 nodes) on the controller's TLS port
   from one connection (:func:`load_tls`).

Keys: ``health_rps``, ``health_p99_ms``, ``nodes_p99_ms``, ``bare_rps``, ``ratio``
(``health_rps / bare_rps``; target ≥ 0.8) plus context (``nodes``, ``nodes_rps``,
``nodes_body_bytes``, ``connections``, ``duration_s``). Target for ``nodes_p99_ms``: < 100.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, MutableMapping
from pathlib import Path
from typing import Any

from x0tta6bl4.defaults import DEFAULT_TRUST_DOMAIN

__all__ = ["bare_app", "format_table", "load", "run"]

_BARE_BODY = b'{"status":"ok"}'


async def bare_app(scope: MutableMapping[str, Any], receive: Any, send: Any) -> None:
    """The baseline: an ASGI app that answers every request with a constant JSON body."""
    if scope["type"] == "lifespan":
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await send({"type": "lifespan.shutdown.complete"})
                return
    await send(
        {
            "type": "http.response.start",
            "status": 200,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(_BARE_BODY)).encode()),
            ],
        }
    )
    await send({"type": "http.response.body", "body": _BARE_BODY})


# --------------------------------------------------------------------------- load generator


async def _read_response(reader: asyncio.StreamReader) -> tuple[int, int]:
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.split(b"\r\n")
    status = int(lines[0].split(b" ", 2)[1])
    length = 0
    for line in lines[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value.strip())
    if length:
        await reader.readexactly(length)
    return status, length


async def _connection(  # noqa: PLR0917 - internal
    port: int,
    request: bytes,
    stop_at: float,
    max_requests: int | None,
    latencies: list[float],
    sizes: list[int],
) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    clock = time.perf_counter
    try:
        done = 0
        while clock() < stop_at and (max_requests is None or done < max_requests):
            start = clock()
            writer.write(request)
            status, length = await _read_response(reader)
            if status != 200:
                raise RuntimeError(f"benchmark request answered {status}")
            latencies.append(clock() - start)
            sizes.append(length)
            done += 1
    finally:
        writer.close()
        with contextlib.suppress(ConnectionError):
            await writer.wait_closed()


async def load(
    port: int,
    path: str,
    *,
    connections: int,
    duration: float,
    headers: dict[str, str] | None = None,
    max_requests: int | None = None,
) -> dict[str, float]:
    """Drive ``GET path`` over ``connections`` keep-alive connections for ``duration`` s
    (or ``max_requests`` per connection); return rps, p50/p99 latency (ms), body size."""
    extra = "".join(f"{k}: {v}\r\n" for k, v in (headers or {}).items())
    request = f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n{extra}\r\n".encode()
    latencies: list[float] = []
    sizes: list[int] = []
    start = time.perf_counter()
    await asyncio.gather(
        *(
            _connection(port, request, start + duration, max_requests, latencies, sizes)
            for _ in range(connections)
        )
    )
    elapsed = time.perf_counter() - start
    latencies.sort()
    p99 = latencies[min(len(latencies) - 1, int(len(latencies) * 0.99))]
    return {
        "requests": float(len(latencies)),
        "rps": len(latencies) / elapsed,
        "p50_ms": statistics.median(latencies) * 1000,
        "p99_ms": p99 * 1000,
        "body_bytes": float(sizes[-1] if sizes else 0),
    }


async def load_tls(
    api: str,
    path: str,
    *,
    credentials: Any,
    expected: str,
    headers: dict[str, str],
    requests: int,
) -> dict[str, float]:
    """``GET path`` ``requests`` times, one after the other, on one kept-alive mutual-TLS
    connection to ``api``; the same result keys as :func:`load`."""
    from x0tta6bl4.tls.client import tls_client

    latencies: list[float] = []
    size = 0
    async with tls_client(api, credentials, expected, timeout=30) as client:
        await client.get(path, headers=headers)  # the handshake is not a request's latency
        start = time.perf_counter()
        for _ in range(requests):
            began = time.perf_counter()
            answer = await client.get(path, headers=headers)
            latencies.append(time.perf_counter() - began)
            if answer.status_code != 200:
                raise RuntimeError(f"benchmark request answered {answer.status_code}")
            size = len(answer.content)
        elapsed = time.perf_counter() - start
    latencies.sort()
    p99 = latencies[min(len(latencies) - 1, int(len(latencies) * 0.99))]
    return {
        "requests": float(len(latencies)),
        "rps": len(latencies) / elapsed,
        "p50_ms": statistics.median(latencies) * 1000,
        "p99_ms": p99 * 1000,
        "body_bytes": float(size),
    }


# --------------------------------------------------------------------------- setup


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


async def _seed(store_url: str, state_dir: Path, ca_dir: Path, nodes: int) -> None:
    from cryptography import x509
    from cryptography.hazmat.primitives import serialization

    from x0tta6bl4.controller.ca import load_ca_files
    from x0tta6bl4.controller.ipam import parse_overlay_cidr
    from x0tta6bl4.controller.models import NodeRegistration
    from x0tta6bl4.controller.store.url import open_store
    from x0tta6bl4.crypto.suite import SigningKey

    ca = load_ca_files(ca_dir / "ca.crt", ca_dir / "ca.key", trust_domain=DEFAULT_TRUST_DOMAIN)
    network = parse_overlay_cidr("100.96.0.0/16")
    now = time.time()
    key = SigningKey.generate()  # one key is enough: the store does not care, the SVIDs differ
    async with open_store(store_url, state_dir=state_dir) as store:
        for i in range(nodes):
            node_id = f"bench-node-{i:04d}"
            spiffe_id = f"spiffe://{DEFAULT_TRUST_DOMAIN}/ns/bench/sa/node-{i:04d}"
            der = ca.signer.issue(
                spiffe_id=spiffe_id, node_id=node_id, public_key=key.public_bytes, now=now
            )
            cert = x509.load_der_x509_certificate(der)
            await store.register_node(
                NodeRegistration(
                    node_id=node_id,
                    spiffe_id=spiffe_id,
                    endpoint=f"10.{i // 250}.{i % 250}.1:7810",
                    pq_svid_pem=cert.public_bytes(serialization.Encoding.PEM).decode(),
                    pq_svid_not_after=cert.not_valid_after_utc.timestamp(),
                    ml_dsa_public_key=key.public_bytes,
                    now=now,
                ),
                network,
            )


def _wait_http(port: int, path: str, proc: subprocess.Popen[bytes], timeout: float = 60) -> None:
    import httpx

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"benchmark server exited with {proc.returncode}")
        try:
            if httpx.get(f"http://127.0.0.1:{port}{path}", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.05)
    raise RuntimeError(f"benchmark server on port {port} not ready in {timeout} s")


@contextlib.contextmanager
def _process(args: list[str], env: dict[str, str], log: Path) -> Iterator[subprocess.Popen[bytes]]:
    with open(log, "ab") as out:
        proc = subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT, env=env)  # noqa: S603
    try:
        yield proc
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def run(
    *,
    nodes: int = 1000,
    duration: float = 6.0,
    connections: int = 16,
    nodes_requests: int = 300,
    rounds: int = 5,
) -> dict[str, Any]:
    """Run the benchmark (see the module docstring); returns the result dict."""
    from spiffe import SpiffeId

    from x0tta6bl4.controller.ca import init_ca_dir
    from x0tta6bl4.controller.config import JWT_AUDIENCE
    from x0tta6bl4.identity.issuer import EmbeddedIssuer, IssuerConfig
    from x0tta6bl4.identity.issuer.entries import parse_entry, process_start_time
    from x0tta6bl4.identity.spiffe_ids import parse_trust_domain
    from x0tta6bl4.identity.workload_source import WorkloadSource
    from x0tta6bl4.tls.credentials import StaticCredentials, TlsCredentials

    td = parse_trust_domain(DEFAULT_TRUST_DOMAIN)
    reader_id = f"spiffe://{DEFAULT_TRUST_DOMAIN}/ns/bench/sa/reader"
    controller_id = f"spiffe://{DEFAULT_TRUST_DOMAIN}/ns/bench/sa/x0tta6bl4-app/controller"
    with tempfile.TemporaryDirectory(prefix="x0-bench-api-") as tmp:
        base = Path(tmp)
        ca_dir = base / "ca"
        init_ca_dir(ca_dir, trust_domain=td.name)
        store_url = f"sqlite://{base / 'controller.db'}"
        seed_start = time.perf_counter()
        asyncio.run(_seed(store_url, base, ca_dir, nodes))
        seed_s = time.perf_counter() - seed_start
        issuer = EmbeddedIssuer(
            IssuerConfig(
                socket_path=base / "workload.sock",
                state_dir=base / "identity",
                trust_domain=td,
                # This process reads; the controller gets its own ID (entries file, below).
                entries=(parse_entry(f"pid:{os.getpid()}={reader_id}", td),),
                entries_file=base / "entries",
            )
        )
        issuer.start()
        try:
            source = WorkloadSource(base / "workload.sock", trust_domain=td.name)
            token = source.fetch_jwt_svid(JWT_AUDIENCE, subject=SpiffeId(reader_id)).token
            reader = StaticCredentials(TlsCredentials.from_context(source.fetch_x509_context(), td))
            ctl_port, tls_port, bare_port = _free_port(), _free_port(), _free_port()
            env = {
                **os.environ,
                "SPIFFE_ENDPOINT_SOCKET": f"unix://{base / 'workload.sock'}",
                "X0_LOG_FORMAT": "json",
                "X0_LOG_LEVEL": "warning",
            }
            ctl_args = [
                sys.executable,
                "-m",
                "x0tta6bl4",
                "controller",
                "--listen",
                f"127.0.0.1:{ctl_port}",
                "--tls-listen",
                f"127.0.0.1:{tls_port}",
                "--store",
                store_url,
                "--state-dir",
                str(base),
                "--ca-cert-file",
                str(ca_dir / "ca.crt"),
                "--ca-key-file",
                str(ca_dir / "ca.key"),
                "--node-ttl",
                "86400",
            ]
            bare_args = [
                sys.executable,
                "-m",
                "uvicorn",
                "x0tta6bl4.bench.api:bare_app",
                "--host",
                "127.0.0.1",
                "--port",
                str(bare_port),
                "--no-access-log",
                "--log-level",
                "warning",
                "--timeout-keep-alive",
                "30",
                "--no-server-header",
            ]
            with (
                _process(ctl_args, env, base / "controller.log") as ctl,
                _process(bare_args, env, base / "bare.log") as bare,
            ):
                start = process_start_time(ctl.pid)
                entries = base / "entries"
                entries.write_text(f"pid:{ctl.pid}@{start}={controller_id}\n")
                entries.chmod(0o600)
                _wait_http(ctl_port, "/ready", ctl)
                _wait_http(bare_port, "/", bare)
                auth = {"Authorization": f"Bearer {token}"}

                async def measure() -> dict[str, dict[str, float]]:
                    # Warm both servers up, then alternate short rounds and keep each
                    # side's best round: noise from other processes only ever slows down.
                    await load(bare_port, "/health", connections=connections, duration=0.5)
                    await load(ctl_port, "/health", connections=connections, duration=0.5)
                    bare_rounds, health_rounds = [], []
                    for _ in range(rounds):
                        bare_rounds.append(
                            await load(
                                bare_port,
                                "/health",
                                connections=connections,
                                duration=duration / rounds,
                            )
                        )
                        health_rounds.append(
                            await load(
                                ctl_port,
                                "/health",
                                connections=connections,
                                duration=duration / rounds,
                            )
                        )
                    bare_r = max(bare_rounds, key=lambda r: r["rps"])
                    health_r = max(health_rounds, key=lambda r: r["rps"])
                    nodes_r = await load_tls(
                        f"https://127.0.0.1:{tls_port}",
                        "/api/v1/nodes",
                        credentials=reader,
                        expected=controller_id,
                        headers=auth,
                        requests=nodes_requests,
                    )
                    return {"bare": bare_r, "health": health_r, "nodes": nodes_r}

                results = asyncio.run(measure())
        finally:
            issuer.stop()
    bare_r, health_r, nodes_r = results["bare"], results["health"], results["nodes"]
    return {
        "health_rps": round(health_r["rps"], 1),
        "health_p99_ms": round(health_r["p99_ms"], 3),
        "nodes_p99_ms": round(nodes_r["p99_ms"], 3),
        "bare_rps": round(bare_r["rps"], 1),
        "ratio": round(health_r["rps"] / bare_r["rps"], 3),
        "nodes": nodes,
        "nodes_rps": round(nodes_r["rps"], 1),
        "nodes_p50_ms": round(nodes_r["p50_ms"], 3),
        "nodes_body_bytes": int(nodes_r["body_bytes"]),
        "connections": connections,
        "duration_s": duration,
        "rounds": rounds,
        "seed_s": round(seed_s, 2),
    }


def format_table(result: dict[str, Any]) -> str:
    """A human-readable summary of :func:`run`'s result."""
    return "\n".join(
        [
            f"controller GET /health : {result['health_rps']:>10.1f} req/s  "
            f"p99 {result['health_p99_ms']:.2f} ms",
            f"bare ASGI app          : {result['bare_rps']:>10.1f} req/s",
            f"ratio                  : {result['ratio']:.3f}  (target >= 0.8)",
            f"GET /api/v1/nodes ({result['nodes']} nodes, {result['nodes_body_bytes']} bytes): "
            f"p50 {result['nodes_p50_ms']:.2f} ms, p99 {result['nodes_p99_ms']:.2f} ms "
            "(target < 100)",
        ]
    )
