"""``--local`` and ``--connectivity`` checks against a real controller app (in process, its
lifespan running, the embedded SPIFFE issuer behind it). Nodes come with ``x0tta6bl4 up``,
whose state-directory integration is tested in tests/e2e/test_check_local.py."""

from __future__ import annotations

import io
import json
import socket
from pathlib import Path

import pytest

from tests.integration.controller_support import controller, running_issuer
from x0tta6bl4.check.checks_connectivity import connectivity_categories
from x0tta6bl4.check.checks_local import local_categories
from x0tta6bl4.check.mesh import LocalMesh, load_local
from x0tta6bl4.check.runner import run_categories


def dead_url() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}"  # closed again: nothing listens


def by_id(text: str) -> dict[str, dict[str, object]]:
    report = json.loads(text)
    return {c["id"]: c for cat in report["categories"] for c in cat["checks"]}


async def test_local_checks_on_a_real_controller(tmp_path: Path) -> None:
    with running_issuer(tmp_path / "id") as identity:
        async with controller(tmp_path / "ctl", identity) as (_, client):
            mesh = LocalMesh(client.plain_url, controller_http=client.plain)
            out = io.StringIO()
            try:
                report = await run_categories(local_categories(), mesh, out, output="json")
            finally:
                await mesh.close()
            found = by_id(out.getvalue())
            assert report.exit_code() == 0
            assert found["controller-health"]["result"] == "success"
            assert found["controller-ready"]["result"] == "success"
            assert found["mesh-nodes-metric"]["detail"] == "0 registered (node list unknown)"
            assert found["nodes-ready"]["result"] == "skipped"

            mesh = LocalMesh(client.plain_url, {"n1": dead_url()}, controller_http=client.plain)
            out = io.StringIO()
            try:
                report = await run_categories(local_categories(), mesh, out, output="json")
            finally:
                await mesh.close()
            found = by_id(out.getvalue())
            assert report.exit_code() == 1
            assert found["nodes-ready"]["result"] == "error"
            assert found["mesh-nodes-metric"]["error"] == (
                "x0tta6bl4_mesh_nodes_total is 0, but the mesh has 1 nodes"
            )

            out = io.StringIO()
            bare = LocalMesh(client.plain_url, controller_http=client.plain)
            try:
                report = await run_categories(connectivity_categories(), bare, out, output="json")
            finally:
                await bare.close()
            found = by_id(out.getvalue())
            assert found["controller-latency"]["result"] in ("success", "warning")
            assert found["mesh-ping"]["result"] == "skipped"
            assert found["relay-loss"]["result"] == "skipped"


async def test_controller_down_is_fatal() -> None:
    mesh = LocalMesh(dead_url())
    out = io.StringIO()
    try:
        report = await run_categories(local_categories(), mesh, out, output="json")
    finally:
        await mesh.close()
    assert report.exit_code() == 1
    assert report.stopped_by == "controller-health"


def test_load_local(tmp_path: Path) -> None:
    assert load_local("http://127.0.0.1:8080").controller_url == "http://127.0.0.1:8080"
    with pytest.raises(ValueError, match=r"no mesh\.json"):
        load_local(str(tmp_path))
    (tmp_path / "mesh.json").write_text('{"controller": "ftp://x", "nodes": {}}')
    with pytest.raises(ValueError, match="no controller URL"):
        load_local(str(tmp_path))
    # A descriptor and lock of an up that is gone (pid 1 is not x0tta6bl4): refused.
    (tmp_path / ".lock").write_text("1\n")
    (tmp_path / "mesh.json").write_text(
        '{"up_pid": 1, "controller": "http://127.0.0.1:1", "nodes": {"a": "http://127.0.0.1:2"}}'
    )
    with pytest.raises(ValueError, match=r"up \(pid 1\) that wrote .* is no longer running"):
        load_local(str(tmp_path))
    # The live case is tests/unit/test_local_descriptor.py and tests/e2e/test_check_local.py.
