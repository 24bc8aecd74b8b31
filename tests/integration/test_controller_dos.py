"""Issue 13, controller side: nothing unauthenticated exhausts the controller process.

Real controller processes on loopback, real sockets, bounded loads (a few seconds each):

- row 1: 5,000 requests with random methods, no credentials: ``/metrics`` stays small and
  the process grows little (the method used to become a label: 51 MB of ``/metrics``);
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import re
import resource
import string
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.integration.controller_support import (
    CONTROLLER_ID,
    Identity,
    free_port,
    running_issuer,
    wait_ready,
)
from tests.integration.dos_support import Slowloris, probe, rss_bytes

pytestmark = pytest.mark.timeout(300)


@pytest.fixture(scope="module")
def identity(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Identity]:
    with running_issuer(tmp_path_factory.mktemp("id")) as ident:
        yield ident


@contextlib.contextmanager
def running_controller(
    tmp_path: Path,
    identity: Identity,
    *,
    nofile: int | None = None,
    extra: tuple[str, ...] = (),
) -> Iterator[tuple[subprocess.Popen[bytes], str, Path]]:
    """``x0tta6bl4 controller`` on a free loopback port with a local CA and SQLite; yields the
    process, its base URL and its log file. ``nofile`` limits its file descriptors."""
    port = free_port()
    log = tmp_path / "controller.log"
    state = tmp_path / "state"
    env = {
        **os.environ,
        "X0_STATE_DIR": str(state),
        "SPIFFE_ENDPOINT_SOCKET": f"unix://{identity.issuer.socket_path}",
        "X0_LOG_FORMAT": "json",
    }
    args = [
        sys.executable, "-m", "x0tta6bl4", "controller",
        "--listen", f"127.0.0.1:{port}",
        "--tls-listen", f"127.0.0.1:{free_port()}",
        "--local-ca",
        *extra,
    ]  # fmt: skip

    with open(log, "ab") as out:
        proc = subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT, env=env)
    if nofile is not None:  # at once: the interpreter has not even started importing yet
        resource.prlimit(proc.pid, resource.RLIMIT_NOFILE, (nofile, nofile))
    identity.attest(proc.pid, CONTROLLER_ID)  # its X.509-SVID for the TLS listener
    base = f"http://127.0.0.1:{port}"
    try:
        wait_ready(base, proc)
        yield proc, base, log
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:  # pragma: no cover - diagnostic path
            proc.kill()
            proc.wait()


# --------------------------------------------------------------------------- row 1


async def _pipelined(base: str, requests: list[bytes], connections: int = 8) -> dict[int, int]:
    """Send raw HTTP/1.1 ``requests`` pipelined over ``connections`` keep-alive connections
    (the last one on each asks to close) and count the answers by status code."""
    host, port = base.removeprefix("http://").split(":")
    statuses: dict[int, int] = {}

    async def one(batch: list[bytes]) -> None:
        reader, writer = await asyncio.open_connection(host, int(port))
        try:
            closing = b"GET /health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
            writer.write(b"".join(batch) + closing)
            await writer.drain()
            data = await asyncio.wait_for(reader.read(-1), 120)
        finally:
            writer.close()
        codes = re.findall(rb"HTTP/1\.1 (\d{3}) ", data)
        assert len(codes) == len(batch) + 1, (len(codes), len(batch))
        for code in codes[:-1]:
            statuses[int(code)] = statuses.get(int(code), 0) + 1

    await asyncio.gather(*(one(requests[i::connections]) for i in range(connections)))
    return statuses


def _random_method_requests(count: int, seed: int) -> list[bytes]:
    """``count`` requests without credentials, each with a different random method token."""
    rng = random.Random(seed)
    paths = ["/api/v1/nodes", "/ready", "/nope", "/api/v1/policy"]
    return [
        f"{''.join(rng.choices(string.ascii_uppercase, k=10))} {rng.choice(paths)} HTTP/1.1\r\n"
        "Host: x\r\n\r\n".encode()
        for _ in range(count)
    ]


async def test_random_methods_do_not_grow_metrics_or_memory(
    tmp_path: Path, identity: Identity
) -> None:
    """Row 1: 5,000 requests with random methods, no credentials (20,000 used to take the
    controller from 101 to 196 MB and ``/metrics`` from 35 kB to 51 MB)."""
    with running_controller(tmp_path, identity) as (proc, base, _):
        # Warm up the paths the flood takes, so that the figure is growth, not first use.
        await _pipelined(base, _random_method_requests(400, seed=1))
        async with httpx.AsyncClient(base_url=base, timeout=30) as client:
            before_metrics = len((await client.get("/metrics")).content)
        before = rss_bytes(proc.pid)
        statuses = await _pipelined(base, _random_method_requests(5_000, seed=2))
        after = rss_bytes(proc.pid)
        async with httpx.AsyncClient(base_url=base, timeout=30) as client:
            metrics = (await client.get("/metrics")).text
        growth_mb = (after - before) / 2**20
        print(
            f"row 1: /metrics {before_metrics} -> {len(metrics)} B, RSS "
            f"{before / 2**20:.1f} -> {after / 2**20:.1f} MB ({growth_mb:+.1f}), {statuses}"
        )
        size = len(metrics.encode())
        assert sum(statuses.values()) == 5_000
        assert size < 200_000, f"/metrics is {size} bytes"
        assert growth_mb < 30
        assert 'method="OTHER"' in metrics
        assert "AAAA" not in metrics.replace("x0tta6bl4", "")


async def test_malformed_requests_do_not_flood_the_log(tmp_path: Path, identity: Identity) -> None:
    """Log lines outside input can trigger are rate-limited: 2,000 malformed requests and 500
    upgrade requests (uvicorn logs a warning for each) add a few kB of log, not 400 kB."""
    with running_controller(tmp_path, identity) as (_, base, log):
        host, port = base.removeprefix("http://").split(":")
        size_before = log.stat().st_size

        async def one(raw: bytes) -> None:
            reader, writer = await asyncio.open_connection(host, int(port))
            try:
                writer.write(raw)
                await writer.drain()
                await asyncio.wait_for(reader.read(-1), 30)
            finally:
                writer.close()

        garbage = b"\x16\x03\x01 not http at all\r\n\r\n"
        upgrade = (
            b"GET /health HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: h2c\r\n"
            b"Connection: close\r\n\r\n"
        )
        gate = asyncio.Semaphore(32)

        async def gated(raw: bytes) -> None:
            async with gate:
                await one(raw)

        await asyncio.gather(*(gated(garbage) for _ in range(2000)))
        await asyncio.gather(*(gated(upgrade) for _ in range(500)))
        await asyncio.sleep(0.5)  # let the last lines reach the file
        growth = log.stat().st_size - size_before
        print(f"malformed flood: log +{growth} B")
        assert growth < 50_000


# --------------------------------------------------------------------------- row 6


async def test_ready_answers_while_200_slow_connections_are_held(
    tmp_path: Path, identity: Identity
) -> None:
    """Row 6: with 200 file descriptors, 200 idle or half-sent-header connections held open
    (and reopened when closed) left ``/ready`` unanswered and wrote 125 MB of log in 25 s."""
    with running_controller(tmp_path, identity, nofile=200) as (proc, base, log):
        host, port = base.removeprefix("http://").split(":")
        size_before = log.stat().st_size
        attack = Slowloris(host, int(port), 200)
        try:
            await asyncio.sleep(3.0)  # let the connections pile up first
            latencies = await probe(base, 20.0)
        finally:
            attack.stop()
        growth = log.stat().st_size - size_before
        answered = [x for x in latencies if x is not None]
        print(
            f"row 6: {len(answered)}/{len(latencies)} /ready answered, slowest "
            f"{max(answered, default=float('nan')):.3f} s, median "
            f"{sorted(answered)[len(answered) // 2] if answered else float('nan'):.3f} s; "
            f"log +{growth} B; attacker opened "
            f"{attack.opened}, closed by server {attack.closed_by_server}, refused "
            f"{attack.refused}"
        )
        assert proc.poll() is None
        assert len(answered) == len(latencies), latencies
        assert growth < 5 * 2**20
