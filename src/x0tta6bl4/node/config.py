"""Settings of ``x0tta6bl4 node`` (flags and ``X0_…`` variables: docs/runtime-contract.md)."""

from __future__ import annotations

import ipaddress
import os
import socket
from dataclasses import dataclass
from pathlib import Path

from x0tta6bl4.defaults import DEFAULT_TRUST_DOMAIN
from x0tta6bl4.identity.node_ids import MAX_NODE_ID_LENGTH, NODE_ID_RE, node_id_from_name
from x0tta6bl4.protocol.failure import DEFAULT_DEAD_AFTER, DEFAULT_INTERVAL

__all__ = ["MAX_NODE_ID_LENGTH", "NodeSettings", "node_id_from_name", "parse_hostport"]

_NODE_ID = NODE_ID_RE


def parse_hostport(value: str, what: str) -> tuple[str, int]:
    """``HOST:PORT`` or ``[V6]:PORT`` → ``(host, port)``; ValueError names ``what``."""
    text = value.strip()
    if text.startswith("["):
        host, sep, port_text = text[1:].partition("]:")
    else:
        host, sep, port_text = text.rpartition(":")
    if not sep or not host or not port_text.isdigit():
        raise ValueError(f"{what} must be HOST:PORT, got {value!r}")
    port = int(port_text)
    if not 0 <= port <= 65535:
        raise ValueError(f"{what} port must be 0..65535, got {port}")
    return host, port


@dataclass(frozen=True, slots=True)
class NodeSettings:
    """Validated settings of one node agent."""

    controller: str = "http://x0tta6bl4-api:8080"
    listen_udp: tuple[str, int] = ("0.0.0.0", 7810)  # noqa: S104 - a DaemonSet serves the node
    http: tuple[str, int] = ("0.0.0.0", 7811)  # noqa: S104
    advertise: tuple[str, int] | None = None
    node_id: str | None = None
    state_dir: Path = Path("/var/lib/x0tta6bl4")
    spiffe_socket: str | None = None
    trust_domain: str = DEFAULT_TRUST_DOMAIN
    tun: bool = False
    heartbeat_interval: float = DEFAULT_INTERVAL
    dead_after: int = DEFAULT_DEAD_AFTER
    #: ``native`` / ``python``; None: ``X0_DATAPLANE``, else native when built.
    dataplane: str | None = None

    def __post_init__(self) -> None:
        if self.dataplane not in (None, "native", "python"):
            raise ValueError(f"--dataplane must be native or python, got {self.dataplane!r}")
        if not self.controller.startswith(("http://", "https://")):
            raise ValueError(f"--controller must be an http(s) URL, got {self.controller!r}")
        if not 0.005 <= self.heartbeat_interval <= 60:
            raise ValueError("--heartbeat-interval must be within 0.005..60 seconds")
        if not 1 <= self.dead_after <= 100:
            raise ValueError("--dead-after must be within 1..100")
        if self.node_id is not None and not _NODE_ID.fullmatch(self.node_id):
            raise ValueError(
                f"--node-id must be 1..{MAX_NODE_ID_LENGTH} letters, digits, '.', '_' or '-', "
                f"starting and ending with a letter or digit; got {self.node_id!r}"
            )

    def resolved_node_id(self) -> str:
        """--node-id, else X0_NODE_NAME (the Kubernetes node), else the hostname; a name
        longer than 64 characters is shortened (:func:`node_id_from_name`).

        Raises ValueError naming the source when the result is still not a valid node id.
        """
        if self.node_id is not None:
            return self.node_id
        from_env = os.environ.get("X0_NODE_NAME")
        source = "X0_NODE_NAME" if from_env else "the hostname"
        node_id = node_id_from_name(from_env or socket.gethostname())
        if not _NODE_ID.fullmatch(node_id):
            raise ValueError(
                f"{source} {node_id!r} is not a valid node id (letters, digits, '.', '_', '-'); "
                "pass --node-id"
            )
        return node_id

    def resolved_advertise(self, bound_port: int) -> str:
        """Where peers reach us: --advertise, else X0_POD_IP, else the bound or a local IP."""
        if self.advertise is not None:
            host, port = self.advertise
        else:
            host = os.environ.get("X0_POD_IP") or self.listen_udp[0]
            port = bound_port
            if host in ("0.0.0.0", "::", ""):  # noqa: S104
                host = _local_ip()
        try:
            if ipaddress.ip_address(host).version == 6:
                return f"[{host}]:{port}"
        except ValueError:
            pass
        return f"{host}:{port}"


def _local_ip() -> str:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        try:
            probe.connect(("192.0.2.1", 9))  # no packet is sent
            return str(probe.getsockname()[0])
        except OSError:
            return "127.0.0.1"
