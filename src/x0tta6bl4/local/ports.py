"""Port allocation for the local mesh: free ports from the kernel, requested ports checked.

A free port is found by binding port 0 and closing the socket; the child binds it a moment
later (the usual, small race — :func:`reserve` narrows it by handing out each port once per
run). A port the user asked for is checked by binding it, so a clash is reported as
:class:`~x0tta6bl4.local.errors.PortInUseError` before anything starts.
"""

from __future__ import annotations

import errno
import socket
from typing import Literal

from x0tta6bl4.local.errors import PortInUseError

__all__ = ["PortAllocator", "Proto", "check_port_free"]

Proto = Literal["tcp", "udp"]


def _socket(proto: Proto) -> socket.socket:
    kind = socket.SOCK_STREAM if proto == "tcp" else socket.SOCK_DGRAM
    return socket.socket(socket.AF_INET, kind)


def check_port_free(host: str, port: int, proto: Proto, what: str) -> None:
    """Raise :class:`PortInUseError` if ``host:port/proto`` cannot be bound now."""
    with _socket(proto) as sock:
        if proto == "tcp":
            # Same option uvicorn sets, so a port in TIME_WAIT does not count as taken.
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError as err:
            if err.errno in (errno.EADDRINUSE, errno.EACCES):
                raise PortInUseError(host, port, proto, what) from None
            raise


class PortAllocator:
    """Hands out distinct ports on ``host``: requested ones (checked) or free ones."""

    def __init__(self, host: str = "127.0.0.1") -> None:
        self.host = host
        self._given: set[tuple[Proto, int]] = set()

    def take(self, port: int, proto: Proto, what: str) -> int:
        """``port`` if it is free (PortInUseError otherwise); 0 means any free port."""
        if port == 0:
            return self.free(proto)
        if not 1 <= port <= 65535:
            raise ValueError(f"port {port} is out of range 1..65535")
        if (proto, port) in self._given:
            raise PortInUseError(self.host, port, proto, what)
        check_port_free(self.host, port, proto, what)
        self._given.add((proto, port))
        return port

    def free(self, proto: Proto) -> int:
        """A port the kernel considers free now and that this allocator has not given out."""
        for _ in range(64):
            with _socket(proto) as sock:
                sock.bind((self.host, 0))
                port: int = sock.getsockname()[1]
            if (proto, port) not in self._given:
                self._given.add((proto, port))
                return port
        raise OSError("no free port found after 64 attempts")
