"""``STATE_DIR/mesh.json``: where a running ``x0tta6bl4 up`` mesh can be reached.

``up`` writes this small runtime descriptor once every node is ready and every pair routed,
rewrites it when a node is restarted (its pid changes), and removes it when it stops — a kept
``--state-dir`` then has no ``mesh.json``, a temporary one is removed whole. Nothing in it is
secret (URLs on loopback, node IDs, process IDs, paths); it is written atomically with mode
0600::

    {"version": 1, "up_pid": 4242, "started_at": 1795670396.1,
     "controller": "http://127.0.0.1:41023", "controllers": ["http://127.0.0.1:41023"],
     "api": ["https://127.0.0.1:41024"],
     "trust_bundle": "/tmp/x0/trust-bundle.pem",
     "controller_spiffe_id": "spiffe://x0tta6bl4.mesh/ns/local/sa/x0tta6bl4-app/controller",
     "ui": "http://127.0.0.1:41023/ui", "store": "sqlite",
     "nodes": {"node-01": "http://127.0.0.1:40001", …},
     "node_pids": {"node-01": 4250, …},
     "identity": {"provider": "spire", "trust_domain": "x0tta6bl4.mesh",
                  "agent_socket": "/tmp/x0up-…/spire-agent.sock",
                  "server_socket": "/tmp/x0up-…/spire-server.sock", …}}

``identity`` says which provider serves the Workload API (``spire`` or ``embedded``) and where;
with SPIRE also the server's admin socket, the trust bundle file and each workload's SPIFFE ID
and selectors (docs/up.md).

``controller``/``controllers`` are the plain-HTTP addresses (``/health``, ``/ready``,
``/metrics``, ``/ui``); ``api`` the TLS API of each controller (mutual TLS; their X.509-SVIDs
verify against ``trust_bundle``, the PEM bundle of the trust domain, and name
``controller_spiffe_id``).

:func:`read_descriptor` is what ``x0tta6bl4 check --local STATE_DIR`` uses: it refuses a
directory without a descriptor, and a descriptor whose ``up`` is no longer running (left by
an ``up`` that was SIGKILLed), each with a specific message.
"""

from __future__ import annotations

import contextlib
import json
import os
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = [
    "DESCRIPTOR_FILE",
    "DescriptorError",
    "MeshDescriptor",
    "UpNotRunningError",
    "pid_alive",
    "read_descriptor",
    "remove_descriptor",
    "write_descriptor",
]

DESCRIPTOR_FILE = "mesh.json"
_VERSION = 1


class DescriptorError(ValueError):
    """The state directory has no usable descriptor; the message says why and what to do."""


class UpNotRunningError(DescriptorError):
    """The descriptor's ``up`` is not running (or is still starting: ``starting`` is True)."""

    def __init__(self, message: str, *, starting: bool = False) -> None:
        super().__init__(message)
        self.starting = starting


@dataclass(frozen=True)
class MeshDescriptor:
    """The content of ``mesh.json`` (see the module docstring)."""

    up_pid: int
    controller: str
    controllers: tuple[str, ...]
    ui: str
    store: str
    nodes: Mapping[str, str]
    node_pids: Mapping[str, int] = field(default_factory=dict)
    started_at: float = field(default_factory=time.time)
    api: tuple[str, ...] = ()
    trust_bundle: str = ""
    identity: Mapping[str, Any] = field(default_factory=dict)
    controller_spiffe_id: str = ""

    def to_json(self) -> dict[str, Any]:
        return {
            "version": _VERSION,
            "up_pid": self.up_pid,
            "started_at": self.started_at,
            "controller": self.controller,
            "controllers": list(self.controllers),
            "api": list(self.api),
            "trust_bundle": self.trust_bundle,
            "identity": dict(self.identity),
            "controller_spiffe_id": self.controller_spiffe_id,
            "ui": self.ui,
            "store": self.store,
            "nodes": dict(sorted(self.nodes.items())),
            "node_pids": dict(sorted(self.node_pids.items())),
        }

    @classmethod
    def from_json(cls, data: object) -> MeshDescriptor:
        """Parse and validate; :class:`DescriptorError` naming the bad field."""
        if not isinstance(data, dict):
            raise DescriptorError(f"{DESCRIPTOR_FILE} must hold a JSON object")
        controller = data.get("controller")
        if not isinstance(controller, str) or not controller.startswith(("http://", "https://")):
            raise DescriptorError(f"{DESCRIPTOR_FILE} has no controller URL")
        nodes = data.get("nodes")
        if not isinstance(nodes, dict) or not all(
            isinstance(k, str) and isinstance(v, str) and v.startswith(("http://", "https://"))
            for k, v in nodes.items()
        ):
            raise DescriptorError(f"{DESCRIPTOR_FILE} nodes must map node IDs to http(s) URLs")
        up_pid = data.get("up_pid")
        if isinstance(up_pid, bool) or not isinstance(up_pid, int) or up_pid <= 0:
            raise DescriptorError(f"{DESCRIPTOR_FILE} up_pid must be a positive integer")
        pids = data.get("node_pids", {})
        if not isinstance(pids, dict) or not all(
            isinstance(k, str) and isinstance(v, int) and not isinstance(v, bool) and v > 0
            for k, v in pids.items()
        ):
            raise DescriptorError(f"{DESCRIPTOR_FILE} node_pids must map node IDs to pids")
        controllers = data.get("controllers", [controller])
        if not isinstance(controllers, list) or not all(isinstance(c, str) for c in controllers):
            raise DescriptorError(f"{DESCRIPTOR_FILE} controllers must be a list of URLs")
        api = data.get("api", [])
        if not isinstance(api, list) or not all(
            isinstance(a, str) and a.startswith("https://") for a in api
        ):
            raise DescriptorError(f"{DESCRIPTOR_FILE} api must be a list of https URLs")
        bundle = data.get("trust_bundle", "")
        if not isinstance(bundle, str) or (bundle and not bundle.startswith("/")):
            raise DescriptorError(f"{DESCRIPTOR_FILE} trust_bundle must be an absolute path")
        started = data.get("started_at", 0.0)
        identity = data.get("identity", {})
        if not isinstance(identity, dict) or (
            identity and identity.get("provider") not in ("spire", "embedded")
        ):
            raise DescriptorError(
                f"{DESCRIPTOR_FILE} identity must be an object whose provider is spire or embedded"
            )
        return cls(
            up_pid=up_pid,
            controller=controller,
            controllers=tuple(controllers),
            ui=str(data.get("ui", "")),
            store=str(data.get("store", "")),
            nodes=dict(nodes),
            node_pids=dict(pids),
            started_at=float(started) if isinstance(started, int | float) else 0.0,
            api=tuple(api),
            trust_bundle=bundle,
            identity=dict(identity),
            controller_spiffe_id=str(data.get("controller_spiffe_id", "")),
        )


