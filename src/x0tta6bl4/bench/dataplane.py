"""``x0tta6bl4 bench dataplane``: echo rate and latency over 1-, 2- and 3-hop mesh paths.

Four real nodes (:class:`~x0tta6bl4.node.localmesh.LocalMesh`: PQ links, signed routing, one
loopback UDP socket each) are forced into a line ``node-000 – node-001 – node-002 – node-003``
by a link filter, so ``node-000`` reaches ``node-00k`` over ``k`` hops. The workload is the mesh
echo (``NodeCore.ping``): a 13-byte application payload sealed in an end-to-end session (which
relays cannot read), carried in ROUTED frames over link sessions hop by hop, answered by the
destination's core, and carried back. The baseline, in the same process and event loop, is
raw UDP echo between two plain asyncio datagram sockets on ``127.0.0.1`` with the same 13-byte
payload and no cryptography: what the sockets and the event loop cost alone.

For every contender:

* ``latency_us_*``: the median round trip of ``samples`` echoes sent one at a time (µs, from
  the send call to the reply's arrival in Python), so it includes both directions;
  ``added_latency_us_*`` subtracts ``raw_latency_us`` measured the same way;
* ``pps_*``: echoes completed per second with ``window`` requests in flight, for ``duration``
  seconds (each echo is two application datagrams, one each way, so the one-way datagram rate
  is twice this); ``raw_pps`` the same with raw UDP echo.

``cpu_us_per_echo_*`` / ``raw_cpu_us_per_echo``: CPU time of this process per echo in the
rate runs, steadier than wall-clock rates on a shared machine; ``cpu_ratio_1hop`` is their
ratio for one hop. Each contender runs ``rounds`` times, in rotated order so that noise from
other processes hits all of them; each figure is its best round (noise only slows things).

``ratio`` = ``raw_pps`` ÷ ``pps_1hop``: how many times more echoes per second the bare sockets
complete than a one-hop mesh path (1.0 would mean the mesh adds nothing). Every node runs in
this one process and one event loop (so a 3-hop echo makes 8 socket crossings, all on one
core); the figures are the per-packet cost of the Python data plane, not of a network.

**Native data plane** (``dataplane: native``, the default when built): the four nodes run the
Rust packet path (each its own I/O thread); the mesh echo is driven natively too
(``Dataplane.echo_bench``: ``window`` echoes in flight from ``dp-000``'s data plane, each reply
sending the next, the destination's data plane answering), run from a worker thread while the
event loop keeps the control plane (heartbeats, routing) going. ``raw_native_pps`` is raw UDP
echo between two loopback sockets in native code with the same batching (recvmmsg/sendmmsg,
``UDP_GRO`` and ``UDP_SEGMENT`` runs where the kernel has them; ``raw_echo_bench``), measured
in the same rounds; ``native_ratio`` = ``pps_1hop`` ÷
``raw_native_pps`` (goal ≥ 0.5). ``raw_pps`` stays the asyncio raw echo, so ``ratio`` keeps
its meaning. Latencies are medians of echoes sent one at a time (window 1).
"""

from __future__ import annotations

import asyncio
import dataclasses
import statistics
import struct
import time
from collections.abc import Awaitable, Callable
from typing import Any

from x0tta6bl4.dataplane import native_module, resolve
from x0tta6bl4.node.localmesh import LocalMesh
from x0tta6bl4.node.model import CoreConfig

__all__ = ["format_table", "run"]

_ECHO = struct.Struct("!IQ")  # seq, stamp: 12 bytes + 1 kind byte = the ping payload's 13
_HOPS = (1, 2, 3)

Exchange = Callable[[], Awaitable[None]]


class _EchoServer(asyncio.DatagramProtocol):
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport: asyncio.DatagramTransport = transport  # type: ignore[assignment]

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        self.transport.sendto(data, addr)


class _EchoClient(asyncio.DatagramProtocol):
    def __init__(self) -> None:
        self.waiting: dict[int, asyncio.Future[None]] = {}
        self.seq = 0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport: asyncio.DatagramTransport = transport  # type: ignore[assignment]

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        if len(data) == _ECHO.size + 1:
            future = self.waiting.pop(_ECHO.unpack_from(data, 1)[0], None)
            if future is not None and not future.done():
                future.set_result(None)

    async def exchange(self) -> None:
        self.seq += 1
        seq = self.seq
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.waiting[seq] = future
        self.transport.sendto(b"\x00" + _ECHO.pack(seq, 0))
        try:
            await asyncio.wait_for(future, 2.0)
        finally:
            self.waiting.pop(seq, None)


def _line(a: str, b: str) -> bool:
    """Only consecutive nodes of the line may link (``node-000`` – ``node-001`` – …)."""
    return abs(int(a[-3:]) - int(b[-3:])) == 1


