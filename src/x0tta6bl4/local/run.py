"""One ``up`` run from start to summary: :func:`run_up`.

Start (progress bar) → run (live view, chaos) until ``--for`` ends or Ctrl-C/SIGTERM/SIGHUP →
final health check (every node's ``/ready``, a mesh ping for every ordered pair) → stop
everything and verify nothing is left → :class:`~x0tta6bl4.local.summary.Summary`. A second
Ctrl-C skips the final check; the clean-up runs whatever happens.
"""

from __future__ import annotations

import asyncio
import contextlib
import shlex
import signal
import time
from pathlib import Path

import httpx
from rich.console import Console
from rich.live import Live
from rich.markup import escape

from x0tta6bl4.local.chaos import ChaosScheduler
from x0tta6bl4.local.config import UpConfig
from x0tta6bl4.local.observe import NodeView, ping_pairs
from x0tta6bl4.local.stack import Staging
from x0tta6bl4.local.summary import HealEvent, Summary
from x0tta6bl4.local.view import LineProgress, RichProgress, render_mesh

__all__ = ["check_command", "identity_line", "run_up"]

_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
_REFRESH = 0.5
_PLAIN_STATUS_EVERY = 5.0


def check_command(state_root: Path) -> str:
    """The ``x0tta6bl4 check`` command line that checks the mesh running on ``state_root``."""
    return f"x0tta6bl4 check --local {shlex.quote(str(state_root))}"


def identity_line(staging: Staging) -> str:
    """Which identity provider runs, why, and its Workload API socket (``up``'s output)."""
    choice = staging.identity
    what = (
        "SPIRE (spire-server + spire-agent, one SPIFFE ID per node)"
        if choice.provider == "spire"
        else "embedded issuer (x0tta6bl4 identity serve, one SPIFFE ID for all)"
    )
    return f"{what} [{choice.reason}], Workload API {staging.spiffe_socket}"


def _install_signals(stop: asyncio.Event) -> None:
    loop = asyncio.get_running_loop()
    task = asyncio.current_task()

    def on_signal() -> None:
        if stop.is_set() and task is not None:
            task.cancel()  # second signal: skip the rest, clean up now
        stop.set()

    for sig in _SIGNALS:
        loop.add_signal_handler(sig, on_signal)


def _remove_signals() -> None:
    loop = asyncio.get_running_loop()
    for sig in _SIGNALS:
        loop.remove_signal_handler(sig)


async def _sleep_or_stop(stop: asyncio.Event, seconds: float) -> None:
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(stop.wait(), max(0.0, seconds))


async def run_up(config: UpConfig, console: Console, *, live: bool) -> Summary:
    """Run the local mesh as ``config`` says; progress and the live view go to ``console``.

    Raises :class:`~x0tta6bl4.local.errors.LocalStagingError` subclasses when it cannot start
    (after stopping whatever had started).
    """
    stop = asyncio.Event()
    _install_signals(stop)
    staging = Staging(config, stop)
    events: list[HealEvent] = []
    views: dict[str, NodeView] = {}
    survivors: list[int] = []
    began = time.monotonic()
    summary: Summary | None = None
    try:
        progress = RichProgress(console) if live else LineProgress(console)
        with progress:
            await staging.start(progress)
        assert staging.state is not None
        console.print(
            f"[bold]x0tta6bl4 up[/]: {config.nodes} nodes (separate processes), "
            f"{config.controllers} controller(s) on {config.store}, ready in "
            f"{staging.startup_s:.1f} s\n"
            f"  identity    {escape(identity_line(staging))}\n"
            f"  controller  {staging.controller_url}\n"
            f"  topology UI {staging.ui_url}\n"
            f"  state       {staging.state.root}"
            + ("" if staging.state.keep else " (temporary, removed at exit)")
            + f"\n  check       {escape(check_command(staging.state.root))}",
            highlight=False,
            soft_wrap=True,  # the command must stay on one line, to be copied
        )
        async with httpx.AsyncClient() as client:
            views = await _run_phase(staging, client, console, live=live, events=events)
            console.print("checking the mesh: readiness and a mesh ping per pair …")
            views = await staging.observe(client)
            check = await ping_pairs(client, staging.node_urls)
        ready = sum(1 for v in views.values() if v.ready)
        summary = Summary(
            nodes=config.nodes,
            ready=ready,
            reachable_pairs=check.reachable,
            total_pairs=check.total,
            healthy=ready == config.nodes and check.reachable == check.total,
            controllers=config.controllers,
            store=config.store,
            mode="processes",
            duration_s=round(time.monotonic() - began, 2),
            startup_s=round(staging.startup_s, 2),
            controller_url=staging.controller_url,
            ui_url=staging.ui_url,
            state_dir=str(staging.state.root) if staging.state.keep else None,
            identity=staging.identity.provider,
            heal_events=events,
            unreachable=[list(pair) for pair in check.failed],
            not_ready=sorted(n for n, v in views.items() if not v.ready),
        )
    finally:
        try:
            survivors, leftovers = staging.close()
        finally:
            _remove_signals()
        if survivors:
            console.print(f"[red]processes left after SIGKILL: {survivors}[/]")
        if leftovers:
            console.print(f"[red]sockets left in the runtime directory: {leftovers}[/]")
    assert summary is not None
    summary.leftover_processes = survivors
    summary.healthy = summary.healthy and not survivors
    return summary


