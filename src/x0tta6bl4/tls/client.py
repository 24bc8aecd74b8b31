"""The client side of the control channel: an httpx transport speaking pyOpenSSL TLS.

:class:`SpiffeTlsTransport` is an ``httpx.AsyncHTTPTransport`` whose connection pool uses a
network backend that does TLS itself (pyOpenSSL over the TCP stream, see
:mod:`x0tta6bl4.tls.context` for why), so requests to ``https://`` URLs

- present this side's X.509-SVID (mutual TLS) when its credentials have one;
- verify the server's chain against the trust domain's authorities and then its SPIFFE ID
  against ``expected_server_id`` — a different ID (another workload of the same trust domain,
  a node pretending to be the controller) fails the connection with :class:`PeerIdentityError`
  (an ``httpx.ConnectError``) before a byte of the request is sent;
- negotiate the hybrid X25519MLKEM768 key exchange with a controller built the same way.

Connections are reused (keep-alive) but never past the moment either certificate they were
authenticated with expires, nor after this side's credentials rotated: the pool sees such a
connection as closed by the server and opens a new one, with the current certificate.
"""

from __future__ import annotations

import threading
import time
import typing
from typing import Any

import anyio
import httpcore
import httpx
from OpenSSL import SSL

from x0tta6bl4.identity.errors import IdentityError
from x0tta6bl4.tls.context import (
    client_context,
    negotiated_group,
    pending_output,
    verified_peer,
)
from x0tta6bl4.tls.credentials import CredentialSource, TlsCredentials
from x0tta6bl4.tls.server import TlsPeer

__all__ = ["PEER_INFO", "PeerIdentityError", "SpiffeTlsTransport", "tls_client"]

#: ``response.extensions["network_stream"].get_extra_info(PEER_INFO)`` → :class:`TlsPeer`.
PEER_INFO = "x0tta6bl4.tls_peer"
_READ = 65536


class PeerIdentityError(httpcore.ConnectError):
    """The server's certificate verified, but it is not the SPIFFE ID we expect (or not an
    X.509-SVID of our trust domain at all)."""


class _ClientContexts:
    def __init__(self, source: CredentialSource) -> None:
        self._source = source
        self._lock = threading.Lock()
        self._cached: tuple[int, SSL.Context, TlsCredentials] | None = None

    def current(self) -> tuple[int, SSL.Context, TlsCredentials]:
        generation, credentials = self._source.current()
        with self._lock:
            cached = self._cached
            if cached is None or cached[0] != generation:
                cached = (generation, client_context(credentials), credentials)
                self._cached = cached
            return cached

    def generation(self) -> int:
        return self._source.current()[0]


async def _flush(raw: httpcore.AsyncNetworkStream, conn: SSL.Connection, timeout: Any) -> None:
    out = pending_output(conn, _READ)
    if out:
        await raw.write(out, timeout)


class _TlsStream(httpcore.AsyncNetworkStream):
    def __init__(
        self,
        raw: httpcore.AsyncNetworkStream,
        *,
        conn: SSL.Connection,
        contexts: _ClientContexts,
        generation: int,
        expires_at: float,
        peer: TlsPeer,
    ) -> None:
        self._raw = raw
        self._conn = conn
        self._contexts = contexts
        self._generation = generation
        self._expires_at = expires_at
        self._peer = peer

    async def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        while True:
            try:
                return self._conn.recv(max_bytes)
            except SSL.WantReadError:
                pass
            except SSL.ZeroReturnError:
                return b""
            except SSL.Error as err:
                raise httpcore.ReadError(f"TLS: {err}") from None
            await _flush(self._raw, self._conn, timeout)
            data = await self._raw.read(_READ, timeout)
            if not data:
                return b""
            self._conn.bio_write(data)

    async def write(self, buffer: bytes, timeout: float | None = None) -> None:
        view = memoryview(buffer)
        try:
            while view:
                sent = self._conn.send(view)
                view = view[sent:]
        except SSL.Error as err:
            raise httpcore.WriteError(f"TLS: {err}") from None
        await _flush(self._raw, self._conn, timeout)

    async def aclose(self) -> None:
        # close_notify is best effort: the pool may close a connection while another task is
        # still writing on it (anyio then refuses a second writer with BusyResourceError).
        try:
            self._conn.shutdown()
            with anyio.move_on_after(1.0):
                await _flush(self._raw, self._conn, 1.0)
        except (
            SSL.Error,
            httpcore.NetworkError,
            OSError,
            anyio.BusyResourceError,
            anyio.BrokenResourceError,
            anyio.ClosedResourceError,
        ):
            pass
        finally:
            await self._raw.aclose()

    async def start_tls(self, *args: Any, **kwargs: Any) -> httpcore.AsyncNetworkStream:
        raise httpcore.UnsupportedProtocol("TLS is already established")

    def _stale(self) -> bool:
        if time.time() >= self._expires_at:
            return True
        try:
            return self._contexts.generation() != self._generation
        except IdentityError:
            return True

    def get_extra_info(self, info: str) -> Any:
        if info == "is_readable":
            return bool(self._raw.get_extra_info("is_readable")) or self._stale()
        if info == "ssl_object":
            return None  # HTTP/1.1 only (httpcore asks for ALPN through it)
        if info == PEER_INFO:
            return self._peer
        return self._raw.get_extra_info(info)


