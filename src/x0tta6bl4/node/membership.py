"""Reading the controller's membership answer: certificate serials and revoked certificates.

``GET /api/v1/nodes`` lists each node with ``pq_svid_serial`` (lowercase hex) and a
``revoked`` list (``{"serial", "node_id", "not_after"}``; docs/api.md). The node keys its
member-certificate cache by serial and hands the revocations to the core. A malformed or
oversize ``revoked`` list (or serial) makes the whole answer unusable: the agent refuses it
and keeps the membership it has (:class:`MembershipError`), so a broken or hostile answer
can neither wipe nor bloat what the node knows.
"""

from __future__ import annotations

import math
import re

from x0tta6bl4.node.model import RevokedCert

__all__ = ["MAX_REVOKED", "MembershipError", "parse_revoked", "parse_serial"]

MAX_REVOKED = 65_536
"""Most revoked certificates a node accepts in one answer (the controller keeps at most 8
per node ID, each only until its notAfter)."""

_SERIAL = re.compile(r"[0-9a-f]{1,40}")
_NODE_ID = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9._-]{0,251}[A-Za-z0-9])?")


class MembershipError(ValueError):
    """The controller's membership answer is malformed or oversize."""


def parse_serial(value: object, what: str = "pq_svid_serial") -> int:
    """A certificate serial as the API writes it (1-40 lowercase hex digits, positive)."""
    if not isinstance(value, str) or not _SERIAL.fullmatch(value):
        raise MembershipError(f"{what} must be 1-40 lowercase hex digits")
    serial = int(value, 16)
    if serial == 0:
        raise MembershipError(f"{what} must be positive")
    return serial


def parse_revoked(value: object) -> list[RevokedCert]:
    """The ``revoked`` list of a node-list answer (absent: ``[]``)."""
    if value is None:
        return []
    if not isinstance(value, list):
        raise MembershipError("revoked must be a list")
    if len(value) > MAX_REVOKED:
        raise MembershipError(f"revoked lists {len(value)} certificates; at most {MAX_REVOKED}")
    out = []
    for index, entry in enumerate(value):
        if not isinstance(entry, dict) or set(entry) != {"serial", "node_id", "not_after"}:
            raise MembershipError(f"revoked[{index}] must be {{serial, node_id, not_after}}")
        node_id, not_after = entry["node_id"], entry["not_after"]
        if not isinstance(node_id, str) or not _NODE_ID.fullmatch(node_id):
            raise MembershipError(f"revoked[{index}].node_id is not a node ID")
        if (
            isinstance(not_after, bool)
            or not isinstance(not_after, int | float)
            or not math.isfinite(not_after)
        ):
            raise MembershipError(f"revoked[{index}].not_after must be a finite number")
        out.append(
            RevokedCert(
                parse_serial(entry["serial"], f"revoked[{index}].serial"),
                node_id,
                float(not_after),
            )
        )
    return out
