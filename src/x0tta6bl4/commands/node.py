"""``x0tta6bl4 node``: run the mesh node agent (flags: docs/runtime-contract.md)."""

from __future__ import annotations

import asyncio
import signal
from pathlib import Path
from typing import Annotated

import typer

from x0tta6bl4.commands._options import LogFormatOption, SpiffeSocketOption
from x0tta6bl4.defaults import DEFAULT_TRUST_DOMAIN
from x0tta6bl4.protocol.failure import DEFAULT_DEAD_AFTER, DEFAULT_INTERVAL

__all__ = ["node"]


def _fail(message: str) -> None:
    typer.echo(f"x0tta6bl4 node: {message}", err=True)
    raise typer.Exit(2)


def node(  # noqa: PLR0917 - one parameter per flag
    controller: Annotated[
        str, typer.Option("--controller", envvar="X0_CONTROLLER", help="controller base URL")
    ] = "http://x0tta6bl4-api:8080",
    listen_udp: Annotated[
        str, typer.Option("--listen-udp", envvar="X0_LISTEN_UDP", help="mesh UDP HOST:PORT")
    ] = "0.0.0.0:7810",
    http: Annotated[
        str, typer.Option("--http", envvar="X0_HTTP", help="node HTTP server HOST:PORT")
    ] = "0.0.0.0:7811",
    advertise: Annotated[
        str | None,
        typer.Option(
            "--advertise",
            envvar="X0_ADVERTISE",
            help="HOST:PORT where peers reach this node (default: X0_POD_IP + UDP port)",
        ),
    ] = None,
    node_id: Annotated[
        str | None,
        typer.Option(
            "--node-id", envvar="X0_NODE_ID", help="node ID (default: X0_NODE_NAME or hostname)"
        ),
    ] = None,
    state_dir: Annotated[
        Path, typer.Option("--state-dir", envvar="X0_STATE_DIR", help="node key directory")
    ] = Path("/var/lib/x0tta6bl4"),
    spiffe_socket: SpiffeSocketOption = None,
    trust_domain: Annotated[
        str, typer.Option("--trust-domain", envvar="X0_TRUST_DOMAIN", help="SPIFFE trust domain")
    ] = DEFAULT_TRUST_DOMAIN,
    tun: Annotated[
        bool, typer.Option("--tun", envvar="X0_TUN", help="create the overlay TUN interface")
    ] = False,
    heartbeat_interval: Annotated[
        float,
        typer.Option("--heartbeat-interval", envvar="X0_HEARTBEAT_INTERVAL", help="seconds"),
    ] = DEFAULT_INTERVAL,
    dead_after: Annotated[
        int,
        typer.Option(
            "--dead-after", envvar="X0_DEAD_AFTER", help="missed heartbeats before link down"
        ),
    ] = DEFAULT_DEAD_AFTER,
    dataplane: Annotated[
        str | None,
        typer.Option(
            "--dataplane",
            envvar="X0_DATAPLANE",
            help="packet path: native (Rust, the default when built) or python (the reference)",
        ),
    ] = None,
    log_format: LogFormatOption = None,
    log_level: Annotated[
        str, typer.Option("--log-level", envvar="X0_LOG_LEVEL", help="log level")
    ] = "info",
) -> None:
    """Run a mesh node: register, link to neighbours, route, serve /health /ready /metrics."""
    from x0tta6bl4.logging import configure_logging
    from x0tta6bl4.node.agent import NodeAgent
    from x0tta6bl4.node.config import NodeSettings, parse_hostport

    try:
        configure_logging(log_format, log_level)
        settings = NodeSettings(
            controller=controller,
            listen_udp=parse_hostport(listen_udp, "--listen-udp"),
            http=parse_hostport(http, "--http"),
            advertise=None if advertise is None else parse_hostport(advertise, "--advertise"),
            node_id=node_id,
            state_dir=state_dir,
            spiffe_socket=spiffe_socket,
            trust_domain=trust_domain,
            tun=tun,
            heartbeat_interval=heartbeat_interval,
            dead_after=dead_after,
            dataplane=dataplane,
        )
        settings.resolved_node_id()  # a bad or unusable node name fails here, clearly
        from x0tta6bl4.dataplane import resolve

        resolve(dataplane)  # --dataplane native without the extension fails here, clearly
    except (ValueError, RuntimeError) as exc:
        _fail(str(exc))
        return

    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        await NodeAgent(settings).run(stop)

    try:
        asyncio.run(main())
    except (OSError, PermissionError) as exc:
        _fail(str(exc))