class _PlainStream(httpcore.AsyncNetworkStream):
    """A TCP stream before TLS; :meth:`start_tls` does the pyOpenSSL handshake."""

    def __init__(self, raw: httpcore.AsyncNetworkStream, transport: SpiffeTlsTransport) -> None:
        self._raw = raw
        self._transport = transport

    async def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        return await self._raw.read(max_bytes, timeout)

    async def write(self, buffer: bytes, timeout: float | None = None) -> None:
        await self._raw.write(buffer, timeout)

    async def aclose(self) -> None:
        await self._raw.aclose()

    def get_extra_info(self, info: str) -> Any:
        return self._raw.get_extra_info(info)

    async def start_tls(
        self, ssl_context: Any, server_hostname: str | None = None, timeout: float | None = None
    ) -> httpcore.AsyncNetworkStream:
        # ``ssl_context`` is httpx's standard-library context: not used, on purpose.
        try:
            return await self._transport._handshake(self._raw, timeout)
        except BaseException:
            await self._raw.aclose()
            raise


class _Backend(httpcore.AsyncNetworkBackend):
    def __init__(self, transport: SpiffeTlsTransport) -> None:
        self._raw = httpcore.AnyIOBackend()
        self._transport = transport

    async def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: typing.Iterable[Any] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        raw = await self._raw.connect_tcp(host, port, timeout, local_address, socket_options)
        return _PlainStream(raw, self._transport)

    async def connect_unix_socket(
        self,
        path: str,
        timeout: float | None = None,
        socket_options: typing.Iterable[Any] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        raise httpcore.UnsupportedProtocol("the control channel runs over TCP")

    async def sleep(self, seconds: float) -> None:
        await self._raw.sleep(seconds)


class SpiffeTlsTransport(httpx.AsyncHTTPTransport):
    """An httpx transport for ``https://`` URLs of a controller (see the module docstring).

    ``credentials`` gives this side's SVID (or only the trust bundle); ``expected_server_id``
    is the SPIFFE ID the server must present.
    """

    def __init__(
        self,
        credentials: CredentialSource,
        expected_server_id: str,
        *,
        handshake_timeout: float = 10.0,
        max_connections: int = 16,
        keepalive_expiry: float = 30.0,
    ) -> None:
        # httpx's standard-library TLS context is never used: this transport's pool does TLS
        # with pyOpenSSL and verifies the server itself. verify=False only skips loading the
        # system CA store for that unused context.
        super().__init__(verify=False)
        self._contexts = _ClientContexts(credentials)
        self.expected_server_id = expected_server_id
        self._handshake_timeout = handshake_timeout
        self._pool = httpcore.AsyncConnectionPool(
            network_backend=_Backend(self),
            http1=True,
            http2=False,
            max_connections=max_connections,
            max_keepalive_connections=max_connections,
            keepalive_expiry=keepalive_expiry,
        )

    async def _handshake(
        self, raw: httpcore.AsyncNetworkStream, timeout: float | None
    ) -> _TlsStream:
        try:
            generation, ctx, credentials = self._contexts.current()
        except IdentityError as err:
            raise httpcore.ConnectError(f"no TLS credentials: {err}") from None
        conn = SSL.Connection(ctx, None)
        conn.set_connect_state()
        limit = (
            self._handshake_timeout if timeout is None else min(timeout, self._handshake_timeout)
        )
        try:
            with anyio.fail_after(limit):
                while True:
                    try:
                        conn.do_handshake()
                        break
                    except SSL.WantReadError:
                        pass
                    except SSL.Error as err:
                        raise httpcore.ConnectError(f"TLS handshake failed: {err}") from None
                    await _flush(raw, conn, limit)
                    data = await raw.read(_READ, limit)
                    if not data:
                        raise httpcore.ConnectError("the server closed the TLS handshake")
                    conn.bio_write(data)
                await _flush(raw, conn, limit)
        except TimeoutError:
            raise httpcore.ConnectTimeout("TLS handshake timed out") from None
        try:
            spiffe_id = verified_peer(conn, credentials)
        except IdentityError as err:
            raise PeerIdentityError(f"the server is not an X.509-SVID we trust: {err}") from None
        if spiffe_id is None or str(spiffe_id) != self.expected_server_id:
            raise PeerIdentityError(
                f"the server presented SPIFFE ID {spiffe_id}, expected "
                f"{self.expected_server_id}: refusing to talk to it"
            )
        leaf = conn.get_peer_certificate(as_cryptography=True)
        assert leaf is not None
        server_not_after = leaf.not_valid_after_utc.timestamp()
        own_not_after = credentials.not_after
        expires_at = min(server_not_after, own_not_after or server_not_after)
        peer = TlsPeer(
            spiffe_id=str(spiffe_id),
            cert_sha256=None,
            not_after=server_not_after,
            group=negotiated_group(conn),
            serial=leaf.serial_number,
        )
        return _TlsStream(
            raw,
            conn=conn,
            contexts=self._contexts,
            generation=generation,
            expires_at=expires_at,
            peer=peer,
        )


def tls_client(
    base_url: str,
    credentials: CredentialSource,
    expected_server_id: str,
    *,
    timeout: float = 10.0,
    **kwargs: Any,
) -> httpx.AsyncClient:
    """An ``httpx.AsyncClient`` for a controller's TLS URL (``https://host:8443``)."""
    if not base_url.startswith("https://"):
        raise ValueError(f"the controller API is served over TLS only: {base_url!r} is not https")
    transport = SpiffeTlsTransport(credentials, expected_server_id)
    return httpx.AsyncClient(base_url=base_url, transport=transport, timeout=timeout, **kwargs)
