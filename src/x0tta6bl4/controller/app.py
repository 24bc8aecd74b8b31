"""The controller's ASGI application: :func:`create_app`.

Layers, outermost first:

1. :class:`ControllerApp` answers ``GET /health`` itself before any framework machinery
   (liveness probes must stay cheap whatever the framework costs);
2. :class:`_Edge` (plain ASGI middleware) rejects bodies above ``max_body_bytes`` with 413
   (by ``Content-Length`` and while streaming) and records the request metrics
   (``x0tta6bl4_api_requests_total{method,route,status}`` with the route *template* and the
   method from a closed set — anything outside :data:`~x0tta6bl4.controller.metrics.HTTP_METHODS`
   counts as ``OTHER`` — and the duration histogram);
3. FastAPI: routing, request validation against the schemas that also generate
   ``/openapi.json``, and the JSON error answers ``{"error": ..., "detail": ...}``.

The lifespan opens the store, loads the mesh CA, starts the JWT bundle refresher and the
leader-elected expiry of dead nodes; shutdown stops them in reverse order.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import socket
import time
from collections.abc import AsyncIterator, Awaitable, Callable, MutableMapping
from typing import Any

from fastapi import FastAPI, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from spiffe import JwtBundleSet
from starlette.exceptions import HTTPException as StarletteHTTPException

from x0tta6bl4 import __version__
from x0tta6bl4.controller import ui
from x0tta6bl4.controller.api import routes_mesh, routes_nodes
from x0tta6bl4.controller.api.deps import State
from x0tta6bl4.controller.api.errors import ApiError, RequestFailure, error_body, from_refusal
from x0tta6bl4.controller.api.schemas import HealthResponse, ReadyResponse
from x0tta6bl4.controller.auth import Authenticator, read_admin_token
from x0tta6bl4.controller.ca import CaHolder
from x0tta6bl4.controller.config import ControllerSettings
from x0tta6bl4.controller.errors import RequestRefusedError
from x0tta6bl4.controller.ipam import parse_overlay_cidr
from x0tta6bl4.controller.jwt_bundles import JwtBundleCache
from x0tta6bl4.controller.listeners import ControllerTls, plain_allowed
from x0tta6bl4.controller.metrics import CONTENT_TYPE_LATEST, ControllerMetrics, method_label
from x0tta6bl4.controller.registration import Registrar
from x0tta6bl4.controller.startup import (
    FRESH_STORE_HINT,
    StartupRefusedError,
    StoreMarker,
    check_store_at_start,
)
from x0tta6bl4.controller.state import ControllerState
from x0tta6bl4.controller.store.base import Store
from x0tta6bl4.controller.store.errors import (
    SchemaError,
    StoreCorruptError,
    StoreError,
    StoreMissingError,
    StoreUnavailableError,
)
from x0tta6bl4.controller.store.url import open_store
from x0tta6bl4.httpserver import ConnectionLimiter
from x0tta6bl4.logging import get_logger
from x0tta6bl4.tls.credentials import CredentialSource
from x0tta6bl4.tls.server import PEER_EXTENSION

__all__ = ["EXPIRY_LEADER_NAME", "ControllerApp", "create_app", "openapi_document"]

_log = get_logger(__name__)

EXPIRY_LEADER_NAME = "node-expiry"
_HEALTH_BODY = b'{"status":"ok"}'
_HEALTH_START = {
    "type": "http.response.start",
    "status": 200,
    "headers": [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(_HEALTH_BODY)).encode()),
    ],
}
_HEALTH_BODY_MESSAGE = {"type": "http.response.body", "body": _HEALTH_BODY}

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]


class _BodyTooLarge(StarletteHTTPException):
    """Raised from ``receive`` when a streamed body passes the limit (FastAPI re-raises
    HTTPExceptions from body parsing unchanged, so the error handler answers 413)."""

    def __init__(self, limit: int) -> None:
        super().__init__(413, f"request bodies are limited to {limit} bytes")


class ControllerApp(FastAPI):
    """The FastAPI app, answering ``GET /health`` before any framework machinery.

    Liveness probes are the most frequent request and must stay cheap whatever the framework
    costs; the answer and its metrics are the same as every other route's.
    """

    _health_count: Any = None
    _health_time: Any = None

    def bind_health_metrics(self, metrics: ControllerMetrics) -> None:
        """Count ``/health`` in ``metrics`` (children bound once)."""
        self._health_count = metrics.api_requests.labels(
            method="GET", route="/health", status="200"
        )
        self._health_time = metrics.api_duration.labels(method="GET", route="/health")

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await super().__call__(scope, receive, self._clean_startup_failure(send))
            return
        if (
            self._health_count is not None
            and scope["type"] == "http"
            and scope["path"] == "/health"
            and scope["method"] == "GET"
        ):
            start = time.perf_counter()
            await send(_HEALTH_START)
            await send(_HEALTH_BODY_MESSAGE)
            self._health_count.inc()
            self._health_time.observe(time.perf_counter() - start)
            return
        await super().__call__(scope, receive, send)

    def _clean_startup_failure(self, send: Send) -> Send:
        """A refused start (StartupRefusedError) is reported as its message, not as the
        traceback the framework would send to the server's log."""

        async def wrapped(message: Message) -> None:
            error = getattr(self.state, "startup_error", None)
            if message["type"] == "lifespan.startup.failed" and error:
                message = {**message, "message": f"controller refused to start: {error}"}
            await send(message)

        return wrapped


