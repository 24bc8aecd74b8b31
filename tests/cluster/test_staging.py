"""The guide's Manual Validation Steps and Production Checklist, checked for real on the cluster
after ``scripts/cluster staging`` (SPIRE release, mesh CA Secret, ``helm install -f
values-staging.yaml`` as written, ``x0tta6bl4 check --post`` passed).

Order matters where a test disturbs the release (deletions, drain, upgrade, broken states):
those run last and each restores what it broke. Measured figures (pod start, probe, mesh RTT)
are recorded in the ``measurements`` fixture and printed at the end of the run.
"""

from __future__ import annotations

import json
import re
import statistics
import threading
import time
import urllib.request
from typing import Any

import pytest

from tests.cluster.kube import NAMESPACE, REPO_ROOT, RealCluster, parse_time, wait_until

pytestmark = pytest.mark.timeout(3600)

VALUES = REPO_ROOT / "charts" / "x0tta6bl4" / "values-staging.yaml"
X0 = str(REPO_ROOT / ".venv" / "bin" / "x0tta6bl4")
# The mesh nodes authenticate to the controller with JWT-SVIDs from the SPIFFE Workload API:
# scripts/cluster staging installs SPIRE first (charts/x0tta6bl4-spire, its images built from the
# component cache; tests/cluster/test_spire.py), so every test here runs on the formed mesh.
APPS = ("x0tta6bl4-controller", "x0tta6bl4-etcd", "x0tta6bl4-mesh")

# The guide's Performance Targets (Staging).
POD_STARTUP_TARGET_S = 30.0
HEALTH_PROBE_TARGET_S = 5.0
NETWORK_LATENCY_TARGET_MS = 10.0


def ready(pod: dict[str, Any]) -> bool:
    return pod["status"].get("phase") == "Running" and any(
        c["type"] == "Ready" and c["status"] == "True" for c in pod["status"].get("conditions", [])
    )


def mesh_pods(k: RealCluster) -> list[dict[str, Any]]:
    return k.pods("app=x0tta6bl4-mesh")


def node_status(k: RealCluster, pod: str) -> dict[str, Any]:
    out = k.exec_in(
        pod,
        "python3",
        "-c",
        (
            "import urllib.request as u\n"
            "print(u.urlopen('http://127.0.0.1:7811/v1/status', timeout=5).read().decode())\n"
        ),
    ).stdout
    data: dict[str, Any] = json.loads(out)
    return data


# A mesh pod's own client of the controller's API, as its node process is one: mutual TLS on
# x0tta6bl4-api:8443 with the pod's X.509-SVID from the CSI-mounted SPIRE agent socket, the
# controller's certificate required to name its SPIFFE ID (X0_CONTROLLER_SPIFFE_ID). Plain HTTP
# (8080) serves only /health, /ready, /metrics and /ui, and the NetworkPolicies admit mesh pods
# to 8443 only. `get(path, timeout)` opens a new connection (through the Service) each call.
TLS_CLIENT = (
    "import asyncio, os, time\n"
    "from spiffe import WorkloadApiClient\n"
    "from x0tta6bl4.tls.client import tls_client\n"
    "from x0tta6bl4.tls.credentials import StaticCredentials, TlsCredentials\n"
    "_w = WorkloadApiClient('unix://' + os.environ['X0_SPIFFE_SOCKET'], default_timeout=20)\n"
    "_ctx = _w.fetch_x509_context()\n"
    "creds = StaticCredentials(TlsCredentials.from_context(_ctx, os.environ['X0_TRUST_DOMAIN']))\n"
    "async def get(path, timeout=5.0):\n"
    "    api, want = 'https://x0tta6bl4-api:8443', os.environ['X0_CONTROLLER_SPIFFE_ID']\n"
    "    async with tls_client(api, creds, want, timeout=timeout) as c:\n"
    "        return (await c.get(path)).status_code\n"
)
# TCP reachability from inside a pod: 'open' (connected), 'blocked' (dropped or rejected).
TCP_PROBE = (
    "import socket\n"
    "def tcp(host, port):\n"
    "    try:\n"
    "        socket.create_connection((host, port), timeout=3).close(); return 'open'\n"
    "    except (TimeoutError, ConnectionRefusedError): return 'blocked'\n"
    "    except Exception as e: return 'error:' + repr(e)\n"
)


