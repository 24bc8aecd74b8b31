"""Node IDs and the per-principal SPIFFE ID scheme (one SPIFFE ID per mesh node).

Every principal has a SPIFFE ID of its own (docs/identity.md, "Names")::

    mesh node    spiffe://<td>/ns/<namespace>/sa/<serviceaccount>/node/<node-name>
    controller   spiffe://<td>/ns/<namespace>/sa/<serviceaccount>/controller
    check job    spiffe://<td>/ns/<namespace>/sa/<serviceaccount>/check

In Kubernetes ``<node-name>`` is the Kubernetes node the mesh pod runs on (SPIRE's
ClusterSPIFFEID template ``.PodSpec.NodeName``); under ``x0tta6bl4 up`` it is the node ID.

A node ID is bound to the SPIFFE ID that names it. :class:`NodeIdMapping` is that binding as
the controller applies it: a pattern whose last segment is ``{node}``, for instance the
default ``spiffe://<td>/**/node/{node}``; the node ID of a SPIFFE ID is its last segment
(shortened by :func:`node_id_from_name` when longer than 64 characters, as the node agent
shortens ``X0_NODE_NAME``). A SPIFFE ID the pattern does not match names no node and may not
register one. The mapping ``none`` turns the binding off (the first registration of a node ID
binds it to whichever SPIFFE ID made it), for deployments that still give every node one
shared identity.
"""

from __future__ import annotations

import hashlib
import re
from typing import Final

from spiffe import SpiffeId, TrustDomain

from x0tta6bl4.identity.errors import InvalidSpiffeIdError
from x0tta6bl4.identity.spiffe_ids import (
    SpiffeIdPattern,
    parse_spiffe_id,
    parse_trust_domain,
    workload_id,
)

__all__ = [
    "CHECK_ROLE",
    "CONTROLLER_ROLE",
    "MAX_NODE_ID_LENGTH",
    "NODE_ID_RE",
    "NODE_PLACEHOLDER",
    "NodeIdMapping",
    "controller_id_for",
    "default_node_mapping",
    "is_node_id",
    "node_id_from_name",
    "node_spiffe_id",
    "role_spiffe_id",
]

#: Node ids: 1..64 characters (the X.509 CN limit of the PQ SVID), letters, digits, ``.``,
#: ``_`` and ``-``, starting and ending with a letter or digit.
MAX_NODE_ID_LENGTH: Final = 64
NODE_ID_RE: Final = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9._-]{0,62}[A-Za-z0-9])?")
#: Characters of a long name kept before the hash suffix (47 + "-" + 16 hex digits = 64).
_KEEP: Final = MAX_NODE_ID_LENGTH - 17

NODE_PLACEHOLDER: Final = "{node}"
CONTROLLER_ROLE: Final = "controller"
CHECK_ROLE: Final = "check"
_NODE_SEGMENT: Final = "node"


def is_node_id(text: str) -> bool:
    """Whether ``text`` is a valid node ID."""
    return isinstance(text, str) and NODE_ID_RE.fullmatch(text) is not None


def node_id_from_name(name: str) -> str:
    """A Kubernetes node name (up to 253 characters) as a mesh node id (up to 64).

    A name that fits is used as it is. A longer one becomes its first 47 characters, ``-``
    and the first 16 hex digits of the SHA-256 of the whole name: stable across restarts,
    readable, and distinct for names that share their first 47 characters.
    """
    if len(name) <= MAX_NODE_ID_LENGTH:
        return name
    digest = hashlib.sha256(name.encode("utf-8")).hexdigest()[:16]
    return f"{name[:_KEEP].rstrip('._-')}-{digest}"


def node_spiffe_id(
    trust_domain: str | TrustDomain, namespace: str, serviceaccount: str, node_name: str
) -> SpiffeId:
    """``spiffe://<td>/ns/<namespace>/sa/<sa>/node/<node_name>``: a mesh node's SPIFFE ID."""
    base = workload_id(trust_domain, namespace, serviceaccount)
    return parse_spiffe_id(f"{base}/{_NODE_SEGMENT}/{node_name}")


