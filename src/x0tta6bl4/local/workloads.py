"""Who is who in a local mesh: the SPIFFE ID and the OS credentials of each process.

With ``--identity spire`` every process ``up`` starts is a workload SPIRE's ``unix`` attestor
tells apart by the kernel's view of it: all run as ``up``'s own uid, and each gets a group id
of its own — the controllers share ``gid_base``, node *i* (1-based) runs with
``gid_base + i``. Root may run a child with any gid without touching files or privileges (the
uid, and so file access and capabilities, stay root's), so no user or group has to exist on
the machine. The registration entry of each workload selects ``unix:uid:<uid>`` and
``unix:gid:<gid>``; a process without such a gid (the operator's shell, a stray process of the
same uid) gets no identity at all.

SPIFFE IDs: the per-principal scheme of docs/identity.md ("Names",
:mod:`x0tta6bl4.identity.node_ids`) with namespace ``local`` and service account
``x0tta6bl4-app``::

    controller  spiffe://<td>/ns/local/sa/x0tta6bl4-app/controller
    node        spiffe://<td>/ns/local/sa/x0tta6bl4-app/node/<node-id>
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from x0tta6bl4.identity.node_ids import CONTROLLER_ROLE, node_spiffe_id, role_spiffe_id

__all__ = [
    "GID_BASE",
    "LocalWorkload",
    "controller_spiffe_id",
    "local_node_spiffe_id",
    "local_workloads",
]

#: First group id of the local workloads: high, unallocated on ordinary systems (useradd
#: stops at 60000; systemd's dynamic users use 61184–65519 and container ranges 524288+).
GID_BASE = 1_900_000_000
_NAMESPACE = "local"
_SERVICE_ACCOUNT = "x0tta6bl4-app"


def controller_spiffe_id(trust_domain: str) -> str:
    """The controllers' SPIFFE ID in a local mesh."""
    return str(role_spiffe_id(trust_domain, _NAMESPACE, _SERVICE_ACCOUNT, CONTROLLER_ROLE))


def local_node_spiffe_id(trust_domain: str, node_id: str) -> str:
    """Node ``node_id``'s own SPIFFE ID in a local mesh."""
    return str(node_spiffe_id(trust_domain, _NAMESPACE, _SERVICE_ACCOUNT, node_id))


@dataclass(frozen=True)
class LocalWorkload:
    """One local process (or group of replicas) with its identity and credentials."""

    name: str
    spiffe_id: str
    uid: int
    gid: int

    @property
    def selectors(self) -> tuple[str, ...]:
        """The SPIRE ``unix`` workload attestor selectors that identify it."""
        return (f"unix:uid:{self.uid}", f"unix:gid:{self.gid}")

    def to_json(self) -> dict[str, object]:
        return {"spiffe_id": self.spiffe_id, "selectors": list(self.selectors)}


def local_workloads(
    trust_domain: str, node_ids: list[str], *, uid: int | None = None, gid_base: int = GID_BASE
) -> dict[str, LocalWorkload]:
    """``"controller"`` and every node ID → its :class:`LocalWorkload`."""
    uid = os.getuid() if uid is None else uid
    found = {
        "controller": LocalWorkload("controller", controller_spiffe_id(trust_domain), uid, gid_base)
    }
    for index, node_id in enumerate(node_ids, start=1):
        found[node_id] = LocalWorkload(
            node_id, local_node_spiffe_id(trust_domain, node_id), uid, gid_base + index
        )
    return found
