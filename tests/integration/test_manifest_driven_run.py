"""Manifest-driven run: the chart's own controller and mesh-node containers as local processes.

The chart is rendered with ``values-staging.yaml`` (controller store: the chart's 3-member etcd
StatefulSet) and again in the single-controller SQLite mode. From each render the test takes
the controller container of Deployment ``x0tta6bl4-controller`` and the node container of
DaemonSet ``x0tta6bl4-mesh-node`` -- their own command, args, env, ports, volume mounts and
probes -- and starts them as local processes: one controller, two nodes (as if the DaemonSet
ran on two Kubernetes nodes). It then polls the manifests' own startup, readiness and liveness
probes (path and port as rendered) until they pass, and checks that the two nodes have an up
link to each other, a route to each other and answer a mesh ping.

Around the processes run real equivalents of what the cluster provides: a real 3-member etcd
cluster (``tests/integration/etcd_cluster.py``, TLS with client certificates as the chart's
members serve it) for the StatefulSet, a real embedded SPIFFE
issuer (``x0tta6bl4 identity serve``) on a Unix socket for the SPIRE agent, and a mesh CA made
by ``x0tta6bl4 controller ca init --out DIR`` for the Secret ``x0tta6bl4-mesh-ca``. The
issuer's entries give each pod's process the SPIFFE ID the chart's ClusterSPIFFEID for its
pods yields (controller: ``…/controller``; each node: ``…/node/<its Kubernetes node>``), by
process (``pid:PID@START``), as SPIRE's k8s attestor tells pods apart.

Everything else is passed verbatim. The rewrites, each recorded by the test (which fails if a
rewritten field is missing from this list):

- ``command`` ``x0tta6bl4`` (the image's entrypoint on its PATH) -> this venv's console script
  ``.venv/bin/x0tta6bl4``: there is no image here, the same code is installed in the venv.
- ``--store`` (controller, etcd mode): only the host:port part of each
  ``x0tta6bl4-etcd-N.x0tta6bl4-etcd:2379`` member -> ``127.0.0.1:<client port>`` of the real
  local member N; there is no cluster DNS, and three members on one host need three ports.
- ``--controller`` (node): ``x0tta6bl4-api:8443`` (Service -> targetPort ``https`` -> the
  controller's TLS port) -> ``127.0.0.1:<the controller's TLS port>``: no cluster DNS. The
  scheme (``https``) and the node's ``X0_CONTROLLER_SPIFFE_ID`` stay verbatim: the node
  verifies the controller's X.509-SVID as in the cluster.
- ``--listen``, ``--tls-listen`` (controller), ``--listen-udp`` and ``--http`` (node): the port
  numbers only (8080, 8443, 7810/udp, 7811) -> free ports, because two node processes on one
  host would clash on 7810/7811 (a DaemonSet runs one per Kubernetes node) and 8080/8443 may
  be taken on a developer machine. The bind host (``0.0.0.0``) stays. Probe ports follow the
  same map, via the probes' named ports.
- Paths under a volume mount -> the same path under a per-process host directory standing in
  for that volume: ``X0_STATE_DIR`` (emptyDir / the SQLite PVC ``/var/lib/x0tta6bl4``),
  ``--store`` in SQLite mode (``sqlite:////var/lib/x0tta6bl4/controller.db``, on that PVC),
  ``X0_CA_CERT_FILE`` / ``X0_CA_KEY_FILE`` (the Secret ``x0tta6bl4-mesh-ca`` mounted at
  ``/etc/x0tta6bl4/mesh-ca``), ``X0_ETCD_CA_FILE`` / ``X0_ETCD_CERT_FILE`` /
  ``X0_ETCD_KEY_FILE`` (etcd mode: the Secret ``x0tta6bl4-etcd-client-tls`` at
  ``/etc/x0tta6bl4/etcd-client``, here the local TLS cluster's client files) and
  ``X0_SPIFFE_SOCKET`` (the SPIRE agent socket directory
  ``/run/spire/agent-sockets``, here the embedded issuer's socket directory).
- FieldRefs: ``X0_POD_IP`` (``status.podIP``) -> ``127.0.0.1``; ``X0_NODE_NAME``
  (``spec.nodeName``) -> a test Kubernetes node name (``kind-worker``, ``kind-worker2``).

Not run: the controller's other replicas (the Service would spread nodes over them; one
replica proves the container's settings), and the etcd container of the StatefulSet itself
(the local cluster runs the same etcd server binary with loopback peer URLs).
"""

