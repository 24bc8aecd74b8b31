"""CLI options that several subcommands declare identically, as ``Annotated`` types.

Use one as a parameter's annotation (``log_format: LogFormatOption = None``); typer copies
the option for each command, so sharing the definition shares nothing at run time. An option
whose help text or default differs between commands stays in its own command module.
"""

from __future__ import annotations

from typing import Annotated

import typer

__all__ = ["LogFormatOption", "SpiffeSocketOption"]

LogFormatOption = Annotated[
    str | None,
    typer.Option("--log-format", envvar="X0_LOG_FORMAT", help="json or console"),
]
"""``--log-format`` / ``X0_LOG_FORMAT``; default None (console on a TTY, else JSON)."""

SpiffeSocketOption = Annotated[
    str | None,
    typer.Option(
        "--spiffe-socket",
        envvar=["SPIFFE_ENDPOINT_SOCKET", "X0_SPIFFE_SOCKET"],
        help="SPIFFE Workload API socket (default: /run/spire/agent-sockets/spire-agent.sock)",
    ),
]
"""``--spiffe-socket`` / ``SPIFFE_ENDPOINT_SOCKET`` / ``X0_SPIFFE_SOCKET``; default None."""
