"""The controller's listeners: plain HTTP and TLS (pyOpenSSL) in one uvicorn server.

uvicorn builds one protocol object per connection from ``Config(http=...)``;
:func:`listener_protocol` returns that class, wrapped around the HTTP/1.1 protocol class the
server would otherwise use (:func:`x0tta6bl4.httpserver.limited_config`'s, with its read and
keep-alive timeouts, connection cap and header limit). When a connection arrives it looks at
the local port: on the plain port it hands the connection to that protocol unchanged; on a TLS
port it runs a :class:`_TlsSession`: a TLS 1.3 server over pyOpenSSL memory BIOs (so the key
exchange can be the hybrid X25519MLKEM768, see :mod:`x0tta6bl4.tls.context`), which hands the
decrypted bytes to the same protocol through a small transport shim. One server, one
lifespan, one graceful shutdown for both listeners, and the same limits on both.

Before any request reaches the app a TLS connection has

- completed its handshake within ``handshake_timeout`` (else it is closed), while at most
  ``max_handshakes`` handshakes are in progress (more are closed at once: a handshake costs
  a signature, and unauthenticated work stays bounded); a handshaking connection counts
  against the inner protocol's connection limiter (if it has one) as a connection waiting for
  its request, so the descriptor budget covers it and it can be evicted like one;
- had its client certificate, if it sent one, verified by OpenSSL against the trust domain's
  authorities and then as a SPIFFE X.509-SVID (:func:`~x0tta6bl4.tls.context.verified_peer`);
  a certificate that fails closes the connection.

Each request of a TLS connection carries the ASGI TLS extension (``scope["extensions"]
["tls"]``: ``client_cert_chain`` as PEM, ``tls_version``) and :data:`PEER_EXTENSION`, a
:class:`TlsPeer` with the verified SPIFFE ID, the leaf's SHA-256 and notAfter, and the
negotiated group. Requests on the plain port carry neither: that is how the app tells them
apart, and nothing a client sends can forge it.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import socket
import threading
from collections.abc import Awaitable, Callable, MutableMapping
from dataclasses import dataclass, field
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from OpenSSL import SSL
from uvicorn.protocols.http.h11_impl import H11Protocol

from x0tta6bl4.httpserver import source_key
from x0tta6bl4.identity.errors import IdentityError
from x0tta6bl4.logging import get_logger
from x0tta6bl4.tls.context import (
    negotiated_group,
    pending_output,
    server_context,
    verified_peer,
)
from x0tta6bl4.tls.credentials import CredentialSource, TlsCredentials

__all__ = [
    "PEER_EXTENSION",
    "ListenerOptions",
    "ServerContexts",
    "TlsPeer",
    "listener_protocol",
]

PEER_EXTENSION = "x0tta6bl4.tls_peer"
_TLS13 = 0x0304
_READ = 65536
_log = get_logger(__name__)

Scope = MutableMapping[str, Any]
ASGIApp = Callable[[Scope, Any, Any], Awaitable[None]]


@dataclass(frozen=True, slots=True)
class TlsPeer:
    """What the TLS layer verified about the other side of one connection."""

    spiffe_id: str | None
    cert_sha256: bytes | None
    not_after: float | None
    group: str
    serial: int | None = None


class ServerContexts:
    """The server's SSL context for the current credentials, rebuilt after a rotation."""

    def __init__(self, source: CredentialSource) -> None:
        self._source = source
        self._lock = threading.Lock()
        self._cached: tuple[int, SSL.Context, TlsCredentials] | None = None

    def current(self) -> tuple[SSL.Context, TlsCredentials]:
        """The context for new connections (raises IdentityError without credentials)."""
        generation, credentials = self._source.current()
        with self._lock:
            cached = self._cached
            if cached is None or cached[0] != generation:
                cached = (generation, server_context(credentials), credentials)
                self._cached = cached
            return cached[1], cached[2]


@dataclass
class ListenerOptions:
    """What the listener protocol needs: which ports speak TLS, and with what."""

    tls_ports: frozenset[int]
    contexts: ServerContexts
    handshake_timeout: float = 10.0
    max_handshakes: int = 256
    #: ``on_handshake(result, group)``: result ``ok``, ``failed``, ``bad_peer``, ``timeout``,
    #: ``refused`` (too many in progress); for the metrics.
    on_handshake: Callable[[str, str], None] | None = None
    in_progress: int = field(default=0, init=False)

    def report(self, result: str, group: str = "none") -> None:
        if self.on_handshake is not None:
            self.on_handshake(result, group)


def listener_protocol(
    options: ListenerOptions, inner: type[H11Protocol] = H11Protocol
) -> type[asyncio.Protocol]:
    """The ``uvicorn.Config(http=...)`` class serving plain and TLS ports (module docstring),
    speaking HTTP through ``inner`` (an h11 protocol class of uvicorn) on both."""

    class ControlListenerProtocol(_Dispatch):
        _options = options
        _inner_class = inner

    return ControlListenerProtocol