from __future__ import annotations

import contextlib
import functools
import os
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.integration.chart_helpers import (
    REPO_ROOT,
    ContainerSpec,
    FieldRef,
    Probe,
    by_kind_name,
    container,
    find_tool,
    render,
    runtime_containers,
)
from tests.integration.etcd_cluster import ETCD_MISSING_REASON, EtcdCluster, etcd_binary
from x0tta6bl4.identity.issuer.entries import process_start_time

pytestmark = [
    pytest.mark.helm,
    pytest.mark.skipif(
        find_tool("helm") is None,
        reason="helm missing: run scripts/install-tools.sh (make tools)",
    ),
    pytest.mark.timeout(240),
]

NAMESPACE = "x0tta6bl4-staging"
ENTRYPOINT = "x0tta6bl4"
CONSOLE_SCRIPT = REPO_ROOT / ".venv" / "bin" / "x0tta6bl4"
TEST_NODES = ("kind-worker", "kind-worker2")
POD_IP = "127.0.0.1"
DEADLINE = 90.0
CLIENT_TLS_SECRET = "x0tta6bl4-etcd-client-tls"
SQLITE_SETS = {
    "x0tta6bl4.store.mode": "sqlite",
    "x0tta6bl4.replicaCount": "1",
    "x0tta6bl4.autoscaling.enabled": "false",
}

Obj = dict[str, Any]


# -- rewriting a container into a local process ---------------------------------------------


@dataclass(frozen=True)
class Rewrite:
    """One manifest field the test changed: which container, which field, from what to what."""

    container: str
    field: str
    before: str
    after: str


@dataclass
class LocalRun:
    """How a container's argv/env map onto this host, and the rewrites that took."""

    container: str
    hosts: Mapping[str, str]
    """``service-host:port`` -> ``127.0.0.1:port``."""
    ports: Mapping[int, int]
    """container port -> host port."""
    mounts: Mapping[str, Path]
    """mountPath -> host directory."""
    field_refs: Mapping[str, str]
    """fieldPath -> value."""
    rewrites: list[Rewrite] = field(default_factory=list)

    def _value(self, name: str, value: str) -> str:
        out = value
        for service, local in self.hosts.items():
            out = re.sub(rf"(?<![\w.-]){re.escape(service)}(?![\w.-])", local, out)
        bind = re.fullmatch(r"(0\.0\.0\.0|\[::\]):(\d+)", out)
        if bind and int(bind.group(2)) in self.ports:
            out = f"{bind.group(1)}:{self.ports[int(bind.group(2))]}"
        if self.mounts:  # one pass: a host directory may itself lie under a mountPath (/tmp)
            alternatives = "|".join(
                re.escape(m) for m in sorted(self.mounts, key=len, reverse=True)
            )
            out = re.sub(
                rf"(?<![\w.-])(?:{alternatives})(?=/|$)",
                lambda m: str(self.mounts[m.group(0)]),
                out,
            )
        if out != value:
            self.rewrites.append(Rewrite(self.container, name, value, out))
        return out

    def argv(self, spec: ContainerSpec) -> list[str]:
        """The container's command + args with the rewrites applied."""
        assert spec.argv[0] == ENTRYPOINT, f"{spec.name} runs {spec.argv[0]!r}, not the CLI"
        self.rewrites.append(Rewrite(self.container, "command", ENTRYPOINT, str(CONSOLE_SCRIPT)))
        out = [str(CONSOLE_SCRIPT)]
        for i, arg in enumerate(spec.argv[1:], start=1):
            flag = spec.argv[i - 1]
            out.append(self._value(flag if flag.startswith("--") else f"args[{i}]", arg))
        return out

    def env(self, spec: ContainerSpec) -> dict[str, str]:
        """The container's env (FieldRefs resolved) over a minimal process environment."""
        base = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "LANG": "C.UTF-8"}
        out = dict(base)
        for name, value in spec.env.items():
            if isinstance(value, FieldRef):
                if value.field_path not in self.field_refs:
                    pytest.fail(f"{spec.name}: env {name} reads unknown field {value.field_path}")
                resolved = self.field_refs[value.field_path]
                self.rewrites.append(
                    Rewrite(self.container, name, f"fieldRef:{value.field_path}", resolved)
                )
                out[name] = resolved
            else:
                out[name] = self._value(name, value)
        return out

    def probe_url(self, probe: Probe) -> str:
        assert probe.scheme == "HTTP", probe
        return f"http://127.0.0.1:{self.ports[probe.port]}{probe.path}"


