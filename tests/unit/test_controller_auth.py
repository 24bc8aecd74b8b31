"""The controller's authentication of a TLS peer and/or a bearer credential (auth.py), with the
real JWT validation against a bundle from a real embedded issuer."""

from __future__ import annotations

import hashlib
import time
from collections.abc import Iterator

import pytest

from tests.integration.controller_support import (
    ADMIN_ID,
    ADMIN_TOKEN,
    NODE_A,
    NODE_B,
    Identity,
    running_issuer,
)
from x0tta6bl4.controller.auth import Authenticator
from x0tta6bl4.controller.errors import AuthError, AuthFailure
from x0tta6bl4.tls.server import TlsPeer

TD = "x0tta6bl4.mesh"


@pytest.fixture(scope="module")
def identity(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Identity]:
    with running_issuer(tmp_path_factory.mktemp("id")) as ident:
        yield ident


@pytest.fixture(scope="module")
def auth(identity: Identity) -> Authenticator:
    bundles = identity.source.fetch_jwt_bundles()
    return Authenticator(
        trust_domain=TD,
        bundles=lambda: bundles,
        admin_token=ADMIN_TOKEN.encode(),
        admin_spiffe_ids=(ADMIN_ID,),
    )


def peer(spiffe_id: str | None, not_after: float | None = None) -> TlsPeer:
    return TlsPeer(
        spiffe_id=spiffe_id,
        cert_sha256=None if spiffe_id is None else hashlib.sha256(spiffe_id.encode()).digest(),
        not_after=time.time() + 60 if not_after is None and spiffe_id else not_after,
        group="X25519MLKEM768",
    )


async def test_client_certificate_alone_authenticates_a_node(auth: Authenticator) -> None:
    principal = await auth.require_node(None, peer(NODE_A))
    assert str(principal.spiffe_id) == NODE_A
    assert principal.mtls
    assert principal.credential_sha256 == peer(NODE_A).cert_sha256
    assert not principal.admin
    assert (await auth.require_admin(None, peer(ADMIN_ID))).admin


async def test_a_token_alone_reads_but_never_acts_as_a_node(
    auth: Authenticator, identity: Identity
) -> None:
    token = identity.token(NODE_A)
    principal = await auth.authenticate(f"Bearer {token}", peer(None))
    assert str(principal.spiffe_id) == NODE_A
    assert not principal.mtls
    assert principal.credential_sha256 == hashlib.sha256(token.encode()).digest()
    with pytest.raises(AuthError) as err:
        await auth.require_node(f"Bearer {token}", peer(None))
    assert err.value.reason is AuthFailure.CLIENT_CERTIFICATE_REQUIRED
    with pytest.raises(AuthError) as err:
        await auth.require_node(f"Bearer {ADMIN_TOKEN}", peer(None))
    assert err.value.reason is AuthFailure.SPIFFE_IDENTITY_REQUIRED


async def test_certificate_and_token_must_agree(auth: Authenticator, identity: Identity) -> None:
    same = await auth.require_node(f"Bearer {identity.token(NODE_A)}", peer(NODE_A))
    assert str(same.spiffe_id) == NODE_A
    assert same.credential_sha256 == peer(NODE_A).cert_sha256  # the certificate binds
    with pytest.raises(AuthError) as err:
        await auth.authenticate(f"Bearer {identity.token(NODE_B)}", peer(NODE_A))
    assert err.value.reason is AuthFailure.IDENTITY_CONFLICT


async def test_expired_certificate_and_missing_credentials(auth: Authenticator) -> None:
    with pytest.raises(AuthError) as err:
        await auth.authenticate(None, peer(NODE_A, not_after=time.time() - 1))
    assert err.value.reason is AuthFailure.CERTIFICATE_EXPIRED
    with pytest.raises(AuthError) as err:
        await auth.authenticate(None, peer(None))
    assert err.value.reason is AuthFailure.MISSING_CREDENTIALS
    with pytest.raises(AuthError) as err:
        await auth.authenticate(None, peer("spiffe://evil.example/ns/a/sa/b"))
    assert err.value.reason is AuthFailure.WRONG_TRUST_DOMAIN
