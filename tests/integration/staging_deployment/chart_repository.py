"""The chart packaged and served from a chart repository."""

from __future__ import annotations

import functools
import http.server
import shutil
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.integration.chart_helpers import (
    CHART_DIR,
    helm,
    helm_env,
    render_text,
)
from tests.integration.staging_deployment.common import (
    NS,
    STAGING,
)


@pytest.fixture
def chart_repo(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    repo = tmp_path / "repo"
    repo.mkdir()
    env = helm_env(tmp_path / "helm")
    helm("package", str(CHART_DIR), "--destination", str(repo), env=env)
    helm("repo", "index", str(repo), env=env)

    class Handler(http.server.SimpleHTTPRequestHandler):
        def log_message(self, format: str, *args: Any) -> None:
            return

    server = http.server.ThreadingHTTPServer(
        ("127.0.0.1", 0), functools.partial(Handler, directory=str(repo))
    )
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", tmp_path
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


def test_chart_repository_flow_of_the_guide(chart_repo: tuple[str, Path]) -> None:
    url, tmp = chart_repo
    env = helm_env(tmp / "helm")
    index = yaml.safe_load((tmp / "repo" / "index.yaml").read_text(encoding="utf-8"))
    (entry,) = index["entries"]["x0tta6bl4"]
    assert entry["version"] == "0.1.0"
    assert entry["urls"] == ["x0tta6bl4-0.1.0.tgz"]
    # The guide: helm repo add x0tta6bl4 <url>; helm repo update;
    # helm install ... x0tta6bl4/x0tta6bl4 -f values-staging.yaml
    helm("repo", "add", "x0tta6bl4", url, env=env)
    helm("repo", "update", env=env)
    assert "x0tta6bl4/x0tta6bl4" in helm("search", "repo", "x0tta6bl4", env=env)
    values = tmp / "values-staging.yaml"
    shutil.copy(CHART_DIR / "values-staging.yaml", values)
    from_repo = render_text([values], chart="x0tta6bl4/x0tta6bl4", namespace=NS, env=env)
    assert from_repo == render_text(STAGING, namespace=NS)