def free_port(kind: int = socket.SOCK_STREAM) -> int:
    with socket.socket(socket.AF_INET, kind) as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def port_map(spec: ContainerSpec) -> dict[int, int]:
    """Every declared container port -> a free host port of the same protocol."""
    return {
        number: free_port(socket.SOCK_DGRAM if proto == "UDP" else socket.SOCK_STREAM)
        for number, proto in spec.ports.values()
    }


def pod_spec(workload: Obj) -> Obj:
    spec: Obj = workload["spec"]["template"]["spec"]
    return spec


@dataclass
class Volumes:
    """Host directories standing in for the volumes the cluster provides."""

    root: Path
    ca_dir: Path
    socket_dir: Path
    ca_secret: str = "x0tta6bl4-mesh-ca"
    #: Other operator Secrets: name -> host directory holding their keys as files.
    secrets: dict[str, Path] = field(default_factory=dict)

    def mounts(self, workload: Obj, name: str, instance: str) -> dict[str, Path]:
        """mountPath -> host directory for container ``name`` of ``workload``."""
        volumes = {v["name"]: v for v in pod_spec(workload)["volumes"]}
        out: dict[str, Path] = {}
        for mount in container(workload, name).get("volumeMounts", []):
            volume = volumes[mount["name"]]
            if "secret" in volume:
                secret = volume["secret"]
                directories = {self.ca_secret: self.ca_dir, **self.secrets}
                assert secret["secretName"] in directories, f"unknown Secret {secret}"
                directory = directories[secret["secretName"]]
                for item in secret.get("items", []):
                    assert (directory / item["path"]).is_file(), item
                out[mount["mountPath"]] = directory
            elif volume.get("csi", {}).get("driver") == "csi.spiffe.io" or "hostPath" in volume:
                out[mount["mountPath"]] = self.socket_dir
            elif "emptyDir" in volume or "persistentVolumeClaim" in volume:
                path = self.root / instance / volume["name"]
                path.mkdir(parents=True, exist_ok=True)
                path.chmod(0o700)
                out[mount["mountPath"]] = path
            else:
                pytest.fail(f"{name} mounts volume {volume} the test cannot provide")
        return out


# -- processes ------------------------------------------------------------------------------


@dataclass
class Proc:
    name: str
    process: subprocess.Popen[bytes]
    log: Path

    def tail(self, lines: int = 40) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"


class Processes:
    """Started subprocesses, each logging to a file; all stopped on close."""

    def __init__(self, log_dir: Path) -> None:
        self.log_dir = log_dir
        self.procs: list[Proc] = []

    def start(self, name: str, argv: list[str], env: Mapping[str, str], cwd: Path) -> Proc:
        log = self.log_dir / f"{name}.log"
        with open(log, "ab") as out:
            process = subprocess.Popen(
                argv, stdout=out, stderr=subprocess.STDOUT, env=dict(env), cwd=cwd
            )
        proc = Proc(name, process, log)
        self.procs.append(proc)
        return proc

    def check_alive(self) -> None:
        for proc in self.procs:
            if proc.process.poll() is not None:
                pytest.fail(f"{proc.name} exited with {proc.process.returncode}:\n{proc.tail()}")

    def logs(self) -> str:
        return "\n".join(f"--- {p.name}\n{p.tail()}" for p in self.procs)

    def close(self) -> None:
        for proc in reversed(self.procs):
            if proc.process.poll() is None:
                proc.process.send_signal(signal.SIGTERM)
        for proc in reversed(self.procs):
            try:
                proc.process.wait(20)
            except subprocess.TimeoutExpired:
                proc.process.kill()
                proc.process.wait(10)


def wait_for(
    procs: Processes, predicate: Callable[[], bool], what: str, deadline: float = DEADLINE
) -> None:
    """Poll ``predicate`` (HTTP errors count as not yet) until it holds; fail after a deadline."""
    end = time.monotonic() + deadline
    while True:
        procs.check_alive()
        with contextlib.suppress(httpx.HTTPError, ValueError, KeyError):
            if predicate():
                return
        if time.monotonic() > end:
            pytest.fail(f"timed out after {deadline} s waiting for {what}\n{procs.logs()}")
        time.sleep(0.1)


