"""Caller attestation by Unix peer credentials, in front of a gRPC server.

grpcio never shows a servicer the socket of its caller, so it cannot read ``SO_PEERCRED``
itself. :class:`AttestingRelay` listens on the public Workload API socket, reads the kernel's
peer credentials (pid, uid, gid) of every accepted connection, and relays its bytes to the
gRPC server's private socket over a fresh connection whose client end is bound to a unique
abstract-namespace name. The gRPC server sees that name as ``context.peer()``
(``unix-abstract:<name>``), and :class:`PeerTable` maps it back to the credentials.

The table is filled before the relay connects upstream and emptied before the relay socket is
closed, so every gRPC call on a relayed connection finds its caller's credentials; a
connection that did not come through the relay (someone reaching the private socket
directly) is not in the table, and the servicer refuses it (fail closed). Abstract names are
unique while bound, so no other process can borrow one.

Every relayed connection holds three file descriptors (the caller's, the relay's upstream end,
the gRPC server's end). The relay accepts at most :func:`relay_capacity` connections — never
more than the process's ``RLIMIT_NOFILE`` minus :data:`FD_RESERVE` allows; at capacity it stops
accepting and newcomers wait in the kernel's backlog (:data:`RELAY_BACKLOG`) until a
connection ends (Workload API streams are long-lived: an established caller is never evicted).
A descriptor shortage on the way is a one-line warning, never a traceback.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import os
import resource
import secrets
import socket
import struct
import threading
from dataclasses import dataclass
from pathlib import Path

import structlog

__all__ = [
    "FD_RESERVE",
    "MAX_RELAYED",
    "RELAY_BACKLOG",
    "AttestingRelay",
    "PeerCredentials",
    "PeerTable",
    "peer_credentials",
    "relay_capacity",
]

MAX_RELAYED = 1024
"""Most Workload API connections relayed at once (each holds three descriptors)."""
RELAY_BACKLOG = 128
"""Connections the kernel queues on the public socket while the relay is at capacity."""
FD_RESERVE = 32
"""Descriptors the relay leaves to the gRPC server, the CA files and the log."""

_log = structlog.get_logger(__name__)


def relay_capacity() -> int:
    """How many connections the relay keeps: :data:`MAX_RELAYED`, fewer if ``RLIMIT_NOFILE``
    leaves fewer than three descriptors each after :data:`FD_RESERVE` (at least 1)."""
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY:
        return MAX_RELAYED
    return max(1, min(MAX_RELAYED, (int(soft) - FD_RESERVE) // 3))


_UCRED = struct.Struct("3i")  # struct ucred { pid_t pid; uid_t uid; gid_t gid; }
_CHUNK = 64 * 1024


@dataclass(frozen=True)
class PeerCredentials:
    """The kernel's view of the process at the other end of a Unix socket."""

    pid: int
    uid: int
    gid: int


def peer_credentials(sock: socket.socket) -> PeerCredentials:
    """Read ``SO_PEERCRED`` of a connected Unix stream socket."""
    raw = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _UCRED.size)
    pid, uid, gid = _UCRED.unpack(raw)
    return PeerCredentials(pid=pid, uid=uid & 0xFFFFFFFF, gid=gid & 0xFFFFFFFF)


