"""``x0tta6bl4 check``: pre-install, post-install and connectivity checks.

Against a cluster (kubeconfig, ``--context``, or ``--in-cluster`` with the pod's service
account) or, with ``--local``, against a mesh started by ``x0tta6bl4 up`` (its state
directory) or a controller URL. Exit status 1 when any check ends in error, 0 when only
warnings; 2 for bad usage. Every flag is also an ``X0_…`` environment variable.
"""

from __future__ import annotations

import asyncio
import enum
import sys
from pathlib import Path
from typing import Annotated

import typer

__all__ = ["OutputFormat", "check"]


class OutputFormat(enum.StrEnum):
    """``-o``: how the results are printed."""

    TABLE = "table"
    JSON = "json"
    JUNIT = "junit"


def _usage(message: str) -> None:
    typer.echo(f"x0tta6bl4 check: {message}", err=True)
    raise typer.Exit(2)


def check(  # noqa: PLR0917 - one parameter per flag
    pre: Annotated[
        bool, typer.Option("--pre", envvar="X0_CHECK_PRE", help="Checks before installing.")
    ] = False,
    post: Annotated[
        bool,
        typer.Option("--post", envvar="X0_CHECK_POST", help="Checks of an installed release."),
    ] = False,
    connectivity: Annotated[
        bool,
        typer.Option(
            "--connectivity",
            envvar="X0_CHECK_CONNECTIVITY",
            help="Mesh ping between all node pairs and controller API latency.",
        ),
    ] = False,
    kubeconfig: Annotated[
        Path | None,
        typer.Option("--kubeconfig", envvar="X0_KUBECONFIG", help="kubeconfig file."),
    ] = None,
    context: Annotated[
        str | None,
        typer.Option("--context", envvar="X0_CONTEXT", help="kubeconfig context."),
    ] = None,
    namespace: Annotated[
        str,
        typer.Option("--namespace", "-n", envvar="X0_NAMESPACE", help="Release namespace."),
    ] = "x0tta6bl4-staging",
    local: Annotated[
        str | None,
        typer.Option(
            "--local",
            envvar="X0_LOCAL",
            help="A local mesh: the state directory of `x0tta6bl4 up`, or a controller URL.",
        ),
    ] = None,
    in_cluster: Annotated[
        bool,
        typer.Option(
            "--in-cluster",
            envvar="X0_IN_CLUSTER",
            help="Use the pod's service account (the helm test pod).",
        ),
    ] = False,
    output: Annotated[
        OutputFormat,
        typer.Option("--output", "-o", envvar="X0_OUTPUT", help="table, json or junit."),
    ] = OutputFormat.TABLE,
    wait: Annotated[
        float,
        typer.Option(
            "--wait",
            envvar="X0_WAIT",
            min=0,
            help="Retry failing checks for up to this many seconds.",
        ),
    ] = 0.0,
    values: Annotated[
        list[Path] | None,
        typer.Option(
            "--values",
            "-f",
            envvar="X0_VALUES",
            help="Helm values files of the install (--pre: StorageClass, monitoring, ...).",
        ),
    ] = None,
    spire_namespace: Annotated[
        str,
        typer.Option("--spire-namespace", envvar="X0_SPIRE_NAMESPACE", help="SPIRE namespace."),
    ] = "spire",
) -> None:
    """Run the deployment checklist as checks (like `linkerd check`)."""
    modes = [
        name for name, on in (("pre", pre), ("post", post), ("connectivity", connectivity)) if on
    ]
    if len(modes) > 1:
        _usage("choose one of --pre, --post, --connectivity")
    mode = modes[0] if modes else "post"
    if local is not None and (in_cluster or kubeconfig or context):
        _usage("--local cannot be combined with --in-cluster, --kubeconfig or --context")
    if local is not None and mode == "pre":
        _usage("--pre checks a cluster before installing; it has no --local form")
    if in_cluster and (kubeconfig or context):
        _usage("--in-cluster cannot be combined with --kubeconfig or --context")

    from x0tta6bl4.check.app import CheckRequest, run_request

    request = CheckRequest(
        mode=mode,
        kubeconfig=kubeconfig,
        context=context,
        namespace=namespace,
        local=local,
        in_cluster=in_cluster,
        output=output.value,
        wait=wait,
        values=list(values or []),
        spire_namespace=spire_namespace,
    )
    try:
        code = asyncio.run(run_request(request, sys.stdout))
    except ValueError as exc:
        _usage(str(exc))
        return
    raise typer.Exit(code)
