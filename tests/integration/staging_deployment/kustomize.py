"""deploy/kustomize built with kubectl's kustomize, against the chart."""

from __future__ import annotations

import kubernetes_validate
import pytest

from tests.integration.staging_deployment.common import (
    NS,
    Index,
    strip_meta,
)


@pytest.mark.parametrize("k8s", ["1.28", "1.35"])
def test_kustomize_staging_builds_and_validates(k8s: str, kustomized: Index) -> None:
    assert {n for (k, n) in kustomized if k == "Namespace"} == {NS, "monitoring", "spire"}
    for obj in kustomized.values():
        kubernetes_validate.validate(obj, k8s, strict=True)
        if obj["kind"] not in {"Namespace", "ClusterRole", "ClusterRoleBinding"}:
            assert obj["metadata"]["namespace"] == NS


def test_kustomize_objects_equal_the_charts(
    kustomized: Index, staging: Index, guide: Index
) -> None:
    shared = [k for k in kustomized if k[0] != "Namespace"]
    assert len(shared) == 10
    for key in shared:
        ours = strip_meta(kustomized[key])
        assert ours == strip_meta(staging[key]), key
        if key in guide:
            assert ours == strip_meta(guide[key]), key
