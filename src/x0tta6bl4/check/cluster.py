"""What the Kubernetes checks run against: the API client, namespaces, install options, and
how to reach HTTP endpoints of services and pods.

From outside the cluster the checks reach the controller's ``/metrics``, the nodes'
``/v1/status`` and Prometheus the way ``kubectl port-forward`` does (``pods/portforward``, to a
ready pod behind the Service): the request arrives on the pod's loopback, so the chart's
default-deny NetworkPolicy does not drop it, as it drops the API server's service and pod
proxies, which connect from the control plane's address (seen on a real cluster that enforces
policies). An API server without the port-forward subresource, or a user without
``create pods/portforward``, gets the proxies instead. Inside the cluster (``--in-cluster``,
the ``helm test`` pod) they connect directly to the service DNS name or the pod IP, which the
chart's NetworkPolicies admit for the check pod and the read-only ClusterRole
``x0tta6bl4-check`` does not need proxy or port-forward rights for.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx
import yaml

from x0tta6bl4.check.kube import KubeClient, KubeError, KubeUnreachableError, Obj
from x0tta6bl4.identity import DEFAULT_TRUST_DOMAIN

__all__ = ["DEFAULT_NAMESPACE", "ClusterContext", "InstallOptions", "ValuesError"]

DEFAULT_NAMESPACE = "x0tta6bl4-staging"


class ValuesError(ValueError):
    """A ``--values`` file cannot be read or has the wrong shape."""


def _dig(data: Mapping[str, Any], *keys: str) -> object:
    node: object = data
    for key in keys:
        if not isinstance(node, Mapping) or key not in node:
            return None
        node = node[key]
    return node


@dataclass(frozen=True, slots=True)
class InstallOptions:
    """The few chart values the pre-install checks depend on (defaults: the chart's)."""

    storage_class: str = ""
    persistence: bool = True
    store_mode: str = "etcd"
    spiffe: bool = True
    trust_domain: str = DEFAULT_TRUST_DOMAIN
    monitoring: bool = False
    monitoring_mode: str = "prometheus"
    monitoring_namespace: str = "monitoring"
    ingress: bool = False
    vpa: bool = False

    @classmethod
    def from_values_files(cls, paths: list[Path]) -> InstallOptions:
        """Read the options from Helm values files (later files win, as with ``helm -f``)."""
        merged: dict[str, Any] = {}
        for path in paths:
            try:
                data = yaml.safe_load(path.read_text(encoding="utf-8"))
            except (OSError, yaml.YAMLError) as exc:
                raise ValuesError(f"cannot read values file {path}: {exc}") from None
            if data is None:
                continue
            if not isinstance(data, dict):
                raise ValuesError(f"values file {path} is not a YAML mapping")
            _merge(merged, data)
        defaults = cls()

        def pick(default: Any, *keys: str) -> Any:
            value = _dig(merged, *keys)
            if value is None:
                return default
            if type(value) is not type(default):
                raise ValuesError(
                    f"values: {'.'.join(keys)} must be a {type(default).__name__}, "
                    f"got {value!r:.60}"
                )
            return value

        return cls(
            storage_class=pick(defaults.storage_class, "x0tta6bl4", "persistence", "storageClass"),
            persistence=pick(defaults.persistence, "x0tta6bl4", "persistence", "enabled"),
            store_mode=pick(defaults.store_mode, "x0tta6bl4", "store", "mode"),
            spiffe=pick(defaults.spiffe, "x0tta6bl4", "spiffe", "enabled"),
            trust_domain=pick(defaults.trust_domain, "x0tta6bl4", "spiffe", "trustDomain"),
            monitoring=pick(defaults.monitoring, "monitoring", "enabled"),
            monitoring_mode=pick(defaults.monitoring_mode, "monitoring", "mode"),
            monitoring_namespace=pick(defaults.monitoring_namespace, "monitoring", "namespace"),
            ingress=pick(defaults.ingress, "x0tta6bl4", "ingress", "enabled"),
            vpa=pick(defaults.vpa, "x0tta6bl4", "vpa", "enabled"),
        )


def _merge(into: dict[str, Any], data: Mapping[str, Any]) -> None:
    for key, value in data.items():
        if isinstance(value, Mapping) and isinstance(into.get(key), dict):
            _merge(into[key], value)
        else:
            into[key] = value


@dataclass
class ClusterContext:
    """The context object of every Kubernetes check."""

    kube: KubeClient
    namespace: str = DEFAULT_NAMESPACE
    spire_namespace: str = "spire"
    options: InstallOptions = field(default_factory=InstallOptions)
    http: httpx.AsyncClient = field(default_factory=lambda: httpx.AsyncClient(timeout=10.0))
    now: Callable[[], float] = time.time
    scratch: dict[str, Any] = field(default_factory=dict)
    """Per-run state shared between checks (e.g. the ClusterMesh of --connectivity)."""

    async def close(self) -> None:
        """Close the HTTP client and the API client."""
        await self.http.aclose()
        await self.kube.close()

    def ns_path(self, group_version: str, resource: str, name: str = "", ns: str = "") -> str:
        """API path of a namespaced resource (collection, or object when ``name`` is set)."""
        base = "/api/v1" if group_version == "v1" else f"/apis/{group_version}"
        path = f"{base}/namespaces/{ns or self.namespace}/{resource}"
        return f"{path}/{name}" if name else path

    async def _direct(
        self,
        url: str,
        query: Mapping[str, str] | None,
        headers: Mapping[str, str] | None = None,
    ) -> str:
        try:
            response = await self.http.get(url, params=dict(query or {}), headers=headers)
        except httpx.HTTPError as exc:
            raise KubeUnreachableError(f"GET {url}: {type(exc).__name__}: {exc}") from None
        if response.status_code != 200:
            raise KubeError(f"GET {url}: HTTP {response.status_code}", response.status_code)
        return response.text

    async def service_text(
        self,
        service: str,
        port: int,
        path: str,
        *,
        ns: str = "",
        query: Mapping[str, str] | None = None,
    ) -> str:
        """GET ``path`` on a Service port: directly in the cluster, else by port-forward to a
        ready pod behind it (the API server's service proxy as the fallback)."""
        ns = ns or self.namespace
        if self.kube.in_cluster:
            return await self._direct(f"http://{service}.{ns}.svc:{port}{path}", query)
        backends = await self._service_backends(service, port, ns)
        last: KubeError | None = None
        for pod, target in backends:
            try:
                return await self.kube.portforward_text(ns, pod, target, path, query)
            except KubeUnreachableError as exc:
                last = exc
            except KubeError as exc:
                if exc.status not in _NO_PORTFORWARD:
                    raise
                break
        else:
            if last is not None:
                raise last
        proxy = f"/api/v1/namespaces/{ns}/services/{quote(service)}:{port}/proxy{path}"
        return await self.kube.get_text(proxy, query)

    async def _service_backends(self, service: str, port: int, ns: str) -> list[tuple[str, int]]:
        """(pod name, container port) of the ready endpoints of a Service port; empty when
        they cannot be read (the proxy is tried then)."""
        try:
            svc = await self.kube.get(self.ns_path("v1", "services", service, ns))
            endpoints = await self.kube.get(self.ns_path("v1", "endpoints", service, ns))
        except KubeUnreachableError:
            raise
        except KubeError:
            return []
        ports = [p for p in (svc.get("spec") or {}).get("ports") or [] if p.get("port") == port]
        name = ports[0].get("name") if ports else None
        found: list[tuple[str, int]] = []
        for subset in endpoints.get("subsets") or []:
            numbers = [
                p.get("port")
                for p in subset.get("ports") or []
                if len(subset.get("ports") or []) == 1 or p.get("name") == name
            ]
            for address in subset.get("addresses") or []:
                ref = address.get("targetRef") or {}
                if ref.get("kind") == "Pod" and ref.get("name") and numbers:
                    found.append((str(ref["name"]), int(numbers[0])))
        return found

    async def pod_text(
        self,
        pod: Obj,
        port: int,
        path: str,
        query: Mapping[str, str] | None = None,
        *,
        headers: Mapping[str, str] | None = None,
        proxy: bool = True,
    ) -> str:
        """GET ``path`` on a pod's port: directly at its IP in the cluster, else by
        port-forward (the API server's pod proxy as the fallback, unless ``proxy`` is False:
        then a refused port-forward is the :class:`KubeError`). ``headers`` go with the
        direct and port-forwarded requests only: the proxy carries the API credentials."""
        meta = pod.get("metadata") or {}
        if self.kube.in_cluster:
            ip = (pod.get("status") or {}).get("podIP")
            if not ip:
                raise KubeError(f"pod {meta.get('name')} has no IP yet")
            host = f"[{ip}]" if ":" in str(ip) else str(ip)
            return await self._direct(f"http://{host}:{port}{path}", query, headers)
        ns = meta.get("namespace") or self.namespace
        name = str(meta.get("name"))
        try:
            return await self.kube.portforward_text(ns, name, port, path, query, headers=headers)
        except KubeUnreachableError:
            raise
        except KubeError as exc:
            if not proxy or exc.status not in _NO_PORTFORWARD:
                raise
        proxied = f"/api/v1/namespaces/{ns}/pods/{quote(name)}:{port}/proxy{path}"
        return await self.kube.get_text(proxied, query)


# Answers to a port-forward upgrade that mean "not this way": no such subresource (404), not
# allowed (403), or a server that does not upgrade (400): the API proxy is tried instead.
_NO_PORTFORWARD = (400, 403, 404)
