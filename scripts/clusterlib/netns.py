"""Network namespaces, mount namespaces, cgroups and daemons of scripts/cluster.

Layout of a cluster with id ID and prefix P (10.x, chosen free on this host):

- host: bridge ``x0<ID>`` with P.0.1/24 (so kubectl on the host reaches the API server); no
  route, rule or sysctl of the host changes, and the host does not forward (ip_forward stays
  as it is), so nothing in the cluster reaches outside this machine;
- network namespace ``x0<ID>-cp``: the control plane at P.0.2 (etcd, kube-apiserver,
  kube-controller-manager, kube-scheduler, and a kube-proxy so that webhooks' Service IPs
  resolve from the API server);
- network namespace ``x0<ID>-wK`` per node at P.0.(10+K): containerd, kubelet, kube-proxy,
  kube-router (NetworkPolicies), pods on the CNI bridge ``cni0`` with the node's pod CIDR;
- a persistent mount namespace per node (``/run/x0tta6bl4-cluster/ID/NODE.mnt``, slave to the
  host) in which the node's own directories are bind-mounted over the paths Kubernetes
  components and DaemonSets use (/var/lib/kubelet, /run/containerd, /run/spire, ...), so the
  nodes share nothing but the kernel, as kind's node containers do;
- cgroups under ``/x0tta6bl4-cluster-ID`` in every hierarchy: each node's kubelet uses
  ``/x0tta6bl4-cluster-ID/NODE`` as its cgroupRoot; daemons are tracked in
  ``pids:/x0tta6bl4-cluster-ID/NODE/daemons``, so ``down`` finds every process, shims and
  containers included.
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
import os
import signal
import subprocess
import time
from collections.abc import Sequence
from pathlib import Path

from clusterlib.util import ClusterError, log, run

__all__ = [
    "CGROUP_FS",
    "NS_RUN",
    "cgroup_base",
    "free_prefix",
    "kill_cgroup_processes",
    "make_cgroups",
    "remove_cgroups",
    "spawn",
]

CGROUP_FS = Path("/sys/fs/cgroup")
NS_RUN = Path("/run/x0tta6bl4-cluster")

# Paths that each node gets its own copy of (bind-mounted in the node's mount namespace).
NODE_PRIVATE_PATHS = (
    "/var/lib/kubelet",
    "/var/lib/containerd",
    "/var/lib/cni",
    "/run/containerd",
    "/run/netns",
    "/run/spire",
    "/var/run/secrets",
    "/var/log/pods",
    "/var/log/containers",
    "/etc/cni/net.d",
)

# kubelet sets these kernel-wide sysctls when they differ ("modify" mode) and fails when it
# cannot. A shared machine's kernel settings are not ours to change: in each node's mount
# namespace a file holding the value kubelet expects covers each of them instead.
KUBELET_SYSCTLS = {
    "/proc/sys/vm/overcommit_memory": "1",
    "/proc/sys/vm/panic_on_oom": "0",
    "/proc/sys/kernel/panic": "10",
    "/proc/sys/kernel/panic_on_oops": "1",
}


def cgroup_base(cid: str) -> str:
    return f"x0tta6bl4-cluster-{cid}"


def hierarchies() -> list[Path]:
    """Every mounted cgroup hierarchy (v1 controllers, name=systemd, the v2 'unified')."""
    out = []
    for line in Path("/proc/self/mounts").read_text().splitlines():
        parts = line.split()
        if parts[2] in ("cgroup", "cgroup2") and parts[1].startswith(str(CGROUP_FS)):
            out.append(Path(parts[1]))
    return out


def make_cgroups(cid: str, nodes: Sequence[str]) -> None:
    for h in hierarchies():
        for rel in [cgroup_base(cid)] + [f"{cgroup_base(cid)}/{n}" for n in nodes]:
            d = h / rel
            d.mkdir(exist_ok=True)
            if (d / "cpuset.cpus").exists():
                for f in ("cpuset.cpus", "cpuset.mems"):
                    if not (d / f).read_text().strip():
                        (d / f).write_text((d.parent / f).read_text())
    for n in nodes:
        (CGROUP_FS / "pids" / cgroup_base(cid) / n / "daemons").mkdir(exist_ok=True)


def _cgroup_dirs(cid: str) -> list[Path]:
    dirs: list[Path] = []
    for h in hierarchies():
        top = h / cgroup_base(cid)
        if top.is_dir():
            dirs += [Path(p) for p, _, _ in os.walk(top)]
    return dirs


def cgroup_pids(cid: str) -> set[int]:
    pids: set[int] = set()
    for d in _cgroup_dirs(cid):
        with contextlib.suppress(OSError):
            pids |= {int(p) for p in (d / "cgroup.procs").read_text().split()}
    return pids


def kill_cgroup_processes(cid: str, grace: float = 10.0) -> int:
    """SIGTERM every process in the cluster's cgroups, then SIGKILL what is left."""
    pids = cgroup_pids(cid)
    for sig, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, 10.0)):
        for p in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(p, sig)
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline:
            pids = cgroup_pids(cid)
            if not pids:
                return 0
            time.sleep(0.2)
    return len(cgroup_pids(cid))


