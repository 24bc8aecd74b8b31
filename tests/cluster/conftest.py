"""The cluster the tests in tests/cluster/ share: one ``scripts/cluster up`` (3 nodes) and one
``scripts/cluster staging`` per run, ``scripts/cluster down`` at the end (which must leave
nothing behind).

``X0_TEST_CLUSTER_DIR=DIR`` reuses (or creates and keeps) the cluster in DIR across runs, for
working on the tests; CI never sets it.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.cluster.kube import RealCluster

NODES = 3


def _missing() -> str | None:
    if os.geteuid() != 0:
        return "needs root: network, mount and cgroup namespaces for the cluster's nodes"
    for tool in ("containerd", "runc", "nsenter", "iptables", "ipset", "umoci", "debootstrap"):
        if shutil.which(tool) is None:
            return f"{tool} missing: run scripts/setup-system.sh (make system)"
    return None


@pytest.fixture(scope="session")
def measurements() -> Iterator[dict[str, Any]]:
    """Figures the tests measure (start times, probe and mesh latencies), printed at the end and
    written to the cluster directory's measurements.json."""
    found: dict[str, Any] = {}
    yield found
    if found:
        print("\ncluster measurements: " + json.dumps(found, indent=1, sort_keys=True))


@pytest.fixture(scope="package")
def cluster_up(measurements: dict[str, Any]) -> Iterator[RealCluster]:
    why = _missing()
    if why:
        pytest.skip(why)
    keep = os.environ.get("X0_TEST_CLUSTER_DIR")
    directory = Path(keep) if keep else Path(tempfile.mkdtemp(prefix="x0c-", dir="/tmp"))
    cluster = RealCluster(directory)
    try:
        if not (directory / "cluster.json").exists():
            t0 = time.monotonic()
            cluster.script("up", "--nodes", str(NODES))
            measurements["cluster_up_seconds"] = round(time.monotonic() - t0, 1)
        yield cluster
    finally:
        (directory / "measurements.json").write_text(
            json.dumps(measurements, indent=1, sort_keys=True)
        )
        if not keep:
            down = cluster.run(
                [
                    str(Path(__file__).resolve().parents[2] / "scripts" / "cluster"),
                    "down",
                    "--dir",
                    str(directory),
                ],
                check=False,
                timeout=600,
            )
            assert down.returncode == 0, f"scripts/cluster down left things behind:\n{down.stderr}"


@pytest.fixture(scope="package")
def staged(cluster_up: RealCluster, measurements: dict[str, Any]) -> RealCluster:
    """The cluster after the guide's Deployment Steps (``scripts/cluster staging``)."""
    state = cluster_up.state
    if "staging_seconds" not in state.get("timings", {}):
        t0 = time.monotonic()
        # The guide's steps as written: SPIRE first (charts/x0tta6bl4-spire, its images from
        # the component cache), the mesh CA and etcd Secrets, helm install, and staging
        # returns once x0tta6bl4 check --post passes (the mesh formed).
        cluster_up.script("staging")
        measurements["staging_seconds"] = round(time.monotonic() - t0, 1)
    return cluster_up
