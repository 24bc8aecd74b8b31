"""FastAPI dependencies: the shared state and the caller's identity.

Authentication runs as a dependency, so it happens before the body is validated and before
any handler code: an unauthenticated request is answered 401 without touching the store. The
client certificate comes from the TLS listener (:data:`~x0tta6bl4.tls.server.PEER_EXTENSION`
in the ASGI scope), never from anything the client sends.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request, Security
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from x0tta6bl4.controller.auth import Principal
from x0tta6bl4.controller.state import ControllerState
from x0tta6bl4.tls.server import PEER_EXTENSION, TlsPeer

__all__ = ["Admin", "Caller", "Node", "State", "get_state"]

_bearer = HTTPBearer(
    auto_error=False,
    description="A JWT-SVID (audience x0tta6bl4-controller) or the admin token",
)


def get_state(request: Request) -> ControllerState:
    """The app's :class:`ControllerState`."""
    state: ControllerState = request.app.state.controller
    return state


State = Annotated[ControllerState, Depends(get_state)]
_Credentials = Annotated[HTTPAuthorizationCredentials | None, Security(_bearer)]


def _peer(request: Request) -> TlsPeer | None:
    """What the TLS listener verified about this connection (None on plain HTTP)."""
    peer = (request.scope.get("extensions") or {}).get(PEER_EXTENSION)
    return peer if isinstance(peer, TlsPeer) else None


async def _caller(request: Request, state: State, _: _Credentials) -> Principal:
    return await state.auth.authenticate(
        request.headers.get("authorization"), _peer(request), state.clock()
    )


async def _node(request: Request, state: State, _: _Credentials) -> Principal:
    return await state.auth.require_node(
        request.headers.get("authorization"), _peer(request), state.clock()
    )


async def _admin(request: Request, state: State, _: _Credentials) -> Principal:
    return await state.auth.require_admin(
        request.headers.get("authorization"), _peer(request), state.clock()
    )


Caller = Annotated[Principal, Depends(_caller)]
"""Any authenticated caller (a node of the trust domain or an admin)."""
Node = Annotated[Principal, Depends(_node)]
"""A node: its X.509-SVID as TLS client certificate (mutual TLS)."""
Admin = Annotated[Principal, Depends(_admin)]
"""An admin (admin token or an --admin-spiffe-id)."""
