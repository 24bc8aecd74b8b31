"""What the controller checks before it serves: a store that refuses to lie.

Issue 13 rows 9 and 10: a controller started ready on a truncated (0-byte) database with 0
nodes, on a database that ``PRAGMA integrity_check`` called malformed, and with a new mesh CA
when the CA files were gone although the store held nodes issued by the old one. At start
(:func:`check_store_at_start`, run by the app's lifespan once the store is open):

1. **the store is whole**: opening it runs the backend's integrity check (SQLite
   ``quick_check``; etcd: a schema key, and no data without one); a damaged store fails the
   start with :class:`StartupRefusedError` naming the file or prefix and the fault;
2. **the store is the one this state directory knew**: :class:`StoreMarker`
   (``<state-dir>/store-marker.json``, beside the local mesh CA and outside the database)
   records every store that has held nodes. Such a store is opened with ``create=False``: if
   it is missing, empty or 0 bytes (a silent reset), the start fails unless the operator asked
   for a fresh store (``--fresh-store``);
3. **its nodes were issued by the mesh CA in use**: every node whose PQ SVID is still valid
   must chain to the CA bundle; otherwise (the CA files were replaced or lost) the start fails
   rather than sign with a CA none of the nodes trust. With ``--local-ca`` a missing CA is
   created only when the store holds no node.

Damaged records found by the scan do not stop the start: they are store faults (``/ready``
503 naming them, the API answering 503 ``store_corrupt`` where it needs them) until the
operator deletes or repairs them.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from x0tta6bl4.controller.ca import CaHolder
from x0tta6bl4.controller.models import NodeRecord
from x0tta6bl4.controller.store.base import Store
from x0tta6bl4.crypto.errors import CryptoError
from x0tta6bl4.crypto.pqsvid import UnknownIssuerError, verify_svid
from x0tta6bl4.logging import get_logger

__all__ = [
    "FRESH_STORE_HINT",
    "MARKER_NAME",
    "StartupRefusedError",
    "StoreMarker",
    "check_store_at_start",
    "foreign_nodes",
]

_log = get_logger(__name__)

MARKER_NAME = "store-marker.json"
"""The file in the state directory recording which stores have held nodes."""

FRESH_STORE_HINT = (
    "if the data is really gone, move the store aside and start once with --fresh-store "
    "(X0_FRESH_STORE=1) to begin a new, empty one"
)


class StartupRefusedError(Exception):
    """The controller must not start on this store (the message names the file and the
    fault, and what the operator can do)."""


class StoreMarker:
    """``<state-dir>/store-marker.json``: the stores (by :attr:`Store.location`) that have held
    nodes, written atomically (mode 0600) the first time each one is seen holding nodes."""

    def __init__(self, state_dir: Path) -> None:
        self.path = state_dir / MARKER_NAME
        self._known: set[str] | None = None

    def _load(self) -> dict[str, Any]:
        try:
            data = json.loads(self.path.read_text())
        except FileNotFoundError:
            return {"version": 1, "stores": {}}
        except (OSError, ValueError) as exc:
            raise StartupRefusedError(
                f"{self.path} (which records the stores that have held nodes) cannot be read: "
                f"{exc}; repair or remove it"
            ) from None
        if not isinstance(data, dict) or not isinstance(data.get("stores"), dict):
            raise StartupRefusedError(f"{self.path} is not a store marker; repair or remove it")
        return data

    def held_nodes(self, location: str) -> bool:
        """Whether the store at ``location`` is recorded as having held nodes."""
        return location in self._load()["stores"]

    def record(self, location: str) -> None:
        """Record that the store at ``location`` holds nodes (once; later calls are free)."""
        if self._known is not None and location in self._known:
            return
        data = self._load()
        if location not in data["stores"]:
            data["stores"][location] = {"held_nodes_since": time.time()}
            self.path.parent.mkdir(parents=True, exist_ok=True)
            tmp = self.path.with_name(self.path.name + ".tmp")
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            try:
                os.write(fd, json.dumps(data, indent=1).encode())
                os.fsync(fd)
            finally:
                os.close(fd)
            os.replace(tmp, self.path)
            _log.info("store recorded as holding nodes", store=location, marker=str(self.path))
        self._known = set(data["stores"])


def foreign_nodes(nodes: list[NodeRecord], ca: CaHolder, now: float) -> list[str]:
    """The IDs of ``nodes`` holding a PQ SVID that is still valid and was not issued by a CA
    of the current bundle (expired or otherwise invalid SVIDs say nothing about the CA)."""
    loaded = ca.current()
    if loaded is None:
        return []
    foreign = []
    for record in nodes:
        if record.pq_svid_not_after <= now:
            continue
        try:
            der = x509.load_pem_x509_certificate(record.pq_svid_pem.encode()).public_bytes(
                serialization.Encoding.DER
            )
            verify_svid(der, loaded.bundle, now)
        except UnknownIssuerError:
            foreign.append(record.node_id)
        except (CryptoError, ValueError):
            continue
    return foreign


async def check_store_at_start(
    store: Store,
    ca: CaHolder,
    marker: StoreMarker,
    *,
    trust_domain: str,
    now: float,
) -> None:
    """Checks 2 and 3 of the module docstring on an open store; creates a pending local CA
    when allowed. Raises :class:`StartupRefusedError`."""
    nodes = await store.scan()
    faults = store.faults
    if faults:
        _log.error(
            "store has damaged records",
            store=store.location,
            faults=[f"{where}: {fault}" for where, fault in list(faults.items())[:10]],
        )
    held = len(nodes) + sum(1 for where in faults if where.startswith("node "))
    if held:
        marker.record(store.location)
    if ca.pending:
        if held:
            raise StartupRefusedError(
                f"the mesh CA files {ca.cert_file} and {ca.key_file} are missing, but the "
                f"store {store.location} holds {held} node(s) issued by a mesh CA: restore "
                "those files (a new CA would make every node certificate worthless); "
                + FRESH_STORE_HINT
            )
        ca.create_pending(trust_domain)
    foreign = foreign_nodes(nodes, ca, now)
    if foreign:
        raise StartupRefusedError(
            f"the store {store.location} holds {len(foreign)} node(s) whose PQ SVIDs were not "
            f"issued by the mesh CA in {ca.cert_file} (e.g. "
            f"{', '.join(repr(n) for n in foreign[:3])}): restore the CA these nodes were "
            "issued by (x0tta6bl4 controller ca rotate keeps old CAs trusted); " + FRESH_STORE_HINT
        )
