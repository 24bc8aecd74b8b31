"""A SPIFFE Workload API source built on py-spiffe's :class:`spiffe.WorkloadApiClient`.

:class:`WorkloadSource` fetches X.509-SVIDs, bundles and JWT-SVIDs from the Workload API
socket (SPIRE's agent in a cluster, ``x0tta6bl4 identity serve`` locally), verifies every
X.509-SVID before handing it out (trust domain, validity, chain to the bundle), retries
transient failures with exponential backoff, and turns failures into specific
:mod:`x0tta6bl4.identity.errors` with a message that says what to do, never a raw gRPC
traceback.

After :meth:`WorkloadSource.start` a background thread keeps a stream of X.509 contexts open,
reconnecting with backoff when the endpoint goes away, and tells every listener registered
with :meth:`WorkloadSource.on_rotate` about each new SVID (controller registration and the
node's PQ SVID renewal subscribe there); :meth:`WorkloadSource.on_error` listeners hear about
failures while the source keeps the last good SVID.

Socket resolution: the explicit argument, else ``SPIFFE_ENDPOINT_SOCKET``, else
``X0_SPIFFE_SOCKET``, else :data:`DEFAULT_SOCKET` (where the SPIRE Helm chart mounts the agent
socket). ``unix:///path``, ``unix:/path`` and plain ``/path`` are accepted.
"""

from __future__ import annotations

import errno
import os
import queue
import socket
import stat
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Final, TypeVar

import grpc
import structlog
from spiffe import (
    JwtBundleSet,
    JwtSvid,
    SpiffeId,
    TrustDomain,
    WorkloadApiClient,
    X509BundleSet,
    X509Svid,
)
from spiffe.errors import PySpiffeError
from spiffe.workloadapi.x509_context import X509Context

from x0tta6bl4.identity.errors import (
    IdentityError,
    NoIdentityError,
    SocketNotFoundError,
    SocketPermissionError,
    SocketRefusedError,
    WorkloadApiError,
    WorkloadApiRejectedError,
    WorkloadApiUnavailableError,
)
from x0tta6bl4.identity.spiffe_ids import DEFAULT_TRUST_DOMAIN, parse_trust_domain
from x0tta6bl4.identity.verify import validate_jwt_svid, verify_x509_svid

__all__ = [
    "DEFAULT_SOCKET",
    "Backoff",
    "ErrorListener",
    "RotationListener",
    "SvidUpdate",
    "WorkloadSource",
    "probe_socket",
    "resolve_socket_path",
]

DEFAULT_SOCKET: Final = "/run/spire/agent-sockets/spire-agent.sock"
_ENV_VARS: Final = ("SPIFFE_ENDPOINT_SOCKET", "X0_SPIFFE_SOCKET")
_log = structlog.get_logger(__name__)
_T = TypeVar("_T")
# Worth another attempt: the endpoint may come (back) up.
_TRANSIENT: Final = (SocketNotFoundError, SocketRefusedError, WorkloadApiUnavailableError)


def resolve_socket_path(explicit: str | os.PathLike[str] | None = None) -> Path:
    """The Workload API socket path (see the module docstring for the order)."""
    raw: str | None = os.fspath(explicit) if explicit is not None else None
    if not raw:
        raw = next((os.environ[v] for v in _ENV_VARS if os.environ.get(v)), DEFAULT_SOCKET)
    value = raw
    if value.startswith("unix:"):
        value = value[len("unix:") :]
        if value.startswith("//"):
            value = value[2:]
    elif "://" in value:
        raise WorkloadApiError(
            f"SPIFFE endpoint {raw!r} is not supported: only Unix sockets (unix:///path)"
        )
    if not value.startswith("/"):
        raise WorkloadApiError(f"SPIFFE endpoint socket {raw!r} must be an absolute path")
    return Path(value)


