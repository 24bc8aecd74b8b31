"""Fuzz harness: link-state adverts (``decode_signed``, ``verify_signed``) and their install.

The first input byte chooses the mode, the rest is its input:

* not 1: the rest is a signed advert from the network: decoded, and a decoded advert must
  encode back to the same bytes (the encoding is canonical); then offered to a link-state
  database that knows the keys of the corpus's origins (signature check, sequence rules);
* 1: the rest is an advert body that the harness signs with node-a's real key before offering
  it (so the checks after the signature are reached too); ML-DSA signing makes these inputs
  slow, so only this one mode byte takes the path.

Checked: only ``RemoteProtocolError`` with the documented reasons escapes the decoder, the
database answers one of ``INSTALL_REASONS`` and holds at most one advert per origin.

    python fuzz/lsa.py [libFuzzer flags] [corpus dirs]
"""

from __future__ import annotations

import fuzzlib

with fuzzlib.instrumented():
    from x0tta6bl4.crypto.suite import MLDSA65_SIGNATURE_SIZE, SignatureContext
    from x0tta6bl4.protocol.errors import RemoteProtocolError
    from x0tta6bl4.protocol.lsa import decode_signed, encode_unsigned
    from x0tta6bl4.protocol.lsdb import INSTALL_REASONS, LinkStateDatabase

_DECODE_REASONS = {
    "lsa_too_large",
    "lsa_truncated",
    "lsa_bad_version",
    "lsa_bad_node_id",
    "lsa_not_canonical",
    "lsa_bad_cost",
}
_SIGNER = fuzzlib.signing_key("node/node-a")
_KEYS = {
    name: fuzzlib.signing_key(f"node/{name}").key.public_key() for name in ("node-a", "node-b")
}


def _decode(data: bytes) -> None:
    try:
        lsa, body, signature = decode_signed(data)
    except RemoteProtocolError as exc:
        assert exc.reason in _DECODE_REASONS, exc.reason
        return
    assert encode_unsigned(lsa) == body, "advert does not re-encode to its signed part"
    assert body + signature == data


def test_one_input(data: bytes) -> None:
    if not data:
        return
    mode, rest = data[0], data[1:]
    if mode == 1:
        # Sign only a body that decodes (with a placeholder signature): signing costs a
        # millisecond, and a body that does not decode never reaches the signature check.
        try:
            decode_signed(rest + bytes(MLDSA65_SIGNATURE_SIZE))
        except RemoteProtocolError:
            return
        rest = rest + _SIGNER.sign(SignatureContext.LINK_STATE_ADVERT, rest)
    _decode(rest)
    lsdb = LinkStateDatabase("node-z", _KEYS.get, max_age=60.0)
    for now in (1.0, 2.0):  # the second offer is a duplicate, stale or the same rejection
        result = lsdb.install(rest, now)
        assert result.reason in INSTALL_REASONS, result.reason
        assert len(lsdb) <= 1


if __name__ == "__main__":
    fuzzlib.run(test_one_input)
