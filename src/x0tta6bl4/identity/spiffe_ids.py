"""SPIFFE IDs, trust domains and SPIFFE ID patterns.

The types are py-spiffe's :class:`spiffe.SpiffeId` and :class:`spiffe.TrustDomain`; this module
adds strict parsing with our own errors, the Kubernetes workload naming scheme
``spiffe://<td>/ns/<namespace>/sa/<serviceaccount>`` and :class:`SpiffeIdPattern`, the glob
matcher that policies use (``spiffe://x0tta6bl4.mesh/ns/*/sa/x0tta6bl4-app``).

Pattern syntax (matched segment by segment, the trust domain is always literal):

- ``*`` inside a path segment matches any run of characters within that segment;
- ``?`` matches exactly one character within a segment;
- a segment that is exactly ``**`` matches zero or more whole segments.
"""

from __future__ import annotations

import re
from typing import Final

from spiffe import SpiffeId, TrustDomain
from spiffe.errors import PySpiffeError

from x0tta6bl4.identity.errors import (
    InvalidSpiffeIdError,
    InvalidTrustDomainError,
    WrongTrustDomainError,
)

__all__ = [
    "DEFAULT_TRUST_DOMAIN",
    "SpiffeIdPattern",
    "parse_spiffe_id",
    "parse_trust_domain",
    "require_trust_domain",
    "workload_id",
]

DEFAULT_TRUST_DOMAIN: Final = "x0tta6bl4.mesh"

_SCHEME: Final = "spiffe://"
# Trust domain and path segment character sets of the SPIFFE ID standard.
_TD_RE: Final = re.compile(r"^[a-z0-9._-]+$")
_SEGMENT_CHARS: Final = r"A-Za-z0-9._\-"
_PATTERN_SEGMENT_RE: Final = re.compile(rf"^[{_SEGMENT_CHARS}*?]+$")
# Kubernetes: namespaces are DNS-1123 labels, service accounts DNS-1123 subdomains.
_DNS1123_LABEL_RE: Final = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
_DNS1123_SUBDOMAIN_RE: Final = re.compile(
    r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$"
)
_MAX_ID_LENGTH: Final = 2048  # the SPIFFE ID standard's limit for URI SANs


def parse_trust_domain(value: str | TrustDomain) -> TrustDomain:
    """Parse a trust domain name (``x0tta6bl4.mesh``) or the ID form (``spiffe://x0tta6bl4.mesh``).

    Raises :class:`InvalidTrustDomainError` for anything else, including names with a path,
    a port, upper case letters after normalisation, or an empty string.
    """
    if isinstance(value, TrustDomain):
        return value
    if not isinstance(value, str):
        raise InvalidTrustDomainError(f"trust domain must be a string, not {type(value).__name__}")
    name = value[len(_SCHEME) :] if value.lower().startswith(_SCHEME) else value
    if not name:
        raise InvalidTrustDomainError("trust domain is empty")
    if "/" in name:
        raise InvalidTrustDomainError(f"trust domain {value!r} must not contain a path")
    if not _TD_RE.match(name.lower()):
        raise InvalidTrustDomainError(
            f"trust domain {value!r} may only contain letters, digits, '.', '-' and '_'"
        )
    try:
        return TrustDomain(name)
    except PySpiffeError as err:  # pragma: no cover - our checks are stricter
        raise InvalidTrustDomainError(f"invalid trust domain {value!r}: {err}") from err


def parse_spiffe_id(
    value: str | SpiffeId,
    *,
    trust_domain: str | TrustDomain | None = None,
    require_path: bool = True,
) -> SpiffeId:
    """Parse and validate a SPIFFE ID.

    With ``trust_domain`` the ID must belong to it (:class:`WrongTrustDomainError` otherwise).
    With ``require_path`` (the default) a bare trust domain ID such as ``spiffe://td`` is
    rejected: workloads always have a path.
    """
    if isinstance(value, SpiffeId):
        spiffe_id = value
    else:
        if not isinstance(value, str):
            raise InvalidSpiffeIdError(f"SPIFFE ID must be a string, not {type(value).__name__}")
        if not value:
            raise InvalidSpiffeIdError("SPIFFE ID is empty")
        if len(value) > _MAX_ID_LENGTH:
            raise InvalidSpiffeIdError(f"SPIFFE ID is longer than {_MAX_ID_LENGTH} characters")
        if not value.lower().startswith(_SCHEME):
            raise InvalidSpiffeIdError(f"SPIFFE ID {value!r} must start with 'spiffe://'")
        try:
            spiffe_id = SpiffeId(value)
        except PySpiffeError as err:
            raise InvalidSpiffeIdError(str(err)) from err
    if require_path and not spiffe_id.path:
        raise InvalidSpiffeIdError(f"SPIFFE ID {str(spiffe_id)!r} has no path")
    if trust_domain is not None:
        require_trust_domain(spiffe_id, trust_domain)
    return spiffe_id