def ping(k: RealCluster, pod: str, target: str, count: int = 5) -> dict[str, Any]:
    out = k.exec_in(pod, "x0tta6bl4", "ping", "--json", "-c", str(count), target, check=False)
    data: dict[str, Any] = (
        json.loads(out.stdout) if out.stdout.strip().startswith("{") else {"error": out.stderr}
    )
    return data


def mesh_formed(k: RealCluster) -> dict[tuple[str, str], list[float]] | None:
    """RTTs (ms) of a mesh ping between every ordered pair of mesh pods, or None if any pair
    does not answer (yet)."""
    pods = mesh_pods(k)
    if len(pods) != len(k.nodes) or not all(ready(p) for p in pods):
        return None
    ids = {p["metadata"]["name"]: node_status(k, p["metadata"]["name"])["node_id"] for p in pods}
    rtts: dict[tuple[str, str], list[float]] = {}
    for src, src_id in ids.items():
        for dst, dst_id in ids.items():
            if src == dst:
                continue
            result = ping(k, src, dst_id)
            got = [r["rtt_ms"] for r in result.get("results", []) if r.get("rtt_ms") is not None]
            if not got:
                return None
            rtts[(src_id, dst_id)] = got
    return rtts


def check(k: RealCluster, mode: str, *extra: str) -> tuple[int, dict[str, Any]]:
    proc = k.run(
        [
            X0,
            "check",
            f"--{mode}",
            "--kubeconfig",
            str(k.kubeconfig),
            "--namespace",
            NAMESPACE,
            "--values",
            str(VALUES),
            "-o",
            "json",
            *extra,
        ],
        check=False,
        timeout=900,
    )
    return proc.returncode, json.loads(proc.stdout)


def results(report: dict[str, Any]) -> dict[str, str]:
    return {c["id"]: c["result"] for cat in report["categories"] for c in cat["checks"]}


# --------------------------------------------------------------------------- steady state


def test_all_pods_running_ready_and_start_time_measured(
    staged: RealCluster, measurements: dict[str, Any]
) -> None:
    pods = [p for p in staged.get("pods")["items"] if p["metadata"]["labels"].get("app") in APPS]
    assert {p["metadata"]["labels"]["app"] for p in pods} == set(APPS)
    not_ready = [p["metadata"]["name"] for p in pods if not ready(p)]
    assert not not_ready
    # Pod start -> Ready: from the kubelet's startTime to the Ready condition's transition.
    starts: dict[str, float] = {}
    for p in pods:
        cond = next(c for c in p["status"]["conditions"] if c["type"] == "Ready")
        starts[p["metadata"]["name"]] = parse_time(cond["lastTransitionTime"]) - parse_time(
            p["status"]["startTime"]
        )
    by_app = {
        app: max(
            v
            for n, v in starts.items()
            if n.startswith(app.replace("x0tta6bl4-mesh", "x0tta6bl4-mesh-node"))
        )
        for app in APPS
    }
    # Recorded against the guide's target, not asserted (the project's rule: no timed
    # assertions in tests; a loaded 2-core machine is not a staging cluster).
    measurements["pod_start_to_ready_seconds_max"] = by_app
    measurements["pod_start_target_seconds"] = POD_STARTUP_TARGET_S
    measurements["pod_start_within_target"] = max(starts.values()) < POD_STARTUP_TARGET_S


def test_probes_answer_within_the_guides_5_s(
    staged: RealCluster, measurements: dict[str, Any]
) -> None:
    k = staged
    # The kubelet enforces it: every probe of the release has timeoutSeconds <= 5, so a Ready
    # pod answered its probes within 5 s ...
    for kind in (
        "deployment/x0tta6bl4-controller",
        "daemonset/x0tta6bl4-mesh-node",
        "statefulset/x0tta6bl4-etcd",
    ):
        spec = k.get(kind)["spec"]["template"]["spec"]
        for c in spec["containers"]:
            for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
                if probe in c:
                    assert c[probe].get("timeoutSeconds", 1) <= HEALTH_PROBE_TARGET_S, (kind, probe)
    # ... and measured from outside, through kubectl port-forward to the API Service.
    timings = []
    with k.port_forward("svc/x0tta6bl4-api", 8080) as port:
        for path in ("/health", "/ready") * 5:
            t0 = time.monotonic()
            with urllib.request.urlopen(
                f"http://127.0.0.1:{port}{path}", timeout=HEALTH_PROBE_TARGET_S
            ) as r:
                assert r.status == 200
            timings.append(time.monotonic() - t0)
    measurements["controller_probe_seconds_max"] = round(max(timings), 3)
    assert max(timings) < HEALTH_PROBE_TARGET_S