def write_descriptor(root: Path, descriptor: MeshDescriptor) -> Path:
    """Write ``root/mesh.json`` atomically (a temporary file renamed over it), mode 0600."""
    path = root / DESCRIPTOR_FILE
    tmp = root / f".{DESCRIPTOR_FILE}.{os.getpid()}.tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            json.dump(descriptor.to_json(), handle, indent=2)
            handle.write("\n")
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise
    return path


def remove_descriptor(root: Path) -> None:
    """Remove ``root/mesh.json`` (``up`` is stopping); no error if it is not there."""
    with contextlib.suppress(FileNotFoundError):
        (root / DESCRIPTOR_FILE).unlink()


def pid_alive(pid: int) -> bool:
    """Whether ``pid`` is a live process running x0tta6bl4 (not a zombie, not a reused pid
    of some other program)."""
    proc = Path("/proc") / str(pid)
    try:
        cmdline = (proc / "cmdline").read_bytes()
        stat = (proc / "stat").read_text()
    except OSError:
        return False
    return b"x0tta6bl4" in cmdline and stat.rpartition(")")[2].split()[0] != "Z"


def _lock_holder(root: Path) -> int | None:
    """The pid written into ``root/.lock`` by a running ``up`` (emptied when it stops)."""
    try:
        text = (root / ".lock").read_text(encoding="utf-8").strip()
    except OSError:
        return None
    return int(text) if text.isascii() and text.isdigit() else None


def read_descriptor(root: Path) -> MeshDescriptor:
    """The descriptor of the ``up`` running on state directory ``root``.

    :class:`UpNotRunningError` when there is none because ``up`` stopped, is still starting,
    or was killed; :class:`DescriptorError` for anything else (not a state directory, a
    malformed file).
    """
    where = str(root)
    if not root.is_dir():
        raise DescriptorError(
            f"{where} is not a directory (give the --state-dir of `x0tta6bl4 up`)"
        )
    holder = _lock_holder(root)
    path = root / DESCRIPTOR_FILE
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        if holder is not None and pid_alive(holder):
            raise UpNotRunningError(
                f"x0tta6bl4 up (pid {holder}) on {where} is still starting: {DESCRIPTOR_FILE} "
                "is written once every node is ready (use --wait SECONDS to wait for it)",
                starting=True,
            ) from None
        if (root / ".lock").exists():
            raise UpNotRunningError(
                f"x0tta6bl4 up is not running on {where} (no {DESCRIPTOR_FILE}: it is removed "
                f"when up stops); start it with `x0tta6bl4 up --state-dir {where}`"
            ) from None
        raise DescriptorError(
            f"{where} has no {DESCRIPTOR_FILE}: is it the state directory of a running "
            "`x0tta6bl4 up`?"
        ) from None
    except OSError as exc:
        raise DescriptorError(f"cannot read {path}: {exc.strerror}") from None
    try:
        data = json.loads(text)
    except ValueError as exc:
        raise DescriptorError(f"{path} is not JSON: {exc}") from None
    descriptor = MeshDescriptor.from_json(data)
    if not pid_alive(descriptor.up_pid) or holder != descriptor.up_pid:
        if holder is not None and holder != descriptor.up_pid and pid_alive(holder):
            raise UpNotRunningError(
                f"x0tta6bl4 up (pid {holder}) on {where} is still starting: {DESCRIPTOR_FILE} "
                "is written once every node is ready (use --wait SECONDS to wait for it)",
                starting=True,
            )
        raise UpNotRunningError(
            f"x0tta6bl4 up (pid {descriptor.up_pid}) that wrote {path} is no longer running "
            "(it was killed before it could remove the file); start it again with "
            f"`x0tta6bl4 up --state-dir {where}`"
        )
    return descriptor
