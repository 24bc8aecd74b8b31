"""The asyncio driver's socket handling (real loopback sockets, one event loop)."""

from __future__ import annotations

import asyncio
import socket
import time

import pytest

from x0tta6bl4.crypto.pqsvid import MeshCA
from x0tta6bl4.dataplane import native_error, native_module
from x0tta6bl4.defaults import DEFAULT_TRUST_DOMAIN
from x0tta6bl4.node.localmesh import issue_identity
from x0tta6bl4.node.udp import RECV_BATCH, MeshEndpoint, bind_udp, open_endpoint


async def test_one_readiness_callback_drains_a_batch_of_datagrams() -> None:
    # The reference (Python) socket driver's batching; the native one batches in Rust.
    ca = MeshCA.create(DEFAULT_TRUST_DOMAIN, now=time.time())
    endpoint = await open_endpoint(
        issue_identity(ca, "node-000"), ("127.0.0.1", 0), dataplane="python"
    )
    try:
        count = RECV_BATCH + 36
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            for i in range(count):
                sock.sendto(b"\x04garbage" + bytes([i]), endpoint.local_addr)
        # Loopback delivery is synchronous: everything waits in the socket now. Each loop
        # iteration runs the reader once; asyncio's transport would read one datagram.
        seen: list[int] = []
        while endpoint.datagrams_received < count:
            await asyncio.sleep(0)
            if endpoint.datagrams_received and endpoint.datagrams_received not in seen:
                seen.append(endpoint.datagrams_received)
        assert seen == [RECV_BATCH, count]
        assert endpoint.core.dropped["bad_length"] + endpoint.core.dropped["unknown_index"] == count
    finally:
        endpoint.close()


@pytest.mark.parametrize("dataplane", ["python", "native"])
async def test_attach_twice_and_closed_endpoint(dataplane: str) -> None:
    if dataplane == "native" and native_module() is None:
        pytest.skip(f"no Rust toolchain here: {native_error()}")
    ca = MeshCA.create(DEFAULT_TRUST_DOMAIN, now=time.time())
    endpoint = MeshEndpoint(issue_identity(ca, "node-000"), dataplane=dataplane)
    assert endpoint.dataplane == dataplane
    with pytest.raises(RuntimeError, match="no socket"):
        _ = endpoint.local_addr
    endpoint.attach(bind_udp(("127.0.0.1", 0)))
    extra = bind_udp(("127.0.0.1", 0))
    try:
        with pytest.raises(RuntimeError, match="already has a socket"):
            endpoint.attach(extra)
    finally:
        extra.close()
    endpoint.close()
    assert endpoint.closed
    endpoint.close()  # idempotent


async def test_native_endpoint_hands_junk_up_and_counts_it() -> None:
    if native_module() is None:
        pytest.skip(f"no Rust toolchain here: {native_error()}")
    ca = MeshCA.create(DEFAULT_TRUST_DOMAIN, now=time.time())
    endpoint = await open_endpoint(
        issue_identity(ca, "node-000"), ("127.0.0.1", 0), dataplane="native"
    )
    try:
        count = 100
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            for i in range(count):
                sock.sendto(b"\x04garbage" + bytes([i]), endpoint.local_addr)  # too short
                sock.sendto(b"\x04" + bytes(40), endpoint.local_addr)  # no such index
        deadline = time.monotonic() + 10
        while endpoint.datagrams_received < count and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
        assert endpoint.datagrams_received == count
        assert endpoint.core.dropped["unknown_index"] == count  # short ones, in Python
        assert endpoint.native_counters()["unknown_index"] == count  # the others, natively
        assert endpoint.native_counters()["rx_datagrams"] == 2 * count
    finally:
        endpoint.close()
