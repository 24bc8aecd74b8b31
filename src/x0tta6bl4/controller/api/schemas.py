"""Request and response bodies of the controller API (pydantic; they generate /openapi.json).

Requests reject unknown fields and wrong types (``extra="forbid"``, strict mode), so what the
OpenAPI document says is exactly what the server accepts.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from x0tta6bl4.controller.models import NodeRecord, serial_hex

__all__ = [
    "BundleResponse",
    "ErrorResponse",
    "HealthResponse",
    "LinkReport",
    "NodeDetail",
    "NodeList",
    "NodeSummary",
    "PolicyDocument",
    "PolicyResponse",
    "PolicyRuleBody",
    "ProofOfPossession",
    "ReadyResponse",
    "RegisterRequest",
    "RegisterResponse",
    "RenewRequest",
    "RevokedCertificate",
    "StatusReport",
    "TopologyLink",
    "TopologyResponse",
    "WatchEvent",
    "WatchResponse",
    "node_detail",
    "node_summary",
]

NODE_ID_PATTERN = r"^[A-Za-z0-9](?:[A-Za-z0-9._-]{0,62}[A-Za-z0-9])?$"
_B64 = r"^[A-Za-z0-9+/]*={0,2}$"

NodeId = Annotated[
    str,
    Field(
        pattern=NODE_ID_PATTERN,
        min_length=1,
        max_length=64,
        description="1-64 letters, digits, '.', '_', '-'; starts and ends alphanumeric",
        examples=["k8s-node-1"],
    ),
]
Endpoint = Annotated[
    str,
    Field(
        min_length=3,
        max_length=260,
        pattern=r"^(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9.-]+):[0-9]{1,5}$",
        description="where peers reach the node over UDP: host:port or [v6]:port",
        examples=["10.0.0.7:7810"],
    ),
]


class _Request(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)


class ProofOfPossession(_Request):
    """A signature, with the submitted ML-DSA-65 key, over spiffe_id, node_id, nonce,
    credential_sha256 and timestamp (``x0tta6bl4.crypto.pqsvid.proof_of_possession``,
    format version 2)."""

    nonce: str = Field(
        pattern=_B64,
        min_length=24,
        max_length=88,
        description="base64 of 16-64 random bytes, never reused",
    )
    timestamp: int = Field(
        ge=0, le=2**63 - 1, description="UNIX seconds; must be within 60 s of the controller"
    )
    signature: str = Field(
        pattern=_B64, min_length=4, max_length=8192, description="base64 ML-DSA-65 signature"
    )
    credential_sha256: str | None = Field(
        default=None,
        pattern=r"^[0-9a-f]{64}$",
        description=(
            "hex SHA-256 of the credential the request is sent with (the client "
            "certificate's DER); signed in the proof. Required: a proof without it (format "
            "version 1) is refused with proof_not_bound"
        ),
    )


class RotationProof(_Request):
    """Proof of possession of the node ID's previous key, to bind it to a new one: a
    signature by the **previous** ML-DSA-65 key over ``rotation_nonce(pop.nonce, new key)``
    (``x0tta6bl4.controller.registration.rotation_proof``)."""

    signature: str = Field(
        pattern=_B64, min_length=4, max_length=8192, description="base64 ML-DSA-65 signature"
    )


class RegisterRequest(_Request):
    """``POST /api/v1/nodes/register``: the caller's SPIFFE ID comes from its JWT-SVID."""

    node_id: NodeId
    endpoint: Endpoint
    ml_dsa_public_key: str = Field(
        pattern=_B64,
        min_length=4,
        max_length=4096,
        description="base64 of the raw 1952-byte ML-DSA-65 public key",
    )
    pop: ProofOfPossession
    rotation: RotationProof | None = None


class RenewRequest(_Request):
    """``POST /api/v1/nodes/{node_id}/renew``: the (possibly new) key and a fresh proof."""

    ml_dsa_public_key: str = Field(pattern=_B64, min_length=4, max_length=4096)
    pop: ProofOfPossession
    endpoint: Endpoint | None = None
    rotation: RotationProof | None = None


class RegisterResponse(BaseModel):
    """What a node receives on registration or renewal."""

    node_id: str
    spiffe_id: str
    overlay_ip: str
    pq_svid: str = Field(description="PEM certificate: the node's post-quantum X.509-SVID")
    pq_svid_not_after: float = Field(description="UNIX seconds")
    renew_after: float = Field(description="UNIX seconds (half of the SVID's lifetime)")
    ca_bundle: str = Field(description="PEM: every mesh CA certificate nodes must trust")
    trust_domain: str
    revision: int = Field(description="store revision including this registration")


class LinkReport(_Request):
    """One link as its node sees it."""

    peer: NodeId
    up: bool
    rtt_ms: float | None = Field(default=None, ge=0, le=3_600_000)


class StatusReport(_Request):
    """``PUT /api/v1/nodes/{node_id}/status``: the node's links; also its heartbeat."""

    links: list[LinkReport] = Field(default_factory=list, max_length=1024)


