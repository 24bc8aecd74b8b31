"""``scripts/cluster staging``: the guide's Deployment Steps, as written, on a local cluster.

1. the guide's namespaces (``x0tta6bl4-staging`` enforcing the PodSecurity ``restricted``
   profile, ``monitoring``, ``spire``);
2. SPIRE as its own release, first: ``charts/x0tta6bl4-spire`` with the guide's
   ``values-spire-staging.yaml``, on one server with SQLite (:data:`SPIRE_LOCAL_SETS`: the
   file's three servers need a PostgreSQL this cluster does not have), from images of the
   component cache's static binaries (:func:`spire_images`);
3. the mesh CA Secret ``x0tta6bl4-mesh-ca`` from ``x0tta6bl4 controller ca init``, and the
   etcd TLS Secrets from ``x0tta6bl4 controller etcd-certs`` (docs/deployment.md step 3b);
4. ``helm install x0tta6bl4 charts/x0tta6bl4 -n x0tta6bl4-staging -f values-staging.yaml`` with
   the guide's file as written;
5. returns when ``x0tta6bl4 check --post`` passes.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path

from clusterlib.cluster import (
    BUILD_IMAGE,
    COMPONENTS,
    Cluster,
    component_versions,
    image_file,
)
from clusterlib.util import REPO_ROOT, ClusterError, log, run, step

__all__ = [
    "CHART",
    "NAMESPACE",
    "SPIRE_CHART",
    "SPIRE_LOCAL_SETS",
    "SPIRE_VALUES",
    "VALUES",
    "spire_images",
    "staging",
]

NAMESPACE = "x0tta6bl4-staging"
CHART = REPO_ROOT / "charts" / "x0tta6bl4"
VALUES = CHART / "values-staging.yaml"
SPIRE_CHART = REPO_ROOT / "charts" / "x0tta6bl4-spire"
SPIRE_VALUES = CHART / "values-spire-staging.yaml"
#: What the local cluster changes in the guide's SPIRE values: one server on SQLite (on a local
#: PersistentVolume) instead of three sharing a PostgreSQL database the cluster does not have,
#: and smaller CPU requests (server 100m instead of 500m, agents 25m instead of 100m): the three
#: nodes share this machine's 2 cores, and with the guide's requests for everything they were
#: 92-97 % booked, so a rolling update's extra controller pod could not be scheduled.
SPIRE_LOCAL_SETS = (
    "spire-server.replicaCount=1",
    "spire-server.dataStore.sql.databaseType=sqlite3",
    "spire-server.resources.requests.cpu=100m",
    "spire-agent.resources.requests.cpu=25m",
)
CHECK_WAIT = int(os.environ.get("X0_CLUSTER_CHECK_WAIT", "900"))


def helm_binary() -> str:
    for cand in (REPO_ROOT / ".tools" / "bin" / "helm", shutil.which("helm")):
        if cand and Path(cand).exists():
            return str(cand)
    raise ClusterError("helm missing: run scripts/install-tools.sh (make tools)")


def x0_binary() -> str:
    for cand in (REPO_ROOT / ".venv" / "bin" / "x0tta6bl4", shutil.which("x0tta6bl4")):
        if cand and Path(cand).exists():
            return str(cand)
    raise ClusterError("x0tta6bl4 missing: run make setup")


def staging_images(cluster: Cluster) -> list[Path]:
    """The images the guide's values name besides x0tta6bl4's own: Prometheus (monitoring)."""
    v = component_versions()
    bins = run([str(COMPONENTS), "prometheus"], timeout=7200).stdout.split()
    minor = int(v["PROMETHEUS_VERSION"].split(".")[1]) - 300
    patch = v["PROMETHEUS_VERSION"].split(".")[2]
    ref = f"quay.io/prometheus/prometheus:v3.{minor}.{patch}"
    args = [
        "--entrypoint", "/bin/prometheus", "--user", "65534:65534",
        "--workdir", "/prometheus",
        "--add", f"{bins[0]}/prometheus:/bin/prometheus",
        "--dir", "/prometheus:65534:65534", "--dir", "/etc/prometheus",
        "--cmd", "--config.file=/etc/prometheus/prometheus.yml",
        "--cmd", "--storage.tsdb.path=/prometheus",
    ]  # fmt: skip
    out = image_file(ref, args)
    if not out.exists():
        run([str(BUILD_IMAGE), "--binary", ref, "--out", str(out), *args], timeout=1200)
    return [out]


def spire_images() -> list[Path]:
    """Images of SPIRE's server, agent, controller manager and CSI driver, and the CSI
    registrar, from the component cache's static binaries, under the names
    charts/x0tta6bl4-spire's values use (cached machine-wide like the others)."""
    v = component_versions()
    names = ("spire", "spire-controller-manager", "spiffe-csi-driver", "csi-registrar")
    dirs = run([str(COMPONENTS), *names], timeout=7200).stdout.split()
    bins = dict(zip(names, dirs, strict=True))
    spire_tag = v["SPIRE_VERSION"].removeprefix("v")
    specs = [
        (
            f"ghcr.io/spiffe/spire-server:{spire_tag}",
            [
                "--entrypoint", "/opt/spire/bin/spire-server", "--user", "1000:1000",
                "--add", f"{bins['spire']}/spire-server:/opt/spire/bin/spire-server",
                "--dir", "/run/spire/data:1000:1000",
            ],
        ),
        (
            f"ghcr.io/spiffe/spire-agent:{spire_tag}",
            [
                "--entrypoint", "/opt/spire/bin/spire-agent", "--user", "1000:1000",
                "--add", f"{bins['spire']}/spire-agent:/opt/spire/bin/spire-agent",
                "--dir", "/run/spire/data:1000:1000",
            ],
        ),
        (
            "ghcr.io/spiffe/spire-controller-manager:"
            + v["SPIRE_CONTROLLER_MANAGER_VERSION"].removeprefix("v"),
            [
                "--entrypoint", "/spire-controller-manager", "--user", "65532:65532",
                "--add",
                f"{bins['spire-controller-manager']}/spire-controller-manager:"
                "/spire-controller-manager",
            ],
        ),
        (
            "ghcr.io/spiffe/spiffe-csi-driver:" + v["SPIFFE_CSI_DRIVER_VERSION"].removeprefix("v"),
            [
                "--entrypoint", "/spiffe-csi-driver", "--user", "0:0",
                "--add", f"{bins['spiffe-csi-driver']}/spiffe-csi-driver:/spiffe-csi-driver",
            ],
        ),
        (
            f"docker.io/x0tta6bl4/csi-registrar:{v['CSI_REGISTRAR_VERSION']}",
            [
                "--entrypoint", "/csi-registrar", "--user", "0:0",
                "--add", f"{bins['csi-registrar']}/csi-registrar:/csi-registrar",
            ],
        ),
    ]  # fmt: skip
    files = []
    for ref, args in specs:
        out = image_file(ref, args)
        if not out.exists():
            run([str(BUILD_IMAGE), "--binary", ref, "--out", str(out), *args], timeout=1200)
        files.append(out)
    return files


