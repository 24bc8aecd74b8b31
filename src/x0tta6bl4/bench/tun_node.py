"""One mesh node of ``x0tta6bl4 bench tun``, run inside its network namespace.

``python -m x0tta6bl4.bench.tun_node DIR NODE_ID`` reads what the benchmark wrote into ``DIR``
(``ca.pem``, ``<node>.key.pem``, ``<node>.cert.der``, ``members.json``: every node's id, SPIFFE
ID, underlay endpoint, overlay address), binds its underlay UDP address, creates the TUN
interface with its overlay address, and runs the node's data plane (``--dataplane`` from
``members.json``) with the static membership: no controller, the identities are issued by the
benchmark's own mesh CA. It prints one JSON status line per half second on stdout (links,
routes, end-to-end sessions, the native data plane's offloads and counters) and stops on
SIGTERM.

``DIR/offload.json`` (``{"generation": N, "tun": bool, "gso": bool, "gro": bool}``, written by
``bench tun --breakdown``) switches the native data plane's offloads at run time
(``Dataplane.set_offload``); the status line reports the generation applied.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import sys
import time
from pathlib import Path

from x0tta6bl4.crypto.pqsvid import TrustBundle
from x0tta6bl4.crypto.suite import SigningKey
from x0tta6bl4.node.model import AppMessage, CoreConfig, Member, NodeIdentity
from x0tta6bl4.node.tun import TunBridge
from x0tta6bl4.node.udp import MeshEndpoint, bind_udp

__all__ = ["main", "write_offload"]


async def _run(directory: Path, node_id: str) -> None:
    spec = json.loads((directory / "members.json").read_text())
    me = next(m for m in spec["members"] if m["node_id"] == node_id)
    bundle = TrustBundle.from_pem(spec["trust_domain"], (directory / "ca.pem").read_bytes())
    identity = NodeIdentity(
        node_id=node_id,
        spiffe_id=me["spiffe_id"],
        signing_key=SigningKey.from_pem((directory / f"{node_id}.key.pem").read_bytes()),
        cert_der=(directory / f"{node_id}.cert.der").read_bytes(),
        bundle=bundle,
        not_after=time.time() + 3600,
        overlay_ip=me["overlay_ip"],
    )
    members = [
        Member(
            m["node_id"],
            m["spiffe_id"],
            (m["host"], m["port"]),
            m["overlay_ip"],
            (directory / f"{m['node_id']}.cert.der").read_bytes(),
        )
        for m in spec["members"]
        if m["node_id"] != node_id
    ]
    tun = TunBridge.open(vnet_hdr=spec["dataplane"] == "native")
    bridge: list[TunBridge] = [tun]

    def on_app(message: AppMessage) -> None:
        if message.channel == tun.channel:
            bridge[0].deliver(message)

    endpoint = MeshEndpoint(
        identity,
        config=CoreConfig(link_filter=lambda a, b: frozenset((a, b)) in _links(spec)),
        on_app=on_app,
        dataplane=spec["dataplane"],
    )
    endpoint.attach(bind_udp((me["host"], me["port"])))
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    control = directory / "offload.json"
    generation = 0
    try:
        await tun.start(endpoint, me["overlay_ip"])
        endpoint.call(lambda core, now: core.set_members(members, now))
        await tun.set_members(members)
        while not stop.is_set():
            generation = _apply_offload(endpoint, control, generation)
            status = endpoint.core.status()
            native = endpoint.native
            line = {
                "node_id": node_id,
                "dataplane": endpoint.dataplane,
                "links": [link["peer"] for link in status["links"] if link["state"] == "up"],
                "routes": {r["dest"]: r["path"] for r in status["routes"]},
                "tun": tun.status(),
                "offload": {
                    "generation": generation,
                    "tun": [] if native is None else native.tun_offload(),
                    "udp": [] if native is None else native.udp_offload(),
                },
                "counters": endpoint.native_counters(),
            }
            print(json.dumps(line), flush=True)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), 0.5)
    finally:
        tun.close()
        endpoint.close()


def _apply_offload(endpoint: MeshEndpoint, control: Path, applied: int) -> int:
    """Apply ``offload.json`` if its generation is new; the generation now applied."""
    try:
        spec = json.loads(control.read_text())
    except (OSError, ValueError):
        return applied
    generation = int(spec.get("generation", 0))
    if generation == applied or endpoint.native is None:
        return generation
    endpoint.native.set_offload(
        tun=bool(spec.get("tun", True)),
        gso=bool(spec.get("gso", True)),
        gro=bool(spec.get("gro", True)),
    )
    return generation


def write_offload(directory: Path, generation: int, settings: dict[str, bool]) -> None:
    """Write ``offload.json`` atomically (the nodes poll it)."""
    tmp = directory / "offload.json.tmp"
    tmp.write_text(json.dumps({"generation": generation, **settings}))
    os.replace(tmp, directory / "offload.json")


def _links(spec: dict[str, object]) -> set[frozenset[str]]:
    pairs = spec["links"]
    assert isinstance(pairs, list)
    return {frozenset(pair) for pair in pairs}


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print("usage: python -m x0tta6bl4.bench.tun_node DIR NODE_ID", file=sys.stderr)
        return 2
    asyncio.run(_run(Path(argv[0]), argv[1]))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
