"""``/api/v1/nodes…`` and ``/api/v1/topology``: registration, renewal, membership, status."""

from __future__ import annotations

import json
from typing import Annotated, Any

from fastapi import APIRouter, Path, Response

from x0tta6bl4.controller.api.deps import Admin, Caller, Node, State
from x0tta6bl4.controller.api.errors import ApiError
from x0tta6bl4.controller.api.schemas import (
    NODE_ID_PATTERN,
    ErrorResponse,
    NodeDetail,
    NodeList,
    ProofOfPossession,
    RegisterRequest,
    RegisterResponse,
    RenewRequest,
    StatusReport,
    TopologyResponse,
    node_detail,
    node_summary,
)
from x0tta6bl4.controller.auth import Principal
from x0tta6bl4.controller.models import LinkStatus, NodeStatus
from x0tta6bl4.controller.registration import Admission, PossessionProof
from x0tta6bl4.controller.state import ControllerState
from x0tta6bl4.controller.store.errors import NotFoundError, OwnershipError

__all__ = ["router"]

router = APIRouter(prefix="/api/v1", tags=["nodes"])

NodeIdPath = Annotated[str, Path(pattern=NODE_ID_PATTERN, min_length=1, max_length=64)]

_ERRORS: dict[int | str, dict[str, Any]] = {
    code: {"model": ErrorResponse} for code in (400, 401, 403, 404, 409, 413, 422, 503)
}