def test_one_mesh_pod_per_node_and_controllers_spread(staged: RealCluster) -> None:
    k = staged
    ds = k.get("daemonset/x0tta6bl4-mesh-node")["status"]
    assert ds["desiredNumberScheduled"] == ds["currentNumberScheduled"] == len(k.nodes)
    assert ds["numberReady"] == len(k.nodes)
    assert sorted(p["spec"]["nodeName"] for p in mesh_pods(k)) == sorted(k.nodes)
    controllers = k.pods("app=x0tta6bl4-controller")
    assert len(controllers) == 3
    assert len({p["spec"]["nodeName"] for p in controllers}) == 3, (
        "the guide's anti-affinity spreads them"
    )


def test_mesh_formed_between_every_pair_within_the_guides_10_ms(
    staged: RealCluster, measurements: dict[str, Any]
) -> None:
    rtts = wait_until(
        "a mesh ping answered between every pair of mesh pods", lambda: mesh_formed(staged), 180, 5
    )
    assert len(rtts) == len(staged.nodes) * (len(staged.nodes) - 1)
    medians = {f"{a}->{b}": round(statistics.median(v), 3) for (a, b), v in rtts.items()}
    measurements["mesh_ping_median_ms"] = medians
    assert max(medians.values()) < NETWORK_LATENCY_TARGET_MS, medians


def test_prometheus_in_cluster_reports_mesh_nodes_total(staged: RealCluster) -> None:
    k = staged
    with k.port_forward("svc/prometheus", 9090, namespace="monitoring") as port:

        def value() -> float | None:
            url = f"http://127.0.0.1:{port}/api/v1/query?query=x0tta6bl4_mesh_nodes_total"
            with urllib.request.urlopen(url, timeout=10) as r:
                data = json.loads(r.read())
            series = data["data"]["result"]
            return float(series[0]["value"][1]) if series else None

        got = wait_until("Prometheus has scraped x0tta6bl4_mesh_nodes_total", value, 120, 5)
        wait_until(
            f"x0tta6bl4_mesh_nodes_total == {len(k.nodes)}", lambda: value() == len(k.nodes), 120, 5
        )
        del got


def test_api_health_through_port_forward_and_cluster_dns(staged: RealCluster) -> None:
    k = staged
    with (
        k.port_forward("svc/x0tta6bl4-api", 8080) as port,
        urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=5) as r,
    ):
        assert r.status == 200
    # The guide's `curl …x0tta6bl4-api…/health` from a pod, by cluster DNS: from a mesh pod,
    # which the NetworkPolicies admit to the API's TLS port only, as its node process reaches it
    # (mutual TLS with the pod's SPIRE-issued X.509-SVID, the controller's SPIFFE ID verified).
    pod = mesh_pods(k)[0]["metadata"]["name"]
    script = TLS_CLIENT + "print(asyncio.run(get('/health')))\n"
    out = k.exec_in(pod, "python3", "-c", script, timeout=60).stdout.strip()
    assert out == "200"


def test_each_component_has_its_own_service_account_and_no_403(staged: RealCluster) -> None:
    k = staged
    pods = k.get("pods")["items"]
    sa = {p["metadata"]["labels"].get("app"): p["spec"].get("serviceAccountName") for p in pods}
    assert sa["x0tta6bl4-controller"] == "x0tta6bl4-app"
    assert sa["x0tta6bl4-mesh"] == "x0tta6bl4-app"
    etcd = k.get("statefulset/x0tta6bl4-etcd")["spec"]["template"]["spec"]
    assert etcd.get("automountServiceAccountToken") is False
    for p in pods:
        for c in p["spec"]["containers"]:
            logs = k.kubectl(
                "logs", "-n", NAMESPACE, p["metadata"]["name"], "-c", c["name"], check=False
            ).stdout
            assert not re.search(FORBIDDEN, logs), (
                p["metadata"]["name"],
                logs[-2000:],
            )


# A 403 as the API server (\"forbidden\"), uvicorn's access log ('"GET /x HTTP/1.1" 403') or a
# JSON log ("status": 403) writes it; not any "403" inside a number.
FORBIDDEN = re.compile(r'(?i)\bforbidden\b|" 403\b|"(status|status_code|code)":\s*403\b')