class _Edge:
    """Body-size limit and request metrics around the FastAPI routes."""

    def __init__(
        self, app: ASGIApp, metrics: ControllerMetrics, max_body: int, tls: ControllerTls
    ) -> None:
        self.app = app
        self._metrics = metrics
        self._max_body = max_body
        self._tls = tls

    @property
    def _tls_detail(self) -> str:
        ports = sorted(self._tls.options.tls_ports) or [self._tls.settings.tls_port]
        return (
            f"this route is served over TLS only (mutual TLS with an X.509-SVID) on port "
            f"{ports[0]}; plain HTTP serves /health, /ready, /metrics and /ui"
        )

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        method = method_label(scope["method"])
        start = time.perf_counter()
        status_box = [500]

        async def send_wrapper(message: Message) -> None:
            if message["type"] == "http.response.start":
                status_box[0] = message["status"]
            await send(message)

        if PEER_EXTENSION not in (scope.get("extensions") or {}) and not plain_allowed(
            scope["path"]
        ):
            # Plain HTTP: only the probes, metrics and the UI; never serve an API route here.
            if method == "POST" and _is_admission_path(scope["path"]):
                self._metrics.registrations_rejected.labels(
                    reason=RequestFailure.TLS_REQUIRED
                ).inc()
            await _send_error(send, 403, RequestFailure.TLS_REQUIRED, self._tls_detail)
            self._observe(method, "unmatched", 403, start)
            return
        too_large = _declared_length(scope) > self._max_body
        if too_large:
            await _send_error(send, 413, "body_too_large", self._limit_detail())
            self._observe(method, "unmatched", 413, start)
            return
        received = 0

        async def receive_limited() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self._max_body:
                    raise _BodyTooLarge(self._max_body)
            return message

        await self.app(scope, receive_limited, send_wrapper)
        route = scope.get("route")
        template = getattr(route, "path", None) or "unmatched"
        self._observe(method, template, status_box[0], start)

    def _limit_detail(self) -> str:
        return f"request bodies are limited to {self._max_body} bytes"

    def _observe(self, method: str, route: str, status: int, start: float) -> None:
        self._metrics.api_requests.labels(method=method, route=route, status=str(status)).inc()
        self._metrics.api_duration.labels(method=method, route=route).observe(
            time.perf_counter() - start
        )


def _declared_length(scope: Scope) -> int:
    for name, value in scope["headers"]:
        if name == b"content-length":
            try:
                return int(value)
            except ValueError:
                return 0
    return 0


async def _send_bytes(
    send: Send, status: int, body: bytes, content_type: bytes = b"application/json"
) -> None:
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", content_type),
                (b"content-length", str(len(body)).encode()),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})


async def _send_error(send: Send, status: int, reason: str, detail: str) -> None:
    await _send_bytes(send, status, json.dumps(error_body(reason, detail)).encode())


# --------------------------------------------------------------------------- errors


def _error(
    status: int, reason: str, detail: str, headers: dict[str, str] | None = None
) -> Response:
    return JSONResponse(error_body(reason, detail), status_code=status, headers=headers)


def _is_admission_path(path: str) -> bool:
    return path == "/api/v1/nodes/register" or (
        path.startswith("/api/v1/nodes/") and path.endswith("/renew")
    )


def _is_admission(request: Request) -> bool:
    return request.method == "POST" and _is_admission_path(request.url.path)


