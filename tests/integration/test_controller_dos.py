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
    Identity,
    free_port,
    running_issuer,
    wait_ready,
)

pytestmark = pytest.mark.timeout(300)


@pytest.fixture(scope="module")
def identity(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Identity]:
    with running_issuer(tmp_path_factory.mktemp("id")) as ident:
        yield ident


def rss_bytes(pid: int) -> int:
    """Resident set size of ``pid`` (``VmRSS`` of /proc/PID/status)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError(f"no VmRSS for {pid}")  # pragma: no cover


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
        "--local-ca",
        *extra,
    ]  # fmt: skip

    with open(log, "ab") as out:
        proc = subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT, env=env)
    if nofile is not None:  # at once: the interpreter has not even started importing yet
        resource.prlimit(proc.pid, resource.RLIMIT_NOFILE, (nofile, nofile))
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