def _documented_can_i() -> list[tuple[str, str, str, str]]:
    """([namespace/]service account, verb, resource, expected yes/no) rows of the table in
    docs/deployment.md (the checks run in the release namespace)."""
    text = (REPO_ROOT / "docs" / "deployment.md").read_text()
    section = text.split("### What each ServiceAccount may do", 1)[1].split("\n## ", 1)[0]
    rows = []
    for line in section.splitlines():
        cells = [c.strip().strip("`") for c in line.strip().strip("|").split("|")]
        if len(cells) == 4 and cells[3] in ("yes", "no"):
            rows.append((cells[0], cells[1], cells[2], cells[3]))
    return rows


def test_auth_can_i_matrix_equals_the_docs(staged: RealCluster) -> None:
    rows = _documented_can_i()
    assert len(rows) >= 10
    for who, verb, resource, expected in rows:
        sa_ns, _, sa = who.rpartition("/")
        # `services/proxy` in the table is the subresource (can-i reads TYPE/NAME otherwise).
        kind, _, sub = resource.partition("/")
        extra = [f"--subresource={sub}"] if sub else []
        got = staged.kubectl(
            "auth", "can-i", verb, kind, *extra,
            f"--as=system:serviceaccount:{sa_ns or NAMESPACE}:{sa}", "-n", NAMESPACE, check=False,
        ).stdout.strip()  # fmt: skip
        assert got == expected, (sa, verb, resource)


def test_pod_security_restricted_enforced_and_admits_the_chart(staged: RealCluster) -> None:
    k = staged
    ns = k.get("namespace", NAMESPACE, namespace=None)
    assert ns["metadata"]["labels"]["pod-security.kubernetes.io/enforce"] == "restricted"
    events = k.get("events")["items"]
    assert not [e for e in events if "violates PodSecurity" in e.get("message", "")]
    bad = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "privileged-probe", "namespace": NAMESPACE},
        "spec": {
            "containers": [
                {
                    "name": "c",
                    "image": "x0tta6bl4/mesh:v1.0.0",
                    "securityContext": {"privileged": True},
                }
            ]
        },
    }
    proc = k.kubectl("apply", "--dry-run=server", "-f", "-", input=json.dumps(bad), check=False)
    assert proc.returncode != 0
    assert 'violates PodSecurity "restricted:latest"' in proc.stderr


def test_the_guides_quota_admits_the_release(staged: RealCluster) -> None:
    q = staged.get("resourcequota/x0tta6bl4-quota")
    hard, used = q["status"]["hard"], q["status"]["used"]
    assert hard["pods"] == "500"
    assert hard["requests.cpu"] == "50"
    assert int(used["pods"]) >= 3 + 3 + len(staged.nodes)
    events = staged.get("events")["items"]
    assert not [e for e in events if "exceeded quota" in e.get("message", "")]


def test_hpa_active_and_vpa_accepted(staged: RealCluster) -> None:
    k = staged

    def active() -> dict[str, Any] | None:
        hpa: dict[str, Any] = k.get("hpa/x0tta6bl4-controller-hpa")
        conds = {c["type"]: c["status"] for c in hpa.get("status", {}).get("conditions", [])}
        return hpa if conds.get("ScalingActive") == "True" else None

    hpa = wait_until("the HPA reads CPU and memory from the Metrics API", active, 180, 5)
    assert hpa["spec"]["minReplicas"] == 3
    metrics = {m["resource"]["name"] for m in hpa["status"]["currentMetrics"]}
    assert metrics == {"cpu", "memory"}
    vpa = {
        "apiVersion": "autoscaling.k8s.io/v1",
        "kind": "VerticalPodAutoscaler",
        "metadata": {"name": "x0tta6bl4-vpa", "namespace": NAMESPACE},
        "spec": {
            "targetRef": {
                "apiVersion": "apps/v1",
                "kind": "Deployment",
                "name": "x0tta6bl4-controller",
            },
            "updatePolicy": {"updateMode": "Off"},
        },
    }
    proc = k.kubectl("apply", "--dry-run=server", "-f", "-", input=json.dumps(vpa))
    assert "created (server dry run)" in proc.stdout


