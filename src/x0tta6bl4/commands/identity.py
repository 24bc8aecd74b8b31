"""``x0tta6bl4 identity …``: the embedded development SPIFFE Workload API.

``identity serve`` runs :class:`~x0tta6bl4.identity.issuer.EmbeddedIssuer` until SIGINT or
SIGTERM, then closes every stream and removes its socket.
"""

from __future__ import annotations

import signal
import threading
from pathlib import Path
from typing import Annotated

import typer

from x0tta6bl4.defaults import DEFAULT_TRUST_DOMAIN

app = typer.Typer(
    help="SPIFFE identity: the embedded development Workload API issuer.",
    no_args_is_help=True,
)


@app.command("serve")
def serve(  # noqa: PLR0917 - one parameter per flag
    socket_path: Annotated[
        Path,
        typer.Option(
            "--socket",
            envvar="X0_IDENTITY_SOCKET",
            help="Unix socket to serve the SPIFFE Workload API on.",
        ),
    ],
    trust_domain: Annotated[
        str, typer.Option("--trust-domain", envvar="X0_TRUST_DOMAIN", help="SPIFFE trust domain.")
    ] = DEFAULT_TRUST_DOMAIN,
    entries: Annotated[
        list[str] | None,
        typer.Option(
            "--entry",
            envvar="X0_IDENTITY_ENTRIES",
            help=(
                "SELECTOR=SPIFFE_ID: callers running as this uid (UID, uid:UID, user:NAME) or "
                "exactly this process (pid:PID[@START]) get this SPIFFE ID. Repeatable; the "
                "variable takes space-separated entries."
            ),
        ),
    ] = None,
    entries_file: Annotated[
        Path | None,
        typer.Option(
            "--entries-file",
            envvar="X0_IDENTITY_ENTRIES_FILE",
            help="A file of further entries (one per line), read again whenever it changes.",
        ),
    ] = None,
    svid_ttl: Annotated[
        float,
        typer.Option(
            "--svid-ttl",
            envvar="X0_SVID_TTL",
            help="Lifetime of issued SVIDs in seconds; they rotate at half-life.",
        ),
    ] = 3600.0,
    state_dir: Annotated[
        Path,
        typer.Option(
            "--state-dir",
            envvar="X0_STATE_DIR",
            help="State directory; the CA and JWT keys live in its identity/ subdirectory.",
        ),
    ] = Path("/var/lib/x0tta6bl4"),
) -> None:
    """Serve the SPIFFE Workload API with a local CA, attesting callers by uid or process."""
    from x0tta6bl4.identity.errors import IdentityError
    from x0tta6bl4.identity.issuer import EmbeddedIssuer, IssuerConfig, parse_entry
    from x0tta6bl4.identity.spiffe_ids import parse_trust_domain

    try:
        td = parse_trust_domain(trust_domain)
        parsed = [parse_entry(text, td) for text in entries or ()]
        config = IssuerConfig(
            socket_path=socket_path,
            state_dir=state_dir,
            trust_domain=td,
            entries=parsed,
            entries_file=entries_file,
            svid_ttl=svid_ttl,
        )
        issuer = EmbeddedIssuer(config)
        issuer.start()
    except IdentityError as err:
        typer.echo(f"error: {err}", err=True)
        raise typer.Exit(2) from None

    stop = threading.Event()

    def _on_signal(signum: int, frame: object) -> None:
        stop.set()

    previous = {sig: signal.signal(sig, _on_signal) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        if not parsed and entries_file is None:
            typer.echo("warning: no --entry given: every caller will be denied", err=True)
        typer.echo(
            f"serving the SPIFFE Workload API on {issuer.endpoint} "
            f"(trust domain {td.name}, {len(parsed)} entries, SVID TTL {svid_ttl:g} s)",
            err=True,
        )
        while not stop.wait(1.0):
            pass
    finally:
        issuer.stop()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    typer.echo("stopped", err=True)


__all__ = ["app", "serve"]