async def _run_phase(
    staging: Staging,
    client: httpx.AsyncClient,
    console: Console,
    *,
    live: bool,
    events: list[HealEvent],
) -> dict[str, NodeView]:
    config = staging.config
    stop = staging.stop_event
    start = time.monotonic()
    deadline = None if config.duration is None else start + config.duration

    def on_event(event: HealEvent) -> None:
        events.append(event)
        if not live:
            console.print(
                f"heal: killed {event.node}: detected {event.mttd_ms} ms "
                f"(by {event.detected_by}), repaired {event.mttr_ms} ms, "
                f"rejoined {event.rejoin_ms} ms after restart",
                highlight=False,
            )

    chaos_stop = asyncio.Event()
    chaos: ChaosScheduler | None = None
    chaos_task: asyncio.Task[None] | None = None
    if config.chaos:
        chaos = ChaosScheduler(
            client=client,
            urls=staging.node_urls,
            kill=staging.kill_node,
            restart=staging.restart_node,
            interval=config.chaos_interval,
            on_event=on_event,
        )
        chaos_task = asyncio.create_task(chaos.run(chaos_stop))

    def remaining() -> float | None:
        return None if deadline is None else max(0.0, deadline - time.monotonic())

    views: dict[str, NodeView] = {}
    try:
        if live:
            with Live(console=console, refresh_per_second=4, transient=False) as screen:
                while not stop.is_set() and (remaining() is None or remaining() != 0.0):
                    views = await staging.observe(client)
                    screen.update(
                        render_mesh(
                            views,
                            controller_url=staging.controller_url,
                            ui_url=staging.ui_url,
                            state_dir=str(staging.state.root if staging.state else ""),
                            uptime=time.monotonic() - start,
                            events=events,
                            current=None if chaos is None else chaos.current,
                            chaos=config.chaos,
                            remaining=remaining(),
                        )
                    )
                    left = remaining()
                    await _sleep_or_stop(stop, _REFRESH if left is None else min(_REFRESH, left))
        else:
            last = 0.0
            while not stop.is_set() and (remaining() is None or remaining() != 0.0):
                if time.monotonic() - last >= _PLAIN_STATUS_EVERY:
                    last = time.monotonic()
                    views = await staging.observe(client)
                    ready = sum(1 for v in views.values() if v.ready)
                    links = sum(v.up_links for v in views.values())
                    console.print(
                        f"t={last - start:5.1f}s ready {ready}/{len(views)}, {links} link ends up",
                        highlight=False,
                    )
                left = remaining()
                await _sleep_or_stop(stop, _REFRESH if left is None else min(_REFRESH, left))
    finally:
        chaos_stop.set()
        if chaos_task is not None:
            if stop.is_set():
                chaos_task.cancel()
            # At the end of --for a round in progress finishes (its node restarts) first.
            with contextlib.suppress(asyncio.CancelledError):
                await chaos_task
    return views
