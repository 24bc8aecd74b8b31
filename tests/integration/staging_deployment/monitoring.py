"""ServiceMonitor, PrometheusRule and dashboards: they name only metrics the code exports."""

from __future__ import annotations

import json
import re

import yaml

from tests.integration.chart_helpers import (
    by_kind_name,
    container,
    render,
)
from tests.integration.staging_deployment.common import (
    EXPORTED_METRICS,
    NS,
    STAGING,
    Index,
)


def test_prometheus_tier_from_values(staging: Index) -> None:
    dep = staging["Deployment", "prometheus"]
    assert dep["metadata"]["namespace"] == "monitoring"
    assert dep["spec"]["replicas"] == 2
    assert "--storage.tsdb.retention.time=15d" in container(dep, "prometheus")["args"]
    svc = staging["Service", "prometheus"]
    assert svc["metadata"]["namespace"] == "monitoring"
    assert svc["spec"]["ports"][0]["port"] == 9090
    cfg = yaml.safe_load(staging["ConfigMap", "prometheus-config"]["data"]["prometheus.yml"])
    assert cfg["global"]["scrape_interval"] == "15s"
    jobs = {j["job_name"]: j for j in cfg["scrape_configs"]}
    assert set(jobs) == {"x0tta6bl4-controller", "x0tta6bl4-mesh"}
    for name, job in jobs.items():
        assert job["kubernetes_sd_configs"][0]["namespaces"]["names"] == [NS]
        assert job["relabel_configs"][0]["regex"] == name
    role = staging["Role", "x0tta6bl4-prometheus"]
    assert role["metadata"]["namespace"] == NS
    binding = staging["RoleBinding", "x0tta6bl4-prometheus"]
    assert binding["subjects"] == [
        {"kind": "ServiceAccount", "name": "prometheus", "namespace": "monitoring"}
    ]
    other = by_kind_name(
        render(
            STAGING,
            {"monitoring.namespace": "observability", "monitoring.prometheus.retention": "30d"},
            namespace=NS,
        )
    )
    assert other["Service", "prometheus"]["metadata"]["namespace"] == "observability"
    assert (
        "--storage.tsdb.retention.time=30d"
        in container(other["Deployment", "prometheus"], "prometheus")["args"]
    )


_METRIC = re.compile(r"\bx0tta6bl4_[a-z0-9_]+")


def _metric_names(expr: str) -> set[str]:
    """Metric families an expression reads (histogram series mapped to their family)."""
    names = set()
    for m in _METRIC.findall(expr):
        family = re.sub(r"_(bucket|sum|count)$", "", m)
        names.add(m if m in EXPORTED_METRICS or family not in EXPORTED_METRICS else family)
    return names


def test_alert_rules_use_only_exported_metrics(staging: Index, production: Index) -> None:
    rules = yaml.safe_load(
        staging["ConfigMap", "prometheus-config"]["data"]["x0tta6bl4-rules.yml"]
    )["groups"]
    assert rules == production["PrometheusRule", "x0tta6bl4"]["spec"]["groups"]
    used: set[str] = set()
    for group in rules:
        for rule in group["rules"]:
            used |= _metric_names(rule["expr"])
    assert used <= EXPORTED_METRICS
    assert used == EXPORTED_METRICS  # every exported metric is watched by some alert


def test_grafana_dashboard(staging: Index) -> None:
    cm = staging["ConfigMap", "x0tta6bl4-grafana-dashboard"]
    assert cm["metadata"]["namespace"] == "monitoring"
    assert cm["metadata"]["labels"]["grafana_dashboard"] == "1"
    dash = json.loads(cm["data"]["x0tta6bl4.json"])
    assert dash["uid"] == "x0tta6bl4-mesh"
    assert len(dash["panels"]) >= 8
    used: set[str] = set()
    for panel in dash["panels"]:
        for target in panel["targets"]:
            used |= _metric_names(target["expr"])
    assert used == EXPORTED_METRICS


def test_operator_mode_service_monitors_select_the_services(production: Index) -> None:
    for name, svc in [
        ("x0tta6bl4-controller", "x0tta6bl4-api"),
        ("x0tta6bl4-mesh-node", "x0tta6bl4-mesh"),
    ]:
        sm = production["ServiceMonitor", name]
        labels = production["Service", svc]["metadata"]["labels"]
        assert sm["spec"]["selector"]["matchLabels"].items() <= labels.items()
        ports = {p["name"] for p in production["Service", svc]["spec"]["ports"]}
        assert sm["spec"]["endpoints"][0]["port"] in ports
    assert ("Deployment", "prometheus") not in production
