"""The named actions of ``scripts/cluster up`` and ``down`` (kind's create/delete, by hand).

Every action is idempotent: ``up`` on a directory that already holds a cluster resumes or
re-checks it, ``down`` removes exactly what ``up`` made, whatever state it was left in.
"""

from __future__ import annotations

import contextlib
import filecmp
import hashlib
import itertools
import json
import os
import secrets
import shutil
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from clusterlib import manifests, netns
from clusterlib.pki import Pki
from clusterlib.util import REPO_ROOT, ClusterError, log, read_json, run, step, wait_for, write_json

__all__ = ["Cluster", "State", "image_file"]

CACHE = Path(os.environ.get("X0_CACHE", "/var/cache/x0tta6bl4"))
COMPONENTS = REPO_ROOT / "scripts" / "components" / "build"
BUILD_IMAGE = REPO_ROOT / "scripts" / "build-image"
API_PORT = 6443
PAUSE_IMAGE = "registry.k8s.io/pause:3.10"


@dataclass
class State:
    """What ``up`` made, written to DIR/cluster.json before it is made (``down`` reads it)."""

    id: str
    prefix: str
    nodes: list[str]
    created: float = field(default_factory=time.time)
    made_mountpoints: list[str] = field(default_factory=list)
    timings: dict[str, float] = field(default_factory=dict)

    @property
    def bridge(self) -> str:
        return f"x0{self.id}"

    @property
    def cp_ns(self) -> str:
        return f"x0{self.id}-cp"

    def node_ns(self, node: str) -> str:
        return f"x0{self.id}-{node.replace('worker-', 'w')}"

    @property
    def host_ip(self) -> str:
        return f"{self.prefix}.0.1"

    @property
    def cp_ip(self) -> str:
        return f"{self.prefix}.0.2"

    def node_ip(self, node: str) -> str:
        return f"{self.prefix}.0.{10 + self.nodes.index(node) + 1}"

    @property
    def pod_cidr(self) -> str:
        return f"{self.prefix}.128.0/17"

    @property
    def service_cidr(self) -> str:
        return f"{self.prefix}.96.0/20"

    @property
    def dns_ip(self) -> str:
        return f"{self.prefix}.96.10"

    @property
    def kubernetes_ip(self) -> str:
        return f"{self.prefix}.96.1"

    @property
    def server(self) -> str:
        return f"https://{self.cp_ip}:{API_PORT}"