def probe_socket(path: Path) -> None:
    """Check that ``path`` is a Unix socket we may connect to and that something listens.

    Raises :class:`SocketNotFoundError`, :class:`SocketPermissionError` or
    :class:`SocketRefusedError` with a message that says what to check.
    """
    try:
        st = path.stat()
    except FileNotFoundError:
        raise SocketNotFoundError(
            f"SPIFFE Workload API socket {path} does not exist: is the SPIRE agent (or "
            "`x0tta6bl4 identity serve`) running, and is its socket mounted here? Set "
            "SPIFFE_ENDPOINT_SOCKET or --spiffe-socket if it lives elsewhere"
        ) from None
    except PermissionError:
        raise SocketPermissionError(
            f"SPIFFE Workload API socket {path} is not reachable: permission denied on a "
            f"parent directory for uid {os.geteuid()}"
        ) from None
    if not stat.S_ISSOCK(st.st_mode):
        raise SocketRefusedError(f"SPIFFE Workload API endpoint {path} is not a Unix socket")
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        probe.settimeout(2.0)
        probe.connect(str(path))
    except OSError as err:
        if err.errno in (errno.EACCES, errno.EPERM):
            raise SocketPermissionError(
                f"SPIFFE Workload API socket {path} is not accessible to uid {os.geteuid()} "
                "(permission denied): check the socket's mode and the pod's volume mount"
            ) from None
        if err.errno == errno.ECONNREFUSED:
            raise SocketRefusedError(
                f"SPIFFE Workload API socket {path} refuses connections: nothing is "
                "listening (the agent may have stopped or be restarting)"
            ) from None
        raise SocketRefusedError(
            f"cannot connect to SPIFFE Workload API socket {path}: {err}"
        ) from None
    finally:
        probe.close()


@dataclass(frozen=True)
class Backoff:
    """Exponential backoff: ``initial``, ``initial*factor``, … capped at ``max_delay``.

    ``attempts`` bounds one-shot calls (the stream watcher retries forever).
    """

    initial: float = 0.1
    factor: float = 2.0
    max_delay: float = 5.0
    attempts: int = 5

    def __post_init__(self) -> None:
        if self.initial <= 0 or self.factor < 1 or self.max_delay < self.initial:
            raise ValueError("backoff needs initial > 0, factor >= 1, max_delay >= initial")
        if self.attempts < 1:
            raise ValueError("backoff needs at least one attempt")

    def delays(self) -> Iterator[float]:
        """The delays between attempts, forever."""
        delay = self.initial
        while True:
            yield delay
            delay = min(delay * self.factor, self.max_delay)


@dataclass(frozen=True)
class SvidUpdate:
    """A new, verified X.509 context; ``previous`` is None for the first one."""

    previous: X509Context | None
    current: X509Context

    @property
    def svid(self) -> X509Svid:
        """The current default X.509-SVID."""
        return self.current.default_svid

    @property
    def spiffe_id(self) -> SpiffeId:
        """The SPIFFE ID of the current default SVID."""
        return self.current.default_svid.spiffe_id


RotationListener = Callable[[SvidUpdate], None]
ErrorListener = Callable[[IdentityError], None]


def _serials(ctx: X509Context | None) -> tuple[int, ...]:
    return () if ctx is None else tuple(s.leaf.serial_number for s in ctx.x509_svids)


