"""Shared post-quantum test fixtures: mesh CAs, node keys and PQ SVIDs, cached per process.

Import from any test (``from tests.pqfixtures import make_ca, make_node_credential, NOW``).
Everything is real (ML-DSA-65 keys, certificates signed by a real :class:`MeshCA`); the caches
only avoid generating the same key or certificate twice. All objects are immutable, so sharing
them between tests is safe.

Time: certificates are issued at the fixed wall-clock instant :data:`NOW` (pass ``now=NOW`` to
``verify_svid``); the default CA is valid from ``NOW - 1 day`` for ten years.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Final

from x0tta6bl4.crypto.pqsvid import (
    DEFAULT_CA_TTL_SECONDS,
    DEFAULT_LEAF_TTL_SECONDS,
    MeshCA,
    PeerIdentity,
    TrustBundle,
    verify_svid,
)
from x0tta6bl4.crypto.suite import SigningKey
from x0tta6bl4.defaults import DEFAULT_TRUST_DOMAIN

__all__ = [
    "CA_CREATED_AT",
    "NOW",
    "NodeCredential",
    "default_spiffe_id",
    "make_bundle",
    "make_ca",
    "make_key",
    "make_node_credential",
]

#: The fixed "current" wall-clock time of the fixtures (2027-01-15T08:00:00Z).
NOW: Final = 1_800_000_000.0
#: When :func:`make_ca` creates CAs unless told otherwise.
CA_CREATED_AT: Final = NOW - 86400

_lock = threading.Lock()
_keys: dict[str, SigningKey] = {}
_cas: dict[tuple[str, str, float, int], MeshCA] = {}
_creds: dict[tuple[bytes, str, str, float, int, str], NodeCredential] = {}


@dataclass(frozen=True, slots=True)
class NodeCredential:
    """A node's ML-DSA-65 key and the PQ SVID its CA issued for it."""

    node_id: str
    spiffe_id: str
    key: SigningKey
    cert_der: bytes
    ca: MeshCA

    @property
    def public_key(self) -> bytes:
        return self.key.public_bytes

    def bundle(self) -> TrustBundle:
        """A trust bundle holding only the issuing CA."""
        return self.ca.bundle()

    def identity(self, now: float = NOW) -> PeerIdentity:
        """What a peer gets from verifying this credential at ``now``."""
        return verify_svid(self.cert_der, self.bundle(), now)


def default_spiffe_id(trust_domain: str = DEFAULT_TRUST_DOMAIN) -> str:
    """The SPIFFE ID the node DaemonSet runs as in tests."""
    return f"spiffe://{trust_domain}/ns/x0tta6bl4/sa/x0tta6bl4-node"


def make_key(label: str) -> SigningKey:
    """A cached ML-DSA-65 key per ``label`` (the same label always gives the same key)."""
    with _lock:
        key = _keys.get(label)
        if key is None:
            key = _keys[label] = SigningKey.generate()
        return key


def make_ca(
    trust_domain: str = DEFAULT_TRUST_DOMAIN,
    *,
    name: str = "default",
    now: float = CA_CREATED_AT,
    ttl_seconds: int = DEFAULT_CA_TTL_SECONDS,
) -> MeshCA:
    """A cached mesh CA; a different ``name`` gives a different CA (its own key)."""
    cache_key = (trust_domain, name, now, ttl_seconds)
    with _lock:
        ca = _cas.get(cache_key)
    if ca is None:
        ca = MeshCA.create(
            trust_domain,
            now=now,
            ttl_seconds=ttl_seconds,
            common_name=f"x0tta6bl4 test CA {name}"[:64],
            key=make_key(f"ca/{trust_domain}/{name}/{now}/{ttl_seconds}"),
        )
        with _lock:
            ca = _cas.setdefault(cache_key, ca)
    return ca


def make_node_credential(
    ca: MeshCA,
    node_id: str,
    *,
    spiffe_id: str | None = None,
    now: float = NOW,
    ttl_seconds: int = DEFAULT_LEAF_TTL_SECONDS,
    key_label: str | None = None,
) -> NodeCredential:
    """A cached PQ SVID for ``node_id`` issued by ``ca`` at ``now``.

    The key is :func:`make_key` of ``key_label`` (default: ``node/<node_id>``), so a node keeps
    its key across CAs, as it does across a CA rotation. ``spiffe_id`` defaults to
    :func:`default_spiffe_id` of the CA's trust domain.
    """
    sid = spiffe_id if spiffe_id is not None else default_spiffe_id(ca.trust_domain)
    label = key_label if key_label is not None else f"node/{node_id}"
    cache_key = (ca.cert_pem(), node_id, sid, now, ttl_seconds, label)
    with _lock:
        cred = _creds.get(cache_key)
    if cred is None:
        key = make_key(label)
        der = ca.issue(
            spiffe_id=sid,
            node_id=node_id,
            public_key=key.public_bytes,
            now=now,
            ttl_seconds=ttl_seconds,
        )
        cred = NodeCredential(node_id=node_id, spiffe_id=sid, key=key, cert_der=der, ca=ca)
        with _lock:
            cred = _creds.setdefault(cache_key, cred)
    return cred


def make_bundle(*cas: MeshCA) -> TrustBundle:
    """A trust bundle of the given CAs (all in the first one's trust domain)."""
    if not cas:
        raise ValueError("make_bundle needs at least one CA")
    return TrustBundle(cas[0].trust_domain, [ca.cert for ca in cas])
