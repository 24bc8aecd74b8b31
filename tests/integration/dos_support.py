"""Helpers of the HTTP denial-of-service tests (controller and node): a slowloris that holds
connections open, a ``/ready`` prober, a process's resident size."""

from __future__ import annotations

import asyncio
import multiprocessing
from multiprocessing.connection import Connection
from pathlib import Path

import httpx

__all__ = ["Slowloris", "probe", "rss_bytes"]


def rss_bytes(pid: int) -> int:
    """Resident set size of ``pid`` (``VmRSS`` of /proc/PID/status)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError(f"no VmRSS for {pid}")  # pragma: no cover


class _Holder:
    """The attack itself, in the attacker's process (see :class:`Slowloris`)."""

    def __init__(self, host: str, port: int, count: int, source: str) -> None:
        self.host, self.port, self.count, self.source = host, port, count, source
        self.opened = 0
        self.closed_by_server = 0
        self.refused = 0
        self._stop = asyncio.Event()

    async def _hold(self, index: int) -> None:
        while not self._stop.is_set():
            try:
                reader, writer = await asyncio.open_connection(
                    self.host, self.port, local_addr=(self.source, 0)
                )
            except OSError:
                self.refused += 1
                await asyncio.sleep(0.05)
                continue
            self.opened += 1
            try:
                if index % 2:
                    writer.write(b"GET /ready HTTP/1.1\r\nHost: x\r\nX-Slow: ")
                    await writer.drain()
                stop = asyncio.ensure_future(self._stop.wait())
                eof = asyncio.ensure_future(reader.read(65536))
                done, _ = await asyncio.wait({stop, eof}, return_when=asyncio.FIRST_COMPLETED)
                for task in (stop, eof):
                    task.cancel()
                if eof in done:
                    self.closed_by_server += 1
            except OSError:
                self.closed_by_server += 1
            finally:
                writer.close()

    async def run(self, conn: Connection) -> None:
        loop = asyncio.get_running_loop()
        loop.add_reader(conn.fileno(), self._stop.set)  # the coordinator says stop
        await asyncio.gather(*(self._hold(i) for i in range(self.count)))
        loop.remove_reader(conn.fileno())


def _attack(conn: Connection, host: str, port: int, count: int, source: str) -> None:
    holder = _Holder(host, port, count, source)
    asyncio.run(holder.run(conn))
    conn.recv()
    conn.send((holder.opened, holder.closed_by_server, holder.refused))


class Slowloris:
    """Holds ``count`` connections to ``host:port`` open, each idle or with half-sent headers
    (alternately), reopening every one the server closes at once, until stopped. They come
    from ``source`` (another loopback address than the probes', as an attacker's are not the
    kubelet's or Prometheus's), and from a process of their own, so that the attack's own
    work does not slow the probes measuring the server.

    After :meth:`stop`: ``opened`` connections, ``closed_by_server``, ``refused`` connects.
    """

    def __init__(self, host: str, port: int, count: int, source: str = "127.0.0.2") -> None:
        self.opened = self.closed_by_server = self.refused = 0
        ctx = multiprocessing.get_context("spawn")
        self._conn, child = ctx.Pipe()
        self._proc = ctx.Process(
            target=_attack, args=(child, host, port, count, source), daemon=True
        )
        self._proc.start()
        child.close()

    def stop(self) -> None:
        """Stop the attack (its connections close) and collect its figures."""
        try:
            self._conn.send("stop")
            if self._conn.poll(30):
                self.opened, self.closed_by_server, self.refused = self._conn.recv()
        finally:
            self._proc.join(10)
            if self._proc.is_alive():  # pragma: no cover - a wedged attacker
                self._proc.kill()
                self._proc.join()
            self._conn.close()


async def probe(base: str, seconds: float) -> list[float | None]:
    """``GET /ready`` on a fresh connection every 0.5 s for ``seconds``: each latency, or None
    for a probe not answered 200 within 2 s."""
    latencies: list[float | None] = []
    loop = asyncio.get_running_loop()
    end = loop.time() + seconds
    while loop.time() < end:
        start = loop.time()
        try:
            async with httpx.AsyncClient(base_url=base, timeout=5.0) as client:
                r = await asyncio.wait_for(client.get("/ready"), 2.0)
            latencies.append(loop.time() - start if r.status_code == 200 else None)
        except (httpx.HTTPError, TimeoutError):
            latencies.append(None)
        await asyncio.sleep(max(0.0, 0.5 - (loop.time() - start)))
    return latencies