def _json(data: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    body = json.dumps(data, separators=(",", ":")).encode()
    return Response(body, status_code=status, media_type="application/json", headers=headers)


def _proof(pop: ProofOfPossession) -> PossessionProof:
    return PossessionProof(
        nonce=pop.nonce,
        timestamp=pop.timestamp,
        signature=pop.signature,
        credential_sha256=pop.credential_sha256,
    )


def _admission_body(admission: Admission) -> dict[str, Any]:
    record = admission.record
    return {
        "node_id": record.node_id,
        "spiffe_id": record.spiffe_id,
        "overlay_ip": str(record.overlay_ip),
        "pq_svid": record.pq_svid_pem,
        "pq_svid_not_after": record.pq_svid_not_after,
        "renew_after": admission.renew_after,
        "ca_bundle": admission.bundle_pem,
        "trust_domain": admission.trust_domain,
        "revision": admission.revision,
    }


def _spiffe(principal: Principal) -> str:
    assert principal.spiffe_id is not None  # Node dependency guarantees it
    return str(principal.spiffe_id)


@router.post(
    "/nodes/register",
    response_model=RegisterResponse,
    status_code=200,
    responses=_ERRORS,
    summary="Register a node: PQ SVID, overlay address, CA bundle",
)
async def register(body: RegisterRequest, principal: Node, state: State) -> Response:
    """Admit the caller (its SPIFFE ID is its JWT-SVID's subject) as mesh node ``node_id``."""
    admission = await state.registrar.admit(
        spiffe_id=_spiffe(principal),
        node_id=body.node_id,
        endpoint=body.endpoint,
        public_key_b64=body.ml_dsa_public_key,
        pop=_proof(body.pop),
        renew=False,
        rotation=None if body.rotation is None else body.rotation.signature,
        credential_sha256=principal.credential_sha256,
    )
    if state.marker is not None:  # the state directory now knows this store holds nodes
        state.marker.record(state.store.location)
    return _json(_admission_body(admission))


@router.post(
    "/nodes/{node_id}/renew",
    response_model=RegisterResponse,
    responses=_ERRORS,
    summary="Renew a registered node's PQ SVID",
)
async def renew(node_id: NodeIdPath, body: RenewRequest, principal: Node, state: State) -> Response:
    """Issue a new PQ SVID to the node registered as ``node_id`` under the caller's ID."""
    admission = await state.registrar.admit(
        spiffe_id=_spiffe(principal),
        node_id=node_id,
        endpoint=body.endpoint,
        public_key_b64=body.ml_dsa_public_key,
        pop=_proof(body.pop),
        renew=True,
        rotation=None if body.rotation is None else body.rotation.signature,
        credential_sha256=principal.credential_sha256,
    )
    return _json(_admission_body(admission))


async def _nodes_body(state: ControllerState) -> bytes:
    """The JSON of the node list, cached per store revision."""
    revision = await state.store.revision()
    cached = state.cache.get("nodes")
    if cached is not None and cached[0] == revision:
        body: bytes = cached[1]
        return body
    snapshot = await state.store.snapshot()
    body = json.dumps(
        {
            "revision": snapshot.revision,
            "nodes": [node_summary(n) for n in snapshot.nodes],
            "revoked": [r.to_json() for r in snapshot.revoked],
        },
        separators=(",", ":"),
    ).encode()
    state.cache["nodes"] = (revision, body)
    state.metrics.mesh_nodes.set(len(snapshot.nodes))
    return body


@router.get("/nodes", response_model=NodeList, responses=_ERRORS, summary="List mesh nodes")
async def list_nodes(_: Caller, state: State) -> Response:
    """Every registered node (without certificates), with the store revision."""
    return Response(await _nodes_body(state), media_type="application/json")


@router.get(
    "/nodes/{node_id}", response_model=NodeDetail, responses=_ERRORS, summary="Get one node"
)
async def get_node(node_id: NodeIdPath, _: Caller, state: State) -> Response:
    """One node, with its PQ SVID and ML-DSA-65 public key."""
    record = await state.store.get_node(node_id)
    if record is None:
        raise ApiError(404, "node_not_found", f"node {node_id!r} is not registered")
    return _json(node_detail(record))


@router.delete(
    "/nodes/{node_id}",
    status_code=204,
    responses=_ERRORS,
    summary="Delete a node (admin); its overlay address is released",
)
async def delete_node(node_id: NodeIdPath, principal: Admin, state: State) -> Response:
    """Remove ``node_id`` from the mesh."""
    if not await state.store.delete_node(node_id):
        raise ApiError(404, "node_not_found", f"node {node_id!r} is not registered")
    return Response(status_code=204)


@router.put(
    "/nodes/{node_id}/status",
    status_code=204,
    responses=_ERRORS,
    summary="Report a node's links (also its heartbeat)",
)
async def put_status(
    node_id: NodeIdPath, body: StatusReport, principal: Node, state: State
) -> Response:
    """Only the node itself (same SPIFFE ID as registered) may report its status; the store
    checks that in the same transaction as the write."""
    status = NodeStatus(
        links=tuple(LinkStatus(peer=i.peer, up=i.up, rtt_ms=i.rtt_ms) for i in body.links)
    )
    try:
        await state.store.touch_node(node_id, state.clock(), status, owner=_spiffe(principal))
    except NotFoundError:
        raise ApiError(404, "node_not_found", f"node {node_id!r} is not registered") from None
    except OwnershipError:
        raise ApiError(
            403, "identity_mismatch", f"node {node_id!r} is registered to another SPIFFE ID"
        ) from None
    return Response(status_code=204)


@router.get(
    "/topology",
    response_model=TopologyResponse,
    response_model_by_alias=True,
    responses=_ERRORS,
    summary="Nodes and reported links as a graph",
)
async def topology(_: Caller, state: State) -> Response:
    """Nodes plus one directed edge per link a node reports (``from`` reports ``to``)."""
    snapshot = await state.store.snapshot()
    known = {n.node_id for n in snapshot.nodes}
    links = [
        {"from": n.node_id, "to": link.peer, "up": link.up, "rtt_ms": link.rtt_ms}
        for n in snapshot.nodes
        for link in n.status.links
        if link.peer in known
    ]
    return _json(
        {
            "revision": snapshot.revision,
            "nodes": [node_summary(n) for n in snapshot.nodes],
            "links": links,
        }
    )
