"""``x0tta6bl4 check`` against the real cluster when something is broken: each case breaks one
thing for real, asserts the right check fails with its docs/checks.md hint and exit code 1,
and restores it. (These replace the API-server double's cases; the double stays only for what
a real API server cannot be made to show: see tests/integration/test_check_kubernetes.py.)"""

from __future__ import annotations

import json
import threading
import time
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.cluster.kube import NAMESPACE, REPO_ROOT, RealCluster

pytestmark = pytest.mark.timeout(3600)

VALUES = REPO_ROOT / "charts" / "x0tta6bl4" / "values-staging.yaml"
X0 = str(REPO_ROOT / ".venv" / "bin" / "x0tta6bl4")
HINT = "https://github.com/x0tta6bl4/x0tta6bl4/blob/main/docs/checks.md#"


def run_check(
    k: RealCluster, mode: str, *extra: str, kubeconfig: Path | None = None, output: str = "json"
) -> tuple[int, str]:
    proc = k.run(
        [
            X0,
            "check",
            f"--{mode}",
            "--kubeconfig",
            str(kubeconfig or k.kubeconfig),
            "--namespace",
            NAMESPACE,
            "--values",
            str(VALUES),
            "-o",
            output,
            *extra,
        ],
        check=False,
        timeout=900,
    )
    return proc.returncode, proc.stdout


def checks(report: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {c["id"]: c for cat in report["categories"] for c in cat["checks"]}


def assert_fails(code: int, out: str, anchor: str, text: str) -> dict[str, Any]:
    report: dict[str, Any] = json.loads(out)
    assert code == 1, report
    assert report["success"] is False
    found = checks(report)[anchor]
    assert found["result"] == "error", found
    assert text in found["error"], found["error"]
    assert found["hint"] == HINT + anchor
    return report


def kubeconfig_with(
    k: RealCluster, tmp_path: Path, *, server: str | None = None, token: str | None = None
) -> Path:
    cfg = yaml.safe_load(k.kubeconfig.read_text())
    if server:
        cfg["clusters"][0]["cluster"]["server"] = server
    if token is not None:
        cfg["users"][0]["user"] = {"token": token}
    path = tmp_path / "kubeconfig"
    path.write_text(yaml.safe_dump(cfg))
    return path


def test_api_unreachable_is_fatal(staged: RealCluster, tmp_path: Path) -> None:
    cfg = kubeconfig_with(staged, tmp_path, server=f"https://{staged.state['prefix']}.0.2:1")
    code, out = run_check(staged, "post", kubeconfig=cfg)
    report = assert_fails(code, out, "k8s-api", "cannot reach the API server")
    assert report["stopped_by"] == "k8s-api"


def test_wrong_token_is_reported(staged: RealCluster, tmp_path: Path) -> None:
    cfg = kubeconfig_with(staged, tmp_path, token="not-a-valid-token")
    code, out = run_check(staged, "pre", kubeconfig=cfg)
    assert_fails(code, out, "k8s-api", "401")
    assert "not-a-valid-token" not in out


def test_rbac_denied_for_a_service_account_without_rights(
    staged: RealCluster, tmp_path: Path
) -> None:
    k = staged
    k.kubectl("create", "serviceaccount", "x0-nobody", "-n", "default")
    try:
        token = k.kubectl("create", "token", "x0-nobody", "-n", "default").stdout.strip()
        code, out = run_check(k, "pre", kubeconfig=kubeconfig_with(k, tmp_path, token=token))
        assert_fails(code, out, "k8s-rbac", "not allowed to create")
        assert token not in out
    finally:
        k.kubectl("delete", "serviceaccount", "x0-nobody", "-n", "default")


def test_storage_class_missing(staged: RealCluster, tmp_path: Path) -> None:
    values = tmp_path / "values.yaml"
    values.write_text(
        yaml.safe_dump({"x0tta6bl4": {"persistence": {"storageClass": "no-such-class"}}})
    )
    code, out = run_check(staged, "pre", "--values", str(values))
    assert_fails(code, out, "k8s-storageclass", "no-such-class")


def test_metrics_api_missing(staged: RealCluster) -> None:
    k = staged
    api = k.get("apiservice/v1beta1.metrics.k8s.io", namespace=None)
    for key in ("resourceVersion", "uid", "creationTimestamp", "managedFields"):
        api["metadata"].pop(key, None)
    api.pop("status", None)
    k.kubectl("delete", "apiservice", "v1beta1.metrics.k8s.io")
    try:
        code, out = run_check(k, "pre")
        assert_fails(code, out, "k8s-metrics-api", "metrics.k8s.io")
    finally:
        k.apply(api)


def test_wait_retries_until_a_pod_is_ready_again(staged: RealCluster) -> None:
    """--post --wait while a mesh pod is being replaced: the check retries pods-ready until the
    DaemonSet's new pod is ready, then passes."""
    k = staged
    victim = k.pods("app=x0tta6bl4-mesh")[0]["metadata"]["name"]
    result: dict[str, Any] = {}

    def check_in_background() -> None:
        result["code"], result["out"] = run_check(k, "post", "--wait", "600")

    k.kubectl("delete", "pod", "-n", NAMESPACE, victim, "--wait=false")
    time.sleep(1)
    t = threading.Thread(target=check_in_background)
    t.start()
    t.join(900)
    report = json.loads(result["out"])
    assert result["code"] == 0, report
    assert checks(report)["pods-ready"]["attempts"] > 1


def test_table_and_junit_outputs(staged: RealCluster) -> None:
    _code, table = run_check(staged, "post", output="table")
    assert "Status check results are" in table
    assert "√ controller API is ready" in table
    _code, junit = run_check(staged, "post", output="junit")
    root = ET.fromstring(junit)
    cases = {c.get("id"): c for c in root.iter("testcase")}
    assert cases["controller-ready"].find("failure") is None
    assert cases["etcd-ready"].find("failure") is None
