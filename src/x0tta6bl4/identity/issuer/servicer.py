"""The SPIFFE Workload API servicer of the embedded issuer (grpc.aio).

It implements the five RPCs of the official ``workload.proto`` (stubs shipped by py-spiffe in
``spiffe._proto``). Every call must carry the metadata ``workload.spiffe.io: true``
(InvalidArgument otherwise, as SPIRE answers) and must come through the
:class:`~x0tta6bl4.identity.issuer.peercred.AttestingRelay`; the caller's uid then selects its
and pid then select its entries (uid entries, and process entries naming exactly this
process). No entry → PermissionDenied ``no identity issued``.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Callable
from typing import Any, NoReturn, TypeVar

import grpc
import jwt
import structlog
from spiffe import JwtBundleSet, SpiffeId
from spiffe._proto import workload_pb2, workload_pb2_grpc

from x0tta6bl4.identity.errors import IdentityError, InvalidSpiffeIdError
from x0tta6bl4.identity.issuer.peercred import PeerTable
from x0tta6bl4.identity.issuer.store import SvidStore
from x0tta6bl4.identity.spiffe_ids import parse_spiffe_id
from x0tta6bl4.identity.verify import validate_jwt_svid

_T = TypeVar("_T")

__all__ = ["WORKLOAD_API_HEADER", "WorkloadApiServicer"]

WORKLOAD_API_HEADER = ("workload.spiffe.io", "true")

_log = structlog.get_logger(__name__)


async def _abort(context: Any, code: grpc.StatusCode, message: str) -> NoReturn:
    await context.abort(code, message)
    raise AssertionError("context.abort returned")  # pragma: no cover


class WorkloadApiServicer(workload_pb2_grpc.SpiffeWorkloadAPIServicer):
    """Serves SVIDs from a :class:`SvidStore` to callers attested through a :class:`PeerTable`."""

    def __init__(self, store: SvidStore, peers: PeerTable, jwt_ttl: float) -> None:
        self._store = store
        self._peers = peers
        self._jwt_ttl = jwt_ttl

    async def _attest(self, context: Any) -> tuple[SpiffeId, ...]:
        metadata = context.invocation_metadata() or ()
        if not any((m.key, m.value) == WORKLOAD_API_HEADER for m in metadata):
            await _abort(
                context, grpc.StatusCode.INVALID_ARGUMENT, "security header missing from request"
            )
        creds = self._peers.lookup(context.peer())
        if creds is None:
            _log.warning("identity.issuer.unattested_connection", peer=context.peer())
            await _abort(
                context,
                grpc.StatusCode.PERMISSION_DENIED,
                "could not attest the caller: the connection did not come through the "
                "Workload API socket",
            )
        ids = self._store.ids_for(creds.uid, creds.pid)
        if not ids:
            _log.info("identity.issuer.no_entry", uid=creds.uid, pid=creds.pid)
            await _abort(context, grpc.StatusCode.PERMISSION_DENIED, "no identity issued")
        return ids

    def _x509_response(self, ids: tuple[SpiffeId, ...]) -> workload_pb2.X509SVIDResponse:
        svids = self._store.snapshot()
        bundle = self._store.authority.x509_bundle_der()
        return workload_pb2.X509SVIDResponse(
            svids=[
                workload_pb2.X509SVID(
                    spiffe_id=str(sid),
                    x509_svid=svids[sid].certificate_der,
                    x509_svid_key=svids[sid].key_der,
                    bundle=bundle,
                )
                for sid in ids
            ]
        )

    def _td_key(self) -> str:
        return self._store.authority.trust_domain.as_spiffe_id()

    async def _changes(self, read: Callable[[], _T]) -> AsyncIterator[_T]:
        """Yield ``read()`` now and again each time the store changes it; end at shutdown."""
        generation = self._store.generation
        sent: _T | None = None
        while True:
            value = read()
            if value != sent:
                yield value
                sent = value
            next_generation = await self._store.wait_for_change(generation)
            if next_generation is None:
                return
            generation = next_generation

    async def FetchX509SVID(  # noqa: N802 - name from workload.proto
        self, request: workload_pb2.X509SVIDRequest, context: Any
    ) -> AsyncIterator[workload_pb2.X509SVIDResponse]:
        """Stream the caller's X.509-SVIDs: now, and again after every rotation."""
        ids = await self._attest(context)
        async for _ in self._changes(
            lambda: tuple(self._store.snapshot()[sid].serial for sid in ids)
        ):
            yield self._x509_response(ids)

    async def FetchX509Bundles(  # noqa: N802
        self, request: workload_pb2.X509BundlesRequest, context: Any
    ) -> AsyncIterator[workload_pb2.X509BundlesResponse]:
        """Stream the X.509 bundle of our trust domain (it changes only on restart)."""
        await self._attest(context)
        async for bundle in self._changes(self._store.authority.x509_bundle_der):
            yield workload_pb2.X509BundlesResponse(bundles={self._td_key(): bundle})

    async def FetchJWTBundles(  # noqa: N802
        self, request: workload_pb2.JWTBundlesRequest, context: Any
    ) -> AsyncIterator[workload_pb2.JWTBundlesResponse]:
        """Stream the JWT bundle (JWKS) of our trust domain."""
        await self._attest(context)
        async for bundle in self._changes(self._store.authority.jwt_bundle_json):
            yield workload_pb2.JWTBundlesResponse(bundles={self._td_key(): bundle})

    async def FetchJWTSVID(  # noqa: N802
        self, request: workload_pb2.JWTSVIDRequest, context: Any
    ) -> workload_pb2.JWTSVIDResponse:
        """Sign a JWT-SVID for each of the caller's IDs (or the one it asks for)."""
        ids = await self._attest(context)
        audience = [a for a in request.audience if a]
        if not audience:
            await _abort(context, grpc.StatusCode.INVALID_ARGUMENT, "audience must be specified")
        if request.spiffe_id:
            try:
                wanted = parse_spiffe_id(request.spiffe_id)
            except InvalidSpiffeIdError as err:
                await _abort(context, grpc.StatusCode.INVALID_ARGUMENT, str(err))
            if wanted not in ids:
                await _abort(
                    context,
                    grpc.StatusCode.PERMISSION_DENIED,
                    f"no identity issued for {request.spiffe_id!r}",
                )
            ids = (wanted,)
        now = time.time()
        authority = self._store.authority
        return workload_pb2.JWTSVIDResponse(
            svids=[
                workload_pb2.JWTSVID(
                    spiffe_id=str(sid),
                    svid=authority.sign_jwt_svid(sid, audience, self._jwt_ttl, now),
                )
                for sid in ids
            ]
        )

    async def ValidateJWTSVID(  # noqa: N802
        self, request: workload_pb2.ValidateJWTSVIDRequest, context: Any
    ) -> workload_pb2.ValidateJWTSVIDResponse:
        """Validate a JWT-SVID against our JWT bundle for the given audience."""
        await self._attest(context)
        if not request.audience:
            await _abort(context, grpc.StatusCode.INVALID_ARGUMENT, "audience must be specified")
        if not request.svid:
            await _abort(context, grpc.StatusCode.INVALID_ARGUMENT, "svid must be specified")
        bundles = JwtBundleSet.of([self._store.authority.jwt_bundle()])
        try:
            spiffe_id = validate_jwt_svid(request.svid, request.audience, bundles)
        except IdentityError as err:
            await _abort(context, grpc.StatusCode.INVALID_ARGUMENT, str(err))
        response = workload_pb2.ValidateJWTSVIDResponse(spiffe_id=str(spiffe_id))
        response.claims.update(jwt.decode(request.svid, options={"verify_signature": False}))
        return response
