"""Fuzz harness: JWT-SVID handling in the controller — ``Authenticator.authenticate`` on the
``Authorization`` header (and so ``validate_jwt_svid`` and py-spiffe/PyJWT under it).

The first input byte chooses the mode, the rest is its input:

* even: the rest (Latin-1, as HTTP header bytes arrive) is the whole ``Authorization`` value;
* odd: the rest is ``JOSE header ‖ SEP ‖ claims`` (or only claims): the harness base64url-
  encodes them and signs the token ES256 with the fixture issuer's real JWT key, so the checks
  after the signature (``exp``, ``aud``, ``sub`` and its trust domain, the admin list) see
  fuzzed values.

Checked: the only failure is :class:`AuthError` with an :class:`AuthFailure` reason (the API
answers 401/403 for them); a principal returned has a SPIFFE ID of the controller's trust domain, or
is the admin token.

    python fuzz/jwt_svid.py [libFuzzer flags] [corpus dirs]
"""

from __future__ import annotations

import base64
import json
from typing import Any

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature

import fuzzlib

with fuzzlib.instrumented():
    from spiffe import JwtBundleSet

    from x0tta6bl4.controller.auth import Authenticator
    from x0tta6bl4.controller.errors import AuthError, AuthFailure

ADMIN_TOKEN = b"fuzz-admin-token-0123456789abcdef"
ADMIN_ID = f"spiffe://{fuzzlib.TRUST_DOMAIN}/ns/ops/sa/admin"
AUDIENCE = "x0tta6bl4-controller"
AUTHORITY = fuzzlib.jwt_authority()
_BUNDLES = JwtBundleSet.of([AUTHORITY.jwt_bundle()])
_REFUSALS = set(AuthFailure) - {AuthFailure.IDENTITY_UNAVAILABLE}
_AUTH = Authenticator(
    trust_domain=fuzzlib.TRUST_DOMAIN,
    bundles=lambda: _BUNDLES,
    admin_token=ADMIN_TOKEN,
    admin_spiffe_ids=[ADMIN_ID],
)


def _b64(data: bytes) -> bytes:
    return base64.urlsafe_b64encode(data).rstrip(b"=")


def default_header() -> bytes:
    return json.dumps({"alg": "ES256", "kid": AUTHORITY.jwt_key_id, "typ": "JWT"}).encode()


def sign(header: bytes, claims: bytes) -> str:
    """A compact JWS of exactly these header and claims bytes, signed by the fixture issuer."""
    signing_input = _b64(header) + b"." + _b64(claims)
    der = AUTHORITY._jwt_key.sign(signing_input, ec.ECDSA(hashes.SHA256()))
    r, s = decode_dss_signature(der)
    return (signing_input + b"." + _b64(r.to_bytes(32, "big") + s.to_bytes(32, "big"))).decode()


def _run(coro: Any) -> Any:
    """Drive a coroutine that never awaits anything pending (no bundle refresher here)."""
    try:
        coro.send(None)
    except StopIteration as stop:
        return stop.value
    raise AssertionError("authenticate awaited something")


def test_one_input(data: bytes) -> None:
    if not data:
        return
    mode, rest = data[0], data[1:]
    if mode % 2 == 0:
        authorization = rest.decode("latin-1")
    else:
        header, sep, claims = rest.partition(fuzzlib.SEP)
        if not sep:
            header, claims = default_header(), rest
        authorization = "Bearer " + sign(header, claims)
    try:
        principal = _run(_AUTH.authenticate(authorization))
    except AuthError as exc:
        # identity_unavailable (503) cannot happen here: the bundle is always present.
        assert exc.reason in _REFUSALS, exc.reason
        return
    if principal.spiffe_id is None:
        assert principal.admin
    else:
        assert principal.spiffe_id.trust_domain.name == fuzzlib.TRUST_DOMAIN
        assert principal.admin == (str(principal.spiffe_id) == ADMIN_ID)


if __name__ == "__main__":
    fuzzlib.run(test_one_input)
