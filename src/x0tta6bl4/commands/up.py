"""``x0tta6bl4 up``: the whole mesh on this machine — issuer, controller(s), nodes — in one command.

Exit status: 0 when the mesh was healthy at the end (every node ready, every ordered pair
answered a mesh ping, nothing left running), 1 when it was not, 2 for bad input or a missing
prerequisite (nothing is started then), 130 when interrupted while starting.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated

import typer

from x0tta6bl4.protocol.failure import DEFAULT_DEAD_AFTER, DEFAULT_INTERVAL

__all__ = ["up"]


def _fail(message: str, code: int = 2) -> None:
    typer.echo(f"x0tta6bl4 up: {message}", err=True)
    raise typer.Exit(code)


def up(  # noqa: PLR0917 - one parameter per flag
    nodes: Annotated[
        int, typer.Option("--nodes", "-n", envvar="X0_NODES", help="mesh nodes to start")
    ] = 10,
    controllers: Annotated[
        int,
        typer.Option(
            "--controllers", envvar="X0_CONTROLLERS", help="controller replicas (>1 needs etcd)"
        ),
    ] = 1,
    store: Annotated[
        str,
        typer.Option("--store", envvar="X0_UP_STORE", help="controller store: sqlite or etcd"),
    ] = "sqlite",
    tun: Annotated[
        bool,
        typer.Option("--tun", envvar="X0_TUN", help="overlay TUN interfaces (root, /dev/net/tun)"),
    ] = False,
    duration: Annotated[
        float | None,
        typer.Option(
            "--for",
            envvar="X0_FOR",
            help="run this many seconds, then check health, print a summary and stop",
        ),
    ] = None,
    chaos: Annotated[
        bool,
        typer.Option("--chaos", envvar="X0_CHAOS", help="kill and restart random nodes"),
    ] = False,
    chaos_interval: Annotated[
        float,
        typer.Option("--chaos-interval", envvar="X0_CHAOS_INTERVAL", help="seconds between kills"),
    ] = 5.0,
    json_output: Annotated[
        bool, typer.Option("--json", envvar="X0_JSON", help="print the summary as JSON on stdout")
    ] = False,
    state_dir: Annotated[
        Path | None,
        typer.Option(
            "--state-dir",
            envvar="X0_STATE_DIR",
            help="keep state (keys, CA, store, logs) here and reuse it next time "
            "(default: a temporary directory removed at exit)",
        ),
    ] = None,
    port: Annotated[
        int,
        typer.Option(
            "--port",
            envvar="X0_PORT",
            help="controller HTTP port (further controllers: the next ports); 0 = any free port",
        ),
    ] = 0,
    heartbeat_interval: Annotated[
        float,
        typer.Option(
            "--heartbeat-interval",
            envvar="X0_HEARTBEAT_INTERVAL",
            help="nodes' heartbeat period, seconds (passed to every node)",
        ),
    ] = DEFAULT_INTERVAL,
    dead_after: Annotated[
        int,
        typer.Option(
            "--dead-after",
            envvar="X0_DEAD_AFTER",
            help="missed heartbeats before a link is declared down (passed to every node)",
        ),
    ] = DEFAULT_DEAD_AFTER,
    ready_timeout: Annotated[
        float,
        typer.Option(
            "--ready-timeout", envvar="X0_READY_TIMEOUT", help="seconds to wait for readiness"
        ),
    ] = 120.0,
    identity: Annotated[
        str,
        typer.Option(
            "--identity",
            envvar="X0_IDENTITY",
            help="identity provider: spire (real spire-server + spire-agent, one SPIFFE ID per "
            "node; needs the SPIRE binaries and root), embedded (x0tta6bl4 identity serve), or "
            "auto: spire when it can run, else embedded",
        ),
    ] = "auto",
    svid_ttl: Annotated[
        float,
        typer.Option(
            "--svid-ttl",
            envvar="X0_SVID_TTL",
            help="X.509-SVID lifetime in seconds (rotated at half-life); JWT-SVIDs live "
            "min(this, 300 s)",
        ),
    ] = 3600.0,
) -> None:
    """Start a local staging mesh (SPIRE or the embedded SPIFFE issuer, controller, N mesh
    nodes as separate processes), show it live, and stop it cleanly on Ctrl-C or after --for."""
    import asyncio

    from rich.console import Console

    from x0tta6bl4.local.config import UpConfig
    from x0tta6bl4.local.errors import LocalStagingError, StartupError
    from x0tta6bl4.local.run import run_up
    from x0tta6bl4.local.stack import StopRequested

    if store not in ("sqlite", "etcd"):
        _fail(f"--store must be sqlite or etcd, not {store!r}")
    if identity not in ("auto", "spire", "embedded"):
        _fail(f"--identity must be auto, spire or embedded, not {identity!r}")
    config = UpConfig(
        nodes=nodes,
        controllers=controllers,
        store="etcd" if store == "etcd" else "sqlite",
        tun=tun,
        duration=duration,
        chaos=chaos,
        chaos_interval=chaos_interval,
        state_dir=state_dir,
        port=port,
        ready_timeout=ready_timeout,
        heartbeat_interval=heartbeat_interval,
        dead_after=dead_after,
        identity="spire"
        if identity == "spire"
        else "embedded"
        if identity == "embedded"
        else "auto",
        svid_ttl=svid_ttl,
    )
    try:
        config.check()
    except LocalStagingError as err:
        _fail(str(err))
    console = Console(stderr=json_output)
    live = console.is_terminal and not json_output
    try:
        summary = asyncio.run(run_up(config, console, live=live))
    except StartupError as err:
        _fail(str(err), 1)
        return
    except LocalStagingError as err:
        _fail(str(err))
        return
    except (StopRequested, KeyboardInterrupt, asyncio.CancelledError):
        typer.echo("x0tta6bl4 up: interrupted; everything was stopped", err=True)
        raise typer.Exit(130) from None
    if json_output:
        sys.stdout.write(json.dumps(summary.to_json(), indent=2) + "\n")
    else:
        verdict = "[green]healthy[/]" if summary.healthy else "[red]NOT healthy[/]"
        console.print(
            f"{verdict}: {summary.ready}/{summary.nodes} nodes ready, "
            f"{summary.reachable_pairs}/{summary.total_pairs} pairs reachable by mesh ping",
            highlight=False,
        )
        for event in summary.heal_events:
            console.print(
                f"  heal {event.node}: detected {event.mttd_ms} ms, repaired {event.mttr_ms} ms,"
                f" rejoined {event.rejoin_ms} ms",
                highlight=False,
            )
        if summary.unreachable:
            shown = ", ".join(f"{a}→{b}" for a, b in summary.unreachable[:10])
            console.print(f"  unreachable: {shown}", highlight=False)
    raise typer.Exit(0 if summary.healthy else 1)