def test_network_policies_cut_off_a_pod_without_mesh_labels(staged: RealCluster) -> None:
    k = staged
    name = "x0-stranger"
    pod = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "namespace": NAMESPACE, "labels": {"app": "stranger"}},
        "spec": {
            "restartPolicy": "Never",
            "terminationGracePeriodSeconds": 1,
            "securityContext": {
                "runAsNonRoot": True,
                "runAsUser": 65532,
                "seccompProfile": {"type": "RuntimeDefault"},
            },
            "containers": [
                {
                    "name": "main",
                    "image": "x0tta6bl4/mesh:v1.0.0",
                    "command": ["python3", "-c", "import time; time.sleep(600)"],
                    "securityContext": {
                        "allowPrivilegeEscalation": False,
                        "capabilities": {"drop": ["ALL"]},
                        "readOnlyRootFilesystem": True,
                    },
                    "resources": {
                        "requests": {"cpu": "10m", "memory": "32Mi"},
                        "limits": {"cpu": "100m", "memory": "128Mi"},
                    },
                }
            ],
        },
    }
    k.apply(pod)
    try:
        wait_until("stranger running", lambda: ready(k.get(f"pod/{name}")), 120)
        target = mesh_pods(k)[0]
        mesh_ip = target["status"]["podIP"]
        probe = TCP_PROBE + (
            f"print(tcp('x0tta6bl4-api', 8443), tcp('{mesh_ip}', 7811),"
            " tcp('x0tta6bl4-api', 8080))\n"
        )
        # From the stranger: the API (TLS and plain) and the mesh port dropped or rejected ...
        out = k.exec_in(name, "python3", "-c", probe, timeout=60).stdout.split()
        assert out == ["blocked", "blocked", "blocked"], out
        # ... while a mesh pod, which they admit to the API's TLS port and the mesh ports, gets
        # through to both (the servers are up), and not to the plain-HTTP port.
        other = next(p for p in mesh_pods(k) if p["metadata"]["name"] != target["metadata"]["name"])
        out = k.exec_in(
            other["metadata"]["name"], "python3", "-c", probe, timeout=60
        ).stdout.split()
        assert out == ["open", "open", "blocked"], out
        # The mesh itself still works under the same policies.
        assert wait_until("mesh still formed", lambda: mesh_formed(k), 120, 5)
    finally:
        k.kubectl("delete", "pod", "-n", NAMESPACE, name, "--wait=false")


def test_check_pre_post_connectivity_pass_against_the_real_cluster(staged: RealCluster) -> None:
    for mode in ("pre", "post", "connectivity"):
        code, report = check(staged, mode, "--wait", "120")
        failures = {k: v for k, v in results(report).items() if v == "error"}
        assert not failures, (mode, failures, report)
        assert code == 0, (mode, report)
    # From outside the cluster the nodes' /v1/ping is reached by pods/portforward (it arrives
    # on the node's loopback): mesh-ping runs for real, it is not skipped.
    assert results(report)["mesh-ping"] == "success", report


def test_helm_test_passes(staged: RealCluster) -> None:
    # --logs: the check pod's report is in the failure message when it fails.
    out = staged.helm(
        "test", "x0tta6bl4", "-n", NAMESPACE, "--timeout", "10m", "--logs", check=False
    )
    assert out.returncode == 0, out.stdout[-6000:] + out.stderr[-2000:]
    assert "Phase:          Succeeded" in out.stdout or "Succeeded" in out.stdout, out.stdout


# --------------------------------------------------------------------------- disruptions


def test_deleting_a_mesh_pod_recreates_it_and_the_mesh_heals(staged: RealCluster) -> None:
    k = staged
    victim = mesh_pods(k)[0]
    k.kubectl("delete", "pod", "-n", NAMESPACE, victim["metadata"]["name"], "--wait=true")

    def replaced() -> bool:
        pods = mesh_pods(k)
        return (
            len(pods) == len(k.nodes)
            and victim["metadata"]["uid"] not in {p["metadata"]["uid"] for p in pods}
            and all(ready(p) for p in pods)
        )

    wait_until("the DaemonSet recreated the mesh pod", replaced, 180, 2)
    assert wait_until("the mesh healed (every pair answers)", lambda: mesh_formed(k), 180, 5)