def role_spiffe_id(
    trust_domain: str | TrustDomain, namespace: str, serviceaccount: str, role: str
) -> SpiffeId:
    """``spiffe://<td>/ns/<namespace>/sa/<sa>/<role>`` (``controller``, ``check``)."""
    base = workload_id(trust_domain, namespace, serviceaccount)
    return parse_spiffe_id(f"{base}/{role}")


def controller_id_for(spiffe_id: SpiffeId | str) -> SpiffeId | None:
    """The controller's SPIFFE ID next to a node's or check's own: the same
    ``…/ns/<ns>/sa/<sa>`` with ``/controller`` in place of ``/node/<name>`` or ``/check``.

    None when ``spiffe_id`` does not follow the scheme (then the controller's ID must be
    configured explicitly).
    """
    sid = parse_spiffe_id(spiffe_id)
    segments = sid.path.strip("/").split("/")
    if len(segments) >= 2 and segments[-2] == _NODE_SEGMENT:
        base = segments[:-2]
    elif segments and segments[-1] in (CHECK_ROLE, CONTROLLER_ROLE):
        base = segments[:-1]
    else:
        return None
    if not base:
        return None
    return parse_spiffe_id(f"spiffe://{sid.trust_domain.name}/{'/'.join(base)}/{CONTROLLER_ROLE}")


def default_node_mapping(trust_domain: str | TrustDomain) -> str:
    """The default mapping pattern: ``spiffe://<td>/**/node/{node}``."""
    td = parse_trust_domain(trust_domain)
    return f"spiffe://{td.name}/**/{_NODE_SEGMENT}/{NODE_PLACEHOLDER}"


class NodeIdMapping:
    """Which node ID a SPIFFE ID may register (see the module docstring).

    ``NodeIdMapping("spiffe://x0tta6bl4.mesh/**/node/{node}")``; ``NodeIdMapping("none")``
    disables the binding. A malformed pattern raises :class:`InvalidSpiffeIdError`.
    """

    __slots__ = ("_prefix", "_text")

    def __init__(self, pattern: str) -> None:
        text = pattern.strip()
        self._text = text
        if text.lower() == "none":
            self._prefix: SpiffeIdPattern | None = None
            return
        head, sep, tail = text.rpartition("/")
        if not sep or tail != NODE_PLACEHOLDER or NODE_PLACEHOLDER in head:
            raise InvalidSpiffeIdError(
                f"node ID mapping {pattern!r} must end with one /{NODE_PLACEHOLDER} segment, "
                f"e.g. spiffe://x0tta6bl4.mesh/**/node/{NODE_PLACEHOLDER} (or be 'none')"
            )
        self._prefix = SpiffeIdPattern(head)

    @property
    def enabled(self) -> bool:
        """False for ``none``: node IDs are bound by their first registration only."""
        return self._prefix is not None

    @property
    def trust_domain(self) -> TrustDomain | None:
        """The pattern's trust domain (None for ``none``)."""
        return None if self._prefix is None else self._prefix.trust_domain

    def node_id_for(self, spiffe_id: SpiffeId | str) -> str | None:
        """The node ID ``spiffe_id`` is bound to, or None if it names no node.

        With the mapping disabled every SPIFFE ID returns None (no binding by name).
        """
        if self._prefix is None:
            return None
        try:
            sid = parse_spiffe_id(spiffe_id)
        except InvalidSpiffeIdError:
            return None
        path = sid.path
        head, _, name = path.rpartition("/")
        if not name or not self._prefix.matches(f"spiffe://{sid.trust_domain.name}{head}"):
            return None
        node_id = node_id_from_name(name)
        return node_id if is_node_id(node_id) else None

    def allows(self, spiffe_id: SpiffeId | str, node_id: str) -> bool:
        """Whether ``spiffe_id`` may register ``node_id`` (always True when disabled)."""
        if self._prefix is None:
            return True
        return self.node_id_for(spiffe_id) == node_id

    def __str__(self) -> str:
        return self._text

    def __repr__(self) -> str:
        return f"NodeIdMapping({self._text!r})"
