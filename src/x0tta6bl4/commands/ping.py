"""``x0tta6bl4 ping TARGET``: mesh ping through the local node's HTTP API."""

from __future__ import annotations

import json
from typing import Annotated

import typer

__all__ = ["ping"]


def ping(
    target: Annotated[str, typer.Argument(help="node ID, SPIFFE ID or overlay IP")],
    node: Annotated[
        str, typer.Option("--node", envvar="X0_NODE", help="the local node's HTTP API")
    ] = "http://127.0.0.1:7811",
    count: Annotated[int, typer.Option("--count", "-c", min=1, max=100)] = 3,
    timeout: Annotated[float, typer.Option("--timeout", help="seconds per ping")] = 2.0,
    as_json: Annotated[bool, typer.Option("--json", help="print JSON")] = False,
) -> None:
    """Ping TARGET over the mesh (end-to-end encrypted) and print RTT and path."""
    import httpx

    try:
        response = httpx.get(
            f"{node.rstrip('/')}/v1/ping",
            params={"target": target, "count": count, "timeout": timeout},
            timeout=count * timeout + 10,
        )
    except httpx.HTTPError as exc:
        typer.echo(f"x0tta6bl4 ping: cannot reach the node at {node}: {exc}", err=True)
        raise typer.Exit(2) from None
    try:
        data = response.json()
    except ValueError:
        typer.echo(f"x0tta6bl4 ping: unexpected answer {response.status_code}", err=True)
        raise typer.Exit(2) from None
    if response.status_code not in (200, 504):
        typer.echo(f"x0tta6bl4 ping: {data.get('detail', data)}", err=True)
        raise typer.Exit(2)
    if as_json:
        typer.echo(json.dumps(data))
    else:
        for result in data["results"]:
            if result["rtt_ms"] is None:
                typer.echo(f"seq={result['seq']} lost ({result.get('error', 'timeout')})")
            else:
                path = " -> ".join(result["path"])
                typer.echo(f"seq={result['seq']} rtt={result['rtt_ms']:.3f} ms path={path}")
        typer.echo(f"{data['sent']} sent, {data['received']} received")
    if not data["received"]:
        raise typer.Exit(1)
