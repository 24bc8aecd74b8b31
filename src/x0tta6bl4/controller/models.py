"""The controller's records: nodes, their status, the stored mesh policy, and store events.

All records are frozen dataclasses that validate themselves on construction. Each has a
``to_json()`` returning a JSON-serialisable ``dict`` and a ``from_json(data)`` that accepts
only exactly the documented fields with exactly the documented types (unknown fields,
missing fields, ``true`` where a number is expected, … raise
:class:`~x0tta6bl4.records.ModelError`). The stores persist records as the compact JSON
produced by :func:`dumps`. The policy document itself is :class:`x0tta6bl4.policy.Policy`
(the mesh nodes evaluate it too); the store keeps it with its revision as
:class:`StoredPolicy`.

JSON shapes::

    NodeRecord  {"node_id", "spiffe_id", "endpoint": "host:port", "overlay_ip": "100.96.0.7",
                 "pq_svid_pem", "pq_svid_not_after": epoch-seconds,
                 "ml_dsa_public_key": base64, "registered_at", "last_seen",
                 "status": {"links": [{"peer": node_id, "up": bool, "rtt_ms": float|null}]}}
    Policy      {"rules": [{"from": pattern, "to": pattern, "action": "join"|"link"|"talk",
                            "allow": bool}]}          (a join rule's "to" is always "*")
    Revocation  {"serial": lowercase hex, "node_id", "not_after": epoch-seconds}

Timestamps are wall-clock seconds since the epoch (``time.time()``), as floats.
"""

from __future__ import annotations

import base64
import binascii
import enum
import functools
import hashlib
import ipaddress
import json
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, TypeAlias

from cryptography import x509

from x0tta6bl4.policy import Policy
from x0tta6bl4.records import ModelError, check_bool, exact_fields

__all__ = [
    "MAX_LINKS",
    "ML_DSA_65_PUBLIC_KEY_SIZE",
    "EventKind",
    "LinkStatus",
    "NodeRecord",
    "NodeRegistration",
    "NodeStatus",
    "Revision",
    "Revocation",
    "Snapshot",
    "StoreEvent",
    "StoredPolicy",
    "dumps",
    "loads",
    "pem_serial",
    "serial_hex",
]

Revision: TypeAlias = int
"""A store revision: monotonically increasing (not necessarily dense); 0 means "nothing"."""

ML_DSA_65_PUBLIC_KEY_SIZE = 1952
"""Size in bytes of an ML-DSA-65 public key (FIPS 204)."""

MAX_LINKS = 1024
_MAX_PEM = 64 * 1024

_NODE_ID = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9._-]{0,251}[A-Za-z0-9])?")
_SPIFFE_ID = re.compile(r"spiffe://[a-z0-9._-]{1,255}(?:/[A-Za-z0-9._~!$&'()*+,;=:@%-]+)+")
_DNS_NAME = re.compile(
    r"(?=.{1,253}$)[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
    r"(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*"
)


# --------------------------------------------------------------------------- validators


def _check_node_id(value: object, what: str = "node_id") -> str:
    if not isinstance(value, str) or not _NODE_ID.fullmatch(value):
        raise ModelError(
            f"{what} must be 1-253 characters of letters, digits, '.', '_' or '-', "
            f"starting and ending with a letter or digit; got {value!r:.80}"
        )
    return value


def _check_spiffe_id(value: object) -> str:
    if not isinstance(value, str) or len(value) > 2048 or not _SPIFFE_ID.fullmatch(value):
        raise ModelError(f"spiffe_id must be spiffe://<trust-domain>/<path>; got {value!r:.80}")
    return value


def _check_endpoint(value: object) -> str:
    if not isinstance(value, str):
        raise ModelError(f"endpoint must be a 'host:port' string; got {value!r:.80}")
    host, sep, port_text = value.rpartition(":")
    if not sep or not port_text.isdigit() or not 1 <= int(port_text) <= 65535:
        raise ModelError(f"endpoint must be 'host:port' with a port 1-65535; got {value!r:.80}")
    if host.startswith("[") and host.endswith("]"):
        try:
            ipaddress.IPv6Address(host[1:-1])
        except ValueError:
            raise ModelError(f"endpoint has an invalid IPv6 address: {value!r:.80}") from None
        return value
    try:
        ipaddress.IPv4Address(host)
    except ValueError:
        if not _DNS_NAME.fullmatch(host):
            raise ModelError(
                f"endpoint host must be an IPv4 address, [IPv6] or DNS name: {value!r:.80}"
            ) from None
    return value


