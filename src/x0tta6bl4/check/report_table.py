"""The human report: categories with √ ‼ × marks, like ``linkerd check``.

Results are printed as they arrive (:meth:`TableReporter.on_result`), so a long ``--wait``
shows progress. Colour (green/yellow/red) only when the output is a terminal (rich decides;
``NO_COLOR`` is honoured); otherwise plain text.

Example::

    kubernetes-api
    --------------
    √ can reach the Kubernetes API
    × Kubernetes version is 1.28 or newer
        Kubernetes 1.27.3 is older than 1.28, the oldest version the chart supports
        see https://…/docs/checks.md#k8s-version for hints

    Status check results are ×
"""

from __future__ import annotations

from typing import TextIO

from rich.console import Console
from rich.markup import escape

from x0tta6bl4.check.model import Report, Result, Status

__all__ = ["MARKS", "TableReporter", "render_table"]

MARKS: dict[Status, str] = {
    Status.SUCCESS: "√",
    Status.WARNING: "‼",
    Status.ERROR: "×",
    Status.SKIPPED: "-",
}
"""The mark printed for each status."""

_STYLES: dict[Status, str] = {
    Status.SUCCESS: "green",
    Status.WARNING: "yellow",
    Status.ERROR: "red",
    Status.SKIPPED: "dim",
}


class TableReporter:
    """Prints results to ``stream`` as they come, then a summary line."""

    def __init__(self, stream: TextIO | None = None, *, color: bool | None = None) -> None:
        self._console = Console(
            file=stream,
            force_terminal=color,
            no_color=color is False,
            highlight=False,
            soft_wrap=True,
        )
        self._category: str | None = None

    def on_retry(self, description: str, error: str) -> None:
        """Say that a check is being retried under ``--wait`` (dim, one line)."""
        self._console.print(f"[dim]… waiting: {escape(description)}: {escape(error)}[/dim]")

    def on_result(self, result: Result) -> None:
        """Print one result (and its category heading when the category changes)."""
        if result.category != self._category:
            if self._category is not None:
                self._console.print()
            self._category = result.category
            self._console.print(escape(result.category))
            self._console.print("-" * len(result.category))
        style = _STYLES[result.status]
        line = f"[{style}]{MARKS[result.status]}[/{style}] {escape(result.description)}"
        if result.status is Status.SKIPPED and result.error:
            line += f" [dim](skipped: {escape(result.error)})[/dim]"
        elif result.status is Status.SUCCESS and result.detail:
            line += f" [dim]({escape(result.detail)})[/dim]"
        self._console.print(line)
        if result.status in (Status.ERROR, Status.WARNING):
            for text in (result.error or "").splitlines() or [""]:
                self._console.print(f"    {escape(text)}")
            self._console.print(f"    see {escape(result.hint)} for hints")

    def finish(self, report: Report) -> None:
        """Print the closing line (and why the run stopped early, if it did)."""
        self._console.print()
        if report.stopped_by is not None:
            self._console.print(
                f"[red]stopped: the fatal check {escape(report.stopped_by)} failed[/red]"
            )
        if report.success:
            warned = any(r.status is Status.WARNING for r in report.results)
            mark = MARKS[Status.WARNING] if warned else MARKS[Status.SUCCESS]
            style = "yellow" if warned else "green"
        else:
            mark, style = MARKS[Status.ERROR], "red"
        self._console.print(f"Status check results are [{style}]{mark}[/{style}]")


def render_table(report: Report, stream: TextIO, *, color: bool | None = False) -> None:
    """Print a whole finished report at once (no colour by default)."""
    reporter = TableReporter(stream, color=color)
    for result in report.results:
        reporter.on_result(result)
    reporter.finish(report)