def remove_cgroups(cid: str) -> list[str]:
    """rmdir the cluster's cgroups bottom-up; returns those that could not be removed."""
    left = []
    for d in sorted(_cgroup_dirs(cid), key=lambda p: len(p.parts), reverse=True):
        try:
            d.rmdir()
        except OSError as exc:
            left.append(f"{d}: {exc.strerror}")
    return left


def free_prefix(seed: int) -> str:
    """A 10.X prefix whose /16 overlaps no route or address on this host."""
    routes = json.loads(run(["ip", "-j", "route", "show", "table", "all"]).stdout or "[]")
    addrs = json.loads(run(["ip", "-j", "addr"]).stdout or "[]")
    used = []
    for r in routes:
        dst = r.get("dst", "")
        if dst and dst != "default" and ":" not in dst:
            with contextlib.suppress(ValueError):
                used.append(ipaddress.ip_network(dst if "/" in dst else dst + "/32", strict=False))
    for a in addrs:
        for info in a.get("addr_info", []):
            if info.get("family") == "inet":
                used.append(ipaddress.ip_network(f"{info['local']}/32"))
    for i in range(240):
        x = 16 + (seed + i) % 238
        net = ipaddress.ip_network(f"10.{x}.0.0/16")
        if not any(net.overlaps(u) for u in used):
            return f"10.{x}"
    raise ClusterError("no free 10.X.0.0/16 on this host")


def spawn(
    name: str,
    cmd: Sequence[str],
    *,
    netns: str,
    mntns: Path | None,
    cgroup_procs: Path,
    log_file: Path,
    pid_file: Path,
    env: dict[str, str] | None = None,
) -> int:
    """Start a daemon in a network (and mount) namespace, tracked by a pids cgroup.

    The shell writes its own pid into the cgroup before exec'ing nsenter, so the daemon and
    everything it starts (containerd's shims, the containers) are in the cluster's cgroups
    from their first instruction.
    """
    ns_args = [f"--net=/run/netns/{netns}"]
    if mntns is not None:
        ns_args.append(f"--mount={mntns}")
    full = [
        "/bin/sh",
        "-c",
        'echo $$ > "$0" && exec "$@"',
        str(cgroup_procs),
        "nsenter",
        *ns_args,
        "--",
        *cmd,
    ]
    log_file.parent.mkdir(parents=True, exist_ok=True)
    with open(log_file, "ab") as out:
        out.write(f"--- {time.strftime('%FT%T')} {name}: {' '.join(cmd)}\n".encode())
        out.flush()
        proc = subprocess.Popen(  # noqa: S603 - our own command line
            full,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            env=env,
            cwd="/",
        )
    pid_file.parent.mkdir(parents=True, exist_ok=True)
    pid_file.write_text(f"{proc.pid}\n")
    log(f"   {name}: pid {proc.pid}, log {log_file}")
    return proc.pid


def alive(pid_file: Path) -> bool:
    try:
        pid = int(pid_file.read_text())
        os.kill(pid, 0)
    except (OSError, ValueError):
        return False
    # A zombie is not alive.
    try:
        state = Path(f"/proc/{pid}/stat").read_text().split(") ", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"