class WorkloadSource:
    """X.509 and JWT identity from the SPIFFE Workload API. Thread-safe."""

    def __init__(
        self,
        socket_path: str | os.PathLike[str] | None = None,
        *,
        trust_domain: str | TrustDomain | None = DEFAULT_TRUST_DOMAIN,
        backoff: Backoff | None = None,
        timeout: float = 5.0,
    ) -> None:
        """``trust_domain=None`` accepts an SVID of any trust domain (still verified)."""
        self._path = resolve_socket_path(socket_path)
        self._trust_domain = None if trust_domain is None else parse_trust_domain(trust_domain)
        self._backoff = backoff or Backoff()
        self._timeout = timeout
        self._lock = threading.Lock()
        self._current: X509Context | None = None
        self._rotation_listeners: list[RotationListener] = []
        self._error_listeners: list[ErrorListener] = []
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # -- properties ---------------------------------------------------------------------

    @property
    def socket_path(self) -> Path:
        """The Workload API socket this source talks to."""
        return self._path

    @property
    def trust_domain(self) -> TrustDomain | None:
        """The trust domain SVIDs must belong to (None: any)."""
        return self._trust_domain

    @property
    def current(self) -> X509Context | None:
        """The last verified X.509 context (None before the first)."""
        with self._lock:
            return self._current

    # -- one-shot calls -----------------------------------------------------------------

    def _client(self) -> WorkloadApiClient:
        probe_socket(self._path)
        try:
            return WorkloadApiClient(f"unix://{self._path}", default_timeout=self._timeout)
        except PySpiffeError as err:  # the socket vanished between probe and here
            raise SocketNotFoundError(f"SPIFFE Workload API socket {self._path}: {err}") from err

    def _translate(self, err: PySpiffeError) -> IdentityError:
        cause = err.__cause__
        code = cause.code() if isinstance(cause, grpc.Call) else None
        details = cause.details() if isinstance(cause, grpc.Call) else str(err)
        where = f"SPIFFE Workload API at {self._path}"
        if code == grpc.StatusCode.PERMISSION_DENIED:
            return NoIdentityError(
                f"{where} has no identity for this workload (uid {os.geteuid()}): {details}. "
                "Register one: a ClusterSPIFFEID/SPIRE entry in a cluster, "
                "--entry UID=SPIFFE_ID for `x0tta6bl4 identity serve`"
            )
        if code == grpc.StatusCode.INVALID_ARGUMENT:
            return WorkloadApiRejectedError(f"{where} rejected the request: {details}")
        if code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED):
            try:
                probe_socket(self._path)  # say *why* if the socket itself is the problem
            except WorkloadApiError as specific:
                return specific
            return WorkloadApiUnavailableError(f"{where} is unavailable: {details}")
        if code is not None:
            return WorkloadApiError(f"{where} failed: {details} ({code.name})")
        return WorkloadApiError(f"{where} sent a response we cannot use: {err}")

    def _call(self, fn: Callable[[WorkloadApiClient], _T]) -> _T:
        delays = self._backoff.delays()
        for attempt in range(1, self._backoff.attempts + 1):
            try:
                return self._call_once(fn)
            except _TRANSIENT as err:
                if attempt == self._backoff.attempts:
                    raise type(err)(
                        f"{err} (gave up after {attempt} attempt{'s' * (attempt > 1)})"
                    ) from None
                time.sleep(next(delays))
        raise AssertionError("unreachable")  # pragma: no cover

    def _verified(self, ctx: X509Context) -> X509Context:
        if not ctx.x509_svids:
            raise WorkloadApiError(f"SPIFFE Workload API at {self._path} returned no X.509-SVID")
        for svid in ctx.x509_svids:
            verify_x509_svid(svid, ctx.x509_bundle_set, trust_domain=self._trust_domain)
        return ctx

    def fetch_x509_context(self) -> X509Context:
        """Fetch and verify the X.509-SVIDs and bundles (with retries)."""
        return self._verified(self._call(lambda c: c.fetch_x509_context()))

    def fetch_x509_svid(self) -> X509Svid:
        """Fetch and verify the default X.509-SVID."""
        return self.fetch_x509_context().default_svid

    def fetch_x509_bundles(self) -> X509BundleSet:
        """Fetch the X.509 bundles, keyed by trust domain."""
        return self._call(lambda c: c.fetch_x509_bundles())

    def fetch_jwt_svid(
        self, audience: str, *extra_audiences: str, subject: SpiffeId | None = None
    ) -> JwtSvid:
        """Fetch a JWT-SVID for ``audience`` (and ``extra_audiences``)."""
        if not audience or not all(extra_audiences):
            raise WorkloadApiRejectedError("a JWT-SVID needs a non-empty audience")
        wanted = {audience, *extra_audiences}
        svid = self._call(lambda c: c.fetch_jwt_svid(wanted, subject))
        if self._trust_domain is not None and svid.spiffe_id.trust_domain != self._trust_domain:
            raise WorkloadApiError(
                f"SPIFFE Workload API at {self._path} issued a JWT-SVID for "
                f"{str(svid.spiffe_id)!r}, outside trust domain {self._trust_domain.name!r}"
            )
        return svid

    def fetch_jwt_bundles(self) -> JwtBundleSet:
        """Fetch the JWT bundles, keyed by trust domain."""
        return self._call(lambda c: c.fetch_jwt_bundles())

    def validate_jwt_svid(self, token: str, audience: str) -> SpiffeId:
        """Validate ``token`` for ``audience`` locally against freshly fetched JWT bundles.

        Raises the specific :class:`~x0tta6bl4.identity.errors.JwtSvidError`.
        """
        return validate_jwt_svid(
            token, audience, self.fetch_jwt_bundles(), trust_domain=self._trust_domain
        )

    # -- listeners ----------------------------------------------------------------------

    def on_rotate(self, listener: RotationListener) -> Callable[[], None]:
        """Call ``listener(update)`` for every new verified SVID; returns an unsubscribe.

        Listeners run on the watcher thread, one after the other; an exception in one is
        logged and does not stop the others or the watcher.
        """
        with self._lock:
            self._rotation_listeners.append(listener)
        return lambda: self._remove(self._rotation_listeners, listener)

    def on_error(self, listener: ErrorListener) -> Callable[[], None]:
        """Call ``listener(error)`` when the watcher fails (it keeps retrying)."""
        with self._lock:
            self._error_listeners.append(listener)
        return lambda: self._remove(self._error_listeners, listener)

    def _remove(self, listeners: list[_T], listener: _T) -> None:
        with self._lock:
            if listener in listeners:
                listeners.remove(listener)

    def _publish(self, ctx: X509Context) -> None:
        with self._lock:
            previous = self._current
            if _serials(previous) == _serials(ctx):
                return
            self._current = ctx
            listeners = list(self._rotation_listeners)
        update = SvidUpdate(previous=previous, current=ctx)
        _log.info(
            "identity.svid.updated",
            spiffe_id=str(update.spiffe_id),
            serial=f"{update.svid.leaf.serial_number:x}",
            expires=update.svid.leaf.not_valid_after_utc.isoformat(),
        )
        for listener in listeners:
            try:
                listener(update)
            except Exception:
                _log.exception("identity.svid.listener_failed", listener=repr(listener))

    def _report(self, error: IdentityError) -> None:
        _log.warning("identity.workload_api.error", error=str(error))
        with self._lock:
            listeners = list(self._error_listeners)
        for listener in listeners:
            try:
                listener(error)
            except Exception:
                _log.exception("identity.svid.error_listener_failed", listener=repr(listener))

    # -- the watcher --------------------------------------------------------------------

    def start(self) -> X509Context:
        """Fetch the first SVID (raising on failure), then watch for rotations."""
        if self._thread is not None:
            raise WorkloadApiError("the workload source is already started")
        self._stop.clear()
        ctx = self.fetch_x509_context()
        self._publish(ctx)
        self._thread = threading.Thread(
            target=self._watch, name="x0tta6bl4-workload-source", daemon=True
        )
        self._thread.start()
        return ctx

    def stop(self) -> None:
        """Stop watching. Idempotent."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None

    def __enter__(self) -> WorkloadSource:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def _watch(self) -> None:
        delays = self._backoff.delays()
        while not self._stop.is_set():
            try:
                self._stream_once()
                delays = self._backoff.delays()  # the stream worked: start backoff afresh
            except IdentityError as err:
                self._report(err)
            if self._stop.wait(next(delays)):
                return
            try:  # reconnect with a one-shot fetch: it says precisely what is wrong
                self._publish(self._verified(self._call_once(lambda c: c.fetch_x509_context())))
            except IdentityError as err:
                self._report(err)

    def _call_once(self, fn: Callable[[WorkloadApiClient], _T]) -> _T:
        client = self._client()
        try:
            return fn(client)
        except PySpiffeError as err:
            raise self._translate(err) from None
        finally:
            client.close()

    def _stream_once(self) -> None:
        """Follow one FetchX509SVID stream until it ends, fails or we stop."""
        events: queue.Queue[X509Context | Exception] = queue.Queue()
        client = self._client()
        handle = client.stream_x509_contexts(
            on_success=events.put, on_error=events.put, retry_connect=False
        )
        received = False
        try:
            while not self._stop.is_set():
                try:
                    event = events.get(timeout=0.2)
                except queue.Empty:
                    continue
                if isinstance(event, Exception):
                    if received:
                        raise WorkloadApiUnavailableError(
                            f"SPIFFE Workload API stream from {self._path} ended: {event}"
                        )
                    raise WorkloadApiError(f"SPIFFE Workload API stream failed: {event}")
                received = True
                try:
                    self._publish(self._verified(event))
                except IdentityError as err:
                    self._report(err)  # keep the last good SVID
        finally:
            handle.cancel()
            client.close()
