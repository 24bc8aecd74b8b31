"""Issue 13 row 6, issuer side: the embedded identity issuer survives file-descriptor
exhaustion without unhandled tracebacks.

A real ``x0tta6bl4 identity serve`` limited to 64 descriptors; the test holds 300 connections
to its Workload API socket (some idle, some sending garbage), then releases them and fetches
an X.509-SVID: the issuer is alive, answers again, and its log holds no traceback and stays
small.
"""

from __future__ import annotations

import asyncio
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

import pytest
from spiffe import SpiffeId

from x0tta6bl4.identity.workload_source import Backoff, WorkloadSource

pytestmark = pytest.mark.timeout(180)

TD = "x0tta6bl4.mesh"
ME = f"spiffe://{TD}/ns/test/sa/fd"


def _wait_serving(socket_path: Path, proc: subprocess.Popen[bytes]) -> WorkloadSource:
    source = WorkloadSource(socket_path, trust_domain=TD, backoff=Backoff(attempts=1))
    deadline = time.monotonic() + 60
    while True:
        assert proc.poll() is None, "the issuer exited"
        try:
            source.fetch_x509_context()
            return source
        except Exception:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)


async def _flood(socket_path: Path, count: int, hold: float) -> int:
    """Open ``count`` connections (every third one sends garbage) and hold them; the number
    the issuer accepted or queued."""
    writers = []
    for index in range(count):
        try:
            _, writer = await asyncio.open_unix_connection(str(socket_path))
        except OSError:
            continue
        if index % 3 == 0:
            writer.write(b"PRI * HTTP/2.0\r\n\r\nnot grpc at all" * 4)
        writers.append(writer)
    await asyncio.sleep(hold)
    for writer in writers:
        writer.close()
    return len(writers)


async def test_issuer_survives_descriptor_exhaustion(tmp_path: Path) -> None:
    socket_path = tmp_path / "workload.sock"
    log = tmp_path / "issuer.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "x0tta6bl4",
                "identity",
                "serve",
                "--socket",
                str(socket_path),
                "--trust-domain",
                TD,
                "--entry",
                f"{os.getuid()}={ME}",
                "--state-dir",
                str(tmp_path / "state"),
            ],
            stdout=out,
            stderr=subprocess.STDOUT,
            env={**os.environ, "X0_LOG_FORMAT": "json"},
        )
    try:
        resource.prlimit(proc.pid, resource.RLIMIT_NOFILE, (64, 64))
        source = _wait_serving(socket_path, proc)
        size_before = log.stat().st_size
        held = await _flood(socket_path, 300, hold=4.0)
        assert proc.poll() is None, "the issuer died under descriptor exhaustion"
        await asyncio.sleep(1.0)
        # Released: it serves again.
        context = await asyncio.to_thread(source.fetch_x509_context)
        assert context.default_svid.spiffe_id == SpiffeId(ME)
        text = log.read_text(errors="replace")
        growth = log.stat().st_size - size_before
        print(f"issuer: {held} connections held, log +{growth} B")
        assert "Traceback" not in text, text[-3000:]
        assert growth < 200_000
    finally:
        proc.terminate()
        proc.wait(timeout=20)
