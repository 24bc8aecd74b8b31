"""TLS contexts of the control channel (pyOpenSSL on cryptography's OpenSSL) and peer checks.

Why pyOpenSSL rather than the standard library: Python's ``ssl`` module is built on the
system OpenSSL (3.0 on Debian 12), which has no ML-KEM. pyca/cryptography ≥ 50 bundles a
current OpenSSL whose default key-exchange groups put the hybrid **X25519MLKEM768** first, and
pyOpenSSL drives that same library. So a controller and a node built from this package
negotiate a post-quantum hybrid key exchange on the control channel (asserted by a test from
the client side); a peer on an older OpenSSL (curl, the stdlib) still gets classical X25519.

Both sides: TLS 1.3 only, no session resumption (every connection authenticates its peer
certificate afresh), the peer's chain verified by OpenSSL against the X.509 authorities of
the trust domain *and* then by :func:`verified_peer` as a SPIFFE X.509-SVID (one URI SAN, the
trust domain, validity, chain). Hostnames are not checked: the peer is named by its SPIFFE
ID, which the caller compares with the one it expects.
"""

from __future__ import annotations

from OpenSSL import SSL, crypto
from spiffe import SpiffeId

from x0tta6bl4.identity.errors import IdentityError, InvalidSpiffeIdError, UntrustedSvidError
from x0tta6bl4.identity.verify import verify_x509_svid
from x0tta6bl4.tls.credentials import TlsCredentials

__all__ = [
    "PQ_GROUP",
    "client_context",
    "negotiated_group",
    "pending_output",
    "server_context",
    "verified_peer",
]

#: The post-quantum hybrid key-exchange group (X25519 + ML-KEM-768).
PQ_GROUP = "X25519MLKEM768"


def _base(credentials: TlsCredentials) -> SSL.Context:
    ctx = SSL.Context(SSL.TLS_METHOD)
    ctx.set_min_proto_version(SSL.TLS1_3_VERSION)
    ctx.set_options(SSL.OP_NO_TICKET)
    ctx.set_session_cache_mode(SSL.SESS_CACHE_OFF)
    if credentials.chain:
        assert credentials.key is not None
        ctx.use_certificate(credentials.chain[0])
        for cert in credentials.chain[1:]:
            ctx.add_extra_chain_cert(cert)
        ctx.use_privatekey(credentials.key)
        ctx.check_privatekey()
    store = ctx.get_cert_store()
    assert store is not None
    for authority in credentials.authorities:
        store.add_cert(crypto.X509.from_cryptography(authority))
    return ctx


def server_context(credentials: TlsCredentials) -> SSL.Context:
    """A server context presenting ``credentials`` and *asking* for a client certificate.

    A client certificate is optional at the TLS level (an admin with a bearer token has
    none); when one is sent it must verify, or the handshake fails. Which operations need
    one is decided per request (``docs/api.md``, Authentication).
    """
    if not credentials.chain:
        raise IdentityError("a TLS server needs a certificate (its X.509-SVID)")
    ctx = _base(credentials)
    ctx.set_verify(SSL.VERIFY_PEER)
    ctx.set_session_id(b"x0tta6bl4-control")
    return ctx


def client_context(credentials: TlsCredentials) -> SSL.Context:
    """A client context presenting ``credentials`` (if it has a chain) and verifying the
    server against its authorities."""
    ctx = _base(credentials)
    ctx.set_verify(SSL.VERIFY_PEER | SSL.VERIFY_FAIL_IF_NO_PEER_CERT)
    return ctx


def verified_peer(conn: SSL.Connection, credentials: TlsCredentials) -> SpiffeId | None:
    """The SPIFFE ID of the peer of a completed handshake, verified as an X.509-SVID of
    ``credentials``' trust domain; None if the peer sent no certificate.

    Raises an :class:`~x0tta6bl4.identity.errors.IdentityError` naming what is wrong.
    """
    leaf = conn.get_peer_certificate(as_cryptography=True)
    if leaf is None:
        return None
    chain = conn.get_verified_chain(as_cryptography=True)
    if not chain or chain[0] != leaf:
        raise UntrustedSvidError("the peer certificate did not verify")
    if leaf.extensions and _is_ca(leaf):
        raise InvalidSpiffeIdError("the peer's leaf certificate is a CA certificate")
    return verify_x509_svid(chain, credentials.bundle_set, trust_domain=credentials.trust_domain)


def _is_ca(cert: object) -> bool:
    from cryptography import x509

    assert isinstance(cert, x509.Certificate)
    try:
        return bool(cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca)
    except x509.ExtensionNotFound:
        return False


def negotiated_group(conn: SSL.Connection) -> str:
    """The key-exchange group of a completed handshake (``X25519MLKEM768``, ``x25519``…)."""
    return conn.get_group_name() or "unknown"


def pending_output(conn: SSL.Connection, chunk: int = 65536) -> bytes:
    """Everything the TLS engine has written to its memory BIO and not yet sent (records,
    alerts, close_notify), drained in one piece; empty when there is nothing to send."""
    out: list[bytes] = []
    while True:
        try:
            data = conn.bio_read(chunk)
        except SSL.WantReadError:
            break
        if not data:
            break
        out.append(data)
    return b"".join(out)