class PeerTable:
    """gRPC peer string → credentials of the relayed caller. Thread-safe."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._peers: dict[str, PeerCredentials] = {}

    def register(self, peer: str, creds: PeerCredentials) -> None:
        """Record ``creds`` for ``peer``."""
        with self._lock:
            self._peers[peer] = creds

    def unregister(self, peer: str) -> None:
        """Forget ``peer``."""
        with self._lock:
            self._peers.pop(peer, None)

    def lookup(self, peer: str) -> PeerCredentials | None:
        """The credentials relayed for ``peer``, or None if it did not come through the relay."""
        with self._lock:
            return self._peers.get(peer)

    def __len__(self) -> int:
        with self._lock:
            return len(self._peers)


class AttestingRelay:
    """Public Unix socket → private gRPC socket, recording each caller's credentials.

    Runs on one asyncio loop; :meth:`start` and :meth:`close` must be awaited on it.
    """

    def __init__(self, public_path: Path, upstream_path: Path, table: PeerTable) -> None:
        self._public_path = public_path
        self._upstream_path = upstream_path
        self._table = table
        self._prefix = f"x0tta6bl4-wl-{os.getpid()}-{secrets.token_hex(6)}-"
        self._counter = itertools.count()
        self._listener: socket.socket | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._reading = False
        self._closing = False
        self._connections: set[asyncio.Task[None]] = set()
        self.capacity = relay_capacity()
        self.paused_at_capacity = 0

    async def start(self) -> None:
        """Bind the public socket (mode 0777: attestation, not file modes, decides)."""
        loop = asyncio.get_running_loop()
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            listener.bind(str(self._public_path))
            os.chmod(self._public_path, 0o777)  # noqa: S103 - like SPIRE's agent socket
            listener.listen(RELAY_BACKLOG)
            listener.setblocking(False)
        except BaseException:
            listener.close()
            raise
        self._listener = listener
        self._loop = loop
        self._resume()

    def _resume(self) -> None:
        """Watch the listener again (below capacity, or after a descriptor shortage)."""
        listener, loop = self._listener, self._loop
        if listener is None or loop is None or self._closing or self._reading:
            return
        self._reading = True
        loop.add_reader(listener.fileno(), self._accept_ready)

    def _pause(self) -> None:
        if self._reading and self._listener is not None and self._loop is not None:
            self._loop.remove_reader(self._listener.fileno())
            self._reading = False

    def _accept_ready(self) -> None:
        """Accept while below capacity; at capacity stop watching the listener (callers wait
        in the kernel's backlog) until a relayed connection ends."""
        listener, loop = self._listener, self._loop
        assert listener is not None
        assert loop is not None
        while len(self._connections) < self.capacity:
            try:
                conn, _ = listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as err:  # out of descriptors: wait a second, say so once
                _log.warning("identity.relay.accept_failed", error=str(err))
                self._pause()
                loop.call_later(1.0, self._resume)
                return
            conn.setblocking(False)
            task = loop.create_task(self._on_connection(conn))
            self._connections.add(task)
            task.add_done_callback(self._finished)
        self.paused_at_capacity += 1
        self._pause()

    def _finished(self, task: asyncio.Task[None]) -> None:
        self._connections.discard(task)
        if len(self._connections) < self.capacity:
            self._resume()

    async def close(self) -> None:
        """Stop accepting and drop every relayed connection."""
        self._closing = True
        self._pause()
        if self._listener is not None:
            self._listener.close()
            self._listener = None
        for task in list(self._connections):
            task.cancel()
        if self._connections:
            await asyncio.gather(*self._connections, return_exceptions=True)

    async def _on_connection(self, conn: socket.socket) -> None:
        try:
            reader, writer = await asyncio.open_unix_connection(sock=conn)
        except OSError as err:
            _log.warning("identity.relay.connection_failed", error=str(err))
            conn.close()
            return
        try:
            await self._relay(reader, writer)
        except asyncio.CancelledError:
            writer.transport.abort()

    async def _relay(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            creds = peer_credentials(writer.get_extra_info("socket"))
        except OSError as err:
            _log.warning("identity.relay.no_peercred", error=str(err))
            writer.close()
            return
        name = f"{self._prefix}{next(self._counter)}"
        peer = f"unix-abstract:{name}"
        try:
            upstream = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        except OSError as err:  # out of descriptors: this caller is dropped, the relay lives
            _log.warning("identity.relay.no_upstream_socket", error=str(err))
            writer.transport.abort()
            return
        up_writer: asyncio.StreamWriter | None = None
        try:
            upstream.bind("\0" + name)
            upstream.setblocking(False)
            self._table.register(peer, creds)
            await asyncio.get_running_loop().sock_connect(upstream, str(self._upstream_path))
            up_reader, up_writer = await asyncio.open_unix_connection(sock=upstream)
            pumps = {
                asyncio.create_task(self._pump(reader, up_writer)),
                asyncio.create_task(self._pump(up_reader, writer)),
            }
            try:
                await asyncio.wait(pumps, return_when=asyncio.FIRST_COMPLETED)
            finally:
                for pump in pumps:
                    pump.cancel()
                await asyncio.gather(*pumps, return_exceptions=True)
        except OSError as err:
            _log.warning("identity.relay.upstream_failed", error=str(err))
        finally:
            self._table.unregister(peer)
            for w in (writer, up_writer):
                if w is not None:
                    w.close()
            if up_writer is None:
                upstream.close()
            for w in (writer, up_writer):
                if w is not None:
                    with contextlib.suppress(OSError, asyncio.CancelledError):
                        await w.wait_closed()

    @staticmethod
    async def _pump(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
        with contextlib.suppress(OSError):
            while data := await src.read(_CHUNK):
                dst.write(data)
                await dst.drain()
