"""The controller's live topology page, in headless Chromium, on a mesh started by ``up``.

One ``up --nodes 4`` runs in the background; the test reads the page's public JSON without a
credential (and checks it holds no secret field), loads ``/ui`` in Chromium with JavaScript
(``--dump-dom`` after a virtual-time budget) and takes a screenshot, then stops ``up`` with
Ctrl-C and checks that nothing is left behind.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.e2e.up_support import RunningUp, assert_clean
from x0tta6bl4.controller.app import openapi_document

pytestmark = pytest.mark.slow

_CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
_NODES = ["node-01", "node-02", "node-03", "node-04"]
_PUBLIC_NODE_KEYS = {
    "node_id",
    "overlay_ip",
    "last_seen",
    "age_s",
    "state",
    "links_up",
    "links_total",
}


def _chromium(profile: Path, *args: str) -> subprocess.CompletedProcess[str]:
    assert _CHROMIUM is not None
    return subprocess.run(
        [
            _CHROMIUM,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            f"--user-data-dir={profile}",
            *args,
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


@pytest.fixture(scope="module")
def mesh(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, RunningUp]]:
    running = RunningUp(tmp_path_factory.mktemp("ui"), "--nodes", "4", "--for", "120", "--json")
    try:
        line = running.wait_for_line("topology UI")
        match = re.search(r"(http://127\.0\.0\.1:\d+)/ui", line)
        assert match is not None, line
        yield match.group(1), running
    finally:
        running.kill()


def _all_links_reported(base: str) -> dict[str, object]:
    """The public topology once every node has reported its links up (nodes report every
    few seconds; this waits on the controller's data, not on a fixed delay)."""
    for _ in range(300):
        view = httpx.get(f"{base}/ui/topology.json", timeout=5).json()
        nodes = view["nodes"]
        if len(nodes) == 4 and all(n["links_up"] == 3 for n in nodes):
            return dict(view)
        time.sleep(0.1)
    raise AssertionError(f"links never all reported up: {view}")


def test_topology_json_is_public_and_holds_no_secret(mesh: tuple[str, RunningUp]) -> None:
    base, _ = mesh
    view = _all_links_reported(base)
    nodes = view["nodes"]
    assert isinstance(nodes, list)
    assert [n["node_id"] for n in nodes] == _NODES
    for node in nodes:
        assert set(node) == _PUBLIC_NODE_KEYS
        assert node["state"] == "up"
    links = view["links"]
    assert isinstance(links, list)
    assert len(links) == 4 * 3
    for link in links:
        assert set(link) == {"from", "to", "up", "rtt_ms"}
        assert link["up"] is True
    text = httpx.get(f"{base}/ui/topology.json", timeout=5).text
    for secret_field in ("spiffe_id", "endpoint", "pq_svid", "ml_dsa", "BEGIN"):
        assert secret_field not in text
    # the authenticated API stays closed: not even served on the UI's plain-HTTP port
    closed = httpx.get(f"{base}/api/v1/topology", timeout=5)
    assert (closed.status_code, closed.json()["error"]) == (403, "tls_required")
    # and the UI stays out of the versioned API description (served over TLS only)
    paths = openapi_document()["paths"]
    assert not any(path.startswith("/ui") for path in paths)


@pytest.mark.skipif(_CHROMIUM is None, reason="chromium is not installed (make system)")
def test_page_shows_the_nodes_in_headless_chromium(
    mesh: tuple[str, RunningUp], tmp_path: Path
) -> None:
    base, _ = mesh
    _all_links_reported(base)
    dom = _chromium(tmp_path / "profile", "--virtual-time-budget=5000", "--dump-dom", f"{base}/ui")
    assert dom.returncode == 0, dom.stderr[-2000:]
    html = dom.stdout
    for node in _NODES:
        # drawn by the script: an SVG group and a table row per node
        assert f'<g class="node up" data-node-id="{node}">' in html
        assert f'<tr class="node-row" data-node-id="{node}">' in html
    assert html.count('class="link up"') == 6  # 4 nodes, full mesh, one edge per pair
    assert "4 nodes · 6/6 links up" in html

    shot = tmp_path / "ui.png"
    result = _chromium(
        tmp_path / "profile",
        "--virtual-time-budget=3000",
        "--window-size=1200,800",
        f"--screenshot={shot}",
        f"{base}/ui",
    )
    assert result.returncode == 0, result.stderr[-2000:]
    data = shot.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    assert len(data) > 10_000  # a drawn graph, not an empty page


def test_ctrl_c_stops_everything(mesh: tuple[str, RunningUp]) -> None:
    _, running = mesh
    run = running.interrupt()
    assert run.returncode == 0, run.stderr[-3000:]
    assert run.summary()["nodes"] == 4
    assert_clean(run)