def _check_time(value: object, what: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ModelError(f"{what} must be a number of seconds since the epoch; got {value!r:.40}")
    result = float(value)
    if not math.isfinite(result) or result < 0:
        raise ModelError(f"{what} must be finite and non-negative; got {value!r:.40}")
    return result


# --------------------------------------------------------------------------- node status


@dataclass(frozen=True, slots=True)
class LinkStatus:
    """One link of a node as the node reports it: the peer, whether it is up, its RTT."""

    peer: str
    up: bool
    rtt_ms: float | None = None

    def __post_init__(self) -> None:
        _check_node_id(self.peer, "link peer")
        check_bool(self.up, "link up")
        if self.rtt_ms is not None:
            if isinstance(self.rtt_ms, bool) or not isinstance(self.rtt_ms, int | float):
                raise ModelError(f"link rtt_ms must be a number or null; got {self.rtt_ms!r:.40}")
            if not math.isfinite(self.rtt_ms) or self.rtt_ms < 0:
                raise ModelError(f"link rtt_ms must be finite and >= 0; got {self.rtt_ms!r:.40}")
            object.__setattr__(self, "rtt_ms", float(self.rtt_ms))

    def to_json(self) -> dict[str, Any]:
        return {"peer": self.peer, "up": self.up, "rtt_ms": self.rtt_ms}

    @classmethod
    def from_json(cls, data: object) -> LinkStatus:
        fields = exact_fields(data, "link", ("peer", "up", "rtt_ms"))
        return cls(peer=fields["peer"], up=fields["up"], rtt_ms=fields["rtt_ms"])


@dataclass(frozen=True, slots=True)
class NodeStatus:
    """What a node last reported about itself: its links (at most :data:`MAX_LINKS`)."""

    links: tuple[LinkStatus, ...] = ()

    def __post_init__(self) -> None:
        if not isinstance(self.links, tuple) or not all(
            isinstance(link, LinkStatus) for link in self.links
        ):
            raise ModelError("status links must be a tuple of LinkStatus")
        if len(self.links) > MAX_LINKS:
            raise ModelError(f"status has {len(self.links)} links; at most {MAX_LINKS} allowed")

    def to_json(self) -> dict[str, Any]:
        return {"links": [link.to_json() for link in self.links]}

    @classmethod
    def from_json(cls, data: object) -> NodeStatus:
        fields = exact_fields(data, "status", ("links",))
        links = fields["links"]
        if not isinstance(links, list):
            raise ModelError("status links must be a JSON array")
        if len(links) > MAX_LINKS:
            raise ModelError(f"status has {len(links)} links; at most {MAX_LINKS} allowed")
        return cls(links=tuple(LinkStatus.from_json(link) for link in links))


# --------------------------------------------------------------------------- nodes


def _check_pem(value: object) -> str:
    if (
        not isinstance(value, str)
        or len(value) > _MAX_PEM
        or not value.startswith("-----BEGIN CERTIFICATE-----")
    ):
        raise ModelError("pq_svid_pem must be a PEM certificate (at most 64 KiB)")
    return value


def _check_public_key(value: object) -> bytes:
    if not isinstance(value, bytes) or len(value) != ML_DSA_65_PUBLIC_KEY_SIZE:
        size = len(value) if isinstance(value, bytes) else type(value).__name__
        raise ModelError(
            f"ml_dsa_public_key must be {ML_DSA_65_PUBLIC_KEY_SIZE} bytes (ML-DSA-65); got {size}"
        )
    return value


def _decode_key(value: object) -> bytes:
    if not isinstance(value, str):
        raise ModelError("ml_dsa_public_key must be a base64 string")
    try:
        return base64.b64decode(value.encode("ascii"), validate=True)
    except (binascii.Error, UnicodeEncodeError):
        raise ModelError("ml_dsa_public_key is not valid base64") from None


@functools.lru_cache(maxsize=4096)
def pem_serial(pem: str) -> int:
    """The X.509 serial number of the PEM certificate ``pem`` (validated PEM; cached)."""
    try:
        return int(x509.load_pem_x509_certificate(pem.encode("ascii")).serial_number)
    except (ValueError, UnicodeEncodeError) as exc:
        raise ModelError(f"pq_svid_pem is not a certificate: {exc}") from None


def serial_hex(serial: int) -> str:
    """A certificate serial as the API writes it: lowercase hex, no prefix, no padding."""
    return format(serial, "x")


_SERIAL_HEX = re.compile(r"[0-9a-f]{1,40}")
_MAX_SERIAL = (1 << 160) - 1  # RFC 5280: at most 20 octets


@dataclass(frozen=True, slots=True)
class Revocation:
    """A PQ SVID the controller revoked (its node was re-keyed or deleted), kept until its
    ``not_after``: nodes refuse a handshake made with it and drop links made with it."""

    serial: int
    node_id: str
    not_after: float

    def __post_init__(self) -> None:
        if isinstance(self.serial, bool) or not isinstance(self.serial, int):
            raise ModelError("serial must be an integer")
        if not 0 < self.serial <= _MAX_SERIAL:
            raise ModelError("serial must be a positive integer of at most 20 octets")
        _check_node_id(self.node_id)
        object.__setattr__(self, "not_after", _check_time(self.not_after, "not_after"))

    def to_json(self) -> dict[str, Any]:
        return {
            "serial": serial_hex(self.serial),
            "node_id": self.node_id,
            "not_after": self.not_after,
        }

    @classmethod
    def from_json(cls, data: object) -> Revocation:
        fields = exact_fields(data, "revocation", ("serial", "node_id", "not_after"))
        serial = fields["serial"]
        if not isinstance(serial, str) or not _SERIAL_HEX.fullmatch(serial):
            raise ModelError("serial must be 1-40 lowercase hex digits")
        return cls(serial=int(serial, 16), node_id=fields["node_id"], not_after=fields["not_after"])


@dataclass(frozen=True, slots=True)
class NodeRegistration:
    """What the controller knows about a node before the store gives it an overlay address."""

    node_id: str
    spiffe_id: str
    endpoint: str
    pq_svid_pem: str
    pq_svid_not_after: float
    ml_dsa_public_key: bytes
    now: float

    def __post_init__(self) -> None:
        _check_node_id(self.node_id)
        _check_spiffe_id(self.spiffe_id)
        _check_endpoint(self.endpoint)
        _check_pem(self.pq_svid_pem)
        object.__setattr__(
            self, "pq_svid_not_after", _check_time(self.pq_svid_not_after, "pq_svid_not_after")
        )
        _check_public_key(self.ml_dsa_public_key)
        object.__setattr__(self, "now", _check_time(self.now, "now"))


@dataclass(frozen=True, slots=True)
class NodeRecord:
    """A registered mesh node as stored by the controller."""

    node_id: str
    spiffe_id: str
    endpoint: str
    overlay_ip: ipaddress.IPv4Address
    pq_svid_pem: str
    pq_svid_not_after: float
    ml_dsa_public_key: bytes
    registered_at: float
    last_seen: float
    status: NodeStatus = field(default_factory=NodeStatus)

    def __post_init__(self) -> None:
        _check_node_id(self.node_id)
        _check_spiffe_id(self.spiffe_id)
        _check_endpoint(self.endpoint)
        if not isinstance(self.overlay_ip, ipaddress.IPv4Address):
            raise ModelError(f"overlay_ip must be an IPv4Address; got {self.overlay_ip!r:.40}")
        _check_pem(self.pq_svid_pem)
        object.__setattr__(
            self, "pq_svid_not_after", _check_time(self.pq_svid_not_after, "pq_svid_not_after")
        )
        _check_public_key(self.ml_dsa_public_key)
        object.__setattr__(self, "registered_at", _check_time(self.registered_at, "registered_at"))
        object.__setattr__(self, "last_seen", _check_time(self.last_seen, "last_seen"))
        if not isinstance(self.status, NodeStatus):
            raise ModelError("status must be a NodeStatus")

    @classmethod
    def from_registration(
        cls,
        registration: NodeRegistration,
        overlay_ip: ipaddress.IPv4Address,
        registered_at: float | None = None,
    ) -> NodeRecord:
        """A fresh record (empty status) for ``registration`` at ``overlay_ip``."""
        return cls(
            node_id=registration.node_id,
            spiffe_id=registration.spiffe_id,
            endpoint=registration.endpoint,
            overlay_ip=overlay_ip,
            pq_svid_pem=registration.pq_svid_pem,
            pq_svid_not_after=registration.pq_svid_not_after,
            ml_dsa_public_key=registration.ml_dsa_public_key,
            registered_at=registration.now if registered_at is None else registered_at,
            last_seen=registration.now,
        )

    @property
    def pq_svid_serial(self) -> int:
        """The serial number of the node's current PQ SVID."""
        return pem_serial(self.pq_svid_pem)

    @property
    def key_sha256(self) -> bytes:
        """SHA-256 of the node's raw ML-DSA-65 public key."""
        return hashlib.sha256(self.ml_dsa_public_key).digest()

    def revocation(self) -> Revocation:
        """The revocation of this record's current PQ SVID."""
        return Revocation(self.pq_svid_serial, self.node_id, self.pq_svid_not_after)

    def to_json(self) -> dict[str, Any]:
        return {
            "node_id": self.node_id,
            "spiffe_id": self.spiffe_id,
            "endpoint": self.endpoint,
            "overlay_ip": str(self.overlay_ip),
            "pq_svid_pem": self.pq_svid_pem,
            "pq_svid_not_after": self.pq_svid_not_after,
            "ml_dsa_public_key": base64.b64encode(self.ml_dsa_public_key).decode("ascii"),
            "registered_at": self.registered_at,
            "last_seen": self.last_seen,
            "status": self.status.to_json(),
        }

    @classmethod
    def from_json(cls, data: object) -> NodeRecord:
        fields = exact_fields(
            data,
            "node record",
            (
                "node_id",
                "spiffe_id",
                "endpoint",
                "overlay_ip",
                "pq_svid_pem",
                "pq_svid_not_after",
                "ml_dsa_public_key",
                "registered_at",
                "last_seen",
                "status",
            ),
        )
        overlay_ip = fields["overlay_ip"]
        if not isinstance(overlay_ip, str):
            raise ModelError("overlay_ip must be a dotted-quad string")
        try:
            address = ipaddress.IPv4Address(overlay_ip)
        except ValueError:
            raise ModelError(f"overlay_ip is not an IPv4 address: {overlay_ip!r:.40}") from None
        return cls(
            node_id=fields["node_id"],
            spiffe_id=fields["spiffe_id"],
            endpoint=fields["endpoint"],
            overlay_ip=address,
            pq_svid_pem=fields["pq_svid_pem"],
            pq_svid_not_after=fields["pq_svid_not_after"],
            ml_dsa_public_key=_decode_key(fields["ml_dsa_public_key"]),
            registered_at=fields["registered_at"],
            last_seen=fields["last_seen"],
            status=NodeStatus.from_json(fields["status"]),
        )


# --------------------------------------------------------------------------- policy


@dataclass(frozen=True, slots=True)
class StoredPolicy:
    """The policy with the revision at which it was last written (0: never written)."""

    policy: Policy
    revision: Revision


# --------------------------------------------------------------------------- events


class EventKind(enum.StrEnum):
    """What changed in the store."""

    NODE_PUT = "node_put"
    NODE_DELETED = "node_deleted"
    POLICY_PUT = "policy_put"
    NODE_REVOKED = "node_revoked"


@dataclass(frozen=True, slots=True)
class StoreEvent:
    """One change, at ``revision``. ``node`` is set for node_put, ``policy`` for policy_put,
    ``revocation`` for node_revoked (written in the same transaction as the node_put or
    node_deleted that revoked the certificate)."""

    kind: EventKind
    revision: Revision
    node_id: str | None = None
    node: NodeRecord | None = None
    policy: Policy | None = None
    revocation: Revocation | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "kind": self.kind.value,
            "revision": self.revision,
            "node_id": self.node_id,
            "node": None if self.node is None else self.node.to_json(),
            "policy": None if self.policy is None else self.policy.to_json(),
            "revocation": None if self.revocation is None else self.revocation.to_json(),
        }