def _install_error_handlers(app: FastAPI, metrics: ControllerMetrics) -> None:
    def rejected(request: Request, reason: str) -> None:
        if _is_admission(request):
            metrics.registrations_rejected.labels(reason=reason).inc()

    async def api_error(request: Request, exc: Exception) -> Response:
        if isinstance(exc, RequestRefusedError):
            exc = from_refusal(exc)
        assert isinstance(exc, ApiError)
        rejected(request, exc.reason)
        return _error(exc.status, exc.reason, exc.detail, exc.headers)

    async def validation_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, RequestValidationError)
        errors = exc.errors()
        first = errors[0] if errors else {"loc": (), "msg": "invalid request", "type": ""}
        where = ".".join(str(p) for p in first.get("loc", ()))
        if first.get("type") == "json_invalid":
            rejected(request, RequestFailure.MALFORMED_JSON)
            return _error(
                400, RequestFailure.MALFORMED_JSON, f"the body is not valid JSON: {first['msg']}"
            )
        if first.get("type") == "extra_forbidden":
            rejected(request, RequestFailure.UNKNOWN_FIELD)
            return _error(422, RequestFailure.UNKNOWN_FIELD, f"{where}: unknown field")
        rejected(request, RequestFailure.INVALID_REQUEST)
        return _error(
            422, RequestFailure.INVALID_REQUEST, f"{where}: {first.get('msg', 'invalid')}"
        )

    async def http_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, StarletteHTTPException)
        reasons = {404: "not_found", 405: "method_not_allowed", 413: "body_too_large"}
        reason = reasons.get(exc.status_code, f"http_{exc.status_code}")
        return _error(exc.status_code, reason, str(exc.detail), dict(exc.headers or {}))

    async def store_error(request: Request, exc: Exception) -> Response:
        if isinstance(exc, StoreCorruptError):
            # Rate-limited like every error line (x0tta6bl4.logging): a damaged record read
            # by every request must not flood the log.
            rejected(request, RequestFailure.STORE_CORRUPT)
            _log.error("store record damaged", where=exc.where, fault=exc.fault)
            return _error(503, "store_corrupt", f"the store is damaged: {exc}")
        rejected(request, RequestFailure.STORE_UNAVAILABLE)
        if isinstance(exc, StoreUnavailableError):
            return _error(
                503,
                RequestFailure.STORE_UNAVAILABLE,
                "the store did not answer; retry",
                {"Retry-After": "1"},
            )
        _log.error("store error", error=f"{type(exc).__name__}: {exc}")
        return _error(503, "store_error", f"{type(exc).__name__}", {"Retry-After": "1"})

    app.add_exception_handler(ApiError, api_error)
    app.add_exception_handler(RequestRefusedError, api_error)
    app.add_exception_handler(RequestValidationError, validation_error)
    app.add_exception_handler(StarletteHTTPException, http_error)
    app.add_exception_handler(StoreError, store_error)


# --------------------------------------------------------------------------- system routes


def _install_system_routes(app: FastAPI) -> None:
    @app.get("/health", response_model=HealthResponse, tags=["system"], summary="Liveness")
    async def health() -> dict[str, str]:
        """Always 200 while the process serves requests (answered by the edge layer)."""
        return {"status": "ok"}  # pragma: no cover - the edge layer answers first

    @app.get(
        "/ready",
        response_model=ReadyResponse,
        responses={503: {"model": ReadyResponse}},
        tags=["system"],
        summary="Readiness: store reachable, mesh CA loaded, TLS identity fetched",
    )
    async def ready(state: State) -> Response:
        """200 when the store answers a ping, holds no damaged record, the mesh CA is loaded
        and the TLS listener has the controller's X.509-SVID, else 503 with the reasons."""
        reasons: list[str] = []
        store_ok = state.store_open and await state.store.ping()
        faults: dict[str, str] = {}
        if store_ok:
            try:
                faults = await state.store.recheck_faults()
            except StoreError:
                store_ok = False
        state.metrics.store_up.set(1 if store_ok else 0)
        state.metrics.store_faults.set(len(state.store.faults))
        if not store_ok:
            reasons.append("store_unreachable")
        if faults:
            reasons.append("store_corrupt")
        ca_ok = state.ca.current() is not None
        state.metrics.ca_loaded.set(1 if ca_ok else 0)
        if not ca_ok:
            reasons.append("mesh_ca_not_loaded")
        identity_ok = state.bundles.get() is not None
        tls_ok = state.tls is not None and state.tls.ready
        if not tls_ok:
            reasons.append("tls_identity_unavailable")
        body = {
            "status": "ready" if not reasons else "not_ready",
            "store": store_ok,
            "mesh_ca": ca_ok,
            "identity": identity_ok,
            "tls_identity": tls_ok,
            "reasons": reasons,
            "store_faults": [f"{where}: {fault}" for where, fault in faults.items()][:10],
        }
        return JSONResponse(body, status_code=200 if not reasons else 503)

    @app.get(
        "/metrics",
        tags=["system"],
        summary="Prometheus metrics",
        response_class=Response,
        responses={200: {"content": {"text/plain": {}}}},
    )
    async def metrics(state: State) -> Response:
        """Prometheus text exposition (see docs/metrics.md)."""
        await _refresh_gauges(state)
        return Response(state.metrics.render(), media_type=CONTENT_TYPE_LATEST)


