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
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import os
import secrets
import socket
import struct
import threading
from dataclasses import dataclass
from pathlib import Path

import structlog

__all__ = ["AttestingRelay", "PeerCredentials", "PeerTable", "peer_credentials"]

_log = structlog.get_logger(__name__)
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
        self._server: asyncio.AbstractServer | None = None
        self._connections: set[asyncio.Task[None]] = set()

    async def start(self) -> None:
        """Bind the public socket (mode 0777: attestation, not file modes, decides)."""
        self._server = await asyncio.start_unix_server(
            self._on_connection, path=str(self._public_path)
        )
        os.chmod(self._public_path, 0o777)  # noqa: S103 - like SPIRE's agent socket

    async def close(self) -> None:
        """Stop accepting and drop every relayed connection."""
        if self._server is not None:
            self._server.close()
        for task in list(self._connections):
            task.cancel()
        if self._connections:
            await asyncio.gather(*self._connections, return_exceptions=True)
        if self._server is not None:
            await self._server.wait_closed()

    async def _on_connection(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._connections.add(task)
        try:
            await self._relay(reader, writer)
        except asyncio.CancelledError:
            pass
        finally:
            self._connections.discard(task)

    async def _relay(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            creds = peer_credentials(writer.get_extra_info("socket"))
        except OSError as err:
            _log.warning("identity.relay.no_peercred", error=str(err))
            writer.close()
            return
        name = f"{self._prefix}{next(self._counter)}"
        peer = f"unix-abstract:{name}"
        upstream = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
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
