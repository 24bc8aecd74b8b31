"""HTTP listeners with limits (x0tta6bl4.httpserver), on real loopback sockets.

Each test runs a uvicorn server built by ``limited_config`` in its own event loop and talks
to it with raw sockets. Waits are hang guards on conditions (a closed socket, an answer),
never performance assertions.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator
from typing import Any

import pytest
import uvicorn

from x0tta6bl4.httpserver import (
    MAX_HEADER_BYTES,
    MIN_BACKLOG,
    MIN_CONNECTIONS,
    BodyLimit,
    ConnectionLimiter,
    limited_config,
    source_key,
)

pytestmark = pytest.mark.timeout(60)

GUARD = 20.0


async def hello(scope: dict[str, Any], receive: Any, send: Any) -> None:
    """A tiny ASGI app: ``/block`` waits until ``RELEASE`` is set; anything else answers."""
    if scope["type"] != "http":
        return
    if scope["path"] == "/block":
        await RELEASE.wait()
    body = b'{"ok":true}'
    await send(
        {
            "type": "http.response.start",
            "status": 200,
            "headers": [(b"content-type", b"application/json"), (b"content-length", b"11")],
        }
    )
    await send({"type": "http.response.body", "body": body})


RELEASE = asyncio.Event()


@contextlib.asynccontextmanager
async def serving(app: Any = hello, **options: Any) -> AsyncIterator[tuple[int, ConnectionLimiter]]:
    limiter = options.pop("limiter", None) or ConnectionLimiter()
    config = limited_config(app, "127.0.0.1", 0, limiter=limiter, lifespan="off", **options)
    server = uvicorn.Server(config)
    task = asyncio.create_task(server.serve())
    try:
        async with asyncio.timeout(GUARD):
            while not server.started:
                await asyncio.sleep(0.01)
        port = server.servers[0].sockets[0].getsockname()[1]
        yield port, limiter
    finally:
        RELEASE.set()
        server.should_exit = True
        await task
        RELEASE.clear()


async def closed_by_server(reader: asyncio.StreamReader) -> bytes:
    """Everything the server sends until it closes the connection (hang-guarded)."""
    async with asyncio.timeout(GUARD):
        return await reader.read(-1)


async def request(port: int, raw: bytes) -> bytes:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(raw)
        await writer.drain()
        return await closed_by_server(reader)
    finally:
        writer.close()


async def test_half_sent_headers_are_cut_at_the_read_timeout() -> None:
    async with serving(read_timeout=0.3) as (port, limiter):
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"GET / HTTP/1.1\r\nHost: x\r\nX-Slow: ")
        await writer.drain()
        assert await closed_by_server(reader) == b""
        writer.close()
        # An idle connection that never sends a byte is cut too.
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        assert await closed_by_server(reader) == b""
        writer.close()
        assert limiter.closed["read_timeout"] == 2
        assert limiter.open == 0


async def test_trickled_bytes_do_not_extend_the_read_timeout() -> None:
    async with serving(read_timeout=0.5) as (port, limiter):
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"GET / HTTP/1.1\r\n")
        done = asyncio.ensure_future(closed_by_server(reader))
        with contextlib.suppress(ConnectionError):
            for _ in range(100):  # one byte every 0.1 s: 10 s if each byte reset the timer
                if done.done():
                    break
                writer.write(b"X")
                await writer.drain()
                await asyncio.sleep(0.1)
        assert await done == b""
        writer.close()
        assert limiter.closed["read_timeout"] == 1


async def test_a_partial_request_after_keep_alive_is_cut() -> None:
    async with serving(read_timeout=0.3, keepalive_timeout=30) as (port, limiter):
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        await writer.drain()
        async with asyncio.timeout(GUARD):
            head = await reader.readuntil(b'{"ok":true}')
        assert head.startswith(b"HTTP/1.1 200")
        writer.write(b"GET / HTTP/1.1\r\nHo")  # the next request never completes
        await writer.drain()
        assert await closed_by_server(reader) == b""
        writer.close()
        assert limiter.closed["read_timeout"] == 1


async def test_idle_keep_alive_connections_close() -> None:
    async with serving(keepalive_timeout=1) as (port, limiter):
        answer = await request(port, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        assert answer.startswith(b"HTTP/1.1 200")
        assert answer.endswith(b'{"ok":true}')
        assert limiter.closed["keepalive_timeout"] == 1
        assert limiter.closed["read_timeout"] == 0
        assert limiter.accepted == 1


async def test_at_the_cap_the_longest_waiting_connection_is_evicted() -> None:
    limiter = ConnectionLimiter(MIN_CONNECTIONS)
    async with serving(limiter=limiter, read_timeout=30) as (port, _):
        held = [await asyncio.open_connection("127.0.0.1", port) for _ in range(MIN_CONNECTIONS)]
        async with asyncio.timeout(GUARD):
            while limiter.open < MIN_CONNECTIONS:
                await asyncio.sleep(0.01)
        # One more: the oldest idle connection goes, the newcomer is served.
        answer = await request(port, b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        assert answer.startswith(b"HTTP/1.1 200")
        assert await closed_by_server(held[0][0]) == b""
        assert limiter.closed["evicted"] == 1
        assert limiter.open <= MIN_CONNECTIONS
        for _, writer in held:
            writer.close()


async def test_at_the_cap_the_source_with_most_waiting_loses_its_oldest() -> None:
    """A client reconnecting as fast as it is evicted churns its own connections: an idle
    connection from another address, older than all of them, stays."""
    limiter = ConnectionLimiter(MIN_CONNECTIONS)
    async with serving(limiter=limiter, read_timeout=30) as (port, _):

        async def attacker() -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
            return await asyncio.open_connection("127.0.0.1", port, local_addr=("127.0.0.2", 0))

        reader, writer = await asyncio.open_connection("127.0.0.1", port)  # oldest of all
        held = [await attacker() for _ in range(MIN_CONNECTIONS - 1)]
        async with asyncio.timeout(GUARD):
            while limiter.waiting_connections < MIN_CONNECTIONS:
                await asyncio.sleep(0.01)
        for _ in range(3 * MIN_CONNECTIONS):  # each newcomer evicts one of 127.0.0.2's
            held.append(await attacker())
        async with asyncio.timeout(GUARD):
            while limiter.closed["evicted"] < 3 * MIN_CONNECTIONS:
                await asyncio.sleep(0.01)
        for old_reader, _ in held[: 3 * MIN_CONNECTIONS]:  # the oldest attackers went first
            assert await closed_by_server(old_reader) == b""
        writer.write(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        await writer.drain()
        assert (await closed_by_server(reader)).startswith(b"HTTP/1.1 200")
        writer.close()
        for _, held_writer in held:
            held_writer.close()


def test_sources_are_addresses_and_ipv6_slash_64s() -> None:
    assert source_key(("10.1.2.3", 4000)) == "10.1.2.3"
    assert source_key(("2001:db8:1:2:aaaa::1", 4000)) == "2001:db8:1:2::"
    assert source_key(("2001:db8:1:2:bbbb::9", 1)) == source_key(("2001:db8:1:2::7", 2))
    assert source_key(None) == ""


async def test_connections_being_served_are_never_evicted() -> None:
    limiter = ConnectionLimiter(MIN_CONNECTIONS)
    async with serving(limiter=limiter, read_timeout=30) as (port, _):
        busy = []
        for _ in range(MIN_CONNECTIONS):
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(b"GET /block HTTP/1.1\r\nHost: x\r\n\r\n")
            await writer.drain()
            busy.append((reader, writer))
        async with asyncio.timeout(GUARD):
            while limiter.waiting_connections or limiter.open < MIN_CONNECTIONS:
                await asyncio.sleep(0.01)
        # Every slot is serving a request: the newcomer is closed, nobody is evicted.
        assert await request(port, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n") == b""
        assert limiter.closed == {
            "read_timeout": 0,
            "keepalive_timeout": 0,
            "evicted": 0,
            "over_capacity": 1,
        }
        RELEASE.set()
        for reader, writer in busy:
            async with asyncio.timeout(GUARD):
                assert (await reader.readuntil(b'{"ok":true}')).startswith(b"HTTP/1.1 200")
            writer.close()


async def test_oversized_headers_are_refused() -> None:
    async with serving() as (port, _):
        big = b"X-Big: " + b"a" * MAX_HEADER_BYTES + b"\r\n"
        answer = await request(port, b"GET / HTTP/1.1\r\nHost: x\r\n" + big + b"\r\n")
        assert answer.startswith(b"HTTP/1.1 431"), answer[:80]
        assert b'"error": "headers_too_large"' in answer
        # A head that is still incomplete when it passes the limit: h11 answers 400.
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"GET / HTTP/1.1\r\nX-Big: " + b"a" * (4 * MAX_HEADER_BYTES))
        await writer.drain()
        assert (await closed_by_server(reader)).startswith(b"HTTP/1.1 400")
        writer.close()
        # Just under the limit is served.
        fits = b"X-Fits: " + b"a" * (MAX_HEADER_BYTES - 200) + b"\r\n"
        answer = await request(
            port, b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n" + fits + b"\r\n"
        )
        assert answer.startswith(b"HTTP/1.1 200")


def test_the_cap_fits_the_descriptor_limit() -> None:
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (200, hard))
        limiter = ConnectionLimiter(10_000)
        # 200 - 64 reserved = 136; backlog 136 // 8 = 17, twice per listener in flight.
        assert limiter.backlog == 17
        assert limiter.cap == 136 - 2 * 17
        limiter.add_listener()
        assert limiter.cap == 136 - 2 * 17
        limiter.add_listener()  # a second listener of the same process
        assert limiter.cap == 136 - 4 * 17
        assert ConnectionLimiter(64).cap == 64
        resource.setrlimit(resource.RLIMIT_NOFILE, (40, hard))
        assert ConnectionLimiter(10_000).cap == MIN_CONNECTIONS
        assert ConnectionLimiter(10_000).backlog == MIN_BACKLOG
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    with pytest.raises(ValueError, match="at least 1"):
        ConnectionLimiter(0)


@pytest.mark.parametrize(
    ("headers", "status"),
    [
        (b"Content-Length: 10\r\n", 200),
        (b"Content-Length: 11\r\n", 413),
        (b"Content-Length: x\r\n", 400),  # h11 refuses it first
        (b"Transfer-Encoding: chunked\r\n", 413),
    ],
)
async def test_body_limit(headers: bytes, status: int) -> None:
    async with serving(BodyLimit(hello, 10)) as (port, _):
        body = b"0123456789" if b"Length: 1" in headers else b""
        answer = await request(
            port,
            b"POST / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n" + headers + b"\r\n" + body,
        )
        assert answer.startswith(b"HTTP/1.1 %d" % status), answer[:80]
        if status == 413:
            assert json.loads(answer.split(b"\r\n\r\n", 1)[1])["error"] == "body_too_large"
