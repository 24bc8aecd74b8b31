"""Admitting a node: proof of possession, replay guard, policy, PQ SVID, overlay address.

The order is fixed so that a refused request costs little and changes nothing:

1. the caller is already authenticated (JWT-SVID) by the route;
2. cheap checks: the node ID is the one the caller's SPIFFE ID is bound to by the node ID
   mapping (``--node-id-mapping``, by default ``spiffe://<td>/**/node/{node}``,
   :class:`~x0tta6bl4.identity.node_ids.NodeIdMapping`) — else ``409 node_id_taken`` if the
   node ID is registered to another SPIFFE ID (one store read), ``403 node_id_not_bound`` if
   not;
   base64 fields, nonce length, timestamp within the clock-skew window, and the proof names
   the credential the request is authenticated with (its ``credential_sha256`` is the
   principal's, else ``401 proof_not_bound``: a proof made under another client certificate,
   or a format-1 proof that names none);
3. the policy: may this SPIFFE ID join;
4. the node ID must not be bound to another SPIFFE ID (``409 node_id_taken``; on renewal it
   must exist) — a cheap early refusal; the store checks ownership again, atomically with the
   write, in step 7;
5. the ML-DSA-65 proof of possession over (spiffe_id, node_id, nonce, credential hash,
   timestamp) — format 2, ``x0tta6bl4.crypto.pqsvid.pop_message``; then the
   **key binding**: a node ID registered with another key is refused (``409 node_id_taken``)
   unless the request carries a rotation proof — a signature by the *previous* key over
   :func:`rotation_nonce` (this request's nonce and the new key's SHA-256) — or the record has
   been silent (no registration or status report) for :data:`KEY_REBIND_AFTER` seconds (a node
   that lost its key, e.g. a pod restarted with an empty state directory); an admin's
   ``DELETE`` releases the node ID at once;
6. the nonce is recorded in the store's replay guard (shared by every replica) — a second
   use is refused;
7. only then: the mesh CA signs the PQ SVID and the store allocates the overlay address and
   writes the record in one atomic step (nothing is written if the CIDR is full, or if the
   node ID was claimed by another SPIFFE ID since step 4: of two SPIFFE IDs racing for one
   new node ID exactly one wins, the other gets ``409 node_id_taken``).
"""

from __future__ import annotations

import base64
import binascii
import hmac
import time
from collections.abc import Callable
from dataclasses import dataclass
from ipaddress import IPv4Network

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from x0tta6bl4.controller.ca import CaHolder, LoadedCa
from x0tta6bl4.controller.errors import AdmissionError, AdmissionRefusal
from x0tta6bl4.controller.metrics import ControllerMetrics
from x0tta6bl4.controller.models import (
    ML_DSA_65_PUBLIC_KEY_SIZE,
    NodeRecord,
    NodeRegistration,
)
from x0tta6bl4.controller.store.base import Store
from x0tta6bl4.controller.store.errors import CidrExhaustedError, OwnershipError
from x0tta6bl4.crypto.errors import CryptoError
from x0tta6bl4.crypto.pqsvid import (
    POP_VERSION,
    rotation_nonce,
    rotation_proof,
    verify_proof_of_possession,
)
from x0tta6bl4.identity.errors import IdentityError
from x0tta6bl4.identity.node_ids import NodeIdMapping, default_node_mapping
from x0tta6bl4.logging import get_logger
from x0tta6bl4.policy import PolicyEngine, default_policy
from x0tta6bl4.records import ModelError

__all__ = [
    "KEY_REBIND_AFTER",
    "Admission",
    "PossessionProof",
    "Registrar",
    "current_policy",
    "rotation_nonce",
    "rotation_proof",
]

_log = get_logger(__name__)

MIN_NONCE = 16
MAX_NONCE = 64
KEY_REBIND_AFTER = 30.0
"""Seconds a node ID's record must have been silent (no registration, renewal or status
report; nodes report every 5 s) before the same SPIFFE ID may bind it to another key without
a rotation proof."""


