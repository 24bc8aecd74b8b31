"""The controller's two listeners and the X.509-SVID its TLS listener presents.

- **TLS** (``--tls-listen``, default ``0.0.0.0:8443``): every route. The server certificate is
  the controller's own **X.509-SVID** from its SPIFFE Workload API (SPIRE in a cluster, the
  embedded issuer under ``up``), not a certificate of the mesh CA: a node must be able to
  verify the controller *before* it registers, and the only trust anchor it has then is the
  SPIFFE bundle its Workload API hands it; SPIRE also rotates the SVID at half-life, and every
  new connection gets the current one (:class:`~x0tta6bl4.tls.server.ServerContexts`) while
  established connections keep theirs, so a rotation drops no node session. Clients are asked
  for their own X.509-SVID (mutual TLS).
- **plain HTTP** (``--listen``, default ``0.0.0.0:8080``): only ``/health``, ``/ready``,
  ``/metrics`` and ``/ui`` (kubelet probes, Prometheus, the guide's ``curl``); any other path
  is answered ``403 tls_required`` with the TLS address in ``detail``, and is never served.

:class:`ControllerTls` fetches the SVID in the background at start (retrying while the
Workload API is not up yet; ``/ready`` reports ``tls_identity`` until it has one) and follows
its rotations.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Protocol

from x0tta6bl4.controller.config import ControllerSettings
from x0tta6bl4.controller.metrics import ControllerMetrics
from x0tta6bl4.identity.errors import IdentityError
from x0tta6bl4.logging import get_logger
from x0tta6bl4.tls.credentials import CredentialSource, TlsCredentials
from x0tta6bl4.tls.server import ListenerOptions, ServerContexts

__all__ = ["PLAIN_PATHS", "ControllerTls", "plain_allowed"]

_log = get_logger(__name__)

#: What the plain-HTTP listener serves (exact paths, and ``/ui/…``).
PLAIN_PATHS = frozenset({"/health", "/ready", "/metrics", "/ui"})


def plain_allowed(path: str) -> bool:
    """Whether ``path`` may be served over plain HTTP."""
    return path in PLAIN_PATHS or path.startswith("/ui/")


class _Startable(Protocol):
    def start(self) -> TlsCredentials: ...

    def stop(self) -> None: ...

    def current(self) -> tuple[int, TlsCredentials]: ...


class ControllerTls:
    """The TLS listener's credentials and options (see the module docstring)."""

    def __init__(
        self,
        settings: ControllerSettings,
        metrics: ControllerMetrics,
        credentials: CredentialSource | None = None,
    ) -> None:
        self.settings = settings
        if credentials is None:
            from x0tta6bl4.identity.workload_source import Backoff, WorkloadSource
            from x0tta6bl4.tls.credentials import WorkloadCredentials

            source = WorkloadSource(
                settings.spiffe_socket,
                trust_domain=settings.trust_domain,
                backoff=Backoff(attempts=2),
            )
            credentials = WorkloadCredentials(source, settings.trust_domain)
        self.credentials = credentials
        self.contexts = ServerContexts(credentials)

        def report(result: str, group: str) -> None:
            metrics.tls_handshakes.labels(result=result, group=group).inc()

        self.options = ListenerOptions(
            tls_ports=frozenset(),
            contexts=self.contexts,
            handshake_timeout=settings.tls_handshake_timeout,
            max_handshakes=settings.tls_max_handshakes,
            on_handshake=report,
        )
        self._task: asyncio.Task[None] | None = None

    @property
    def ready(self) -> bool:
        """Whether the controller has an X.509-SVID to serve TLS with."""
        try:
            self.credentials.current()
        except IdentityError:
            return False
        return True

    def spiffe_id(self) -> str | None:
        """The controller's own SPIFFE ID (None before its SVID arrived)."""
        try:
            _, credentials = self.credentials.current()
        except IdentityError:
            return None
        sid = credentials.spiffe_id
        return None if sid is None else str(sid)

    async def start(self) -> None:
        """Fetch the SVID (in the background, retrying) and follow its rotations."""
        if self.ready or not hasattr(self.credentials, "start"):
            return
        self._task = asyncio.create_task(self._fetch_forever(), name="controller-tls-svid")

    async def _fetch_forever(self) -> None:
        startable = self.credentials
        assert hasattr(startable, "start")
        delay = 0.2
        while True:
            try:
                credentials = await asyncio.to_thread(startable.start)
            except IdentityError as err:
                _log.warning("controller TLS identity unavailable", error=str(err), retry_in=delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)
                continue
            _log.info(
                "controller TLS identity",
                spiffe_id=str(credentials.spiffe_id),
                serial=f"{credentials.serial:x}",
            )
            return

    async def stop(self) -> None:
        """Stop fetching / following rotations."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        stop = getattr(self.credentials, "stop", None)
        if stop is not None:
            await asyncio.to_thread(stop)
