"""``x0tta6bl4 bench …``: benchmarks that report ratios against an in-run baseline.

Each benchmark lives in :mod:`x0tta6bl4.bench` and is registered here as a subcommand. The
machines we run on are shared and noisy, so every benchmark measures its own baseline in the
same process and reports a ratio next to the absolute figures.
"""

from __future__ import annotations

import typer

app = typer.Typer(
    help="Run a benchmark; --json prints machine-readable results on stdout.",
    no_args_is_help=True,
)

__all__ = ["app"]