def probe_passes(url: str) -> bool:
    """A kubelet httpGet probe: success is a status in [200, 400)."""
    return 200 <= httpx.get(url, timeout=5).status_code < 400


def wait_probes(procs: Processes, run: LocalRun, spec: ContainerSpec) -> None:
    """Startup first (as the kubelet does), then readiness and liveness."""
    assert {"startupProbe", "readinessProbe", "livenessProbe"} <= set(spec.probes), spec.probes
    for kind in ("startupProbe", "readinessProbe", "livenessProbe"):
        url = run.probe_url(spec.probes[kind])
        wait_for(procs, functools.partial(probe_passes, url), f"{run.container} {kind} {url}")


# -- the cluster's services, locally --------------------------------------------------------


def spiffe_id_of(
    objs: list[Obj], workload: Obj, trust_domain: str, node_name: str | None = None
) -> str:
    """The SPIFFE ID the chart's ClusterSPIFFEID for the workload's pods gives the pod (on
    Kubernetes node ``node_name``)."""
    index = by_kind_name(objs)
    labels = workload["spec"]["template"]["metadata"]["labels"]
    spiffe = [
        o
        for (kind, _), o in index.items()
        if kind == "ClusterSPIFFEID"
        and o["spec"]["podSelector"]["matchLabels"].items() <= labels.items()
    ]
    assert len(spiffe) == 1, "exactly one ClusterSPIFFEID selects each workload's pods"
    template = str(spiffe[0]["spec"]["spiffeIDTemplate"])
    values = {
        "{{ .TrustDomain }}": trust_domain,
        "{{ .PodMeta.Namespace }}": NAMESPACE,
        "{{ .PodSpec.ServiceAccountName }}": pod_spec(workload)["serviceAccountName"],
    }
    if node_name is not None:
        values["{{ .PodSpec.NodeName }}"] = node_name
    for key, value in values.items():
        template = template.replace(key, value)
    assert "{{" not in template, f"unresolved template: {template}"
    return template


def etcd_hosts(objs: list[Obj], cluster: EtcdCluster) -> dict[str, str]:
    """``<sts>-N.<service>:<client port>`` -> the local member N's loopback client address."""
    sts = by_kind_name(objs)["StatefulSet", "x0tta6bl4-etcd"]
    replicas = int(sts["spec"]["replicas"])
    assert replicas == cluster.size
    ports = {p["name"]: p["containerPort"] for p in container(sts, "etcd")["ports"]}
    service = sts["spec"]["serviceName"]
    return {
        f"{sts['metadata']['name']}-{i}.{service}:{ports['client']}": f"127.0.0.1:{port}"
        for i, (_, port) in enumerate(cluster.endpoints)
    }


def api_host(objs: list[Obj], controller_ports: Mapping[int, int]) -> dict[str, str]:
    """The Service ``x0tta6bl4-api``'s ``name:port`` -> the controller's local address."""
    index = by_kind_name(objs)
    service = index["Service", "x0tta6bl4-api"]
    spec = runtime_containers(objs)["controller"]
    out = {}
    for port in service["spec"]["ports"]:
        target = port["targetPort"]
        number = spec.ports[target][0] if isinstance(target, str) else int(target)
        out[f"x0tta6bl4-api:{port['port']}"] = f"127.0.0.1:{controller_ports[number]}"
    return out


