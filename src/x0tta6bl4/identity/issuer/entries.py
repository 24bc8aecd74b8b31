"""Registration entries of the embedded issuer: which Unix user gets which SPIFFE ID.

An entry is written ``UID=SPIFFE_ID`` where ``UID`` is a numeric user ID or a user name known
to this host (resolved once, when the entry is parsed), like SPIRE's ``unix:uid:`` and
``unix:user:`` selectors. A uid may have several entries; the workload then receives one SVID
per entry, in the order given.
"""

from __future__ import annotations

import pwd
from dataclasses import dataclass

from spiffe import SpiffeId, TrustDomain

from x0tta6bl4.identity.errors import InvalidEntryError, InvalidSpiffeIdError
from x0tta6bl4.identity.spiffe_ids import parse_spiffe_id

__all__ = ["Entry", "parse_entry"]

_MAX_UID = 2**32 - 2  # (uid_t)-1 is "no user"


@dataclass(frozen=True)
class Entry:
    """Callers whose peer credentials carry ``uid`` are issued ``spiffe_id``."""

    uid: int
    spiffe_id: SpiffeId

    def __str__(self) -> str:
        return f"{self.uid}={self.spiffe_id}"


def parse_entry(text: str, trust_domain: TrustDomain) -> Entry:
    """Parse ``UID=SPIFFE_ID``; the SPIFFE ID must belong to ``trust_domain``.

    Raises :class:`InvalidEntryError` for a malformed entry or unknown user,
    :class:`~x0tta6bl4.identity.errors.WrongTrustDomainError` for an ID of another trust domain.
    """
    user, sep, raw_id = text.partition("=")
    user = user.strip()
    raw_id = raw_id.strip()
    if not sep or not user or not raw_id:
        raise InvalidEntryError(f"entry {text!r} must have the form UID=SPIFFE_ID")
    if user.isdigit():
        uid = int(user)
        if uid > _MAX_UID:
            raise InvalidEntryError(f"entry {text!r}: uid {uid} is out of range")
    else:
        try:
            uid = pwd.getpwnam(user).pw_uid
        except KeyError:
            raise InvalidEntryError(
                f"entry {text!r}: {user!r} is neither a numeric uid nor a user of this host"
            ) from None
    try:
        spiffe_id = parse_spiffe_id(raw_id, trust_domain=trust_domain)
    except InvalidSpiffeIdError as err:
        raise InvalidEntryError(f"entry {text!r}: {err}") from err
    return Entry(uid=uid, spiffe_id=spiffe_id)
