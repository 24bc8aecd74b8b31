"""``x0tta6bl4 node``: run the mesh node agent (flags: docs/runtime-contract.md)."""

from __future__ import annotations

import asyncio
import signal
from pathlib import Path
from typing import Annotated, Any

import typer

from x0tta6bl4.commands._options import LogFormatOption, SpiffeSocketOption
from x0tta6bl4.defaults import (
    DEFAULT_CONTROLLER,
    DEFAULT_NODE_HTTP,
    DEFAULT_NODE_LISTEN_UDP,
    DEFAULT_STATE_DIR,
    DEFAULT_TRUST_DOMAIN,
)
from x0tta6bl4.protocol.failure import DEFAULT_DEAD_AFTER, DEFAULT_INTERVAL

__all__ = ["node"]


def _fail(message: str) -> None:
    typer.echo(f"x0tta6bl4 node: {message}", err=True)
    raise typer.Exit(2)


def node(  # noqa: PLR0917 - one parameter per flag
    controller: Annotated[
        str | None,
        typer.Option(
            "--controller",
            envvar="X0_CONTROLLER",
            help=f"the controller's TLS base URL, mutual TLS with this node's X.509-SVID "
            f"(default: {DEFAULT_CONTROLLER})",
        ),
    ] = None,
    controller_spiffe_id: Annotated[
        str | None,
        typer.Option(
            "--controller-spiffe-id",
            envvar="X0_CONTROLLER_SPIFFE_ID",
            help="SPIFFE ID the controller must present (default: …/controller next to this "
            "node's own …/node/<name>)",
        ),
    ] = None,
    listen_udp: Annotated[
        str | None,
        typer.Option(
            "--listen-udp",
            envvar="X0_LISTEN_UDP",
            help=f"mesh UDP HOST:PORT (default: {DEFAULT_NODE_LISTEN_UDP})",
        ),
    ] = None,
    http: Annotated[
        str | None,
        typer.Option(
            "--http",
            envvar="X0_HTTP",
            help=f"node HTTP server HOST:PORT (default: {DEFAULT_NODE_HTTP})",
        ),
    ] = None,
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
        Path | None,
        typer.Option(
            "--state-dir",
            envvar="X0_STATE_DIR",
            help=f"node key directory (default: {DEFAULT_STATE_DIR})",
        ),
    ] = None,
    spiffe_socket: SpiffeSocketOption = None,
    trust_domain: Annotated[
        str | None,
        typer.Option(
            "--trust-domain",
            envvar="X0_TRUST_DOMAIN",
            help=f"SPIFFE trust domain (default: {DEFAULT_TRUST_DOMAIN})",
        ),
    ] = None,
    tun: Annotated[
        bool | None,
        typer.Option("--tun", envvar="X0_TUN", help="create the overlay TUN interface"),
    ] = None,
    heartbeat_interval: Annotated[
        float | None,
        typer.Option(
            "--heartbeat-interval",
            envvar="X0_HEARTBEAT_INTERVAL",
            help=f"seconds (default: {DEFAULT_INTERVAL})",
        ),
    ] = None,
    dead_after: Annotated[
        int | None,
        typer.Option(
            "--dead-after",
            envvar="X0_DEAD_AFTER",
            help=f"missed heartbeats before link down (default: {DEFAULT_DEAD_AFTER})",
        ),
    ] = None,
    rotate_key: Annotated[
        bool | None,
        typer.Option(
            "--rotate-key",
            envvar="X0_ROTATE_KEY",
            help="replace the state dir's ML-DSA-65 key with a new one at start, proving "
            "possession of the old one to the controller (peers drop links to the old key)",
        ),
    ] = None,
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
    from pydantic import ValidationError

    from x0tta6bl4.logging import configure_logging
    from x0tta6bl4.node.agent import NodeAgent
    from x0tta6bl4.node.config import NodeSettings

    given: dict[str, Any] = {
        "controller": controller,
        "listen_udp": listen_udp,
        "http": http,
        "advertise": advertise,
        "node_id": node_id,
        "state_dir": state_dir,
        "spiffe_socket": spiffe_socket,
        "trust_domain": trust_domain,
        "tun": tun,
        "rotate_key": rotate_key,
        "heartbeat_interval": heartbeat_interval,
        "dead_after": dead_after,
        "dataplane": dataplane,
        "controller_spiffe_id": controller_spiffe_id,
    }
    try:
        configure_logging(log_format, log_level)
        settings = NodeSettings(**{k: v for k, v in given.items() if v is not None})
        settings.resolved_node_id()  # a bad or unusable node name fails here, clearly
        from x0tta6bl4.dataplane import resolve

        resolve(settings.dataplane)  # --dataplane native without the extension fails here
    except ValidationError as err:
        first = err.errors()[0]
        message = str(first["msg"]).removeprefix("Value error, ")
        if not message.startswith("--"):
            where = ".".join(str(p) for p in first["loc"]) or "settings"
            message = f"invalid --{where.replace('_', '-')}: {message}"
        _fail(message)
        return
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
