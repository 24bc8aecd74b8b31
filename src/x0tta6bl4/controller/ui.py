"""The read-only live topology page: ``GET /ui`` and ``GET /ui/topology.json``.

``/ui`` is one static HTML page (``static/ui.html``: plain HTML, JavaScript and SVG, no build
step, nothing loaded from elsewhere) that draws the nodes on a circle and the links between
them, coloured by state, and polls ``/ui/topology.json`` every second. The first snapshot is
embedded in the page, so it shows the mesh before any script runs.

``/ui/topology.json`` needs **no credential** (the page has none) and therefore carries only
non-secret fields: node id, overlay IPv4, last-seen time and state, and each link as its
reporting node sees it (``from``, ``to``, ``up``, ``rtt_ms``). No SPIFFE ID, endpoint,
certificate or key. Link state comes from the nodes' periodic status reports (every few
seconds), so the page lags the data plane by up to one report. Neither route is part of the
versioned API (both are left out of ``/openapi.json``).
"""

from __future__ import annotations

import html
import json
from importlib import resources
from typing import Any

from fastapi import APIRouter, Response

from x0tta6bl4.controller.api.deps import State
from x0tta6bl4.controller.state import ControllerState

__all__ = ["STALE_AFTER", "router", "topology_view"]

router = APIRouter(include_in_schema=False)

#: A node not heard from for this many seconds is drawn as ``stale``.
STALE_AFTER = 15.0
_PLACEHOLDER_DATA = "/*__TOPOLOGY__*/null"
_PLACEHOLDER_LIST = "<!--__NODE_LIST__-->"


async def topology_view(state: ControllerState) -> dict[str, Any]:
    """The public topology document (see the module docstring for what it holds)."""
    snapshot = await state.store.snapshot()
    now = state.clock()
    known = {n.node_id for n in snapshot.nodes}
    nodes: list[dict[str, Any]] = []
    links: list[dict[str, Any]] = []
    for record in sorted(snapshot.nodes, key=lambda n: n.node_id):
        age = max(0.0, now - record.last_seen)
        reported = [link for link in record.status.links if link.peer in known]
        nodes.append(
            {
                "node_id": record.node_id,
                "overlay_ip": str(record.overlay_ip),
                "last_seen": record.last_seen,
                "age_s": round(age, 1),
                "state": "up" if age <= STALE_AFTER else "stale",
                "links_up": sum(1 for link in reported if link.up),
                "links_total": len(reported),
            }
        )
        links.extend(
            {"from": record.node_id, "to": link.peer, "up": link.up, "rtt_ms": link.rtt_ms}
            for link in reported
        )
    return {"revision": snapshot.revision, "generated_at": now, "nodes": nodes, "links": links}


def _page() -> str:
    return (resources.files("x0tta6bl4.controller") / "static" / "ui.html").read_text("utf-8")


def _node_list(view: dict[str, Any]) -> str:
    items = "".join(
        f'<li class="node-item" data-node-id="{html.escape(n["node_id"])}">'
        f"{html.escape(n['node_id'])} ({html.escape(n['overlay_ip'])}, {n['state']})</li>"
        for n in view["nodes"]
    )
    return items


@router.get("/ui")
async def ui_page(state: State) -> Response:
    """The topology page, with the current snapshot embedded."""
    view = await topology_view(state)
    # JSON inside <script>: "</" must not appear, or the HTML parser ends the script early.
    data = json.dumps(view, separators=(",", ":")).replace("</", "<\\/")
    body = _page().replace(_PLACEHOLDER_DATA, data).replace(_PLACEHOLDER_LIST, _node_list(view))
    return Response(
        body,
        media_type="text/html; charset=utf-8",
        headers={
            "Cache-Control": "no-store",
            "Content-Security-Policy": (
                "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; "
                "connect-src 'self'; img-src 'self' data:"
            ),
        },
    )


@router.get("/ui/topology.json")
async def ui_topology(state: State) -> Response:
    """Nodes and links without any secret field (no credential needed)."""
    view = await topology_view(state)
    return Response(
        json.dumps(view, separators=(",", ":")),
        media_type="application/json",
        headers={"Cache-Control": "no-store"},
    )