@dataclass(frozen=True, slots=True)
class PossessionProof:
    """The proof of possession as the request carries it: base64 ``nonce`` and ``signature``
    (by the submitted ML-DSA-65 key over spiffe_id, node_id, nonce, credential hash,
    timestamp), the ``timestamp`` (UNIX seconds) it was made at, and ``credential_sha256``
    (hex; None in a version-1 proof, which is refused)."""

    nonce: str
    timestamp: int
    signature: str
    credential_sha256: str | None = None


@dataclass(frozen=True, slots=True)
class Admission:
    """The outcome of a successful registration or renewal."""

    record: NodeRecord
    bundle_pem: str
    trust_domain: str
    revision: int
    renew_after: float


def _b64(value: str, what: str) -> bytes:
    try:
        return base64.b64decode(value.encode("ascii"), validate=True)
    except (binascii.Error, UnicodeEncodeError):
        raise AdmissionError(
            AdmissionRefusal.INVALID_REQUEST, f"{what} is not valid base64"
        ) from None


async def current_policy(store: Store, trust_domain: str) -> tuple[PolicyEngine, int, bool]:
    """The policy in force, its revision, and whether it is the built-in default."""
    stored = await store.get_policy()
    if stored.revision == 0 and not stored.policy.rules:
        return PolicyEngine(default_policy(), trust_domain), 0, True
    return PolicyEngine(stored.policy, trust_domain), stored.revision, False


