"""``/api/v1/policy``, ``/api/v1/watch`` and ``/api/v1/bundle``."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator
from typing import Annotated, Any

from fastapi import APIRouter, Header, Query, Request, Response
from fastapi.responses import StreamingResponse

from x0tta6bl4.controller.api.deps import Admin, Caller, State
from x0tta6bl4.controller.api.errors import ApiError
from x0tta6bl4.controller.api.schemas import (
    BundleResponse,
    ErrorResponse,
    PolicyDocument,
    PolicyResponse,
    WatchResponse,
    node_summary,
)
from x0tta6bl4.controller.models import StoreEvent
from x0tta6bl4.controller.registration import current_policy
from x0tta6bl4.controller.state import ControllerState
from x0tta6bl4.controller.store.errors import ConflictError, RevisionCompactedError
from x0tta6bl4.policy import InvalidPolicyError, Policy, PolicyEngine, PolicyRule
from x0tta6bl4.records import ModelError

__all__ = ["event_json", "router"]

router = APIRouter(prefix="/api/v1", tags=["mesh"])

_ERRORS: dict[int | str, dict[str, Any]] = {
    code: {"model": ErrorResponse} for code in (400, 401, 403, 410, 412, 413, 422, 503)
}
_WATCH_BATCH = 0.02  # seconds to collect events that arrive right after the first one


def _json(data: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    body = json.dumps(data, separators=(",", ":")).encode()
    return Response(body, status_code=status, media_type="application/json", headers=headers)


# --------------------------------------------------------------------------- policy


@router.get("/policy", response_model=PolicyResponse, responses=_ERRORS, summary="Mesh policy")
async def get_policy(_: Caller, state: State) -> Response:
    """The policy in force and its revision (``ETag``); revision 0 means the default."""
    engine, revision, default = await current_policy(state.store, state.settings.trust_domain)
    return _json(
        {
            "revision": revision,
            "default": default,
            "rules": [rule.to_json() for rule in engine.policy.rules],
        },
        headers={"ETag": f'"{revision}"'},
    )


def _parse_if_match(value: str | None) -> int | None:
    if value is None:
        return None
    text = value.strip()
    if text.startswith("W/"):
        text = text[2:]
    text = text.strip('"')
    if not (text.isascii() and text.isdigit()) or len(text) > 19:
        raise ApiError(400, "invalid_if_match", 'If-Match must be a policy revision such as "5"')
    return int(text)


@router.put(
    "/policy",
    response_model=PolicyResponse,
    responses=_ERRORS,
    summary="Replace the mesh policy (admin)",
)
async def put_policy(
    body: PolicyDocument,
    _: Admin,
    state: State,
    if_match: Annotated[str | None, Header(max_length=32)] = None,
) -> Response:
    """Store a new policy. With ``If-Match: "<revision>"`` only if it is still current
    (else 412 ``revision_mismatch``); revision 0 means "no policy written yet"."""
    expected = _parse_if_match(if_match)
    try:
        policy = Policy(
            rules=tuple(
                PolicyRule(source=r.source, to=r.to, action=r.action, allow=r.allow)
                for r in body.rules
            )
        )
        engine = PolicyEngine(policy, state.settings.trust_domain)
    except (ModelError, InvalidPolicyError) as err:
        raise ApiError(422, "invalid_policy", str(err)) from None
    try:
        revision = await state.store.put_policy(policy, expected)
    except ConflictError as err:
        raise ApiError(
            412,
            "revision_mismatch",
            f"the policy is at revision {err.current_revision}, not {expected}",
            headers={"ETag": f'"{err.current_revision}"'},
        ) from None
    return _json(
        {
            "revision": revision,
            "default": False,
            "rules": [rule.to_json() for rule in engine.policy.rules],
        },
        headers={"ETag": f'"{revision}"'},
    )


# --------------------------------------------------------------------------- watch


def event_json(event: StoreEvent) -> dict[str, Any]:
    """The API form of a store event (nodes as summaries, without certificates)."""
    return {
        "kind": event.kind.value,
        "revision": event.revision,
        "node_id": event.node_id,
        "node": None if event.node is None else node_summary(event.node),
        "policy": None if event.policy is None else event.policy.to_json(),
        "revocation": None if event.revocation is None else event.revocation.to_json(),
    }


class _Pump:
    """Pulls a store watch without cancelling it on a timeout (a cancelled ``__anext__`` would
    close the generator): the pending pull survives until it yields."""

    def __init__(self, events: AsyncIterator[StoreEvent]) -> None:
        self._events = events
        self._pending: asyncio.Future[StoreEvent] | None = None

    async def next(self, timeout: float) -> StoreEvent | None:
        """The next event, or None if none arrives within ``timeout`` seconds."""
        if self._pending is None:
            self._pending = asyncio.ensure_future(anext(self._events))
        done, _ = await asyncio.wait({self._pending}, timeout=timeout)
        if not done:
            return None
        pending, self._pending = self._pending, None
        return pending.result()

    async def close(self) -> None:
        """Stop the pending pull and close the watch."""
        if self._pending is not None:
            self._pending.cancel()
            with contextlib.suppress(BaseException):
                await self._pending
        with contextlib.suppress(Exception):
            await self._events.aclose()  # type: ignore[attr-defined]


async def _long_poll(state: ControllerState, from_revision: int, timeout: float) -> Response:
    pump = _Pump(state.store.watch(from_revision))
    collected: list[dict[str, Any]] = []
    try:
        first = await pump.next(timeout)
        if first is not None:
            collected.append(event_json(first))
            while len(collected) < 1000:
                more = await pump.next(_WATCH_BATCH)
                if more is None:
                    break
                collected.append(event_json(more))
    except RevisionCompactedError as err:
        raise ApiError(
            410,
            "revision_compacted",
            f"{err}; list the nodes again and watch from the revision it returns",
        ) from None
    finally:
        await pump.close()
    revision = collected[-1]["revision"] if collected else from_revision
    return _json({"revision": revision, "events": collected})


async def _sse(
    state: ControllerState, request: Request, from_revision: int, timeout: float
) -> AsyncIterator[bytes]:
    pump = _Pump(state.store.watch(from_revision))
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    try:
        while (remaining := deadline - loop.time()) > 0:
            if await request.is_disconnected():
                return
            try:
                event = await pump.next(min(remaining, state.settings.sse_keepalive_seconds))
            except RevisionCompactedError as err:
                data = json.dumps({"error": "revision_compacted", "detail": str(err)})
                yield f"event: error\ndata: {data}\n\n".encode()
                return
            if event is None:
                yield b": keep-alive\n\n"
                continue
            data = json.dumps(event_json(event), separators=(",", ":"))
            yield f"id: {event.revision}\nevent: {event.kind.value}\ndata: {data}\n\n".encode()
    finally:
        await pump.close()


@router.get(
    "/watch",
    response_model=WatchResponse,
    responses=_ERRORS,
    summary="Changes after a revision (long-poll, or SSE with Accept: text/event-stream)",
)
async def watch(
    request: Request,
    _: Caller,
    state: State,
    from_revision: Annotated[int, Query(ge=0, le=2**62)] = 0,
    timeout: Annotated[float, Query(ge=0, le=600)] = 30.0,
) -> Response:
    """Long-poll: answers as soon as there is at least one event after ``from_revision``
    (or with no events when ``timeout`` seconds pass). With ``Accept: text/event-stream``
    the events stream as server-sent events (``id`` = revision) until ``timeout``."""
    timeout = min(timeout, state.settings.watch_max_timeout)
    state.metrics.watchers.inc()
    if "text/event-stream" in request.headers.get("accept", ""):

        async def stream() -> AsyncIterator[bytes]:
            try:
                async for chunk in _sse(state, request, from_revision, timeout):
                    yield chunk
            finally:
                state.metrics.watchers.dec()

        return StreamingResponse(
            stream(), media_type="text/event-stream", headers={"Cache-Control": "no-cache"}
        )
    try:
        return await _long_poll(state, from_revision, timeout)
    finally:
        state.metrics.watchers.dec()


# --------------------------------------------------------------------------- bundle


@router.get(
    "/bundle", response_model=BundleResponse, responses=_ERRORS, summary="Mesh CA trust bundle"
)
async def bundle(_: Caller, state: State) -> Response:
    """Every mesh CA certificate nodes must trust (current signer first; during a CA
    rotation also the previous CA)."""
    loaded = state.ca.current()
    if loaded is None:
        raise ApiError(
            503, "ca_unavailable", "the mesh CA is not loaded", headers={"Retry-After": "5"}
        )
    return _json({"trust_domain": state.settings.trust_domain, "ca_bundle": loaded.bundle_pem})