class _Dispatch(asyncio.Protocol):
    _options: ListenerOptions
    _inner_class: type[H11Protocol]

    def __init__(
        self,
        config: Any,
        server_state: Any,
        app_state: dict[str, Any],
        _loop: asyncio.AbstractEventLoop | None = None,
    ) -> None:
        self._inner = self._inner_class(
            config=config, server_state=server_state, app_state=app_state, _loop=_loop
        )

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        sock = transport.get_extra_info("socket")
        if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
            # Small writes (response head, TLS records) must not wait for delayed ACKs.
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sockname = transport.get_extra_info("sockname")
        port = sockname[1] if isinstance(sockname, tuple) and len(sockname) >= 2 else None
        if port in self._options.tls_ports:
            session = _TlsSession(self._options, transport, self._inner)
            transport.set_protocol(session)
            session.start()
        else:
            transport.set_protocol(self._inner)
            self._inner.connection_made(transport)


def _with_extensions(app: ASGIApp, extensions: dict[str, Any]) -> ASGIApp:
    async def tls_app(scope: Scope, receive: Any, send: Any) -> None:
        if scope.get("type") in ("http", "websocket"):
            scope = dict(scope)
            scope["extensions"] = {**(scope.get("extensions") or {}), **extensions}
        await app(scope, receive, send)

    return tls_app