class Registrar:
    """Registration and renewal, shared by every request of one app.

    A refusal raises :class:`AdmissionError`; the API answers it and counts its reason in
    ``x0tta6bl4_registrations_rejected_total``."""

    def __init__(
        self,
        *,
        store: Store,
        ca: CaHolder,
        metrics: ControllerMetrics,
        trust_domain: str,
        network: IPv4Network,
        svid_ttl: int,
        clock_skew: int,
        node_mapping: NodeIdMapping | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._store = store
        self._mapping = (
            node_mapping
            if node_mapping is not None
            else NodeIdMapping(default_node_mapping(trust_domain))
        )
        self._ca = ca
        self._metrics = metrics
        self._trust_domain = trust_domain
        self._network = network
        self._svid_ttl = svid_ttl
        self._skew = clock_skew
        self._clock = clock

    def _identity_mismatch(self, node_id: str) -> AdmissionError:
        return AdmissionError(
            AdmissionRefusal.NODE_ID_TAKEN,
            f"node {node_id!r} is bound to another SPIFFE ID (an admin must delete it first)",
        )

    async def _check_bound(self, spiffe_id: str, node_id: str) -> None:
        """The node ID mapping (step 2): ``spiffe_id`` may register ``node_id`` only.

        A node ID that is registered to another SPIFFE ID is refused as taken (``409
        node_id_taken``: an impostor asking for a live node's ID learns only that it is
        taken, the same answer as without a mapping); one that is not registered, as not
        bound (``403 node_id_not_bound``)."""
        if self._mapping.allows(spiffe_id, node_id):
            return
        existing = await self._store.get_node(node_id)
        if existing is not None and existing.spiffe_id != spiffe_id:
            raise self._identity_mismatch(node_id)
        bound = self._mapping.node_id_for(spiffe_id)
        if bound is None:
            raise AdmissionError(
                AdmissionRefusal.NODE_ID_NOT_BOUND,
                f"{spiffe_id} names no mesh node under the node ID mapping {self._mapping} "
                f"and may not register node {node_id!r}",
            )
        raise AdmissionError(
            AdmissionRefusal.NODE_ID_NOT_BOUND,
            f"{spiffe_id} is bound to node ID {bound!r} (node ID mapping {self._mapping}), "
            f"not to {node_id!r}",
        )

    def _signer(self) -> LoadedCa:
        loaded = self._ca.current()
        if loaded is None:
            raise AdmissionError(AdmissionRefusal.CA_UNAVAILABLE, "the mesh CA is not loaded")
        return loaded

    @staticmethod
    def _bound_credential(pop: PossessionProof, credential_sha256: bytes | None) -> bytes:
        """The credential hash the proofs must be bound to (step 2): the one that
        authenticated the request, named by the proof too (``proof_not_bound`` otherwise)."""
        if pop.credential_sha256 is None:
            raise AdmissionError(
                AdmissionRefusal.PROOF_NOT_BOUND,
                f"the proof of possession is not bound to the credential it is sent with "
                f"(pop.credential_sha256 missing: a format-1 proof; this controller needs "
                f"format {POP_VERSION}, x0tta6bl4.crypto.pqsvid.proof_of_possession)",
            )
        if credential_sha256 is None:
            raise AdmissionError(
                AdmissionRefusal.PROOF_NOT_BOUND,
                "this request was authenticated without a credential a proof can be bound to",
            )
        try:
            claimed = bytes.fromhex(pop.credential_sha256)
        except ValueError:
            claimed = b""
        if not hmac.compare_digest(claimed, credential_sha256):
            raise AdmissionError(
                AdmissionRefusal.PROOF_NOT_BOUND,
                "the proof of possession was made for another credential than the client "
                "certificate this request is sent with",
            )
        return credential_sha256

    def _check_rebind(
        self,
        existing: NodeRecord,
        public_key: bytes,
        *,
        rotation: str | None,
        nonce: bytes,
        timestamp: int,
        now: float,
        credential: bytes,
    ) -> None:
        """A registered node ID asked for with another key: the key binding (step 5)."""
        node_id = existing.node_id
        if rotation is not None:
            try:
                verify_proof_of_possession(
                    existing.ml_dsa_public_key,
                    _b64(rotation, "rotation.signature"),
                    spiffe_id=existing.spiffe_id,
                    node_id=node_id,
                    nonce=rotation_nonce(nonce, public_key),
                    timestamp=timestamp,
                    credential_sha256=credential,
                )
            except CryptoError:
                raise AdmissionError(
                    AdmissionRefusal.POP_INVALID,
                    "the rotation proof does not verify with the node's previous key",
                ) from None
            _log.info("node key rotated", node_id=node_id, proof="previous_key")
            return
        silent = now - existing.last_seen
        if silent < KEY_REBIND_AFTER:
            raise AdmissionError(
                AdmissionRefusal.NODE_ID_TAKEN,
                f"node {node_id!r} is live with another key (last seen {silent:.0f} s ago): "
                "prove possession of the previous key (rotation) or have an admin delete it",
            )
        _log.info("node key rebound", node_id=node_id, silent_seconds=round(silent))

    async def admit(
        self,
        *,
        spiffe_id: str,
        node_id: str,
        endpoint: str | None,
        public_key_b64: str,
        pop: PossessionProof,
        renew: bool,
        rotation: str | None = None,
        credential_sha256: bytes | None = None,
    ) -> Admission:
        """Run the checks of the module docstring; raise :class:`AdmissionError` on refusal.

        ``credential_sha256`` is the SHA-256 of the credential that authenticated the request
        (:attr:`~x0tta6bl4.controller.auth.Principal.credential_sha256`): the proofs must be
        bound to it."""
        now = self._clock()
        await self._check_bound(spiffe_id, node_id)
        public_key = _b64(public_key_b64, "ml_dsa_public_key")
        if len(public_key) != ML_DSA_65_PUBLIC_KEY_SIZE:
            raise AdmissionError(
                AdmissionRefusal.INVALID_REQUEST,
                f"ml_dsa_public_key must be {ML_DSA_65_PUBLIC_KEY_SIZE} bytes (ML-DSA-65)",
            )
        nonce = _b64(pop.nonce, "pop.nonce")
        if not MIN_NONCE <= len(nonce) <= MAX_NONCE:
            raise AdmissionError(
                AdmissionRefusal.INVALID_REQUEST, f"pop.nonce must be {MIN_NONCE}-{MAX_NONCE} bytes"
            )
        signature = _b64(pop.signature, "pop.signature")
        if abs(pop.timestamp - now) > self._skew:
            raise AdmissionError(
                AdmissionRefusal.CLOCK_SKEW,
                f"pop.timestamp is {pop.timestamp - now:+.0f} s from the controller's clock "
                f"(at most ±{self._skew} s)",
            )
        credential = self._bound_credential(pop, credential_sha256)
        engine, _, _ = await current_policy(self._store, self._trust_domain)
        if not engine.may_join(spiffe_id):
            raise AdmissionError(
                AdmissionRefusal.POLICY_DENIED, f"the mesh policy does not let {spiffe_id} join"
            )
        existing = await self._store.get_node(node_id)
        if existing is not None and existing.spiffe_id != spiffe_id:
            raise self._identity_mismatch(node_id)
        if renew and existing is None:
            raise AdmissionError(
                AdmissionRefusal.NODE_NOT_FOUND, f"node {node_id!r} is not registered"
            )
        try:
            verify_proof_of_possession(
                public_key,
                signature,
                spiffe_id=spiffe_id,
                node_id=node_id,
                nonce=nonce,
                timestamp=pop.timestamp,
                credential_sha256=credential,
            )
        except CryptoError:
            raise AdmissionError(
                AdmissionRefusal.POP_INVALID, "the proof of possession does not verify"
            ) from None
        if existing is not None and not hmac.compare_digest(existing.ml_dsa_public_key, public_key):
            self._check_rebind(
                existing,
                public_key,
                rotation=rotation,
                nonce=nonce,
                timestamp=pop.timestamp,
                now=now,
                credential=credential,
            )
        if not await self._store.replay_guard(nonce, now + 2 * self._skew + 1):
            raise AdmissionError(
                AdmissionRefusal.POP_REPLAYED, "this proof-of-possession nonce was used"
            )
        loaded = self._signer()
        try:
            der = loaded.signer.issue(
                spiffe_id=spiffe_id,
                node_id=node_id,
                public_key=public_key,
                now=now,
                ttl_seconds=self._svid_ttl,
            )
        except (CryptoError, IdentityError) as err:
            raise AdmissionError(
                AdmissionRefusal.INVALID_REQUEST, f"cannot issue a PQ SVID: {err}"
            ) from None
        cert = x509.load_der_x509_certificate(der)
        not_after = cert.not_valid_after_utc.timestamp()
        if endpoint is None:
            assert existing is not None  # renewals without an endpoint keep the stored one
            endpoint = existing.endpoint
        try:
            registration = NodeRegistration(
                node_id=node_id,
                spiffe_id=spiffe_id,
                endpoint=endpoint,
                pq_svid_pem=cert.public_bytes(serialization.Encoding.PEM).decode("ascii"),
                pq_svid_not_after=not_after,
                ml_dsa_public_key=public_key,
                now=now,
            )
        except ModelError as err:
            raise AdmissionError(AdmissionRefusal.INVALID_REQUEST, str(err)) from None
        try:
            record = await self._store.register_node(registration, self._network)
        except CidrExhaustedError:
            raise AdmissionError(
                AdmissionRefusal.CIDR_EXHAUSTED,
                f"no free overlay address left in {self._network}",
            ) from None
        except OwnershipError:
            # Another SPIFFE ID claimed the node ID after step 4; the store refused atomically.
            raise self._identity_mismatch(node_id) from None
        self._metrics.pq_svids_issued.labels(kind="renew" if renew else "register").inc()
        revision = await self._store.revision()
        _log.info(
            "node renewed" if renew else "node registered",
            node_id=node_id,
            spiffe_id=spiffe_id,
            overlay_ip=str(record.overlay_ip),
        )
        return Admission(
            record=record,
            bundle_pem=loaded.bundle_pem,
            trust_domain=self._trust_domain,
            revision=revision,
            renew_after=now + (not_after - now) / 2,
        )