def test_deleting_a_controller_pod_keeps_the_api_answering(staged: RealCluster) -> None:
    k = staged
    client = mesh_pods(k)[0]["metadata"]["name"]
    # From a mesh pod, through the Service, over the API's TLS port as the nodes use it: a new
    # connection 4 times a second for 40 s.
    loop = TLS_CLIENT + (
        "async def main():\n"
        "    ok = bad = 0\n"
        "    end = time.time() + 40\n"
        "    while time.time() < end:\n"
        "        try:\n"
        "            if await get('/health', 2.0) == 200: ok += 1\n"
        "            else: bad += 1\n"
        "        except Exception: bad += 1\n"
        "        await asyncio.sleep(0.25)\n"
        "    print(ok, bad)\n"
        "asyncio.run(main())\n"
    )
    result: dict[str, str] = {}
    t = threading.Thread(
        target=lambda: result.update(
            out=k.exec_in(client, "python3", "-c", loop, timeout=120).stdout
        )
    )
    t.start()
    time.sleep(5)
    victim = k.pods("app=x0tta6bl4-controller")[0]["metadata"]["name"]
    k.kubectl("delete", "pod", "-n", NAMESPACE, victim)
    t.join()
    ok, bad = (int(x) for x in result["out"].split())
    assert bad == 0, (ok, bad)
    assert ok > 50, (ok, bad)
    k.kubectl(
        "rollout", "status", "-n", NAMESPACE, "deployment/x0tta6bl4-controller", "--timeout=300s"
    )


def test_draining_a_node_respects_the_pdb(staged: RealCluster) -> None:
    k = staged
    # Staging runs ONE SPIRE server whose volume is local to its node (docs/deployment.md,
    # "SPIRE's size on one machine"). Draining that node stops SPIRE until it is uncordoned: the
    # controller evicted by the drain comes back without an SVID, never Ready, the PDB then
    # refuses the next eviction and the drain times out (seen in CI). That is the single
    # server's documented limit, not the PDB's behaviour under test: drain a node without it.
    spire_node = k.get("pod/spire-server-0", namespace="spire")["spec"]["nodeName"]
    controllers = k.pods("app=x0tta6bl4-controller")
    away = [p for p in controllers if p["spec"]["nodeName"] != spire_node]
    assert away, f"every controller runs on the SPIRE server's node {spire_node}"
    second = away[0]
    first = next(p for p in controllers if p is not second)

    def evict(pod: dict[str, Any]) -> Any:
        body = {
            "apiVersion": "policy/v1",
            "kind": "Eviction",
            "metadata": {"name": pod["metadata"]["name"], "namespace": NAMESPACE},
        }
        return k.kubectl(
            "create",
            "--raw",
            f"/api/v1/namespaces/{NAMESPACE}/pods/{pod['metadata']['name']}/eviction",
            "-f",
            "-",
            input=json.dumps(body),
            check=False,
        )

    assert evict(first).returncode == 0
    refused = evict(second)  # maxUnavailable 1: the second eviction must wait
    assert refused.returncode != 0
    assert "disruption budget" in refused.stderr, refused.stderr
    k.kubectl(
        "rollout", "status", "-n", NAMESPACE, "deployment/x0tta6bl4-controller", "--timeout=300s"
    )
    node = second["spec"]["nodeName"]
    try:
        drain = k.kubectl(
            "drain",
            node,
            "--ignore-daemonsets",
            "--delete-emptydir-data",
            "--timeout=600s",
            timeout=700,
        )
        assert "drained" in drain.stdout
        pdb = k.get("pdb/x0tta6bl4-controller")
        assert pdb["status"]["currentHealthy"] >= pdb["status"]["desiredHealthy"]
    finally:
        k.kubectl("uncordon", node)
    k.kubectl(
        "rollout", "status", "-n", NAMESPACE, "deployment/x0tta6bl4-controller", "--timeout=300s"
    )
    k.kubectl("rollout", "status", "-n", NAMESPACE, "statefulset/x0tta6bl4-etcd", "--timeout=300s")