async def _latency(exchange: Exchange, samples: int) -> float:
    times = []
    for _ in range(samples):
        start = time.perf_counter()
        await exchange()
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1e6


async def _rate(exchange: Exchange, window: int, duration: float) -> tuple[float, float]:
    """``(echoes per wall-clock second, CPU µs of this process per echo)``."""
    done = 0
    stop = time.perf_counter() + duration

    async def lane() -> None:
        nonlocal done
        while time.perf_counter() < stop:
            await exchange()
            done += 1

    start, cpu = time.perf_counter(), time.process_time()
    await asyncio.gather(*(lane() for _ in range(window)))
    elapsed, cpu_used = time.perf_counter() - start, time.process_time() - cpu
    return done / elapsed, cpu_used / max(done, 1) * 1e6


def _native_rate(
    bench: Callable[..., tuple[int, float, list[float]]], window: int, duration: float
) -> tuple[float, float]:
    """``(echoes per second, CPU µs of this process per echo)`` of a native echo run."""
    cpu = time.process_time()
    done, seconds, _ = bench(window, duration)
    cpu_used = time.process_time() - cpu
    return done / seconds, cpu_used / max(done, 1) * 1e6


def _native_latency(
    bench: Callable[..., tuple[int, float, list[float]]], samples: int, duration: float
) -> float:
    _, _, rtts = bench(1, duration, samples)
    if not rtts:
        raise RuntimeError("no native echo came back")
    return statistics.median(rtts) * 1e6


async def _measure(
    samples: int,
    window: int,
    duration: float,
    rounds: int,
    config: CoreConfig,
    *,
    dataplane: str = "python",
) -> dict[str, float]:
    loop = asyncio.get_running_loop()
    server_transport, _ = await loop.create_datagram_endpoint(
        _EchoServer, local_addr=("127.0.0.1", 0)
    )
    server_addr = server_transport.get_extra_info("sockname")[:2]
    client_transport, client = await loop.create_datagram_endpoint(
        _EchoClient, remote_addr=server_addr
    )
    mesh = LocalMesh(4, config=config, prefix="dp", dataplane=dataplane)
    out: dict[str, float] = {}
    try:
        await mesh.start()
        if not await mesh.wait_for(mesh.converged, 60.0):
            raise RuntimeError("the 4-node line did not converge within 60 s")
        for hops in _HOPS:
            route = mesh.nodes["dp-000"].endpoint.core.router.route(f"dp-{hops:03d}")
            if route is None or len(route.path) != hops:
                raise RuntimeError(f"expected a {hops}-hop path, got {route}")

        def mesh_exchange(dst: str) -> Exchange:
            async def exchange() -> None:
                await mesh.ping("dp-000", dst, timeout=2.0)

            return exchange

        exchanges: dict[str, Exchange] = {"raw": client.exchange}
        for hops in _HOPS:
            exchanges[f"{hops}hop"] = mesh_exchange(f"dp-{hops:03d}")
        for exchange in exchanges.values():
            await exchange()  # warm: end-to-end sessions, caches
        if dataplane == "native":
            await _measure_native(
                mesh, samples=samples, window=window, duration=duration, rounds=rounds, out=out
            )
            exchanges = {"raw": client.exchange}
        names = list(exchanges)
        for round_ in range(rounds):
            # Rotate the order so that noise from other processes hits every contender.
            for name in names[round_ % len(names) :] + names[: round_ % len(names)]:
                exchange = exchanges[name]
                latency = await _latency(exchange, samples)
                pps, cpu_us = await _rate(exchange, window, duration / rounds)
                out[f"latency_us_{name}"] = min(out.get(f"latency_us_{name}", latency), latency)
                out[f"pps_{name}"] = max(out.get(f"pps_{name}", pps), pps)
                out[f"cpu_us_{name}"] = min(out.get(f"cpu_us_{name}", cpu_us), cpu_us)
    finally:
        await mesh.close()
        client_transport.close()
        server_transport.close()
    return out


async def _measure_native(
    mesh: LocalMesh,
    *,
    samples: int,
    window: int,
    duration: float,
    rounds: int,
    out: dict[str, float],
) -> None:
    """The native contenders: raw native echo and 1/2/3-hop native mesh echo."""
    native: Any = native_module()
    dp = mesh.nodes["dp-000"].endpoint.native
    benches: dict[str, Callable[..., tuple[int, float, list[float]]]] = {
        "raw_native": lambda w, d, n=1000: native.raw_echo_bench(w, d, 13, n),
    }
    for hops in _HOPS:
        benches[f"{hops}hop"] = lambda w, d, n=1000, dst=f"dp-{hops:03d}": dp.echo_bench(
            dst, w, d, n
        )
    names = list(benches)
    per_round = duration / rounds
    for round_ in range(rounds):
        for name in names[round_ % len(names) :] + names[: round_ % len(names)]:
            bench = benches[name]
            latency = await asyncio.to_thread(
                _native_latency, bench, samples, min(1.0, per_round / 2)
            )
            pps, cpu_us = await asyncio.to_thread(_native_rate, bench, window, per_round)
            out[f"latency_us_{name}"] = min(out.get(f"latency_us_{name}", latency), latency)
            out[f"pps_{name}"] = max(out.get(f"pps_{name}", pps), pps)
            out[f"cpu_us_{name}"] = min(out.get(f"cpu_us_{name}", cpu_us), cpu_us)


