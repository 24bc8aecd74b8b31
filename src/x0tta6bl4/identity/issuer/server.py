"""The embedded development issuer: a SPIFFE Workload API on a Unix socket.

:class:`EmbeddedIssuer` runs, on its own thread and asyncio loop, a ``grpc.aio`` server on a
private socket (in a fresh 0700 temporary directory), the
:class:`~x0tta6bl4.identity.issuer.peercred.AttestingRelay` on the public socket, and a task
that rotates SVIDs at half-life. ``start()`` returns once the socket accepts calls (or raises
what went wrong); ``stop()`` closes every stream and removes the socket. The same class backs
``x0tta6bl4 identity serve``, ``x0tta6bl4 up`` and the tests.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import errno
import shutil
import socket
import stat
import tempfile
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Final

import grpc
import structlog
from spiffe import JwtBundle, TrustDomain, X509Bundle
from spiffe._proto import workload_pb2_grpc

from x0tta6bl4.identity.errors import IssuerError
from x0tta6bl4.identity.issuer.authority import Authority
from x0tta6bl4.identity.issuer.entries import EntriesFile, Entry
from x0tta6bl4.identity.issuer.peercred import AttestingRelay, PeerTable
from x0tta6bl4.identity.issuer.servicer import WorkloadApiServicer
from x0tta6bl4.identity.issuer.store import SvidStore
from x0tta6bl4.identity.spiffe_ids import DEFAULT_TRUST_DOMAIN, parse_trust_domain

__all__ = ["DEFAULT_SVID_TTL", "MAX_JWT_TTL", "MIN_SVID_TTL", "EmbeddedIssuer", "IssuerConfig"]

DEFAULT_SVID_TTL: Final = 3600.0
MIN_SVID_TTL: Final = 1.0
MAX_SVID_TTL: Final = 30 * 86400.0
MAX_JWT_TTL: Final = 300.0  # SPIRE's default JWT-SVID lifetime
_START_TIMEOUT: Final = 30.0
_MAX_SLEEP: Final = 60.0
_STOP_GRACE: Final = 2.0

_log = structlog.get_logger(__name__)


def _loop_error(loop: asyncio.AbstractEventLoop, context: dict[str, object]) -> None:
    """The issuer loop's handler of errors nothing awaited (asyncio's accept loop running out
    of descriptors, a callback failing): one warning line, no traceback."""
    message = str(context.get("message", "")).splitlines()[0] if context.get("message") else ""
    error = context.get("exception")
    _log.warning(
        "identity.issuer.loop_error",
        message=message[:200],
        error=f"{type(error).__name__}: {error}" if error is not None else None,
    )


@dataclass(frozen=True)
class IssuerConfig:
    """What ``x0tta6bl4 identity serve`` is told on its command line."""

    socket_path: Path
    state_dir: Path
    trust_domain: TrustDomain = field(default_factory=lambda: TrustDomain(DEFAULT_TRUST_DOMAIN))
    entries: Sequence[Entry] = ()
    #: A file of further entries, read again whenever it changes (None: only ``entries``).
    entries_file: Path | None = None
    svid_ttl: float = DEFAULT_SVID_TTL
    jwt_ttl: float | None = None  # None: min(svid_ttl, MAX_JWT_TTL)

    def __post_init__(self) -> None:
        object.__setattr__(self, "trust_domain", parse_trust_domain(self.trust_domain))
        object.__setattr__(self, "socket_path", Path(self.socket_path))
        object.__setattr__(self, "state_dir", Path(self.state_dir))
        object.__setattr__(self, "entries", tuple(self.entries))
        if not MIN_SVID_TTL <= self.svid_ttl <= MAX_SVID_TTL:
            raise IssuerError(
                f"SVID TTL must be between {MIN_SVID_TTL:g} and {MAX_SVID_TTL:g} seconds, "
                f"not {self.svid_ttl:g}"
            )
        if self.jwt_ttl is not None and not MIN_SVID_TTL <= self.jwt_ttl <= MAX_SVID_TTL:
            raise IssuerError(f"JWT TTL must be at least {MIN_SVID_TTL:g} s")
        for entry in self.entries:
            if entry.spiffe_id.trust_domain != self.trust_domain:
                raise IssuerError(
                    f"entry {entry} is not in trust domain {self.trust_domain.name!r}"
                )
        if len(str(self.socket_path)) > 100:  # sun_path is 108 bytes
            raise IssuerError(f"socket path {self.socket_path} is too long for a Unix socket")

    @property
    def effective_jwt_ttl(self) -> float:
        """The lifetime of issued JWT-SVIDs."""
        return self.jwt_ttl if self.jwt_ttl is not None else min(self.svid_ttl, MAX_JWT_TTL)


def _prepare_socket_path(path: Path) -> None:
    """Create the parent directory; remove a stale socket; refuse a live one or a non-socket."""
    try:
        path.parent.mkdir(mode=0o755, parents=True, exist_ok=True)
    except OSError as err:
        raise IssuerError(f"cannot create socket directory {path.parent}: {err}") from err
    try:
        st = path.lstat()
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(st.st_mode):
        raise IssuerError(f"{path} exists and is not a socket; refusing to replace it")
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        probe.connect(str(path))
    except OSError as err:
        if err.errno != errno.ECONNREFUSED:
            raise IssuerError(f"cannot check existing socket {path}: {err}") from err
        path.unlink()  # stale: left behind by a process that died
    else:
        raise IssuerError(f"{path} is in use: another Workload API server is listening on it")
    finally:
        probe.close()


class EmbeddedIssuer:
    """A running development SPIFFE Workload API. Use as a context manager or start/stop."""

    def __init__(self, config: IssuerConfig) -> None:
        self._config = config
        self._authority: Authority | None = None
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop_event: asyncio.Event | None = None
        self._ready = threading.Event()
        self._failure: BaseException | None = None
        self._private_dir: Path | None = None
        self._socket_ino: int | None = None

    @property
    def config(self) -> IssuerConfig:
        """The configuration it serves."""
        return self._config

    @property
    def socket_path(self) -> Path:
        """The public Workload API socket."""
        return self._config.socket_path

    @property
    def endpoint(self) -> str:
        """The socket as a ``SPIFFE_ENDPOINT_SOCKET`` value (``unix:///path``)."""
        return f"unix://{self._config.socket_path.absolute()}"

    @property
    def private_socket_path(self) -> Path | None:
        """The gRPC server's own socket behind the relay (diagnostics; None when stopped).

        Connections made to it directly are refused: they carry no attested credentials.
        """
        return None if self._private_dir is None else self._private_dir / "grpc.sock"

    @property
    def trust_domain(self) -> TrustDomain:
        """The trust domain it issues for."""
        return self._config.trust_domain

    def _require_authority(self) -> Authority:
        if self._authority is None:
            raise IssuerError("the issuer has not been started")
        return self._authority

    def x509_bundle(self) -> X509Bundle:
        """The X.509 bundle of its trust domain (after start)."""
        return self._require_authority().x509_bundle()

    def jwt_bundle(self) -> JwtBundle:
        """The JWT bundle of its trust domain (after start)."""
        return self._require_authority().jwt_bundle()

    def start(self) -> None:
        """Load or create the CA, bind the socket and serve. Raises :class:`IssuerError`."""
        if self._thread is not None:
            raise IssuerError("the issuer is already running")
        cfg = self._config
        self._authority = Authority.load_or_create(
            cfg.state_dir,
            cfg.trust_domain,
            min_remaining=dt.timedelta(seconds=max(2 * cfg.svid_ttl, 86400)),
        )
        _prepare_socket_path(cfg.socket_path)
        self._private_dir = Path(tempfile.mkdtemp(prefix="x0tta6bl4-issuer-"))
        self._ready.clear()
        self._failure = None
        self._thread = threading.Thread(
            target=self._run, name=f"x0tta6bl4-issuer-{cfg.trust_domain.name}", daemon=True
        )
        self._thread.start()
        if not self._ready.wait(_START_TIMEOUT):
            self.stop()
            raise IssuerError(f"the issuer did not start within {_START_TIMEOUT:g} s")
        failure = self._take_failure()
        if failure is not None:
            self.stop()
            if isinstance(failure, IssuerError):
                raise failure
            raise IssuerError(f"the issuer failed to start: {failure}") from failure
        self._socket_ino = cfg.socket_path.lstat().st_ino
        _log.info(
            "identity.issuer.started",
            socket=str(cfg.socket_path),
            trust_domain=cfg.trust_domain.name,
            entries=len(cfg.entries),
            svid_ttl=cfg.svid_ttl,
        )

    def stop(self) -> None:
        """Close all streams, stop serving and remove the socket. Idempotent."""
        thread = self._thread
        if thread is not None:
            loop, stop_event = self._loop, self._stop_event
            if loop is not None and stop_event is not None:
                with contextlib.suppress(RuntimeError):  # loop already closed
                    loop.call_soon_threadsafe(stop_event.set)
            thread.join()
            self._thread = None
        path = self._config.socket_path
        with contextlib.suppress(FileNotFoundError):
            if self._socket_ino is not None and path.lstat().st_ino == self._socket_ino:
                path.unlink()
        self._socket_ino = None
        if self._private_dir is not None:
            shutil.rmtree(self._private_dir, ignore_errors=True)
            self._private_dir = None

    def __enter__(self) -> EmbeddedIssuer:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    # -- the serving thread -------------------------------------------------------------

    def _take_failure(self) -> BaseException | None:
        failure, self._failure = self._failure, None
        return failure

    def _run(self) -> None:
        try:
            asyncio.run(self._serve())
        except BaseException as err:  # reported to start(); nothing else can see it
            self._failure = err
        finally:
            self._ready.set()

    async def _serve(self) -> None:
        cfg = self._config
        authority = self._require_authority()
        assert self._private_dir is not None
        self._loop = asyncio.get_running_loop()
        self._loop.set_exception_handler(_loop_error)
        self._stop_event = asyncio.Event()
        entries_file = (
            None if cfg.entries_file is None else EntriesFile(cfg.entries_file, cfg.trust_domain)
        )
        store = SvidStore(authority, cfg.entries, cfg.svid_ttl, time.time(), entries_file)
        peers = PeerTable()
        server = grpc.aio.server()
        workload_pb2_grpc.add_SpiffeWorkloadAPIServicer_to_server(  # type: ignore[no-untyped-call]
            WorkloadApiServicer(store, peers, cfg.effective_jwt_ttl), server
        )
        private = self.private_socket_path
        assert private is not None
        server.add_insecure_port(f"unix:{private}")
        await server.start()
        relay = AttestingRelay(cfg.socket_path, private, peers)
        rotation: asyncio.Task[None] | None = None
        try:
            await relay.start()
            rotation = asyncio.create_task(self._rotate_forever(store))
            self._ready.set()
            await self._stop_event.wait()
        finally:
            if rotation is not None:
                rotation.cancel()
                await asyncio.gather(rotation, return_exceptions=True)
            await store.close()  # streams end with OK instead of being cancelled
            await server.stop(grace=_STOP_GRACE)
            await relay.close()

    @staticmethod
    async def _rotate_forever(store: SvidStore) -> None:
        while True:
            due = store.next_rotation()
            delay = _MAX_SLEEP if due is None else min(max(due - time.time(), 0.0), _MAX_SLEEP)
            await asyncio.sleep(delay)
            if await store.rotate_due(time.time()):
                _log.info("identity.issuer.rotated", generation=store.generation)
