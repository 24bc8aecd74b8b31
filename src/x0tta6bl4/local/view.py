"""What ``up`` shows on the terminal: a start-up progress bar and the live mesh view.

On a terminal: a rich progress bar per start-up phase, then a :class:`rich.live.Live` view
redrawn twice a second — header (URLs, uptime, ready nodes, routed pairs), one row per node
(readiness, links up, mean RTT, routes, end-to-end sessions, handshakes), an RTT matrix (≤ 16
nodes; ``✗`` = link down, ``…`` = handshaking, ``·`` = no direct link) and the heal events of
``--chaos``. Elsewhere (a pipe, ``--json``): plain progress lines on stderr.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence

from rich.console import Console, Group, RenderableType
from rich.panel import Panel
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    SpinnerColumn,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
)
from rich.table import Table
from rich.text import Text

from x0tta6bl4.local.observe import NodeView, routed_pairs
from x0tta6bl4.local.summary import HealEvent

__all__ = ["MATRIX_LIMIT", "LineProgress", "RichProgress", "render_mesh"]

#: Largest mesh drawn as an RTT matrix.
MATRIX_LIMIT = 16


class RichProgress:
    """Start-up progress as rich progress bars (one per phase)."""

    def __init__(self, console: Console) -> None:
        self.progress = Progress(
            SpinnerColumn(),
            TextColumn("[bold]{task.description:<16}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[last]}", style="dim"),
            TimeElapsedColumn(),
            console=console,
            transient=False,
        )
        self._tasks: dict[str, TaskID] = {}

    def __enter__(self) -> RichProgress:
        self.progress.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.progress.stop()

    def phase(self, name: str, total: int) -> None:
        self._tasks[name] = self.progress.add_task(name, total=total, last="")

    def advance(self, name: str, label: str) -> None:
        self.progress.update(self._tasks[name], advance=1, last=label)


class LineProgress:
    """Start-up progress as plain lines (not a terminal, or ``--json``)."""

    def __init__(self, console: Console) -> None:
        self.console = console
        self._start = time.monotonic()
        self._totals: dict[str, int] = {}
        self._done: dict[str, int] = {}

    def __enter__(self) -> LineProgress:
        return self

    def __exit__(self, *exc: object) -> None:
        return None

    def phase(self, name: str, total: int) -> None:
        self._totals[name] = total
        self._done[name] = 0
        self.console.print(f"starting {name} ({total})", highlight=False)

    def advance(self, name: str, label: str) -> None:
        self._done[name] += 1
        done, total = self._done[name], self._totals[name]
        if name != "routes" or done == total:
            elapsed = time.monotonic() - self._start
            self.console.print(
                f"  ready {name} {done}/{total}: {label} ({elapsed:.1f} s)", highlight=False
            )


def _mean_rtt(view: NodeView) -> str:
    rtts = [link.rtt_ms for link in view.links if link.state == "up" and link.rtt_ms is not None]
    return f"{sum(rtts) / len(rtts):.2f}" if rtts else "-"


def _node_table(views: Mapping[str, NodeView], killed: str | None) -> Table:
    table = Table(title="nodes", expand=False, header_style="bold")
    for column in ("node", "state", "overlay ip", "links up", "rtt ms", "routes", "e2e", "hs ok"):
        table.add_column(column, justify="left" if column in ("node", "state") else "right")
    for name, view in sorted(views.items()):
        if name == killed or view.error is not None:
            state = Text("killed" if name == killed else "down", style="bold red")
        elif view.ready:
            state = Text("ready", style="green")
        else:
            state = Text(view.reason or "starting", style="yellow")
        table.add_row(
            name,
            state,
            view.overlay_ip or "-",
            f"{view.up_links}/{len(view.links)}",
            _mean_rtt(view),
            str(len(view.routes)),
            str(view.sessions),
            str(view.counters.get("handshakes_ok", 0)),
        )
    return table


def _cell(view: NodeView | None, peer: str) -> Text:
    if view is None or view.error is not None:
        return Text("?", style="red")
    link = view.link(peer)
    if link is None:
        return Text("·", style="dim")
    if link.state == "up":
        rtt = f"{link.rtt_ms:.1f}" if link.rtt_ms is not None else "up"
        return Text(rtt, style="green")
    if link.state == "handshaking":
        return Text("…", style="yellow")
    return Text("✗", style="bold red")


def _matrix(views: Mapping[str, NodeView]) -> Table:
    names = sorted(views)
    table = Table(title="link RTT (ms), row → column", header_style="bold", padding=(0, 1))
    table.add_column("")
    for name in names:
        table.add_column(name.rpartition("-")[2], justify="right")
    for row in names:
        cells = [Text("-", style="dim") if row == col else _cell(views[row], col) for col in names]
        table.add_row(row.rpartition("-")[2], *cells)
    return table


def _events(events: Sequence[HealEvent], current: HealEvent | None) -> Table:
    table = Table(title="heal events (chaos)", header_style="bold")
    for column in ("killed", "detected by", "detect ms", "repair ms", "rejoin ms"):
        table.add_column(column, justify="left" if column in ("killed", "detected by") else "right")

    def fmt(value: float | None) -> str:
        return "…" if value is None else f"{value:.0f}"

    rows = list(events[-8:]) + ([current] if current is not None else [])
    for event in rows:
        table.add_row(
            event.node,
            event.detected_by or "…",
            fmt(event.mttd_ms),
            fmt(event.mttr_ms),
            fmt(event.rejoin_ms),
        )
    return table


def render_mesh(
    views: Mapping[str, NodeView],
    *,
    controller_url: str,
    ui_url: str,
    state_dir: str,
    uptime: float,
    events: Sequence[HealEvent] = (),
    current: HealEvent | None = None,
    chaos: bool = False,
    remaining: float | None = None,
) -> RenderableType:
    """The live view for one poll of every node."""
    names = sorted(views)
    ready = sum(1 for v in views.values() if v.ready)
    routed, total = routed_pairs(views, names)
    header = Text.assemble(
        ("controller ", "bold"),
        controller_url,
        ("   ui ", "bold"),
        ui_url,
        ("\nstate ", "bold"),
        state_dir,
        ("\nnodes ready ", "bold"),
        (f"{ready}/{len(views)}", "green" if ready == len(views) else "yellow"),
        ("   pairs routed ", "bold"),
        (f"{routed}/{total}", "green" if routed == total else "yellow"),
        ("   up ", "bold"),
        f"{uptime:.0f} s",
        ("" if remaining is None else f"   ({remaining:.0f} s left)"),
        ("   Ctrl-C stops everything", "dim"),
    )
    parts: list[RenderableType] = [Panel(header, title="x0tta6bl4 up", expand=False)]
    killed = current.node if current is not None else None
    parts.append(_node_table(views, killed))
    if len(views) <= MATRIX_LIMIT:
        parts.append(_matrix(views))
    if chaos:
        parts.append(_events(events, current))
    return Group(*parts)