@dataclass(frozen=True, slots=True)
class Snapshot:
    """A consistent view of all nodes and the policy at one ``revision``."""

    nodes: tuple[NodeRecord, ...]
    policy: StoredPolicy
    revision: Revision
    #: The revoked PQ SVIDs not yet past their notAfter, by serial.
    revoked: tuple[Revocation, ...] = ()


# --------------------------------------------------------------------------- encoding


def dumps(data: Mapping[str, Any]) -> bytes:
    """Compact, deterministic JSON bytes for a record's ``to_json()``."""
    return json.dumps(data, separators=(",", ":"), sort_keys=True, allow_nan=False).encode()


def loads(raw: bytes | str) -> object:
    """Parse JSON bytes, raising :class:`ModelError` (never a JSONDecodeError) on bad input.

    Nesting deeper than the interpreter's recursion limit (``[[[[…`` a thousand deep) is bad
    input too: ``json`` raises :class:`RecursionError` for it, which is reported here as a
    :class:`ModelError` like any other malformed document (found by ``fuzz/store_records.py``).
    """
    try:
        return json.loads(raw)
    except (ValueError, UnicodeDecodeError) as exc:
        raise ModelError(f"invalid JSON: {exc}") from None
    except RecursionError:
        raise ModelError("invalid JSON: nested too deeply") from None