class NodeSummary(BaseModel):
    """A node as listed and watched (without its certificate and key)."""

    node_id: str
    spiffe_id: str
    endpoint: str
    overlay_ip: str
    pq_svid_not_after: float
    pq_svid_serial: str = Field(description="the PQ SVID's X.509 serial number, lowercase hex")
    ml_dsa_public_key_sha256: str = Field(description="SHA-256 of the raw ML-DSA-65 key, hex")
    registered_at: float
    last_seen: float
    links: list[dict[str, Any]]


class RevokedCertificate(BaseModel):
    """A revoked PQ SVID (its node was re-keyed or deleted), listed until its notAfter."""

    serial: str = Field(description="X.509 serial number, lowercase hex")
    node_id: str
    not_after: float = Field(description="UNIX seconds; the entry is pruned after it")


class NodeDetail(NodeSummary):
    """A node with its PQ SVID and ML-DSA-65 public key."""

    pq_svid: str
    ml_dsa_public_key: str


class NodeList(BaseModel):
    """``GET /api/v1/nodes``."""

    revision: int
    nodes: list[NodeSummary]
    revoked: list[RevokedCertificate] = Field(
        default=[], description="revoked PQ SVIDs still inside their validity"
    )


class TopologyLink(BaseModel):
    """A directed link as reported by its source node."""

    source: str = Field(serialization_alias="from")
    to: str
    up: bool
    rtt_ms: float | None


class TopologyResponse(BaseModel):
    """``GET /api/v1/topology``: nodes and the links they report, as a graph."""

    revision: int
    nodes: list[NodeSummary]
    links: list[TopologyLink]


class PolicyRuleBody(_Request):
    """One policy rule; see ``docs/api.md`` for the evaluation order."""

    model_config = ConfigDict(extra="forbid", strict=True, populate_by_name=True)

    source: str = Field(alias="from", min_length=1, max_length=2048, examples=["*"])
    to: str = Field(min_length=1, max_length=2048, examples=["*"])
    action: Literal["join", "link", "talk"]
    allow: bool


class PolicyDocument(_Request):
    """``PUT /api/v1/policy`` body."""

    rules: list[PolicyRuleBody] = Field(max_length=10_000)


class PolicyResponse(BaseModel):
    """``GET /api/v1/policy``: the stored document, or the default one at revision 0."""

    revision: int
    default: bool = Field(description="true while no policy was ever written")
    rules: list[dict[str, Any]]


class WatchEvent(BaseModel):
    """One change: ``node_put`` (with ``node``), ``node_deleted``, ``policy_put`` or
    ``node_revoked`` (with ``revocation``)."""

    kind: Literal["node_put", "node_deleted", "policy_put", "node_revoked"]
    revision: int
    node_id: str | None = None
    node: NodeSummary | None = None
    policy: dict[str, Any] | None = None
    revocation: RevokedCertificate | None = None


class WatchResponse(BaseModel):
    """``GET /api/v1/watch``: events after ``from_revision`` (empty on timeout)."""

    revision: int = Field(description="watch again from this revision")
    events: list[WatchEvent]


class BundleResponse(BaseModel):
    """``GET /api/v1/bundle``."""

    trust_domain: str
    ca_bundle: str


class HealthResponse(BaseModel):
    """``GET /health``."""

    status: Literal["ok"]


class ReadyResponse(BaseModel):
    """``GET /ready``: 200 when ready, else 503 with the reasons."""

    status: Literal["ready", "not_ready"]
    store: bool
    mesh_ca: bool
    identity: bool
    tls_identity: bool
    reasons: list[str]
    store_faults: list[str] = Field(
        default=[], description="damaged store records (where: fault), at most 10"
    )


class ErrorResponse(BaseModel):
    """Every 4xx/5xx answer."""

    error: str = Field(description="machine-readable reason, see docs/api.md")
    detail: str


def node_summary(record: NodeRecord) -> dict[str, Any]:
    """The JSON of :class:`NodeSummary` for ``record``."""
    return {
        "node_id": record.node_id,
        "spiffe_id": record.spiffe_id,
        "endpoint": record.endpoint,
        "overlay_ip": str(record.overlay_ip),
        "pq_svid_not_after": record.pq_svid_not_after,
        "pq_svid_serial": serial_hex(record.pq_svid_serial),
        "ml_dsa_public_key_sha256": record.key_sha256.hex(),
        "registered_at": record.registered_at,
        "last_seen": record.last_seen,
        "links": [link.to_json() for link in record.status.links],
    }


def node_detail(record: NodeRecord) -> dict[str, Any]:
    """The JSON of :class:`NodeDetail` for ``record``."""
    data = node_summary(record)
    full = record.to_json()
    data["pq_svid"] = full["pq_svid_pem"]
    data["ml_dsa_public_key"] = full["ml_dsa_public_key"]
    return data
