"""``helm lint --strict``, and every object of every variant against the Kubernetes OpenAPI
schemas."""

from __future__ import annotations

import json

import kubernetes_validate
import pytest

from tests.integration.chart_helpers import (
    CHART_DIR,
    helm,
)
from tests.integration.staging_deployment.common import (
    CRD_KINDS,
    NS,
    PRODUCTION,
    STAGING,
    Index,
    Obj,
)


@pytest.mark.parametrize(
    "values", [[], STAGING, PRODUCTION], ids=["default", "staging", "production"]
)
def test_helm_lint_strict(values: list[str]) -> None:
    args = ["lint", "--strict", str(CHART_DIR), "--namespace", NS]
    for v in values:
        args += ["-f", str(CHART_DIR / v)]
    out = helm(*args)
    assert "1 chart(s) linted, 0 chart(s) failed" in out


@pytest.mark.parametrize("k8s", ["1.28", "1.35"])
def test_every_object_validates_against_kubernetes_schema_strict(
    k8s: str, variants: dict[str, list[Obj]]
) -> None:
    checked = 0
    for name, objs in variants.items():
        for obj in objs:
            if obj["kind"] in CRD_KINDS:
                continue
            try:
                kubernetes_validate.validate(obj, k8s, strict=True)
            except kubernetes_validate.ValidationError as e:
                path = ".".join(str(p) for p in e.path)
                pytest.fail(
                    f"{name}: {obj['kind']}/{obj['metadata']['name']} at {path}: {e.message}"
                )
            checked += 1
    assert checked > 100


def test_strict_validation_catches_a_broken_object(staging: Index) -> None:
    # The validator is a real check: an unknown field in a rendered Deployment fails it.
    dep = json.loads(json.dumps(staging["Deployment", "x0tta6bl4-controller"]))
    dep["spec"]["template"]["spec"]["containers"][0]["livenessProbes"] = {}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(dep, "1.35", strict=True)


def _check_crd(obj: Obj) -> None:
    kind, spec = obj["kind"], obj["spec"]
    assert obj["metadata"]["name"]
    if kind == "ServiceMonitor":
        assert obj["apiVersion"] == "monitoring.coreos.com/v1"
        assert spec["selector"]["matchLabels"]
        assert spec["namespaceSelector"]["matchNames"] == [NS]
        for ep in spec["endpoints"]:
            assert ep["port"] == "http"
            assert ep["path"] == "/metrics"
    elif kind == "PrometheusRule":
        assert obj["apiVersion"] == "monitoring.coreos.com/v1"
        for group in spec["groups"]:
            assert group["name"]
            assert group["rules"]
            for rule in group["rules"]:
                assert set(rule) <= {"alert", "expr", "for", "labels", "annotations"}
                assert rule["alert"]
                assert rule["expr"]
                assert rule["labels"]["severity"] in {"warning", "critical"}
    elif kind == "VerticalPodAutoscaler":
        assert obj["apiVersion"] == "autoscaling.k8s.io/v1"
        assert spec["targetRef"] == {
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "name": "x0tta6bl4-controller",
        }
        assert spec["updatePolicy"]["updateMode"] in {
            "Off",
            "Initial",
            "Recreate",
            "InPlaceOrRecreate",
            "Auto",
        }
    elif kind == "ClusterSPIFFEID":
        assert obj["apiVersion"] == "spire.spiffe.io/v1alpha1"
        assert "namespace" not in obj["metadata"]  # cluster-scoped
        assert spec["spiffeIDTemplate"].startswith("spiffe://{{ .TrustDomain }}/")
        assert spec["podSelector"]
    else:  # pragma: no cover - CRD_KINDS is closed
        raise AssertionError(kind)


def test_crd_objects_have_their_required_structure(variants: dict[str, list[Obj]]) -> None:
    seen = set()
    for objs in variants.values():
        for obj in objs:
            if obj["kind"] in CRD_KINDS:
                _check_crd(obj)
                seen.add(obj["kind"])
    assert seen == CRD_KINDS