def require_trust_domain(spiffe_id: SpiffeId, trust_domain: str | TrustDomain) -> None:
    """Raise :class:`WrongTrustDomainError` unless ``spiffe_id`` is in ``trust_domain``."""
    expected = parse_trust_domain(trust_domain)
    if spiffe_id.trust_domain != expected:
        raise WrongTrustDomainError(
            f"SPIFFE ID {str(spiffe_id)!r} belongs to trust domain "
            f"{spiffe_id.trust_domain.name!r}, expected {expected.name!r}"
        )


def workload_id(trust_domain: str | TrustDomain, namespace: str, serviceaccount: str) -> SpiffeId:
    """The SPIFFE ID of a Kubernetes workload: ``spiffe://<td>/ns/<namespace>/sa/<sa>``.

    ``namespace`` must be a DNS-1123 label and ``serviceaccount`` a DNS-1123 subdomain, as
    Kubernetes requires; anything else raises :class:`InvalidSpiffeIdError`.
    """
    td = parse_trust_domain(trust_domain)
    if len(namespace) > 63 or not _DNS1123_LABEL_RE.match(namespace):
        raise InvalidSpiffeIdError(
            f"namespace {namespace!r} is not a valid Kubernetes namespace (DNS-1123 label)"
        )
    if len(serviceaccount) > 253 or not _DNS1123_SUBDOMAIN_RE.match(serviceaccount):
        raise InvalidSpiffeIdError(
            f"service account {serviceaccount!r} is not a valid Kubernetes name "
            "(DNS-1123 subdomain)"
        )
    return SpiffeId(f"{_SCHEME}{td.name}/ns/{namespace}/sa/{serviceaccount}")


class SpiffeIdPattern:
    """A glob over SPIFFE IDs, e.g. ``spiffe://x0tta6bl4.mesh/ns/*/sa/x0tta6bl4-app``.

    Immutable and hashable; ``str()`` gives the pattern back. See the module docstring for the
    syntax. Build one with ``SpiffeIdPattern(text)``; a malformed pattern raises
    :class:`InvalidSpiffeIdError`.
    """

    __slots__ = ("_path_re", "_text", "_trust_domain")

    def __init__(self, pattern: str) -> None:
        if not isinstance(pattern, str) or not pattern:
            raise InvalidSpiffeIdError("SPIFFE ID pattern is empty")
        if not pattern.lower().startswith(_SCHEME):
            raise InvalidSpiffeIdError(f"SPIFFE ID pattern {pattern!r} must start with 'spiffe://'")
        rest = pattern[len(_SCHEME) :]
        td_name, sep, path = rest.partition("/")
        if "*" in td_name or "?" in td_name:
            raise InvalidSpiffeIdError(
                f"SPIFFE ID pattern {pattern!r}: wildcards are not allowed in the trust domain"
            )
        try:
            self._trust_domain = parse_trust_domain(td_name)
        except InvalidTrustDomainError as err:
            raise InvalidSpiffeIdError(f"SPIFFE ID pattern {pattern!r}: {err}") from err
        parts: list[str] = []
        if sep:
            segments = path.split("/")
            for segment in segments:
                if segment == "**":
                    parts.append(rf"(?:/[{_SEGMENT_CHARS}]+)*")
                    continue
                if not segment:
                    raise InvalidSpiffeIdError(
                        f"SPIFFE ID pattern {pattern!r} has an empty path segment"
                    )
                if segment in {".", ".."} or not _PATTERN_SEGMENT_RE.match(segment):
                    raise InvalidSpiffeIdError(
                        f"SPIFFE ID pattern {pattern!r}: invalid path segment {segment!r}"
                    )
                regex = "".join(
                    rf"[{_SEGMENT_CHARS}]*"
                    if ch == "*"
                    else rf"[{_SEGMENT_CHARS}]"
                    if ch == "?"
                    else re.escape(ch)
                    for ch in segment
                )
                parts.append("/" + regex)
        self._path_re = re.compile("".join(parts))
        self._text = f"{_SCHEME}{self._trust_domain.name}{'/' + path if sep else ''}"

    @property
    def trust_domain(self) -> TrustDomain:
        """The (literal) trust domain of the pattern."""
        return self._trust_domain

    def matches(self, spiffe_id: SpiffeId | str) -> bool:
        """Whether ``spiffe_id`` matches (a malformed string raises InvalidSpiffeIdError)."""
        sid = parse_spiffe_id(spiffe_id, require_path=False)
        if sid.trust_domain != self._trust_domain:
            return False
        return self._path_re.fullmatch(sid.path) is not None

    def __str__(self) -> str:
        return self._text

    def __repr__(self) -> str:
        return f"SpiffeIdPattern({self._text!r})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, SpiffeIdPattern) and other._text == self._text

    def __hash__(self) -> int:
        return hash(self._text)
