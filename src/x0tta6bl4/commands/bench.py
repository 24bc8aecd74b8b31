"""``x0tta6bl4 bench …``: benchmarks that report ratios against an in-run baseline.

Each benchmark lives in :mod:`x0tta6bl4.bench` and is registered here as a subcommand. The
machines we run on are shared and noisy, so every benchmark measures its own baseline in the
same process and reports a ratio next to the absolute figures.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Annotated, Any

import typer

from x0tta6bl4.protocol.failure import DEFAULT_DEAD_AFTER, DEFAULT_INTERVAL

app = typer.Typer(
    help="Run a benchmark; --json prints machine-readable results on stdout.",
    no_args_is_help=True,
)

__all__ = ["app"]

#: ``--json`` on every benchmark.
JsonOption = Annotated[
    bool, typer.Option("--json", envvar="X0_JSON", help="Print the result as JSON.")
]


#: ``--dataplane`` (native when built, else python).
DataplaneOption = Annotated[
    str | None,
    typer.Option(
        "--dataplane",
        envvar="X0_DATAPLANE",
        help="native | python (default: native when built)",
    ),
]


def _emit(result: dict[str, Any], as_json: bool, format_table: Callable[[Any], str]) -> None:
    """Print a benchmark's result as JSON or as its readable table."""
    typer.echo(json.dumps(result) if as_json else format_table(result))


@app.command("session")
def session(
    as_json: JsonOption = False,
    packets: Annotated[
        int,
        typer.Option(
            "--packets", envvar="X0_BENCH_PACKETS", min=1, help="Packets per round and side."
        ),
    ] = 20_000,
    dataplane: DataplaneOption = None,
) -> None:
    """Seal+open 1400-byte packets through the transport session vs the bare AEAD."""
    from x0tta6bl4.bench.session import format_table, run

    result = run(packets=packets, dataplane=dataplane)
    _emit(result, as_json, format_table)


@app.command("handshake")
def handshake(
    as_json: JsonOption = False,
    iterations: Annotated[
        int,
        typer.Option(
            "--iterations",
            envvar="X0_BENCH_ITERATIONS",
            min=1,
            help="Full handshakes to run (each followed by its primitives alone).",
        ),
    ] = 200,
) -> None:
    """Full in-memory handshakes vs the same primitive operations alone (CPU time)."""
    from x0tta6bl4.bench.handshake import format_table, run

    result = run(iterations=iterations)
    _emit(result, as_json, format_table)


@app.command("glob")
def glob(
    as_json: JsonOption = False,
    matches: Annotated[
        int,
        typer.Option(
            "--matches", envvar="X0_BENCH_MATCHES", min=1, help="Matches per pair and round."
        ),
    ] = 200,
) -> None:
    """SPIFFE ID pattern matching at its worst (patterns at the limits, 2 kB IDs)."""
    from x0tta6bl4.bench.glob import format_table, run

    result = run(matches=matches)
    _emit(result, as_json, format_table)


@app.command("api")
def api(
    as_json: JsonOption = False,
    duration: Annotated[
        float,
        typer.Option(
            "--duration",
            envvar="X0_BENCH_DURATION",
            min=0.5,
            help="Seconds of /health load per server (split into rounds).",
        ),
    ] = 6.0,
    nodes: Annotated[
        int, typer.Option("--nodes", envvar="X0_BENCH_NODES", min=1, help="Nodes registered.")
    ] = 1000,
) -> None:
    """Controller /health vs a bare ASGI app on the same stack; GET of all nodes."""
    from x0tta6bl4.bench.api import format_table, run

    result = run(nodes=nodes, duration=duration)
    _emit(result, as_json, format_table)


@app.command("heal")
def heal(  # noqa: PLR0917 - one parameter per flag
    as_json: JsonOption = False,
    nodes: Annotated[
        int, typer.Option("--nodes", envvar="X0_BENCH_NODES", min=3, help="Mesh size.")
    ] = 100,
    events: Annotated[
        int,
        typer.Option(
            "--events", envvar="X0_BENCH_EVENTS", min=0, help="Nodes to kill, one at a time."
        ),
    ] = 10,
    workers: Annotated[
        int | None,
        typer.Option(
            "--workers",
            envvar="X0_BENCH_WORKERS",
            min=1,
            help="Processes to spread the nodes over (default: CPU count, 1 per 10 nodes).",
        ),
    ] = None,
    seed: Annotated[
        int, typer.Option("--seed", envvar="X0_BENCH_SEED", help="Seed of the victim choice.")
    ] = 1,
    heartbeat_interval: Annotated[
        float,
        typer.Option(
            "--heartbeat-interval",
            envvar="X0_HEARTBEAT_INTERVAL",
            min=0.001,
            help="Seconds between heartbeats on every link (the node's default).",
        ),
    ] = DEFAULT_INTERVAL,
    dead_after: Annotated[
        int,
        typer.Option(
            "--dead-after",
            envvar="X0_DEAD_AFTER",
            min=1,
            help="Silent heartbeat intervals before a link is declared down.",
        ),
    ] = DEFAULT_DEAD_AFTER,
    cost_update_interval: Annotated[
        float,
        typer.Option(
            "--cost-update-interval",
            envvar="X0_BENCH_COST_UPDATE_INTERVAL",
            min=0.0,
            help="Seconds between batched link-cost updates to the router (node default 30).",
        ),
    ] = 30.0,
    join_batch: Annotated[
        int | None,
        typer.Option(
            "--join-batch",
            envvar="X0_BENCH_JOIN_BATCH",
            min=1,
            help="Grow the membership by this many nodes at a time (default: all at once).",
        ),
    ] = None,
    dataplane: DataplaneOption = None,
) -> None:
    """Real nodes on loopback UDP: convergence, then MTTD/MTTR per killed node."""
    from x0tta6bl4.bench.heal import format_table, run
    from x0tta6bl4.node.model import CoreConfig

    config = CoreConfig(
        heartbeat_interval=heartbeat_interval,
        dead_after=dead_after,
        cost_update_interval=cost_update_interval,
    )
    try:
        result = run(
            nodes,
            events=events,
            workers=workers,
            seed=seed,
            join_batch=join_batch,
            config=config,
            dataplane=dataplane,
        )
    except ValueError as exc:
        raise typer.BadParameter(str(exc)) from exc
    _emit(result, as_json, format_table)