class Cluster:
    def __init__(self, directory: Path) -> None:
        self.dir = directory.resolve()
        self.state_file = self.dir / "cluster.json"
        self.kubeconfig = self.dir / "kubeconfig"
        self.pki = Pki(self.dir / "pki")
        self.logs = self.dir / "logs"
        self.pids = self.dir / "pids"
        self._bins: dict[str, Path] = {}
        self.state: State | None = None
        if self.state_file.exists():
            self.state = State(**read_json(self.state_file))

    # ------------------------------------------------------------------ helpers

    @property
    def s(self) -> State:
        if self.state is None:
            raise ClusterError(f"no cluster in {self.dir} (no cluster.json)")
        return self.state

    def save(self) -> None:
        write_json(self.state_file, asdict(self.s))

    def bin(self, component: str, name: str) -> str:
        return str(self._bins[component] / name)

    def kubectl(self, *args: str, input: str | None = None, check: bool = True) -> str:
        return run(
            [kubectl_binary(), f"--kubeconfig={self.kubeconfig}", *args], input=input, check=check
        ).stdout

    def kubectl_json(self, *args: str) -> Any:
        return json.loads(self.kubectl(*args, "-o", "json"))

    def mntns(self, node: str) -> Path:
        return netns.NS_RUN / self.s.id / f"{node}.mnt"

    def in_node(self, node: str, *cmd: str, check: bool = True, timeout: float = 600) -> str:
        return run(
            [
                "nsenter",
                f"--net=/run/netns/{self.s.node_ns(node)}",
                f"--mount={self.mntns(node)}",
                "--",
                *cmd,
            ],
            check=check,
            timeout=timeout,
        ).stdout

    def node_dir(self, node: str) -> Path:
        return self.dir / "nodes" / node

    def daemon(self, name: str, cmd: list[str], *, node: str | None) -> None:
        """Start a daemon unless it runs already (its pid file names a live process)."""
        pid_file = self.pids / f"{name}.pid"
        if netns.alive(pid_file):
            return
        group = node or "control-plane"
        procs = (
            netns.CGROUP_FS
            / "pids"
            / netns.cgroup_base(self.s.id)
            / group
            / "daemons"
            / "cgroup.procs"
        )
        netns.spawn(
            name,
            cmd,
            netns=self.s.node_ns(node) if node else self.s.cp_ns,
            mntns=self.mntns(node) if node else None,
            cgroup_procs=procs,
            log_file=self.logs / f"{name}.log",
            pid_file=pid_file,
        )

    # ------------------------------------------------------------------ up

    def up(self, nodes: int, images: list[Path], build_mesh_image: bool) -> None:
        t0 = time.monotonic()
        if nodes < 1:
            raise ClusterError("--nodes must be at least 1")
        self.dir.mkdir(parents=True, exist_ok=True)
        with step("Checking prerequisites and building missing components"):
            self.prerequisites()
        if self.state is None:
            # A new cluster: no certificate or kubeconfig of an earlier one in this directory
            # may survive (they name the earlier one's addresses).
            for stale in (self.dir / "pki", self.dir / "kubeconfigs"):
                shutil.rmtree(stale, ignore_errors=True)
            self.kubeconfig.unlink(missing_ok=True)
            cid = secrets.token_hex(3)
            self.state = State(
                id=cid,
                prefix=netns.free_prefix(int(cid, 16)),
                nodes=[f"worker-{i + 1}" for i in range(nodes)],
            )
            self.save()
        elif len(self.s.nodes) != nodes:
            log(f"   (the cluster in {self.dir} has {len(self.s.nodes)} nodes; keeping them)")
        with step("Preparing images"):
            image_files = self.prepare_images(images, build_mesh_image)
        with step("Writing certificates"):
            self.certificates()
        with step("Creating network namespaces and the bridge"):
            self.network()
        with step("Creating node mount namespaces and cgroups"):
            self.node_namespaces()
        with step("Starting etcd"):
            self.start_etcd()
        with step("Starting kube-apiserver"):
            self.start_apiserver()
        with step("Starting kube-controller-manager and kube-scheduler"):
            self.start_controllers()
        with step("Starting containerd on every node"):
            self.start_containerd()
        with step(f"Loading {len(image_files)} images into every node's containerd"):
            self.load_images(image_files)
        with step("Starting kubelets"):
            self.start_kubelets()
        with step("Wiring pod networks (CNI bridge, routes between nodes)"):
            self.pod_network()
        with step("Starting kube-proxy and kube-router (NetworkPolicies)"):
            self.start_proxies()
        with step("Installing CoreDNS and storage"):
            self.addons()
        with step("Waiting for nodes and CoreDNS to be ready"):
            self.wait_ready()
        self.s.timings["up_seconds"] = round(time.monotonic() - t0, 1)
        self.save()
        self.print_summary()

    def prerequisites(self) -> None:
        missing = [
            b
            for b in (
                "containerd",
                "ctr",
                "runc",
                "nsenter",
                "unshare",
                "iptables",
                "ipset",
                "openssl",
                "umoci",
                "conntrack",
                "ip",
            )
            if shutil.which(b) is None
        ]
        if missing:
            raise ClusterError(
                f"missing {', '.join(missing)}: run scripts/setup-system.sh (make system)"
            )
        if os.geteuid() != 0:
            raise ClusterError("scripts/cluster needs root (namespaces, cgroups, mounts)")
        kubectl_binary()
        names = [
            "kubernetes",
            "etcd",
            "coredns",
            "kube-router",
            "pause",
            "metrics-server",
            "vpa-crds",
        ]
        out = run([str(COMPONENTS), *names], timeout=7200).stdout.split()
        self._bins = {n: Path(p) for n, p in zip(names, out, strict=True)}

    def prepare_images(self, extra: list[Path], build_mesh_image: bool) -> list[Path]:
        versions = component_versions()
        files = []
        etcd_v = versions["ETCD_VERSION"].lstrip("v")
        specs = [
            (
                PAUSE_IMAGE,
                ["--entrypoint", "/pause", "--user", "65535:65535",
                 "--add", f"{self.bin('pause', 'pause')}:/pause"],
            ),
            (
                f"registry.k8s.io/coredns/coredns:{versions['COREDNS_VERSION']}",
                ["--entrypoint", "/coredns", "--add", f"{self.bin('coredns', 'coredns')}:/coredns"],
            ),
            (
                f"registry.k8s.io/metrics-server/metrics-server:{versions['METRICS_SERVER_VERSION']}",
                [
                    "--entrypoint", "/metrics-server",
                    "--add", f"{self.bin('metrics-server', 'metrics-server')}:/metrics-server",
                ],
            ),
            (
                f"registry.k8s.io/etcd:{etcd_v}-0",
                [
                    "--entrypoint", "/usr/local/bin/etcd",
                    "--add", f"{self.bin('etcd', 'etcd')}:/usr/local/bin/etcd",
                    "--add", f"{self.bin('etcd', 'etcdctl')}:/usr/local/bin/etcdctl",
                    "--dir", "/var/lib/etcd:65532:65532",
                ],
            ),
        ]  # fmt: skip
        for ref, args in specs:
            out = image_file(ref, args)
            if not out.exists():
                run([str(BUILD_IMAGE), "--binary", ref, "--out", str(out), *args], timeout=1200)
            files.append(out)
        if build_mesh_image:
            # Cached machine-wide by the content of what goes into it (the package's sources and
            # the build script), so a cluster of an unchanged checkout starts without a rebuild.
            cached = CACHE / "images" / f"x0tta6bl4-mesh-{source_digest()}.tar"
            if not cached.exists():
                run([str(BUILD_IMAGE), "--out", str(cached)], timeout=3600)
            out = self.dir / "images" / "x0tta6bl4-mesh.tar"
            out.parent.mkdir(parents=True, exist_ok=True)
            # A resumed cluster of a changed checkout gets the new image: copied with its mtime,
            # which load_images' per-node record keys on, so it is imported again.
            if not out.exists() or not filecmp.cmp(cached, out, shallow=True):
                shutil.copy2(cached, out)
            files.append(out)
        files += [p.resolve() for p in extra]
        return files

    def certificates(self) -> None:
        s, p = self.s, self.pki
        p.ca("ca", "x0tta6bl4-cluster-ca")
        p.ca("front-proxy-ca", "x0tta6bl4-front-proxy-ca")
        p.cert(
            "apiserver", "ca", "kube-apiserver", server=True, client=False,
            ips=(s.cp_ip, s.kubernetes_ip, "127.0.0.1", s.host_ip),
            dns=("kubernetes", "kubernetes.default", "kubernetes.default.svc",
                 "kubernetes.default.svc.cluster.local", "localhost"),
        )  # fmt: skip
        p.cert(
            "apiserver-kubelet-client",
            "ca",
            "kube-apiserver-kubelet-client",
            orgs=("system:masters",),
        )
        p.cert("admin", "ca", "kubernetes-admin", orgs=("system:masters",))
        p.cert("controller-manager", "ca", "system:kube-controller-manager")
        p.cert("scheduler", "ca", "system:kube-scheduler")
        p.cert("kube-proxy", "ca", "system:kube-proxy")
        p.cert("kube-router", "ca", "system:x0tta6bl4:kube-router")
        p.cert("front-proxy-client", "front-proxy-ca", "front-proxy-client")
        p.service_account_key()
        for node in s.nodes:
            p.cert(f"kubelet-{node}", "ca", f"system:node:{node}", orgs=("system:nodes",))
            p.cert(
                f"kubelet-serving-{node}", "ca", node, server=True, client=False,
                ips=(s.node_ip(node),), dns=(node,),
            )  # fmt: skip
        ca = str(p.path("ca")[0])
        for name, user in (
            ("admin", "admin"),
            ("controller-manager", "controller-manager"),
            ("scheduler", "scheduler"),
            ("kube-proxy", "kube-proxy"),
            ("kube-router", "kube-router"),
            *[(f"kubelet-{n}", f"kubelet-{n}") for n in s.nodes],
        ):
            crt, key = p.path(user)
            target = (
                self.kubeconfig
                if name == "admin"
                else self.dir / "kubeconfigs" / f"{name}.kubeconfig"
            )
            target.parent.mkdir(exist_ok=True)
            write_json(target, kubeconfig(s.server, ca, str(crt), str(key), name))
            target.chmod(0o600)

    def network(self) -> None:
        s = self.s
        if not Path(f"/sys/class/net/{s.bridge}").exists():
            run(["ip", "link", "add", s.bridge, "type", "bridge"])
            run(["ip", "addr", "add", f"{s.host_ip}/24", "dev", s.bridge])
        run(["ip", "link", "set", s.bridge, "up"])
        members = [(s.cp_ns, s.cp_ip, "c")] + [
            (s.node_ns(n), s.node_ip(n), str(i + 1)) for i, n in enumerate(s.nodes)
        ]
        existing = set(run(["ip", "netns", "list"]).stdout.split())
        for ns, ip, tag in members:
            host_if = f"x0{s.id}h{tag}"
            if ns not in existing:
                run(["ip", "netns", "add", ns])
            if not Path(f"/sys/class/net/{host_if}").exists():
                run(
                    [
                        "ip",
                        "link",
                        "add",
                        host_if,
                        "type",
                        "veth",
                        "peer",
                        "name",
                        "eth0",
                        "netns",
                        ns,
                    ]
                )
                run(["ip", "link", "set", host_if, "master", s.bridge, "up"])
                run(["ip", "-n", ns, "addr", "add", f"{ip}/24", "dev", "eth0"])
            run(["ip", "-n", ns, "link", "set", "lo", "up"])
            run(["ip", "-n", ns, "link", "set", "eth0", "up"])
            # A default route is what components pick their node IP by. It points at the host,
            # which does not forward (ip_forward=0): a dead end, so nothing leaves the machine.
            run(["ip", "-n", ns, "route", "replace", "default", "via", s.host_ip])
            sysctls = ["net.ipv4.ip_forward=1", "net.ipv4.conf.all.route_localnet=1"]
            if ns != s.cp_ns:
                sysctls += [
                    "net.bridge.bridge-nf-call-iptables=1",
                    "net.bridge.bridge-nf-call-ip6tables=1",
                ]
            run(["ip", "netns", "exec", ns, "sysctl", "-q", "-w", *sysctls])

    def node_namespaces(self) -> None:
        s = self.s
        base = netns.NS_RUN / s.id
        base.mkdir(parents=True, exist_ok=True)
        if run(["findmnt", "-n", str(base)], check=False).returncode != 0:
            run(["mount", "--bind", str(base), str(base)])
            run(["mount", "--make-private", str(base)])
        netns.make_cgroups(s.id, ["control-plane", *s.nodes])
        for path in netns.NODE_PRIVATE_PATHS:
            if not Path(path).exists():
                Path(path).mkdir(parents=True)
                s.made_mountpoints.append(path)
        self.save()
        for node in s.nodes:
            mnt = self.mntns(node)
            if mnt.exists() and run(["findmnt", "-n", str(mnt)], check=False).returncode == 0:
                continue
            mnt.touch()
            run(["unshare", f"--mount={mnt}", "--propagation", "slave", "true"])
            root = self.node_dir(node) / "root"
            script = []
            for path in netns.NODE_PRIVATE_PATHS:
                (root / path.lstrip("/")).mkdir(parents=True, exist_ok=True)
                script.append(f"mount --bind {root / path.lstrip('/')} {path}")
            # CSI node plugins (the SPIFFE CSI driver of charts/x0tta6bl4-spire) mount into pod
            # volumes with Bidirectional propagation, which containerd allows only under a
            # shared mount; a real node's root is shared (systemd). Shared within this node's
            # namespace only: the namespace is a slave of the host's, so nothing reaches back.
            script.append("mount --make-rshared /var/lib/kubelet")
            sysctl_dir = self.node_dir(node) / "sysctl"
            sysctl_dir.mkdir(parents=True, exist_ok=True)
            for path, value in netns.KUBELET_SYSCTLS.items():
                f = sysctl_dir / path.rsplit("/", 1)[1]
                f.write_text(value + "\n")
                script.append(f"mount --bind {f} {path}")
            run(["nsenter", f"--mount={mnt}", "--", "/bin/sh", "-ec", "\n".join(script)])

    def start_etcd(self) -> None:
        data = self.dir / "etcd"
        data.mkdir(exist_ok=True, mode=0o700)
        self.daemon(
            "etcd",
            [
                self.bin("etcd", "etcd"), "--name=control-plane", f"--data-dir={data}",
                "--listen-client-urls=http://127.0.0.1:2379", "--advertise-client-urls=http://127.0.0.1:2379",
                "--listen-peer-urls=http://127.0.0.1:2380", "--initial-advertise-peer-urls=http://127.0.0.1:2380",
                "--initial-cluster=control-plane=http://127.0.0.1:2380", "--listen-metrics-urls=http://127.0.0.1:2381",
                "--quota-backend-bytes=2147483648", "--snapshot-count=10000", "--log-level=warn",
            ],
            node=None,
        )  # fmt: skip
        wait_for(
            "etcd /health",
            lambda: (
                '"health":"true"'
                in run(
                    [
                        "ip",
                        "netns",
                        "exec",
                        self.s.cp_ns,
                        "curl",
                        "-s",
                        "http://127.0.0.1:2381/health",
                    ],
                    check=False,
                ).stdout
            ),
            60,
        )

    def start_apiserver(self) -> None:
        s, p = self.s, self.pki
        ca, _ = p.path("ca")
        sa_pub, sa_key = p.service_account_key()
        crt, key = p.path("apiserver")
        kc, kk = p.path("apiserver-kubelet-client")
        fpc, fpk = p.path("front-proxy-client")
        self.daemon(
            "kube-apiserver",
            [
                self.bin("kubernetes", "kube-apiserver"),
                f"--advertise-address={s.cp_ip}", "--bind-address=0.0.0.0",
                f"--secure-port={API_PORT}",
                "--etcd-servers=http://127.0.0.1:2379",
                f"--service-cluster-ip-range={s.service_cidr}",
                f"--client-ca-file={ca}", f"--tls-cert-file={crt}", f"--tls-private-key-file={key}",
                f"--kubelet-client-certificate={kc}", f"--kubelet-client-key={kk}",
                f"--kubelet-certificate-authority={ca}",
                "--kubelet-preferred-address-types=InternalIP",
                f"--service-account-key-file={sa_pub}",
                f"--service-account-signing-key-file={sa_key}",
                "--service-account-issuer=https://kubernetes.default.svc.cluster.local",
                "--authorization-mode=Node,RBAC", "--enable-admission-plugins=NodeRestriction",
                "--allow-privileged=true",
                f"--requestheader-client-ca-file={p.path('front-proxy-ca')[0]}",
                "--requestheader-allowed-names=front-proxy-client",
                "--requestheader-extra-headers-prefix=X-Remote-Extra-",
                "--requestheader-group-headers=X-Remote-Group",
                "--requestheader-username-headers=X-Remote-User",
                f"--proxy-client-cert-file={fpc}", f"--proxy-client-key-file={fpk}",
                "--enable-aggregator-routing=true",
                "--profiling=false", "--v=1",
            ],
            node=None,
        )  # fmt: skip
        wait_for(
            "kube-apiserver /readyz",
            lambda: self.kubectl("get", "--raw", "/readyz", check=False).strip() == "ok",
            180,
            1,
        )

    def start_controllers(self) -> None:
        s, p = self.s, self.pki
        ca, ca_key = p.path("ca")
        kcm = str(self.dir / "kubeconfigs" / "controller-manager.kubeconfig")
        sched = str(self.dir / "kubeconfigs" / "scheduler.kubeconfig")
        self.daemon(
            "kube-controller-manager",
            [
                self.bin("kubernetes", "kube-controller-manager"),
                f"--kubeconfig={kcm}", f"--authentication-kubeconfig={kcm}",
                f"--authorization-kubeconfig={kcm}", "--bind-address=127.0.0.1",
                "--leader-elect=false", "--use-service-account-credentials=true",
                f"--root-ca-file={ca}",
                f"--service-account-private-key-file={p.service_account_key()[1]}",
                f"--cluster-signing-cert-file={ca}", f"--cluster-signing-key-file={ca_key}",
                "--allocate-node-cidrs=true", f"--cluster-cidr={s.pod_cidr}",
                "--node-cidr-mask-size=24", f"--service-cluster-ip-range={s.service_cidr}",
                "--controllers=*,bootstrapsigner,tokencleaner",
                f"--requestheader-client-ca-file={p.path('front-proxy-ca')[0]}",
                "--node-monitor-grace-period=20s", "--v=1",
            ],
            node=None,
        )  # fmt: skip
        self.daemon(
            "kube-scheduler",
            [
                self.bin("kubernetes", "kube-scheduler"),
                f"--kubeconfig={sched}", f"--authentication-kubeconfig={sched}",
                f"--authorization-kubeconfig={sched}",
                "--bind-address=127.0.0.1", "--leader-elect=false", "--v=1",
            ],
            node=None,
        )  # fmt: skip

    def start_containerd(self) -> None:
        for node in self.s.nodes:
            cfg = self.node_dir(node) / "containerd.toml"
            cfg.write_text(manifests.containerd_config(PAUSE_IMAGE))
            self.daemon(f"containerd-{node}", ["containerd", f"--config={cfg}"], node=node)
        for node in self.s.nodes:
            wait_for(
                f"containerd on {node}",
                lambda node=node: self.in_node(
                    node, "ctr", "--timeout", "5s", "version", check=False
                ),
                60,
            )

    def load_images(self, files: list[Path]) -> None:
        """Import OCI archives into every node's containerd (in parallel over the nodes); an
        archive already imported (same name and mtime, recorded per node) is skipped."""

        def load(node: str) -> None:
            marker = self.node_dir(node) / "images-loaded"
            for f in files:
                stamp = f"{f}@{int(f.stat().st_mtime)}"
                done = marker.read_text().split() if marker.exists() else []
                if stamp in done:
                    continue
                self.in_node(node, "ctr", "-n", "k8s.io", "images", "import", str(f), timeout=1800)
                with open(marker, "a") as fh:
                    fh.write(stamp + "\n")

        with ThreadPoolExecutor(len(self.s.nodes)) as pool:
            for result in [pool.submit(load, n) for n in self.s.nodes]:
                result.result()

    def start_kubelets(self) -> None:
        s, p = self.s, self.pki
        ca = str(p.path("ca")[0])
        resolv = self.dir / "resolv.conf"
        # Pods with dnsPolicy Default (CoreDNS itself) get this: no upstream resolver, the
        # cluster has no way out of the machine.
        resolv.write_text("options ndots:1\n")
        for node in s.nodes:
            crt, key = p.path(f"kubelet-serving-{node}")
            cfg = self.node_dir(node) / "kubelet.json"
            write_json(
                cfg,
                manifests.kubelet_config(
                    ca=ca, cert=str(crt), key=str(key), node_ip=s.node_ip(node), dns_ip=s.dns_ip,
                    cgroup_root=f"/{netns.cgroup_base(s.id)}/{node}", resolv=str(resolv),
                ),
            )  # fmt: skip
            self.daemon(
                f"kubelet-{node}",
                [
                    self.bin("kubernetes", "kubelet"), f"--config={cfg}",
                    f"--kubeconfig={self.dir / 'kubeconfigs' / f'kubelet-{node}.kubeconfig'}",
                    f"--hostname-override={node}", f"--node-ip={s.node_ip(node)}",
                    "--node-labels=node.kubernetes.io/x0tta6bl4-cluster=" + s.id, "--v=1",
                ],
                node=node,
            )  # fmt: skip

        def registered() -> bool:
            items = self.kubectl_json("get", "nodes")["items"]
            cidrs = {n["metadata"]["name"]: n["spec"].get("podCIDR") for n in items}
            return all(cidrs.get(n) for n in s.nodes)

        wait_for("every node registered with a pod CIDR", registered, 180, 1)

    def pod_network(self) -> None:
        s = self.s
        items = self.kubectl_json("get", "nodes")["items"]
        cidrs = {n["metadata"]["name"]: n["spec"]["podCIDR"] for n in items}
        for node in s.nodes:
            conf = self.node_dir(node) / "root" / "etc" / "cni" / "net.d" / "10-x0tta6bl4.conflist"
            conf.write_text(json.dumps(manifests.cni_config(cidrs[node]), indent=2))
            for other in s.nodes:
                if other != node:
                    run(
                        [
                            "ip",
                            "-n",
                            s.node_ns(node),
                            "route",
                            "replace",
                            cidrs[other],
                            "via",
                            s.node_ip(other),
                        ]
                    )
            run(["ip", "-n", s.cp_ns, "route", "replace", cidrs[node], "via", s.node_ip(node)])

    def start_proxies(self) -> None:
        s = self.s
        self.kubectl("apply", "-f", "-", input=json.dumps(manifests.kube_router_rbac()))
        proxy_kc = str(self.dir / "kubeconfigs" / "kube-proxy.kubeconfig")
        router_kc = str(self.dir / "kubeconfigs" / "kube-router.kubeconfig")
        for node in [None, *s.nodes]:
            name = node or "control-plane"
            cfg = self.dir / "kube-proxy" / f"{name}.json"
            cfg.parent.mkdir(exist_ok=True)
            write_json(cfg, manifests.kube_proxy_config(proxy_kc, s.pod_cidr, name))
            self.daemon(
                f"kube-proxy-{name}",
                [self.bin("kubernetes", "kube-proxy"), f"--config={cfg}", "--v=1"],
                node=node,
            )
        for node in s.nodes:
            self.daemon(
                f"kube-router-{node}",
                [
                    self.bin("kube-router", "kube-router"), f"--kubeconfig={router_kc}",
                    f"--hostname-override={node}", "--run-firewall=true", "--run-router=false",
                    "--run-service-proxy=false", "--enable-cni=false", "--enable-ipv4=true",
                    "--enable-ipv6=false", "--metrics-port=0", "--health-port=0",
                    f"--service-cluster-ip-range={s.service_cidr}", "--v=1",
                ],
                node=node,
            )  # fmt: skip

    def addons(self) -> None:
        s = self.s
        versions = component_versions()
        self.kubectl(
            "apply", "-f", "-",
            input=json.dumps(manifests.coredns(
                f"registry.k8s.io/coredns/coredns:{versions['COREDNS_VERSION']}", s.dns_ip
            )),
        )  # fmt: skip
        vols = []
        for node in s.nodes:
            for i in range(manifests.VOLUMES_PER_NODE):
                path = self.node_dir(node) / "volumes" / f"pv{i}"
                path.mkdir(parents=True, exist_ok=True)
                vols.append((node, str(path), f"{node}-pv{i}"))
        self.kubectl("apply", "-f", "-", input=json.dumps(manifests.storage(vols)))
        ms_image = (
            f"registry.k8s.io/metrics-server/metrics-server:{versions['METRICS_SERVER_VERSION']}"
        )
        ca_pem = self.pki.path("ca")[0].read_text()
        self.kubectl(
            "apply", "-f", "-", input=json.dumps(manifests.metrics_server(ms_image, ca_pem))
        )
        # The VPA API (CRDs only), so that the guide's VerticalPodAutoscaler is accepted.
        crds = self._bins["vpa-crds"] / "vpa-v1-crd-gen.yaml"
        self.kubectl("apply", "--server-side", "--force-conflicts", "-f", str(crds))

    def wait_ready(self) -> None:
        def nodes_ready() -> bool:
            items = self.kubectl_json("get", "nodes")["items"]
            ready = {
                n["metadata"]["name"]
                for n in items
                if any(
                    c["type"] == "Ready" and c["status"] == "True"
                    for c in n["status"].get("conditions", [])
                )
            }
            return set(self.s.nodes) <= ready

        wait_for("every node Ready", nodes_ready, 240, 1)
        self.kubectl(
            "-n", "kube-system", "rollout", "status", "deployment/coredns", "--timeout=240s"
        )

    def print_summary(self) -> None:
        print(self.describe(), flush=True)

    def describe(self) -> str:
        s = self.s
        lines = [
            f"Cluster {s.id} in {self.dir} "
            f"(Kubernetes {component_versions()['KUBERNETES_VERSION']}, "
            f"up in {s.timings.get('up_seconds', '?')} s)",
            f"  kubeconfig      {self.kubeconfig}    (export KUBECONFIG={self.kubeconfig})",
            f"  API server      {s.server}",
            f"  control plane   netns {s.cp_ns} {s.cp_ip}: etcd, kube-apiserver, "
            "kube-controller-manager, kube-scheduler, kube-proxy",
        ]
        for node in s.nodes:
            lines.append(
                f"  {node:<15} netns {s.node_ns(node)} {s.node_ip(node)}: containerd, kubelet, "
                f"kube-proxy, kube-router; mount ns {self.mntns(node)}"
            )
        lines += [
            f"  networks        nodes {s.prefix}.0.0/24 on bridge {s.bridge}, pods {s.pod_cidr}, "
            f"services {s.service_cidr}, DNS {s.dns_ip}",
            f"  logs            {self.logs}/",
            f"  remove with     scripts/cluster down --dir {self.dir}",
        ]
        return "\n".join(lines)

    # ------------------------------------------------------------------ down

    def down(self) -> list[str]:
        """Remove everything ``up`` made; returns what could not be removed (empty = clean)."""
        if self.state is None:
            log(f"no cluster in {self.dir}")
            return []
        s = self.s
        problems: list[str] = []
        with step("Stopping every process of the cluster (daemons, shims, containers)"):
            left = netns.kill_cgroup_processes(s.id)
            for pid_file in self.pids.glob("*.pid") if self.pids.exists() else []:
                if netns.alive(pid_file):
                    with contextlib.suppress(OSError):
                        os.kill(int(pid_file.read_text()), 9)
                pid_file.unlink()
            if left:
                problems.append(f"{left} processes survived SIGKILL")
        with step("Removing mount namespaces"):
            base = netns.NS_RUN / s.id
            for node in s.nodes:
                mnt = self.mntns(node)
                run(["umount", str(mnt)], check=False)
                mnt.unlink(missing_ok=True)
            run(["umount", str(base)], check=False)
            if base.exists():
                shutil.rmtree(base, ignore_errors=True)
            with contextlib.suppress(OSError):
                netns.NS_RUN.rmdir()
        with step("Removing network namespaces and the bridge"):
            # The host ends of the veth pairs are deleted explicitly (that removes both ends):
            # deleting a netns only queues its teardown in the kernel, and its veth peers
            # linger on the host until that work runs, which "Checking nothing is left" saw.
            for host_if in self._host_links():
                run(["ip", "link", "delete", host_if], check=False)
            existing = set(run(["ip", "netns", "list"]).stdout.split())
            for ns in [s.cp_ns, *[s.node_ns(n) for n in s.nodes]]:
                if ns in existing:
                    run(["ip", "netns", "delete", ns], check=False)
            if Path(f"/sys/class/net/{s.bridge}").exists():
                run(["ip", "link", "delete", s.bridge], check=False)
            # Whatever the kernel still tears down asynchronously gets a bounded wait.
            deadline = time.monotonic() + 30
            while self._host_links() and time.monotonic() < deadline:
                time.sleep(0.2)
        with step("Removing cgroups"):
            problems += netns.remove_cgroups(s.id)
        others = [p.name for p in netns.NS_RUN.iterdir()] if netns.NS_RUN.exists() else []
        with step(
            "Removing mount points made on the host"
            + (" (kept: other clusters run)" if others else "")
        ):
            for path in reversed(s.made_mountpoints if not others else []):
                try:
                    Path(path).rmdir()
                except OSError as exc:
                    problems.append(f"{path}: {exc.strerror}")
        with step("Checking nothing is left"):
            problems += self.leftovers()
        for node in s.nodes:
            shutil.rmtree(self.node_dir(node) / "root", ignore_errors=True)
        self.state_file.rename(self.dir / "cluster.json.down")
        return problems

    def _host_links(self) -> list[str]:
        """The host's network interfaces named after this cluster (veth ends, the bridge)."""
        prefix = f"x0{self.s.id}"
        net = Path("/sys/class/net")
        return sorted(p.name for p in net.iterdir() if p.name.startswith(prefix))

    def leftovers(self) -> list[str]:
        s = self.s
        found = []
        ns = set(run(["ip", "netns", "list"]).stdout.split())
        found += [f"netns {n}" for n in ns if n.startswith(f"x0{s.id}")]
        links = run(["ip", "-o", "link"]).stdout
        found += [
            f"link {ln.split(':')[1].strip()}" for ln in links.splitlines() if f"x0{s.id}" in ln
        ]
        mounts = Path("/proc/self/mounts").read_text()
        found += [
            f"mount {ln.split()[1]}"
            for ln in mounts.splitlines()
            if str(self.dir) in ln or f"/{s.id}/" in ln
        ]
        found += [f"process {p}" for p in netns.cgroup_pids(s.id)]
        found += [f"cgroup {d}" for d in netns._cgroup_dirs(s.id)]
        return found