def run(
    *,
    samples: int = 500,
    window: int = 16,
    duration: float = 6.0,
    rounds: int = 3,
    config: CoreConfig | None = None,
    dataplane: str | None = None,
) -> dict[str, Any]:
    """Measure raw UDP echo and 1/2/3-hop mesh echo in one event loop (see the module doc)."""
    if samples < 1 or window < 1 or rounds < 1 or duration <= 0:
        raise ValueError("samples, window and rounds must be positive, duration > 0")
    if window > 4096:
        raise ValueError("window must be at most 4096")
    config = config or CoreConfig()
    chosen = resolve(dataplane)

    config = dataclasses.replace(config, link_filter=_line)
    m = asyncio.run(_measure(samples, window, duration, rounds, config, dataplane=chosen))
    native = chosen == "native"
    result: dict[str, Any] = {
        "dataplane": chosen,
        "mode": (
            "4 nodes in one process, native data planes (one I/O thread each), "
            "real UDP sockets on loopback; echo driven natively"
            if native
            else "4 nodes in one process and event loop, real UDP sockets on loopback"
        ),
        "payload_bytes": _ECHO.size + 1,
        "samples": samples,
        "window": window,
        "duration_s": duration,
        "rounds": rounds,
        "raw_pps": round(m["pps_raw"]),
        "raw_latency_us": round(m["latency_us_raw"], 1),
        "raw_cpu_us_per_echo": round(m["cpu_us_raw"], 1),
    }
    for hops in _HOPS:
        result[f"pps_{hops}hop"] = round(m[f"pps_{hops}hop"])
        result[f"latency_us_{hops}hop"] = round(m[f"latency_us_{hops}hop"], 1)
        added = m[f"latency_us_{hops}hop"] - m["latency_us_raw"]
        result[f"added_latency_us_{hops}hop"] = round(added, 1)
        result[f"cpu_us_per_echo_{hops}hop"] = round(m[f"cpu_us_{hops}hop"], 1)
    result["ratio"] = round(m["pps_raw"] / m["pps_1hop"], 2)
    result["ratio_definition"] = "raw_pps / pps_1hop"
    result["cpu_ratio_1hop"] = round(m["cpu_us_1hop"] / m["cpu_us_raw"], 2)
    if native:
        result["raw_native_pps"] = round(m["pps_raw_native"])
        result["raw_native_latency_us"] = round(m["latency_us_raw_native"], 1)
        result["raw_native_cpu_us_per_echo"] = round(m["cpu_us_raw_native"], 1)
        result["native_ratio"] = round(m["pps_1hop"] / m["pps_raw_native"], 3)
        result["native_ratio_definition"] = "pps_1hop / raw_native_pps (goal >= 0.5)"
        for hops in _HOPS:
            added = m[f"latency_us_{hops}hop"] - m["latency_us_raw_native"]
            result[f"added_latency_us_{hops}hop"] = round(added, 1)
    return result


def format_table(result: dict[str, Any]) -> str:
    """A human-readable summary of :func:`run`'s result."""
    lines = [
        f"mode: {result['mode']}, {result['payload_bytes']}-byte echo, window {result['window']}",
        f"{'path':>6} {'echo/s':>9} {'rtt µs':>9} {'added µs':>9}",
        f"{'raw':>6} {result['raw_pps']:>9} {result['raw_latency_us']:>9} {'':>9}",
    ]
    for hops in _HOPS:
        lines.append(
            f"{f'{hops} hop':>6} {result[f'pps_{hops}hop']:>9} "
            f"{result[f'latency_us_{hops}hop']:>9} {result[f'added_latency_us_{hops}hop']:>9}"
        )
    lines.append(
        f"ratio (raw_pps / pps_1hop): {result['ratio']}; "
        f"CPU per echo, 1 hop / raw: {result['cpu_ratio_1hop']}"
    )
    if "raw_native_pps" in result:
        lines.append(
            f"native: raw echo {result['raw_native_pps']}/s, rtt "
            f"{result['raw_native_latency_us']} µs; pps_1hop / raw_native_pps = "
            f"{result['native_ratio']} (goal >= 0.5)"
        )
    lines.insert(0, f"data plane: {result['dataplane']}")
    return "\n".join(lines)