class IssuerEntries:
    """The SPIRE registration entries of the pods, as the embedded issuer's entries file: each
    pod's process gets exactly its own SPIFFE ID (``pid:PID@START``), as SPIRE's k8s attestor
    gives each pod its ClusterSPIFFEID's ID."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.lines: list[str] = []

    def add(self, proc: Proc, spiffe_id: str) -> None:
        start = process_start_time(proc.process.pid)
        assert start is not None, f"{proc.name} is not running"
        self.lines.append(f"pid:{proc.process.pid}@{start}={spiffe_id}")
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text("".join(f"{line}\n" for line in self.lines))
        tmp.chmod(0o600)
        os.replace(tmp, self.path)


@contextlib.contextmanager
def issuer(directory: Path, socket_path: Path, trust_domain: str) -> Iterator[IssuerEntries]:
    """``x0tta6bl4 identity serve`` at ``socket_path``, with an (empty) entries file."""
    entries = IssuerEntries(directory / "issuer-entries")
    procs = Processes(directory)
    procs.start(
        "identity",
        [
            str(CONSOLE_SCRIPT), "identity", "serve",
            "--socket", str(socket_path),
            "--trust-domain", trust_domain,
            "--entries-file", str(entries.path),
            "--state-dir", str(directory / "issuer-state"),
        ],
        {**os.environ},
        directory,
    )  # fmt: skip
    try:
        wait_for(procs, socket_path.exists, "the identity issuer's socket")
        yield entries
    finally:
        procs.close()


def etcd_client_secret(workdir: Path, cluster: EtcdCluster) -> Path:
    """The Secret ``x0tta6bl4-etcd-client-tls`` (keys ``ca.crt``, ``tls.crt``, ``tls.key``) for
    the local TLS etcd cluster, as ``x0tta6bl4 controller etcd-certs`` prints it."""
    directory = workdir / "etcd-client-tls"
    directory.mkdir(mode=0o700)
    files = cluster.client_tls
    for name, source in (("ca.crt", files.ca_file), ("tls.crt", files.cert_file),
                         ("tls.key", files.key_file)):  # fmt: skip
        shutil.copyfile(source, directory / name)
    (directory / "tls.key").chmod(0o600)
    return directory


def make_ca(out: Path, trust_domain: str) -> None:
    """The Secret ``x0tta6bl4-mesh-ca``'s files, made the way docs/deployment.md says."""
    subprocess.run(
        [str(CONSOLE_SCRIPT), "controller", "ca", "init", "--out", str(out),
         "--trust-domain", trust_domain],
        check=True, capture_output=True, timeout=60,
    )  # fmt: skip


# -- the test -------------------------------------------------------------------------------


