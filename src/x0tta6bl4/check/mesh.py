"""HTTP access to a running mesh, the same whether local or in a cluster.

:class:`MeshAccess` is what the connectivity and local checks run over: GET a path on the
controller, list the mesh nodes, GET a path on a node. :class:`LocalMesh` talks HTTP
directly (``x0tta6bl4 up`` or a controller URL); :class:`ClusterMesh` goes through a
:class:`~x0tta6bl4.check.cluster.ClusterContext` (service and pod proxies, or direct in the
cluster). Both time each request with a monotonic clock.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import httpx

from x0tta6bl4.check.cluster import ClusterContext
from x0tta6bl4.check.kube import KubeError, Obj
from x0tta6bl4.check.tls_probe import TlsProbe, plain_refuses_api, probe_controller_tls
from x0tta6bl4.identity.errors import IdentityError
from x0tta6bl4.identity.spiffe_ids import DEFAULT_TRUST_DOMAIN
from x0tta6bl4.local.descriptor import MeshDescriptor, read_descriptor
from x0tta6bl4.tls.credentials import StaticCredentials, TlsCredentials, load_bundle_pem

__all__ = [
    "CONTROLLER_PORT",
    "CONTROLLER_TLS_PORT",
    "NODE_HTTP_PORT",
    "PING_PATH",
    "ClusterMesh",
    "LocalMesh",
    "MeshAccess",
    "MeshAuthError",
    "MeshError",
    "MeshNode",
    "NodeApiToken",
    "load_local",
]

CONTROLLER_PORT = 8080
CONTROLLER_TLS_PORT = 8443
NODE_HTTP_PORT = 7811


class MeshError(Exception):
    """A request to the controller or a node failed (no answer, or not HTTP 200)."""


class MeshAuthError(MeshError):
    """The request needs credentials this check cannot present (a node's ``/v1/ping`` from
    outside the cluster when ``pods/portforward`` is refused, or in the cluster without a
    Workload API to get a JWT-SVID from)."""


PING_PATH = "/v1/ping"
"""The node route that needs a loopback caller or a JWT-SVID (docs/node.md)."""


class NodeApiToken:
    """JWT-SVIDs for the nodes' ``/v1/ping`` (audience ``x0tta6bl4-node``) from the Workload
    API named by ``X0_SPIFFE_SOCKET`` / ``SPIFFE_ENDPOINT_SOCKET`` (the check pod mounts the
    SPIRE agent's), reused until a minute before they expire."""

    def __init__(self) -> None:
        self._token: str | None = None
        self._expiry = 0.0

    async def get(self) -> str | None:
        """A token, or None when no Workload API socket is configured."""
        socket = os.environ.get("X0_SPIFFE_SOCKET") or os.environ.get("SPIFFE_ENDPOINT_SOCKET")
        if not socket:
            return None
        if self._token is not None and time.time() < self._expiry - 60:
            return self._token
        from x0tta6bl4.identity import NODE_API_AUDIENCE, IdentityError, WorkloadSource

        source = WorkloadSource(socket, trust_domain=os.environ.get("X0_TRUST_DOMAIN"))
        try:
            svid = await asyncio.to_thread(source.fetch_jwt_svid, NODE_API_AUDIENCE)
        except IdentityError as exc:
            raise MeshAuthError(f"cannot get a JWT-SVID for the nodes' /v1/ping: {exc}") from None
        self._token, self._expiry = str(svid.token), float(svid.expiry)
        return self._token


@dataclass(frozen=True, slots=True)
class MeshNode:
    """A mesh node: its ID and where its HTTP server is (a URL, or a pod for ClusterMesh)."""

    node_id: str
    url: str = ""
    pod: Obj | None = None


class MeshAccess(Protocol):
    """What the mesh-level checks need."""

    measurements: dict[str, Any]

    async def controller_get(self, path: str) -> tuple[str, float]:
        """GET ``path`` on the controller: (body, seconds)."""
        ...

    async def nodes(self) -> list[MeshNode]:
        """The mesh nodes to check (empty when unknown)."""
        ...

    async def node_get(
        self, node: MeshNode, path: str, query: Mapping[str, str] | None = None
    ) -> tuple[str, float]:
        """GET ``path`` on ``node``: (body, seconds)."""
        ...

    def now(self) -> float:
        """Wall-clock time (seconds since the epoch) for certificate validity."""
        ...

    async def controller_tls(self) -> TlsProbe:
        """Connect to the controller's TLS API as a client, verifying its SPIFFE ID; raise
        :class:`~x0tta6bl4.check.tls_probe.TlsProbeError`, or :class:`MeshError` when the
        check cannot be made from here (no trust bundle, outside the cluster)."""
        ...


@dataclass
class LocalMesh:
    """A mesh reached over plain HTTP (probes, metrics, UI) and, with a descriptor, its TLS
    API: a controller URL and, when known, node URLs."""

    controller_url: str
    node_urls: dict[str, str] | None = None
    http: httpx.AsyncClient = field(default_factory=lambda: httpx.AsyncClient(timeout=10.0))
    measurements: dict[str, Any] = field(default_factory=dict)
    controller_http: httpx.AsyncClient | None = None
    """A separate client for the controller (e.g. an in-process ASGI transport); default
    ``http``."""
    descriptor: MeshDescriptor | None = None
    """The ``up`` descriptor when the target was a state directory (node pids, up's pid)."""

    def now(self) -> float:
        return time.time()

    async def controller_tls(self) -> TlsProbe:
        d = self.descriptor
        if d is None or not d.api or not d.trust_bundle or not d.controller_spiffe_id:
            raise MeshError(
                "no TLS address, trust bundle or controller SPIFFE ID known (give the state "
                "directory of `x0tta6bl4 up`, whose mesh.json names them)"
            )
        try:
            authorities = load_bundle_pem(Path(d.trust_bundle))
            td = d.controller_spiffe_id.removeprefix("spiffe://").split("/", 1)[0]
            trust = StaticCredentials(TlsCredentials.trust_only(authorities, td))
        except IdentityError as exc:
            raise MeshError(str(exc)) from None
        probe = await probe_controller_tls(d.api[0], trust, d.controller_spiffe_id)
        await plain_refuses_api(self.http, self.controller_url)
        return probe

    async def _get(
        self, url: str, query: Mapping[str, str] | None, client: httpx.AsyncClient | None = None
    ) -> tuple[str, float]:
        start = time.perf_counter()
        try:
            response = await (client or self.http).get(url, params=dict(query or {}))
        except httpx.HTTPError as exc:
            raise MeshError(f"GET {url}: {type(exc).__name__}: {exc}") from None
        elapsed = time.perf_counter() - start
        if response.status_code != 200:
            raise MeshError(f"GET {url}: HTTP {response.status_code}")
        return response.text, elapsed

    async def controller_get(self, path: str) -> tuple[str, float]:
        return await self._get(self.controller_url.rstrip("/") + path, None, self.controller_http)

    async def nodes(self) -> list[MeshNode]:
        return [MeshNode(n, u) for n, u in sorted((self.node_urls or {}).items())]

    async def node_get(
        self, node: MeshNode, path: str, query: Mapping[str, str] | None = None
    ) -> tuple[str, float]:
        return await self._get(node.url.rstrip("/") + path, query)

    async def close(self) -> None:
        """Close the HTTP client."""
        await self.http.aclose()


def load_local(target: str) -> LocalMesh:
    """A :class:`LocalMesh` for ``--local``: a controller URL, or the state directory of a
    running ``x0tta6bl4 up`` (its ``mesh.json``, :mod:`x0tta6bl4.local.descriptor`).

    Raises :class:`~x0tta6bl4.local.descriptor.DescriptorError` (a ValueError) with a specific
    message when the directory has no descriptor or its ``up`` is not running.
    """
    if target.startswith(("http://", "https://")):
        return LocalMesh(target)
    descriptor = read_descriptor(Path(target).expanduser())
    return LocalMesh(descriptor.controller, dict(descriptor.nodes), descriptor=descriptor)


@dataclass
class ClusterMesh:
    """The mesh of an installed release, through a ClusterContext."""

    cluster: ClusterContext
    measurements: dict[str, Any] = field(default_factory=dict)
    node_token: NodeApiToken = field(default_factory=NodeApiToken)

    def now(self) -> float:
        return self.cluster.now()

    async def controller_tls(self) -> TlsProbe:
        if not self.cluster.kube.in_cluster:
            raise MeshError(
                "the TLS API is checked from inside the cluster (helm test runs it there): the "
                "API server's service proxy cannot present a client X.509-SVID"
            )
        from x0tta6bl4.identity.node_ids import controller_id_for
        from x0tta6bl4.identity.spiffe_ids import parse_spiffe_id
        from x0tta6bl4.identity.workload_source import WorkloadSource
        from x0tta6bl4.tls.credentials import WorkloadCredentials

        td = os.environ.get("X0_TRUST_DOMAIN") or DEFAULT_TRUST_DOMAIN
        credentials = WorkloadCredentials(WorkloadSource(trust_domain=td), td)
        try:
            mine = await asyncio.to_thread(credentials.start)
        except IdentityError as exc:
            raise MeshError(f"no X.509-SVID for this check: {exc}") from None
        try:
            # The chart names the controller's ID (X0_CONTROLLER_SPIFFE_ID): the check runs
            # under a ServiceAccount of its own, so its ID's …/sa/<sa> is not the
            # controller's. Without it, the controller is assumed under the check's own.
            own = mine.spiffe_id
            configured = os.environ.get("X0_CONTROLLER_SPIFFE_ID")
            derived = None if own is None else controller_id_for(own)
            if configured:
                try:
                    expected = str(parse_spiffe_id(configured))
                except ValueError as exc:
                    raise MeshError(f"X0_CONTROLLER_SPIFFE_ID: {exc}") from None
            elif derived is not None:
                expected = str(derived)
            else:
                raise MeshError(
                    f"cannot tell the controller's SPIFFE ID from this check's {own}: "
                    "set X0_CONTROLLER_SPIFFE_ID"
                )
            ns = self.cluster.namespace
            api = f"https://x0tta6bl4-api.{ns}.svc:{CONTROLLER_TLS_PORT}"
            probe = await probe_controller_tls(api, credentials, expected)
            plain = f"http://x0tta6bl4-api.{ns}.svc:{CONTROLLER_PORT}"
            await plain_refuses_api(self.cluster.http, plain)
            return probe
        finally:
            await asyncio.to_thread(credentials.stop)

    async def controller_get(self, path: str) -> tuple[str, float]:
        start = time.perf_counter()
        try:
            text = await self.cluster.service_text("x0tta6bl4-api", CONTROLLER_PORT, path)
        except KubeError as exc:
            raise MeshError(str(exc)) from None
        return text, time.perf_counter() - start

    async def nodes(self) -> list[MeshNode]:
        pods = await self.cluster.kube.items(
            self.cluster.ns_path("v1", "pods"), {"labelSelector": "app=x0tta6bl4-mesh"}
        )
        return [
            MeshNode(str((p.get("spec") or {}).get("nodeName") or ""), pod=p)
            for p in pods
            if (p.get("spec") or {}).get("nodeName")
        ]

    async def node_get(
        self, node: MeshNode, path: str, query: Mapping[str, str] | None = None
    ) -> tuple[str, float]:
        assert node.pod is not None
        headers = None
        outside = not self.cluster.kube.in_cluster
        if path == PING_PATH:
            token = await self.node_token.get()
            if token is not None:
                headers = {"Authorization": f"Bearer {token}"}
            elif not outside:
                raise MeshAuthError(
                    "no SPIFFE Workload API socket (X0_SPIFFE_SOCKET) to get the JWT-SVID the "
                    "nodes' /v1/ping needs"
                )
        start = time.perf_counter()
        try:
            # From outside, /v1/ping goes by port-forward only: it arrives on the node's
            # loopback, which the node answers; the API server's pod proxy would arrive from
            # the control plane without a JWT-SVID and be refused (401).
            text = await self.cluster.pod_text(
                node.pod, NODE_HTTP_PORT, path, query, headers=headers,
                proxy=not (outside and path == PING_PATH and headers is None),
            )  # fmt: skip
        except KubeError as exc:
            if outside and path == PING_PATH and headers is None and exc.status in (400, 403, 404):
                raise MeshAuthError(
                    "the nodes answer /v1/ping only to loopback callers and callers with a "
                    "JWT-SVID; from outside the cluster the check reaches them by "
                    f"pods/portforward (the request arrives on the pod's loopback), which was "
                    f"refused (HTTP {exc.status}): grant this user 'create pods/portforward' in "
                    "the namespace, or run the connectivity checks in the cluster (helm test)"
                ) from None
            raise MeshError(str(exc)) from None
        return text, time.perf_counter() - start
