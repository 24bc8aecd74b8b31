"""Glue between the ``check`` command and the checks: build the context for a request,
choose the categories, run them, print the report, return the exit code."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

from x0tta6bl4.check.cluster import ClusterContext, InstallOptions
from x0tta6bl4.check.kube import KubeClient, KubeConfigError
from x0tta6bl4.check.model import Category, Check, CheckFailedError, Severity
from x0tta6bl4.check.runner import DEFAULT_INTERVAL, run_categories

__all__ = ["MODES", "OUTPUTS", "CheckRequest", "run_request"]

MODES = ("pre", "post", "connectivity")
OUTPUTS = ("table", "json", "junit")


@dataclass(frozen=True)
class CheckRequest:
    """One ``x0tta6bl4 check`` invocation, validated by :meth:`validate`."""

    mode: str = "post"
    kubeconfig: Path | None = None
    context: str | None = None
    namespace: str = "x0tta6bl4-staging"
    local: str | None = None
    in_cluster: bool = False
    output: str = "table"
    wait: float = 0.0
    values: list[Path] = field(default_factory=list)
    spire_namespace: str = "spire"
    interval: float = DEFAULT_INTERVAL

    def validate(self) -> None:
        """Raise ValueError naming the bad field."""
        if self.mode not in MODES:
            raise ValueError(f"mode must be one of {', '.join(MODES)}; got {self.mode!r}")
        if self.output not in OUTPUTS:
            raise ValueError(f"output must be one of {', '.join(OUTPUTS)}; got {self.output!r}")
        if not self.wait >= 0:
            raise ValueError(f"--wait must be >= 0 seconds; got {self.wait}")
        if not self.namespace:
            raise ValueError("--namespace must not be empty")


def _failing_category(anchor: str, description: str, message: str) -> Category[None]:
    async def fail(_: None) -> str | None:
        raise CheckFailedError(message)

    return Category("kubernetes-api", [Check(anchor, description, fail, Severity.FATAL)])


async def run_request(request: CheckRequest, out: TextIO) -> int:
    """Run the checks ``request`` asks for, print them to ``out``; the exit code."""
    request.validate()
    if request.local is not None:
        from x0tta6bl4.check.checks_local import run_local

        return await run_local(request.local, request.mode, out, request.output, request.wait)
    options = InstallOptions.from_values_files(request.values)
    try:
        kube = await KubeClient.connect(
            kubeconfig=request.kubeconfig, context=request.context, in_cluster=request.in_cluster
        )
    except KubeConfigError as exc:
        category = _failing_category("k8s-api", "can reach the Kubernetes API", str(exc))
        report = await run_categories([category], None, out, output=request.output)
        return report.exit_code()
    ctx = ClusterContext(
        kube, namespace=request.namespace, spire_namespace=request.spire_namespace, options=options
    )
    try:
        categories: Sequence[Category[Any]]
        if request.mode == "pre":
            from x0tta6bl4.check.checks_pre import pre_categories

            categories = pre_categories()
        elif request.mode == "post":
            from x0tta6bl4.check.checks_post import post_categories

            categories = post_categories()
        else:
            from x0tta6bl4.check.checks_connectivity import cluster_connectivity_categories

            categories = cluster_connectivity_categories()
        report = await run_categories(
            categories,
            ctx,
            out,
            output=request.output,
            wait=request.wait,
            interval=request.interval,
        )
    finally:
        await ctx.close()
    return report.exit_code()
