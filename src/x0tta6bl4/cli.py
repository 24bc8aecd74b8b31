"""The ``x0tta6bl4`` command line.

Every subcommand lives in its own module under :mod:`x0tta6bl4.commands` and is registered
here. Heavy imports happen inside the commands so that ``--help`` stays fast. Every option is
also settable through an ``X0_…`` environment variable (shown in ``--help``).

Standard output carries only a command's result (``--json``: exactly one JSON document): before
any command runs, logging is configured to write to standard error (a library that logs
through an unconfigured structlog would otherwise print to standard output). Commands with
``--log-format`` / ``--log-level`` configure it again from their flags.
"""

from __future__ import annotations

import typer

from x0tta6bl4.commands import bench as bench_cmd
from x0tta6bl4.commands import check as check_cmd
from x0tta6bl4.commands import controller as controller_cmd
from x0tta6bl4.commands import identity as identity_cmd
from x0tta6bl4.commands import node as node_cmd
from x0tta6bl4.commands import ping as ping_cmd
from x0tta6bl4.commands import up as up_cmd
from x0tta6bl4.commands import version as version_cmd

app = typer.Typer(
    name="x0tta6bl4",
    help=(
        "x0tta6bl4: a post-quantum, zero-trust, self-healing overlay mesh for Kubernetes.\n\n"
        "Nodes link with a hybrid X25519 + ML-KEM-768 handshake and ML-DSA-65 identities, "
        "detect failed links in well under a second and route around them."
    ),
    no_args_is_help=True,
    add_completion=False,
    context_settings={"help_option_names": ["-h", "--help"]},
    pretty_exceptions_enable=False,
)


@app.callback()
def _logs_to_stderr() -> None:
    from x0tta6bl4.logging import configure_logging

    configure_logging(None, "info")


_RUN = "Run the mesh"
_OPERATE = "Operate"
_OTHER = "Measure and inspect"

app.command("up", help="Run the whole mesh on this machine, live.", rich_help_panel=_RUN)(up_cmd.up)
app.add_typer(controller_cmd.app, name="controller", rich_help_panel=_RUN)
app.command("node", help="Run the mesh node agent.", rich_help_panel=_RUN)(node_cmd.node)
app.add_typer(identity_cmd.app, name="identity", rich_help_panel=_RUN)
app.command("check", help="Check a cluster or a local mesh.", rich_help_panel=_OPERATE)(
    check_cmd.check
)
app.command("ping", help="Ping a mesh node through the local node.", rich_help_panel=_OPERATE)(
    ping_cmd.ping
)
app.add_typer(bench_cmd.app, name="bench", rich_help_panel=_OTHER)
app.command(
    "version",
    help="Print the version of x0tta6bl4 and of its cryptographic backend.",
    rich_help_panel=_OTHER,
)(version_cmd.version)


def main() -> None:
    """Entry point of the ``x0tta6bl4`` console script."""
    app()


__all__ = ["app", "main"]