def helm(cluster: Cluster, *args: str, timeout: float = 900) -> str:
    return run([helm_binary(), f"--kubeconfig={cluster.kubeconfig}", *args], timeout=timeout).stdout


def staging(
    cluster: Cluster,
    *,
    extra_set: list[str] | None = None,
    check: bool = True,
    spire: bool = True,
) -> dict[str, float]:
    """Run the Deployment Steps; with ``check`` (the default) return only once ``x0tta6bl4
    check --post`` passes, else once the release's objects are accepted (``--no-check``)."""
    timings: dict[str, float] = {}
    t0 = time.monotonic()
    with step("Loading the images the guide's values name (Prometheus)"):
        cluster.load_images(staging_images(cluster))
    with step(
        "Creating the guide's namespaces (x0tta6bl4-staging enforces PodSecurity restricted)"
    ):
        for ns in (NAMESPACE, "monitoring", "spire"):
            obj = {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}}
            if ns == NAMESPACE:
                obj["metadata"]["labels"] = {
                    "pod-security.kubernetes.io/enforce": "restricted",
                    "pod-security.kubernetes.io/enforce-version": "latest",
                }
            cluster.kubectl("apply", "-f", "-", input=json.dumps(obj))
    spiffe = spire and SPIRE_CHART.is_dir()
    sets = list(extra_set or [])
    if spiffe:
        with step("Loading SPIRE's images (server, agent, controller manager, CSI driver)"):
            cluster.load_images(spire_images())
        with step("Installing SPIRE as its own release (charts/x0tta6bl4-spire)"):
            t1 = time.monotonic()
            args = ["upgrade", "--install", "spire", str(SPIRE_CHART), "-n", "spire"]
            args += ["--values", str(SPIRE_VALUES)]
            for s in SPIRE_LOCAL_SETS:
                args += ["--set", s]
            helm(cluster, *args, "--wait", "--timeout", "10m")
            timings["spire_install_seconds"] = round(time.monotonic() - t1, 1)
    else:
        log(
            " ! no SPIRE release (--no-spire, or charts/x0tta6bl4-spire missing): installing "
            "the mesh with x0tta6bl4.spiffe.enabled=false (mesh nodes cannot register "
            "without a Workload API, so the mesh checks will fail)"
        )
        sets.append("x0tta6bl4.spiffe.enabled=false")
    with step("Creating the mesh CA Secret x0tta6bl4-mesh-ca"):
        have = cluster.kubectl(
            "-n",
            NAMESPACE,
            "get",
            "secret",
            "x0tta6bl4-mesh-ca",
            "--ignore-not-found",
            "-o",
            "name",
        )
        if not have.strip():
            ca_dir = cluster.dir / "mesh-ca"
            if not (ca_dir / "ca.key").exists():
                run([x0_binary(), "controller", "ca", "init", "--out", str(ca_dir)])
            cluster.kubectl(
                "-n", NAMESPACE, "create", "secret", "generic", "x0tta6bl4-mesh-ca",
                f"--from-file=ca.crt={ca_dir / 'ca.crt'}",
                f"--from-file=ca.key={ca_dir / 'ca.key'}",
            )  # fmt: skip
    with step("Creating the etcd TLS Secrets x0tta6bl4-etcd-server-tls and -client-tls"):
        have = cluster.kubectl(
            "-n", NAMESPACE, "get", "secret", "x0tta6bl4-etcd-server-tls", "--ignore-not-found",
            "-o", "name",
        )  # fmt: skip
        if not have.strip():
            tls = cluster.dir / "etcd-tls"
            if not (tls / "server.key").exists():
                run([x0_binary(), "controller", "etcd-certs", "--out", str(tls),
                     "--namespace", NAMESPACE, "--replicas", "3"])  # fmt: skip
            for name, role in (
                ("x0tta6bl4-etcd-server-tls", "server"),
                ("x0tta6bl4-etcd-client-tls", "client"),
            ):
                cluster.kubectl(
                    "-n", NAMESPACE, "create", "secret", "generic", name,
                    f"--from-file=ca.crt={tls / 'ca.crt'}",
                    f"--from-file=tls.crt={tls / f'{role}.crt'}",
                    f"--from-file=tls.key={tls / f'{role}.key'}",
                )  # fmt: skip
    with step("helm install x0tta6bl4 -f values-staging.yaml (the guide's file as written)"):
        args = [
            "upgrade",
            "--install",
            "x0tta6bl4",
            str(CHART),
            "--namespace",
            NAMESPACE,
            "--values",
            str(VALUES),
        ]
        for s in sets:
            args += ["--set", s]
        t1 = time.monotonic()
        helm(cluster, *args)
        timings["helm_install_seconds"] = round(time.monotonic() - t1, 1)
    if not check:
        timings["staging_seconds"] = round(time.monotonic() - t0, 1)
        cluster.s.timings.update(timings)
        cluster.save()
        return timings
    with step("Waiting for x0tta6bl4 check --post to pass"):
        t1 = time.monotonic()
        check = run(
            [
                x0_binary(), "check", "--post", "--wait", str(CHECK_WAIT),
                "--kubeconfig", str(cluster.kubeconfig), "--namespace", NAMESPACE,
                "--values", str(VALUES), "-o", "table",
            ],
            check=False,
            timeout=CHECK_WAIT + 120,
        )  # fmt: skip
        print(check.stdout, flush=True)
        if check.returncode != 0:
            raise ClusterError(
                f"x0tta6bl4 check --post failed:\n{check.stdout[-4000:]}{check.stderr[-2000:]}"
            )
        timings["check_post_seconds"] = round(time.monotonic() - t1, 1)
    timings["staging_seconds"] = round(time.monotonic() - t0, 1)
    cluster.s.timings.update(timings)
    cluster.save()
    return timings