@pytest.fixture
def workdir() -> Iterator[Path]:
    """A short path under /tmp (Unix socket paths are limited to 107 bytes)."""
    path = Path(tempfile.mkdtemp(prefix="x0-mdr-", dir="/tmp"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


def doc_fields() -> set[str]:
    """Field names the module docstring lists as rewritten (``...`` spans)."""
    return set(re.findall(r"``([^`]+)``", __doc__ or ""))


def node_sees(status: Obj, peer: str) -> bool:
    links = {link["peer"]: link["state"] for link in status.get("links", [])}
    routes = {route["dest"] for route in status.get("routes", [])}
    return links.get(peer) == "up" and peer in routes


@pytest.mark.parametrize(
    "mode",
    [pytest.param("etcd", marks=pytest.mark.etcd), "sqlite"],
)
def test_rendered_containers_run_and_pass_their_own_probes(mode: str, workdir: Path) -> None:
    if not CONSOLE_SCRIPT.is_file():
        pytest.fail(f"{CONSOLE_SCRIPT} missing: the package is not installed in the venv")
    if mode == "etcd" and etcd_binary() is None:
        pytest.skip(ETCD_MISSING_REASON)
    objs = render(["values-staging.yaml"], SQLITE_SETS if mode == "sqlite" else None)
    index = by_kind_name(objs)
    deployment = index["Deployment", "x0tta6bl4-controller"]
    daemonset = index["DaemonSet", "x0tta6bl4-mesh-node"]
    specs = runtime_containers(objs)
    ctl_spec, node_spec = specs["controller"], specs["node"]
    trust_domain = str(ctl_spec.env["X0_TRUST_DOMAIN"])
    socket_value = str(node_spec.env["X0_SPIFFE_SOCKET"])
    socket_dir_in_pod = str(Path(socket_value).parent)

    volumes = Volumes(workdir, workdir / "mesh-ca", workdir / "spire")
    make_ca(volumes.ca_dir, trust_domain)
    controller_id = spiffe_id_of(objs, deployment, trust_domain)
    node_ids = {name: spiffe_id_of(objs, daemonset, trust_domain, name) for name in TEST_NODES}
    assert len({controller_id, *node_ids.values()}) == 1 + len(TEST_NODES)  # one ID each
    socket_path = volumes.socket_dir / Path(socket_value).name

    with contextlib.ExitStack() as stack:
        hosts: dict[str, str] = {}
        if mode == "etcd":
            cluster = stack.enter_context(EtcdCluster(workdir / "etcd", size=3, tls=True))
            hosts |= etcd_hosts(objs, cluster)
            volumes.secrets[CLIENT_TLS_SECRET] = etcd_client_secret(workdir, cluster)
        else:
            assert "etcd" not in " ".join(ctl_spec.argv)
        entries = stack.enter_context(issuer(workdir, socket_path, trust_domain))
        procs = Processes(workdir)
        stack.callback(procs.close)

        ctl_ports = port_map(ctl_spec)
        hosts |= api_host(objs, ctl_ports)
        ctl_run = LocalRun(
            "controller",
            hosts,
            ctl_ports,
            volumes.mounts(deployment, "controller", "controller-0"),
            {},
        )
        assert ctl_run.mounts[socket_dir_in_pod] == volumes.socket_dir
        # All pods start together, as in a fresh install; the nodes retry until the API answers.
        ctl_proc = procs.start("controller", ctl_run.argv(ctl_spec), ctl_run.env(ctl_spec), workdir)
        entries.add(ctl_proc, controller_id)

        node_runs: dict[str, LocalRun] = {}
        for node_name in TEST_NODES:
            run = LocalRun(
                f"node@{node_name}",
                hosts,
                port_map(node_spec),
                volumes.mounts(daemonset, "node", f"node-{node_name}"),
                {"spec.nodeName": node_name, "status.podIP": POD_IP},
            )
            node_runs[node_name] = run
            proc = procs.start(
                f"node-{node_name}", run.argv(node_spec), run.env(node_spec), workdir
            )
            entries.add(proc, node_ids[node_name])
        wait_probes(procs, ctl_run, ctl_spec)
        for run in node_runs.values():
            wait_probes(procs, run, node_spec)

        def status(node_name: str) -> Obj:
            run = node_runs[node_name]
            http_port = run.ports[node_spec.ports["http"][0]]
            body: Obj = httpx.get(f"http://127.0.0.1:{http_port}/v1/status", timeout=5).json()
            return body

        a, b = TEST_NODES
        wait_for(procs, lambda: node_sees(status(a), b) and node_sees(status(b), a), "links")
        for src, dst in ((a, b), (b, a)):
            port = node_runs[src].ports[node_spec.ports["http"][0]]
            answer = httpx.get(
                f"http://127.0.0.1:{port}/v1/ping",
                params={"target": dst, "count": "2", "timeout": "5"},
                timeout=30,
            ).json()
            assert answer["received"] >= 1, answer
            assert answer["node_id"] == dst
        for node_name in TEST_NODES:
            got = status(node_name)
            assert got["registered"] is True
            assert got["node_id"] == node_name  # from the spec.nodeName FieldRef
            assert got["spiffe_id"] == node_ids[node_name]
            mesh_port = node_runs[node_name].ports[node_spec.ports["mesh"][0]]
            assert got["advertise"] == f"{POD_IP}:{mesh_port}"  # from the status.podIP FieldRef

    rewrites = [*ctl_run.rewrites, *(w for run in node_runs.values() for w in run.rewrites)]
    undocumented = {w.field for w in rewrites} - doc_fields()
    assert not undocumented, f"rewritten but not listed in the module docstring: {undocumented}"
    rewritten = {(w.container.split("@")[0], w.field) for w in rewrites}
    expected = {
        ("controller", "command"),
        ("controller", "--listen"),
        ("controller", "--tls-listen"),
        ("controller", "X0_STATE_DIR"),
        ("controller", "X0_CA_CERT_FILE"),
        ("controller", "X0_CA_KEY_FILE"),
        ("controller", "X0_SPIFFE_SOCKET"),
        ("controller", "--store"),
        *(
            (
                ("controller", "X0_ETCD_CA_FILE"),
                ("controller", "X0_ETCD_CERT_FILE"),
                ("controller", "X0_ETCD_KEY_FILE"),
            )
            if mode == "etcd"
            else ()
        ),
        ("node", "command"),
        ("node", "--controller"),
        ("node", "--listen-udp"),
        ("node", "--http"),
        ("node", "X0_STATE_DIR"),
        ("node", "X0_SPIFFE_SOCKET"),
        ("node", "X0_NODE_NAME"),
        ("node", "X0_POD_IP"),
    }
    assert rewritten == expected
    for w in rewrites:
        if w.field == "--store" and mode == "etcd":
            # Only the host part changed: scheme, member order and separators are verbatim.
            assert re.sub(r"127\.0\.0\.1:\d+", "H", w.after) == re.sub(
                r"x0tta6bl4-etcd-\d\.x0tta6bl4-etcd:2379", "H", w.before
            )