class _TlsSession(asyncio.Protocol):
    """One TLS connection: handshake, then decrypted bytes to the inner HTTP protocol."""

    def __init__(
        self, options: ListenerOptions, raw: asyncio.Transport, inner: H11Protocol
    ) -> None:
        self._options = options
        self._raw = raw
        self._inner = inner
        self._state = "handshake"
        self._timer: asyncio.TimerHandle | None = None
        self._counted = False
        self._conn: SSL.Connection | None = None
        self._credentials: TlsCredentials | None = None
        self._ssl_ctx: SSL.Context | None = None
        self._shim: _TlsTransport | None = None
        self._inner_connected = False
        self._limiter: Any = getattr(inner, "limiter", None)
        self._limited = False
        #: The source this connection counts under in the limiter (the client's address).
        self.source = source_key(raw.get_extra_info("peername"))

    # -- lifecycle -----------------------------------------------------------------------------

    def start(self) -> None:
        options = self._options
        if options.in_progress >= options.max_handshakes:
            options.report("refused")
            self._state = "closed"
            self._raw.abort()
            return
        try:
            self._ssl_ctx, self._credentials = options.contexts.current()
        except IdentityError as err:
            _log.warning("tls.no_credentials", error=str(err))
            options.report("failed")
            self._state = "closed"
            self._raw.abort()
            return
        if self._limiter is not None:
            if not self._limiter.admit(self):
                options.report("refused")
                self._state = "closed"
                self._raw.abort()
                return
            self._limited = True
            self._limiter.waiting(self)
        options.in_progress += 1
        self._counted = True
        self._conn = SSL.Connection(self._ssl_ctx, None)
        self._conn.set_accept_state()
        loop = asyncio.get_running_loop()
        self._timer = loop.call_later(options.handshake_timeout, self._handshake_timeout)

    def _end_handshake(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._counted:
            self._counted = False
            self._options.in_progress -= 1
        if self._limited:
            # The inner protocol takes the connection's place in the limiter (if it opens).
            self._limited = False
            self._limiter.gone(self, counted=True)

    def drop(self) -> None:
        """Close this connection now: the connection limiter evicts it (still handshaking)."""
        self._end_handshake()
        self._state = "closed"
        self._raw.abort()

    def _handshake_timeout(self) -> None:
        self._timer = None
        if self._state == "handshake":
            self._options.report("timeout")
            self._fail()

    def _fail(self) -> None:
        self._end_handshake()
        self._flush()  # an alert, if OpenSSL produced one
        self._state = "closed"
        self._raw.close()

    # -- asyncio.Protocol ----------------------------------------------------------------------

    def data_received(self, data: bytes) -> None:
        conn = self._conn
        if self._state == "closed" or conn is None:
            return
        conn.bio_write(data)
        if self._state == "handshake":
            try:
                conn.do_handshake()
            except SSL.WantReadError:
                self._flush()
                return
            except SSL.Error:
                self._options.report("failed")
                self._fail()
                return
            self._handshake_done(conn)
            if self._state != "open":
                return
        self._pump(conn)

    def _handshake_done(self, conn: SSL.Connection) -> None:
        self._end_handshake()
        self._flush()
        assert self._credentials is not None
        group = negotiated_group(conn)
        try:
            spiffe_id = verified_peer(conn, self._credentials)
        except IdentityError as err:
            _log.info("tls.peer_rejected", error=str(err))
            self._options.report("bad_peer", group)
            self._fail()
            return
        leaf = conn.get_peer_certificate(as_cryptography=True)
        peer = TlsPeer(
            spiffe_id=None if spiffe_id is None else str(spiffe_id),
            cert_sha256=None if leaf is None else _sha256(leaf),
            not_after=None if leaf is None else leaf.not_valid_after_utc.timestamp(),
            group=group,
            serial=None if leaf is None else leaf.serial_number,
        )
        chain = conn.get_peer_cert_chain(as_cryptography=True) or []
        if leaf is not None and (not chain or chain[0] != leaf):
            chain = [leaf, *chain]
        tls = {
            "server_cert": None,
            "client_cert_chain": [
                c.public_bytes(serialization.Encoding.PEM).decode("ascii") for c in chain
            ],
            "client_cert_name": None,
            "client_cert_error": None,
            "tls_version": _TLS13,
            "cipher_suite": None,
        }
        self._options.report("ok", group)
        self._state = "open"
        self._shim = _TlsTransport(self)
        self._inner.app = _with_extensions(self._inner.app, {"tls": tls, PEER_EXTENSION: peer})
        self._inner_connected = True
        self._inner.connection_made(self._shim)

    def _pump(self, conn: SSL.Connection) -> None:
        while self._state == "open":
            try:
                data = conn.recv(_READ)
            except SSL.WantReadError:
                break
            except SSL.ZeroReturnError:  # the peer's close_notify
                self.close()
                return
            except SSL.Error:
                self.abort()
                return
            if not data:
                break
            self._inner.data_received(data)
        self._flush()

    def eof_received(self) -> bool | None:
        return False  # the raw transport closes; connection_lost follows

    def connection_lost(self, exc: Exception | None) -> None:
        self._end_handshake()
        self._state = "closed"
        if self._inner_connected:
            self._inner_connected = False
            self._inner.connection_lost(exc)

    def pause_writing(self) -> None:
        if self._state == "open":
            self._inner.pause_writing()

    def resume_writing(self) -> None:
        if self._state == "open":
            self._inner.resume_writing()

    # -- for the shim ----------------------------------------------------------------------------

    def _flush(self) -> None:
        conn = self._conn
        if conn is None:
            return
        out = pending_output(conn, _READ)
        if out and not self._raw.is_closing():
            self._raw.write(out)

    def write(self, data: bytes | bytearray | memoryview) -> None:
        conn = self._conn
        if self._state != "open" or conn is None:
            return
        view = memoryview(data)
        while view:
            sent = conn.send(view)
            view = view[sent:]
        self._flush()

    def close(self) -> None:
        if self._state == "closed":
            return
        conn = self._conn
        if self._state == "open" and conn is not None:
            with contextlib.suppress(SSL.Error):
                conn.shutdown()
            self._flush()
        self._end_handshake()
        self._state = "closing" if self._state == "open" else "closed"
        self._raw.close()

    def abort(self) -> None:
        self._end_handshake()
        if self._state != "open":
            self._state = "closed"
        self._raw.abort()

    @property
    def raw(self) -> asyncio.Transport:
        return self._raw

    @property
    def ssl_context(self) -> SSL.Context | None:
        return self._ssl_ctx

    @property
    def closing(self) -> bool:
        return self._state != "open"


def _sha256(cert: x509.Certificate) -> bytes:
    return hashlib.sha256(cert.public_bytes(serialization.Encoding.DER)).digest()


class _TlsTransport(asyncio.Transport):
    """What the inner HTTP protocol writes to: plaintext in, TLS records out."""

    def __init__(self, session: _TlsSession) -> None:
        super().__init__()
        self._session = session

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        if name == "sslcontext":
            return self._session.ssl_context
        if name in ("ssl_object", "peercert", "cipher", "compression"):
            return default
        return self._session.raw.get_extra_info(name, default)

    def is_closing(self) -> bool:
        return self._session.closing or self._session.raw.is_closing()

    def close(self) -> None:
        self._session.close()

    def abort(self) -> None:
        self._session.abort()

    def write(self, data: bytes | bytearray | memoryview) -> None:
        self._session.write(data)

    def writelines(self, list_of_data: Any) -> None:
        self._session.write(b"".join(list_of_data))

    def can_write_eof(self) -> bool:
        return False

    def pause_reading(self) -> None:
        self._session.raw.pause_reading()

    def resume_reading(self) -> None:
        self._session.raw.resume_reading()

    def is_reading(self) -> bool:
        return self._session.raw.is_reading()

    def set_write_buffer_limits(self, high: int | None = None, low: int | None = None) -> None:
        self._session.raw.set_write_buffer_limits(high, low)

    def get_write_buffer_size(self) -> int:
        return self._session.raw.get_write_buffer_size()

    def get_write_buffer_limits(self) -> tuple[int, int]:
        return self._session.raw.get_write_buffer_limits()

    def set_protocol(self, protocol: asyncio.BaseProtocol) -> None:
        raise NotImplementedError("the TLS shim's protocol is fixed")

    def get_protocol(self) -> asyncio.BaseProtocol:
        return self._session._inner