async def _refresh_gauges(state: ControllerState) -> None:
    ok = False
    if state.store_open:
        try:
            async with asyncio.timeout(2.0):
                ok = await state.store.ping()
                if ok:
                    nodes = len(await state.store.list_nodes())
                    state.metrics.mesh_nodes.set(nodes)
                    if nodes and state.marker is not None:
                        state.marker.record(state.store.location)
        except StoreCorruptError:
            pass  # reachable, but a record is damaged: x0tta6bl4_store_faults says so
        except (StoreError, TimeoutError):
            ok = False
    state.metrics.store_up.set(1 if ok else 0)
    state.metrics.store_faults.set(len(state.store.faults))
    state.metrics.ca_loaded.set(1 if state.ca.current() is not None else 0)


# --------------------------------------------------------------------------- background work


async def _expire_forever(state: ControllerState) -> None:
    """Leader-elected: delete nodes not heard from within ``node_ttl``."""
    ttl = max(3.0, min(15.0, state.settings.node_ttl))
    period = max(0.5, state.settings.node_ttl / 4)
    while True:
        try:
            async with state.store.leader(EXPIRY_LEADER_NAME, state.replica_id, ttl) as lead:
                state.metrics.is_leader.set(1)
                _log.info("leader for node expiry", replica=state.replica_id)
                while not lead.lost.is_set():
                    try:
                        expired = await state.store.expire_nodes(
                            state.clock() - state.settings.node_ttl
                        )
                    except StoreUnavailableError:
                        expired = []
                    if expired:
                        state.metrics.nodes_expired.inc(len(expired))
                        _log.info("nodes expired", count=len(expired), node_ids=expired[:20])
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(lead.lost.wait(), period)
        except StoreError as err:
            _log.warning("node expiry paused", error=type(err).__name__)
        finally:
            state.metrics.is_leader.set(0)
        await asyncio.sleep(1.0)


def _default_fetch(settings: ControllerSettings) -> Callable[[], JwtBundleSet]:
    from x0tta6bl4.identity.workload_source import Backoff, WorkloadSource

    # Few in-call retries: JwtBundleCache retries on its own schedule, and a blocked worker
    # thread would delay shutdown.
    source = WorkloadSource(
        settings.spiffe_socket, trust_domain=settings.trust_domain, backoff=Backoff(attempts=2)
    )
    return source.fetch_jwt_bundles