def test_helm_upgrade_keeps_the_mesh_up_and_rollback_works(staged: RealCluster) -> None:
    k = staged
    chart = str(REPO_ROOT / "charts" / "x0tta6bl4")
    history = json.loads(k.helm("history", "x0tta6bl4", "-n", NAMESPACE, "-o", "json").stdout)
    before = history[-1]["revision"]
    wait = ["--wait", "--timeout", "10m"]
    k.helm("upgrade", "x0tta6bl4", chart, "-n", NAMESPACE, "--reuse-values",
           "--set", "x0tta6bl4.logging.level=debug", *wait)  # fmt: skip

    def level() -> str:
        ds = k.get("daemonset/x0tta6bl4-mesh-node")
        env = ds["spec"]["template"]["spec"]["containers"][0]["env"]
        return str(next(e["value"] for e in env if e["name"] == "X0_LOG_LEVEL"))

    def settled(app: str) -> None:
        k.kubectl("rollout", "status", "-n", NAMESPACE, app, "--timeout=600s", timeout=700)
        k.kubectl("rollout", "status", "-n", NAMESPACE, "daemonset/x0tta6bl4-mesh-node",
                  "--timeout=600s", timeout=700)  # fmt: skip
        assert wait_until("mesh formed", lambda: mesh_formed(k), 240, 5)

    assert level() == "debug"
    settled("deployment/x0tta6bl4-controller")
    k.helm("rollback", "x0tta6bl4", str(before), "-n", NAMESPACE, *wait)
    assert level() == "info"
    settled("deployment/x0tta6bl4-controller")
    history = json.loads(k.helm("history", "x0tta6bl4", "-n", NAMESPACE, "-o", "json").stdout)
    assert history[-1]["revision"] == before + 2
    assert history[-1]["status"] == "deployed"


def test_check_reports_a_blocked_mesh_pod(staged: RealCluster) -> None:
    """A node's mesh pod deleted and blocked from coming back (its node loses the image, and
    there is no registry to pull from): --post and --connectivity fail, naming that node."""
    k = staged
    victim = mesh_pods(k)[-1]
    node = victim["spec"]["nodeName"]
    image = "docker.io/x0tta6bl4/mesh:v1.0.0"
    archive = k.dir / "images" / "x0tta6bl4-mesh.tar"
    k.node_run(node, "ctr", "-n", "k8s.io", "images", "remove", image)
    k.kubectl("delete", "pod", "-n", NAMESPACE, victim["metadata"]["name"])
    try:
        code, report = check(k, "post")
        assert code == 1
        found = {c["id"]: c for cat in report["categories"] for c in cat["checks"]}
        assert found["mesh-coverage"]["result"] == "error"
        assert node in found["mesh-coverage"]["error"]
        assert found["mesh-coverage"]["hint"].endswith("#mesh-coverage")
        code, report = check(k, "connectivity")
        assert code == 1
    finally:
        k.node_run(node, "ctr", "-n", "k8s.io", "images", "import", str(archive))
    k.kubectl(
        "rollout", "status", "-n", NAMESPACE, "daemonset/x0tta6bl4-mesh-node", "--timeout=600s"
    )


def test_check_reports_the_missing_ca_secret(staged: RealCluster) -> None:
    k = staged
    ca_dir = k.dir / "mesh-ca"
    k.kubectl("delete", "secret", "-n", NAMESPACE, "x0tta6bl4-mesh-ca")
    try:
        k.kubectl("rollout", "restart", "-n", NAMESPACE, "deployment/x0tta6bl4-controller")

        def creating() -> bool:  # the new pod is scheduled and stuck mounting the Secret
            return any(
                (s.get("state", {}).get("waiting") or {}).get("reason") == "ContainerCreating"
                for p in k.pods("app=x0tta6bl4-controller")
                for s in p["status"].get("containerStatuses", [])
            )

        wait_until("a restarted controller pod in ContainerCreating", creating, 120)
        code, report = check(k, "post")
        assert code == 1
        found = {c["id"]: c for cat in report["categories"] for c in cat["checks"]}
        assert found["controller-rollout"]["result"] == "error"
        assert "ContainerCreating" in found["controller-rollout"]["error"], found
        # The cause is where docs/deployment.md's troubleshooting row says: the pod's events.
        events = k.get("events")["items"]
        assert any(
            e["reason"] == "FailedMount" and 'secret "x0tta6bl4-mesh-ca" not found' in e["message"]
            for e in events
        )
    finally:
        k.kubectl(
            "create",
            "secret",
            "generic",
            "x0tta6bl4-mesh-ca",
            "-n",
            NAMESPACE,
            f"--from-file=ca.crt={ca_dir / 'ca.crt'}",
            f"--from-file=ca.key={ca_dir / 'ca.key'}",
        )
    k.kubectl(
        "rollout", "status", "-n", NAMESPACE, "deployment/x0tta6bl4-controller", "--timeout=600s"
    )
    code, report = check(k, "post", "--wait", "300")
    assert results(report)["controller-rollout"] == "success", report
    assert code == 0, report
