"""A thin async Kubernetes client for the checks, on :mod:`kubernetes_asyncio`.

``kubernetes_asyncio`` loads the configuration (a kubeconfig file and context, or the pod's
service account in the cluster) and does authentication and TLS; the checks then read raw
JSON by API path (``/apis/apps/v1/namespaces/NS/deployments/NAME``), exactly as ``kubectl
get --raw`` would, and work on plain dicts. That keeps the checks independent of the
generated model classes and makes the API calls they make explicit (the test double for the
API server answers exactly these paths).

Errors: :class:`KubeUnreachableError` (no connection or no answer),
:class:`KubeNotFoundError` (404), :class:`KubeError` (any other non-2xx answer, with the API
server's ``Status.message``).
No message ever contains the bearer token or a client key.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlencode

import aiohttp
from kubernetes_asyncio import client as k8s_client
from kubernetes_asyncio import config as k8s_config
from kubernetes_asyncio.config.config_exception import ConfigException
from kubernetes_asyncio.config.incluster_config import InClusterConfigLoader

__all__ = [
    "SERVICE_ACCOUNT_DIR",
    "KubeClient",
    "KubeConfigError",
    "KubeError",
    "KubeNotFoundError",
    "KubeUnreachableError",
    "Obj",
]

Obj = dict[str, Any]

SERVICE_ACCOUNT_DIR = Path("/var/run/secrets/kubernetes.io/serviceaccount")
"""Where the kubelet mounts a pod's service-account token and the cluster CA."""

_MAX_BODY = 8 * 1024 * 1024


class KubeError(Exception):
    """The API server answered a request with an error (``status`` is the HTTP status)."""

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


class KubeNotFoundError(KubeError):
    """The object (or API) does not exist: HTTP 404."""


class KubeUnreachableError(KubeError):
    """No connection to the API server, or no answer in time."""


class KubeConfigError(KubeError):
    """The kubeconfig (or the in-cluster service account) cannot be loaded."""


def _status_message(body: bytes) -> str:
    """The ``message`` of a Kubernetes ``Status`` body, else the start of the body."""
    try:
        data = json.loads(body)
    except ValueError:
        return body[:200].decode("utf-8", "replace").strip()
    if isinstance(data, dict) and isinstance(data.get("message"), str):
        return str(data["message"])[:500]
    return body[:200].decode("utf-8", "replace").strip()


@dataclass(frozen=True, slots=True)
class _Target:
    host: str
    in_cluster: bool


async def _read_bounded(stream: aiohttp.StreamReader, limit: int) -> bytes:
    """The whole body, up to ``limit`` bytes. (``StreamReader.read(n)`` returns what has
    arrived so far: a real API server's larger answers come in several chunks, which the first
    read would cut — found against the real cluster of scripts/cluster.)"""
    chunks: list[bytes] = []
    size = 0
    while size < limit:
        chunk = await stream.read(limit - size)
        if not chunk:
            break
        chunks.append(chunk)
        size += len(chunk)
    return b"".join(chunks)