@app.command("dataplane")
def dataplane(
    as_json: JsonOption = False,
    duration: Annotated[
        float,
        typer.Option(
            "--duration", envvar="X0_BENCH_DURATION", min=0.1, help="Seconds of rate runs per path."
        ),
    ] = 6.0,
    window: Annotated[
        int, typer.Option("--window", envvar="X0_BENCH_WINDOW", min=1, help="Echoes in flight.")
    ] = 16,
    dataplane: DataplaneOption = None,
) -> None:
    """Mesh echo over 1/2/3-hop paths vs raw UDP echo on the same kind of sockets."""
    from x0tta6bl4.bench.dataplane import format_table, run

    result = run(duration=duration, window=window, dataplane=dataplane)
    _emit(result, as_json, format_table)


@app.command("tun")
def tun(  # noqa: PLR0917 - one parameter per flag
    as_json: JsonOption = False,
    seconds: Annotated[
        float,
        typer.Option(
            "--seconds", envvar="X0_BENCH_SECONDS", min=0.5, help="Seconds per iperf3 run."
        ),
    ] = 5.0,
    rounds: Annotated[
        int, typer.Option("--rounds", envvar="X0_BENCH_ROUNDS", min=1, help="Rounds per contender.")
    ] = 3,
    dataplane: DataplaneOption = None,
    wireguard_go: Annotated[
        str | None,
        typer.Option(
            "--wireguard-go",
            envvar="X0_WIREGUARD_GO",
            help="wireguard-go binary (default: the components cache, then PATH)",
        ),
    ] = None,
    breakdown: Annotated[
        bool,
        typer.Option(
            "--breakdown",
            envvar="X0_BENCH_BREAKDOWN",
            help="Also measure 1 hop with the native offloads off (none / udp / tun only).",
        ),
    ] = False,
) -> None:
    """TCP through the TUN overlay (1 and 2 hops) vs wireguard-go on the same namespaces."""
    from x0tta6bl4.bench.tun import TunBenchError, format_table, run

    try:
        result = run(
            seconds=seconds,
            rounds=rounds,
            dataplane=dataplane,
            wireguard_go=wireguard_go,
            breakdown=breakdown,
        )
    except TunBenchError as exc:
        typer.echo(f"bench tun: {exc}", err=True)
        raise typer.Exit(1) from exc
    _emit(result, as_json, format_table)


@app.command("flood")
def flood(  # noqa: PLR0917 - one parameter per flag
    as_json: JsonOption = False,
    trials: Annotated[
        int,
        typer.Option(
            "--trials",
            envvar="X0_BENCH_TRIALS",
            min=1,
            help="Times the legitimate peer restarts and links, per scenario.",
        ),
    ] = 5,
    partials: Annotated[
        int,
        typer.Option(
            "--partials",
            envvar="X0_BENCH_PARTIALS",
            min=1,
            help="Slowloris sources, each holding a partial INIT (one more byte every 2 s).",
        ),
    ] = 1030,
    rate: Annotated[
        float,
        typer.Option(
            "--rate",
            envvar="X0_BENCH_RATE",
            min=0.1,
            help="INITs per second echoing valid cookies (cookie flood).",
        ),
    ] = 400.0,
    hosts: Annotated[
        int,
        typer.Option(
            "--hosts",
            envvar="X0_BENCH_HOSTS",
            min=1,
            help="Source IP addresses of the cookie flood (8 ports each).",
        ),
    ] = 100,
    spoofed_rate: Annotated[
        float,
        typer.Option(
            "--spoofed-rate",
            envvar="X0_BENCH_SPOOFED_RATE",
            min=1.0,
            help="Datagrams per second from forged sources (root only).",
        ),
    ] = 20_000.0,
    scenario: Annotated[
        list[str] | None,
        typer.Option(
            "--scenario",
            envvar="X0_BENCH_SCENARIO",
            help="slowloris, cookie_flood, spoofed (repeatable; default: all).",
        ),
    ] = None,
) -> None:
    """A node under handshake floods: the rate it sustains, a legitimate peer's time to link."""
    from x0tta6bl4.bench.flood import format_table, run

    try:
        result = run(
            trials=trials,
            partials=partials,
            rate=rate,
            hosts=hosts,
            spoofed_rate=spoofed_rate,
            scenarios=tuple(scenario) if scenario else ("slowloris", "cookie_flood", "spoofed"),
        )
    except ValueError as exc:
        raise typer.BadParameter(str(exc)) from exc
    _emit(result, as_json, format_table)