def kubeconfig(server: str, ca: str, crt: str, key: str, user: str) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [
            {"name": "x0tta6bl4", "cluster": {"server": server, "certificate-authority": ca}}
        ],
        "users": [{"name": user, "user": {"client-certificate": crt, "client-key": key}}],
        "contexts": [{"name": "x0tta6bl4", "context": {"cluster": "x0tta6bl4", "user": user}}],
        "current-context": "x0tta6bl4",
    }


def component_versions() -> dict[str, str]:
    out = {}
    for line in (REPO_ROOT / "scripts" / "components" / "versions.env").read_text().splitlines():
        if "=" in line and not line.startswith("#"):
            k, v = line.split("=", 1)
            out[k.strip()] = v.strip()
    return out


def image_file(ref: str, args: list[str]) -> Path:
    """Where the image REF that ``build-image --binary REF … ARGS`` makes is cached machine-wide:
    named after REF and a digest of ARGS and of the size and mtime of every ``--add`` source, so
    a component built anew (a new cache key, a rebuild) never ships in the old build's image."""
    h = hashlib.sha256("\0".join(args).encode())
    for flag, value in itertools.pairwise(args):
        if flag == "--add":
            st = Path(value.rpartition(":")[0]).stat()
            h.update(f"\0{st.st_size}:{st.st_mtime_ns}".encode())
    name = ref.replace("/", "_").replace(":", "_")
    return CACHE / "images" / f"{name}-{h.hexdigest()[:12]}.tar"


def source_digest() -> str:
    """A digest of what the x0tta6bl4 image is built from: pyproject.toml, README.md, src/ and
    scripts/build-image (12 hex digits)."""
    h = hashlib.sha256()
    paths = [REPO_ROOT / "pyproject.toml", REPO_ROOT / "README.md", BUILD_IMAGE]
    paths += sorted(
        p for p in (REPO_ROOT / "src").rglob("*") if p.is_file() and "__pycache__" not in p.parts
    )
    for p in paths:
        h.update(str(p.relative_to(REPO_ROOT)).encode() + b"\0" + p.read_bytes() + b"\0")
    return h.hexdigest()[:12]


def kubectl_binary() -> str:
    for cand in (REPO_ROOT / ".tools" / "bin" / "kubectl", shutil.which("kubectl")):
        if cand and Path(cand).exists():
            return str(cand)
    raise ClusterError("kubectl missing: run scripts/install-tools.sh (make tools)")