class KubeClient:
    """Raw JSON access to one API server. Create with :meth:`connect`, close with
    :meth:`close` (or ``async with``)."""

    def __init__(self, api: k8s_client.ApiClient, target: _Target, timeout: float) -> None:
        self._api = api
        self._target = target
        self._timeout = timeout

    @property
    def host(self) -> str:
        """The API server's base URL."""
        return self._target.host

    @property
    def in_cluster(self) -> bool:
        """True when connected with the pod's service account (``--in-cluster``)."""
        return self._target.in_cluster

    @classmethod
    async def connect(
        cls,
        *,
        kubeconfig: str | Path | None = None,
        context: str | None = None,
        in_cluster: bool = False,
        service_account_dir: Path = SERVICE_ACCOUNT_DIR,
        environ: Mapping[str, str] | None = None,
        timeout: float = 10.0,
    ) -> KubeClient:
        """Load the configuration and return a client (no request is made yet).

        ``in_cluster`` uses the service account token and CA under ``service_account_dir``
        and ``KUBERNETES_SERVICE_HOST``/``PORT`` from ``environ`` (default ``os.environ``);
        otherwise ``kubeconfig`` (default ``$KUBECONFIG`` or ``~/.kube/config``) and
        ``context`` (default: the file's current context).
        """
        configuration = k8s_client.Configuration()
        try:
            if in_cluster:
                InClusterConfigLoader(
                    token_filename=str(service_account_dir / "token"),
                    cert_filename=str(service_account_dir / "ca.crt"),
                    environ=dict(os.environ if environ is None else environ),
                ).load_and_set(configuration)
            else:
                path = kubeconfig
                if path is None:
                    env = os.environ if environ is None else environ
                    first = env.get("KUBECONFIG", "").split(os.pathsep)[0]
                    path = first or Path("~/.kube/config").expanduser()
                if not Path(path).is_file():
                    raise KubeConfigError(f"kubeconfig {path} does not exist")
                await k8s_config.load_kube_config(
                    config_file=str(path),
                    context=context,
                    client_configuration=configuration,
                    persist_config=False,
                )
        except ConfigException as exc:
            where = "the in-cluster service account" if in_cluster else "the kubeconfig"
            raise KubeConfigError(f"cannot load {where}: {exc}") from None
        api = k8s_client.ApiClient(configuration)
        return cls(api, _Target(str(configuration.host), in_cluster), timeout)

    async def close(self) -> None:
        """Close the HTTP connection pool."""
        await self._api.close()

    async def __aenter__(self) -> KubeClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def _request(
        self,
        method: str,
        path: str,
        query: Mapping[str, str] | None = None,
        body: object = None,
    ) -> bytes:
        headers = {"Accept": "application/json, */*"}
        if body is not None:
            headers["Content-Type"] = "application/json"
        try:
            response = await self._api.call_api(
                path,
                method,
                query_params=list((query or {}).items()),
                header_params=headers,
                body=body,
                auth_settings=["BearerToken"],
                _preload_content=False,
                _request_timeout=self._timeout,
            )
            async with response:
                data = await _read_bounded(response.content, _MAX_BODY)
                status = int(response.status)
        except (aiohttp.ClientError, OSError) as exc:
            raise KubeUnreachableError(
                f"cannot reach the API server at {self.host}: {type(exc).__name__}: {exc}"
            ) from None
        except TimeoutError:
            raise KubeUnreachableError(
                f"the API server at {self.host} did not answer {method} {path} "
                f"within {self._timeout:g} s"
            ) from None
        if status == 404:
            raise KubeNotFoundError(f"{path}: not found ({_status_message(data)})", status)
        if not 200 <= status < 300:
            raise KubeError(f"{method} {path}: HTTP {status}: {_status_message(data)}", status)
        return data

    async def get(self, path: str, query: Mapping[str, str] | None = None) -> Obj:
        """GET ``path`` and return the JSON object."""
        data = await self._request("GET", path, query)
        return self._json(path, data)

    async def get_or_none(self, path: str, query: Mapping[str, str] | None = None) -> Obj | None:
        """Like :meth:`get`, but ``None`` when the object does not exist."""
        try:
            return await self.get(path, query)
        except KubeNotFoundError:
            return None

    async def items(self, path: str, query: Mapping[str, str] | None = None) -> list[Obj]:
        """The ``items`` of a list at ``path``."""
        listing = await self.get(path, query)
        items = listing.get("items")
        if not isinstance(items, list):
            raise KubeError(f"GET {path}: the answer has no items list")
        return [i for i in items if isinstance(i, dict)]

    async def get_text(self, path: str, query: Mapping[str, str] | None = None) -> str:
        """GET ``path`` (e.g. a service proxy to ``/metrics``) and return the body as text."""
        return (await self._request("GET", path, query)).decode("utf-8", "replace")

    async def portforward_text(
        self,
        namespace: str,
        pod: str,
        port: int,
        path: str,
        query: Mapping[str, str] | None = None,
        *,
        headers: Mapping[str, str] | None = None,
    ) -> str:
        """GET ``path`` on ``port`` of a pod through ``pods/portforward`` (what ``kubectl
        port-forward`` uses; see :mod:`x0tta6bl4.check.portforward`) and return the body."""
        from x0tta6bl4.check.portforward import PortForwardError, http_get

        auth: dict[str, str] = {}
        await self._api.update_params_for_auth(auth, [], ["BearerToken"])
        url = f"{self.host}/api/v1/namespaces/{quote(namespace)}/pods/{quote(pod)}/portforward"
        target = path + ("?" + urlencode(dict(query)) if query else "")
        try:
            status, body = await http_get(
                self._api.rest_client.pool_manager,
                url,
                auth,
                port,
                target,
                timeout=self._timeout,
                max_body=_MAX_BODY,
                request_headers=headers,
            )
        except PortForwardError as exc:
            if exc.status == 404:
                raise KubeNotFoundError(f"{url}: {exc}", 404) from None
            if exc.status is not None:
                raise KubeError(f"{pod}:{port}{path}: {exc}", exc.status) from None
            raise KubeUnreachableError(f"{pod}:{port}{path}: {exc}") from None
        if status != 200:
            raise KubeError(f"GET {pod}:{port}{path} (port-forward): HTTP {status}", status)
        return body.decode("utf-8", "replace")

    async def post(self, path: str, body: Obj) -> Obj:
        """POST a JSON object to ``path`` and return the JSON answer."""
        data = await self._request("POST", path, None, body)
        return self._json(path, data)

    @staticmethod
    def _json(path: str, data: bytes) -> Obj:
        try:
            value = json.loads(data)
        except ValueError:
            raise KubeError(f"{path}: the answer is not JSON") from None
        if not isinstance(value, dict):
            raise KubeError(f"{path}: the answer is not a JSON object")
        return value

    async def can_i(
        self, verb: str, group: str, resource: str, namespace: str | None = None
    ) -> tuple[bool, str]:
        """A SelfSubjectAccessReview: (allowed, reason) for ``verb`` on ``group/resource``."""
        attributes: Obj = {"verb": verb, "group": group, "resource": resource}
        if namespace is not None:
            attributes["namespace"] = namespace
        review = await self.post(
            "/apis/authorization.k8s.io/v1/selfsubjectaccessreviews",
            {
                "apiVersion": "authorization.k8s.io/v1",
                "kind": "SelfSubjectAccessReview",
                "spec": {"resourceAttributes": attributes},
            },
        )
        status = review.get("status") or {}
        return bool(status.get("allowed")), str(status.get("reason") or "")