def create_app(
    settings: ControllerSettings,
    *,
    jwt_bundle_fetch: Callable[[], JwtBundleSet] | None = None,
    store: Store | None = None,
    clock: Callable[[], float] = time.time,
    expiry: bool = True,
    limiter: ConnectionLimiter | None = None,
    tls_credentials: CredentialSource | None = None,
) -> ControllerApp:
    """Build the controller app for ``settings``.

    ``jwt_bundle_fetch`` returns the JWT bundles (default: fetched from the Workload API at
    ``settings.spiffe_socket``); ``store`` replaces the store named by ``settings.store_url``
    (it is opened and closed by the app's lifespan either way); ``limiter``, the connection
    limiter of the server's listeners, is reported in the metrics; ``tls_credentials``
    replaces the X.509-SVID the TLS listener presents (default: from the Workload API). Raises
    :class:`~x0tta6bl4.controller.ca.CaConfigError` or :class:`ValueError` for an unusable
    CA or admin token file, before anything starts.
    """
    metrics = ControllerMetrics()
    if limiter is not None:
        metrics.bind_connections(limiter)
    ca = CaHolder.from_settings(
        trust_domain=settings.trust_domain,
        state_dir=settings.state_dir,
        ca_cert_file=settings.ca_cert_file,
        ca_key_file=settings.ca_key_file,
        local_ca=settings.local_ca,
        defer_create=True,  # created by the lifespan once the store is checked
    )
    if not ca.pending:
        ca.load()
    the_store = (
        store
        if store is not None
        else open_store(
            settings.store_url,
            state_dir=settings.state_dir,
            node_ttl=int(settings.node_ttl),
            etcd_tls=settings.etcd_tls,
        )
    )
    marker = StoreMarker(settings.state_dir)
    held_nodes = marker.held_nodes(the_store.location)
    # A store this state directory saw holding nodes is never silently created anew.
    the_store.create = settings.fresh_store or not held_nodes
    bundles = JwtBundleCache(jwt_bundle_fetch or _default_fetch(settings))
    admin_token = read_admin_token(settings.admin_token_file) if settings.admin_token_file else None
    auth = Authenticator(
        trust_domain=settings.trust_domain,
        bundles=bundles.get,
        refresh_bundles=bundles.refresh_soon,
        admin_token=admin_token,
        admin_spiffe_ids=settings.admin_spiffe_ids,
    )
    network = parse_overlay_cidr(settings.overlay_cidr)
    tls = ControllerTls(settings, metrics, tls_credentials)
    registrar = Registrar(
        store=the_store,
        ca=ca,
        metrics=metrics,
        trust_domain=settings.trust_domain,
        network=network,
        svid_ttl=settings.pq_svid_ttl,
        clock_skew=settings.clock_skew_seconds,
        node_mapping=settings.node_mapping,
        clock=clock,
    )
    state = ControllerState(
        settings=settings,
        store=the_store,
        ca=ca,
        auth=auth,
        metrics=metrics,
        registrar=registrar,
        network=network,
        bundles=bundles,
        replica_id=f"{socket.gethostname()}-{os.getpid()}-{os.urandom(4).hex()}",
        clock=clock,
        marker=marker,
        tls=tls,
    )

    async def open_checked_store() -> None:
        try:
            await the_store.open()
        except StoreMissingError as exc:
            raise StartupRefusedError(
                f"{exc}, but {marker.path} records that this store held nodes: it was lost, "
                "truncated or replaced. Restore it (e.g. from a backup); "
                f"{FRESH_STORE_HINT}"
            ) from None
        except StoreCorruptError as exc:
            raise StartupRefusedError(
                f"the store {exc.where} is damaged ({exc.fault}). Restore it from a backup; "
                f"{FRESH_STORE_HINT}"
            ) from None
        except SchemaError as exc:
            raise StartupRefusedError(str(exc)) from None
        state.store_open = True
        await check_store_at_start(
            the_store, ca, marker, trust_domain=settings.trust_domain, now=clock()
        )

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        try:
            await open_checked_store()
        except StartupRefusedError as exc:
            app.state.startup_error = str(exc)  # logged by the server, see __call__
            state.store_open = False
            await the_store.close()
            raise
        await tls.start()
        await bundles.refresh()
        bundles.start()
        expirer = asyncio.create_task(_expire_forever(state)) if expiry else None
        _log.info(
            "controller started",
            tls=settings.tls_listen,
            listen=settings.listen,
            store=settings.store_url.split("://")[0],
            fresh_store=the_store.create,
            trust_domain=settings.trust_domain,
            replica=state.replica_id,
        )
        try:
            yield
        finally:
            if expirer is not None:
                expirer.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await expirer
            await tls.stop()
            await bundles.stop()
            state.store_open = False
            await the_store.close()
            _log.info("controller stopped")

    app = _build_api(lifespan)
    app.bind_health_metrics(metrics)
    app.state.controller = state
    app.add_middleware(_Edge, metrics=metrics, max_body=settings.max_body_bytes, tls=tls)
    _install_error_handlers(app, metrics)
    return app


def _build_api(lifespan: Any = None) -> ControllerApp:
    app = ControllerApp(
        title="x0tta6bl4 controller",
        version=__version__,
        description=(
            "Control plane of the x0tta6bl4 post-quantum mesh: node admission (JWT-SVID + "
            "ML-DSA-65 proof of possession), PQ SVIDs, overlay addresses, policy, watch."
        ),
        lifespan=lifespan,
        docs_url=None,
        redoc_url=None,
    )
    _install_system_routes(app)
    app.include_router(routes_nodes.router)
    app.include_router(routes_mesh.router)
    app.include_router(ui.router)  # read-only topology page (controller/ui.py)
    return app


def openapi_document() -> dict[str, Any]:
    """The OpenAPI document every controller serves at ``/openapi.json`` (no app needed)."""
    document: dict[str, Any] = _build_api().openapi()
    return document
