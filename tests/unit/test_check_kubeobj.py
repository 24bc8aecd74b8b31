"""Readers of Kubernetes objects: quantities, readiness, DaemonSet placement, SVID rules."""

from __future__ import annotations

import pytest

from x0tta6bl4.check.checks_connectivity import p95
from x0tta6bl4.check.checks_post import metric_value, svid_problem
from x0tta6bl4.check.kubeobj import QuantityError, daemonset_eligible, parse_quantity, pod_problem


def test_quantities() -> None:
    assert parse_quantity("500m") == pytest.approx(0.5)
    assert parse_quantity("1Gi") == 1024**3
    assert parse_quantity("100Gi") == 100 * 1024**3
    assert parse_quantity(50) == 50
    assert parse_quantity("1e3") == 1000
    with pytest.raises(QuantityError):
        parse_quantity("lots")


def node(labels: dict[str, str], taints: list[dict[str, str]] | None = None) -> dict[str, object]:
    return {"metadata": {"name": "n", "labels": labels}, "spec": {"taints": taints or []}}


def test_daemonset_placement() -> None:
    master = [{"key": "node-role.kubernetes.io/control-plane", "effect": "NoSchedule"}]
    assert daemonset_eligible({}, node({}))
    assert not daemonset_eligible({}, node({}, master))
    assert daemonset_eligible({"tolerations": [{"operator": "Exists"}]}, node({}, master))
    # Node-condition taints are tolerated by every DaemonSet pod.
    cordoned = [{"key": "node.kubernetes.io/unschedulable", "effect": "NoSchedule"}]
    assert daemonset_eligible({}, node({}, cordoned))
    assert not daemonset_eligible({"nodeSelector": {"a": "b"}}, node({"a": "c"}))
    required = {
        "affinity": {
            "nodeAffinity": {
                "requiredDuringSchedulingIgnoredDuringExecution": {
                    "nodeSelectorTerms": [
                        {"matchExpressions": [{"key": "zone", "operator": "In", "values": ["z1"]}]}
                    ]
                }
            }
        }
    }
    assert daemonset_eligible(required, node({"zone": "z1"}))
    assert not daemonset_eligible(required, node({"zone": "z2"}))


def test_pod_problem_names_the_container_state() -> None:
    pod = {
        "metadata": {"name": "p"},
        "spec": {"nodeName": "n1"},
        "status": {
            "phase": "Pending",
            "containerStatuses": [{"name": "c", "state": {"waiting": {"reason": "ErrImagePull"}}}],
        },
    }
    assert pod_problem(pod) == "p on n1 (c: ErrImagePull)"


def test_svid_rules() -> None:
    now = 10_000.0
    assert svid_problem("x", None, now + 3000, now) is None
    assert "no SVID" in (svid_problem("x", None, None, now) or "")
    assert "expired" in (svid_problem("x", None, now - 1, now) or "")
    assert "has not been renewed" in (svid_problem("x", None, now + 60, now) or "")
    # Issued 3,000 s ago with a 3,600 s lifetime: past 75 %, renewal overdue.
    assert "overdue" in (svid_problem("x", now - 3000, now + 600, now) or "")
    assert svid_problem("x", now - 1000, now + 2600, now) is None


def test_metric_and_percentile() -> None:
    text = "# TYPE x0tta6bl4_mesh_nodes_total gauge\nx0tta6bl4_mesh_nodes_total 7.0\n"
    assert metric_value(text, "x0tta6bl4_mesh_nodes_total") == 7
    with pytest.raises(KeyError):
        metric_value(text, "missing")
    assert p95([float(i) for i in range(1, 101)]) == 95
    assert p95([3.0]) == 3
