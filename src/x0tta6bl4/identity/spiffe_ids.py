"""SPIFFE IDs, trust domains and SPIFFE ID patterns.

The types are py-spiffe's :class:`spiffe.SpiffeId` and :class:`spiffe.TrustDomain`; this module
adds strict parsing with our own errors, the Kubernetes workload naming scheme
``spiffe://<td>/ns/<namespace>/sa/<serviceaccount>`` and :class:`SpiffeIdPattern`, the glob
matcher that policies use (``spiffe://x0tta6bl4.mesh/ns/*/sa/x0tta6bl4-app``).

Pattern syntax (matched segment by segment, the trust domain is always literal):

- ``*`` inside a path segment matches any run of characters within that segment;
- ``?`` matches exactly one character within a segment;
- a segment that is exactly ``**`` matches zero or more whole segments.

Limits (a pattern beyond them raises :class:`InvalidSpiffeIdError`, so ``PUT /api/v1/policy``
answers 422 ``invalid_policy`` naming the limit): at most :data:`MAX_PATTERN_LENGTH` characters,
:data:`MAX_PATTERN_SEGMENTS` path segments, one ``**`` segment (:data:`MAX_PATTERN_GLOBSTARS`),
:data:`MAX_PATTERN_WILDCARDS` ``*`` and ``?`` in all, :data:`MAX_GLOB_SEGMENT` characters in
a segment holding ``*`` or ``?``, and :data:`MAX_SEARCHED_CHUNK` characters in a run between two
``*`` that holds ``?``. Within them matching is linear in the ID's length, with no
backtracking (:class:`SpiffeIdPattern`).
"""

from __future__ import annotations

import re
from typing import Final, TypeAlias

from spiffe import SpiffeId, TrustDomain
from spiffe.errors import PySpiffeError

from x0tta6bl4.defaults import DEFAULT_TRUST_DOMAIN
from x0tta6bl4.identity.errors import (
    InvalidSpiffeIdError,
    InvalidTrustDomainError,
    WrongTrustDomainError,
)

__all__ = [
    "DEFAULT_TRUST_DOMAIN",
    "MAX_GLOB_SEGMENT",
    "MAX_PATTERN_GLOBSTARS",
    "MAX_PATTERN_LENGTH",
    "MAX_PATTERN_SEGMENTS",
    "MAX_PATTERN_WILDCARDS",
    "MAX_SEARCHED_CHUNK",
    "SpiffeIdPattern",
    "parse_spiffe_id",
    "parse_trust_domain",
    "require_trust_domain",
    "workload_id",
]

_SCHEME: Final = "spiffe://"
# Trust domain and path segment character sets of the SPIFFE ID standard.
# Always used with fullmatch: "$" would also match before a trailing newline (py-spiffe's own
# checks do exactly that, so parse_spiffe_id checks the whole text again with _ID_RE).
_TD_RE: Final = re.compile(r"[a-z0-9._-]+")
_SEGMENT_CHARS: Final = r"A-Za-z0-9._\-"
_PATTERN_SEGMENT_RE: Final = re.compile(rf"[{_SEGMENT_CHARS}*?]+")
_ID_RE: Final = re.compile(rf"spiffe://[a-z0-9._-]+(?:/[{_SEGMENT_CHARS}]+)*")
# Kubernetes: namespaces are DNS-1123 labels, service accounts DNS-1123 subdomains.
_DNS1123_LABEL_RE: Final = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?")
_DNS1123_SUBDOMAIN_RE: Final = re.compile(
    r"[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*"
)
_MAX_ID_LENGTH: Final = 2048  # the SPIFFE ID standard's limit for URI SANs

MAX_PATTERN_LENGTH: Final = 2048
"""Longest SPIFFE ID pattern, in characters (the SPIFFE ID limit: a literal pattern may name
any ID)."""
MAX_PATTERN_SEGMENTS: Final = 32
"""Most path segments in a pattern (``**`` included)."""
MAX_PATTERN_GLOBSTARS: Final = 1
"""Most ``**`` segments in a pattern (consecutive ones count as one)."""
MAX_PATTERN_WILDCARDS: Final = 16
"""Most ``*`` and ``?`` in a pattern's segments (``**`` segments not counted)."""
MAX_GLOB_SEGMENT: Final = 64
"""Longest path segment of a pattern that holds ``*`` or ``?``, in characters."""
MAX_SEARCHED_CHUNK: Final = 16
"""Longest run between two ``*`` of one segment that holds ``?``, in characters: such a run is
tried at every position of the ID's segment (a run without ``?`` is found by ``str.find``), so
its length multiplies the cost of a match."""


def parse_trust_domain(value: str | TrustDomain, *, canonical: bool = False) -> TrustDomain:
    """Parse a trust domain name (``x0tta6bl4.mesh``) or the ID form (``spiffe://x0tta6bl4.mesh``).

    Raises :class:`InvalidTrustDomainError` for anything else, including names with a path,
    a port, upper case letters after normalisation, or an empty string. With ``canonical``
    only the name exactly as it is canonically written is accepted (no ``spiffe://``, no
    upper case): what a certificate must carry.
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
    if not _TD_RE.fullmatch(name.lower()):
        raise InvalidTrustDomainError(
            f"trust domain {value!r} may only contain letters, digits, '.', '-' and '_'"
        )
    try:
        parsed = TrustDomain(name)
    except PySpiffeError as err:  # pragma: no cover - our checks are stricter
        raise InvalidTrustDomainError(f"invalid trust domain {value!r}: {err}") from err
    if canonical and parsed.name != value:
        raise InvalidTrustDomainError(
            f"trust domain {value!r} is not in canonical form (expected {parsed.name!r})"
        )
    return parsed


def parse_spiffe_id(
    value: str | SpiffeId,
    *,
    trust_domain: str | TrustDomain | None = None,
    require_path: bool = True,
    canonical: bool = False,
) -> SpiffeId:
    """Parse and validate a SPIFFE ID.

    With ``trust_domain`` the ID must belong to it (:class:`WrongTrustDomainError` otherwise).
    With ``require_path`` (the default) a bare trust domain ID such as ``spiffe://td`` is
    rejected: workloads always have a path. With ``canonical`` the text must be exactly the
    ID's canonical form (what a certificate must carry: no upper case in the trust domain).
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
        if not _ID_RE.fullmatch(str(spiffe_id)):
            # py-spiffe checks segments with "^…$", which lets a trailing newline through
            # ("spiffe://td/ns/prod\n/sa/x"): found by fuzz/spiffe_ids.py.
            raise InvalidSpiffeIdError(
                f"SPIFFE ID {value!r} holds characters outside the SPIFFE ID standard's set"
            )
        if canonical and str(spiffe_id) != value:
            raise InvalidSpiffeIdError(
                f"SPIFFE ID {value!r} is not in canonical form (expected {str(spiffe_id)!r})"
            )
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
    if len(namespace) > 63 or not _DNS1123_LABEL_RE.fullmatch(namespace):
        raise InvalidSpiffeIdError(
            f"namespace {namespace!r} is not a valid Kubernetes namespace (DNS-1123 label)"
        )
    if len(serviceaccount) > 253 or not _DNS1123_SUBDOMAIN_RE.fullmatch(serviceaccount):
        raise InvalidSpiffeIdError(
            f"service account {serviceaccount!r} is not a valid Kubernetes name "
            "(DNS-1123 subdomain)"
        )
    return SpiffeId(f"{_SCHEME}{td.name}/ns/{namespace}/sa/{serviceaccount}")


class _Chunk:
    """A run of pattern characters between two ``*`` of one segment: literals and ``?``.

    Placed at a fixed position (``at``) or at its leftmost position in a range (``find``);
    both are C-level string operations (``str.startswith``/``str.find`` for a literal run, a
    compiled fixed-length expression without quantifiers for one holding ``?``), so neither
    can backtrack. ``find`` on a run holding ``?`` tries every position of the range, so its
    cost is at most the range length times :data:`MAX_SEARCHED_CHUNK`.
    """

    __slots__ = ("_re", "size", "text")

    def __init__(self, text: str) -> None:
        self.text = text
        self.size = len(text)
        self._re = (
            re.compile("".join("[^/]" if ch == "?" else re.escape(ch) for ch in text))
            if "?" in text
            else None
        )

    def at(self, value: str, pos: int) -> bool:
        if self._re is None:
            return value.startswith(self.text, pos)
        return self._re.match(value, pos) is not None

    def find(self, value: str, start: int, end: int) -> int:
        """The leftmost position of the chunk within ``value[start:end]``, or -1."""
        if self._re is None:
            return value.find(self.text, start, end)
        found = self._re.search(value, start, end)
        return -1 if found is None else found.start()


class _SegmentMatcher:
    """One path segment of a pattern (not ``**``), matched against one segment of an ID.

    ``*`` chunks are placed greedily at their leftmost position and never moved again (the
    classic linear glob algorithm: a later placement can only leave less room for the rest,
    so the leftmost is the right one).
    """

    __slots__ = ("_first", "_last", "_literal", "_middle", "_min_size")

    def __init__(self, text: str) -> None:
        self._literal: str | None = None if ("*" in text or "?" in text) else text
        pieces = text.split("*")
        self._first = _Chunk(pieces[0])
        self._last: _Chunk | None = _Chunk(pieces[-1]) if len(pieces) > 1 else None
        self._middle = tuple(_Chunk(piece) for piece in pieces[1:-1] if piece)
        self._min_size = sum(len(piece) for piece in pieces)

    def matches(self, value: str) -> bool:
        if self._literal is not None:
            return value == self._literal
        size = len(value)
        last = self._last
        if last is None:  # no "*": only literals and "?"
            return size == self._first.size and self._first.at(value, 0)
        if size < self._min_size or not self._first.at(value, 0):
            return False
        end = size - last.size
        if not last.at(value, end):
            return False
        pos = self._first.size
        for chunk in self._middle:
            found = chunk.find(value, pos, end)
            if found < 0:
                return False
            pos = found + chunk.size
        return True


class SpiffeIdPattern:
    """A glob over SPIFFE IDs, e.g. ``spiffe://x0tta6bl4.mesh/ns/*/sa/x0tta6bl4-app``.

    Immutable and hashable; ``str()`` gives the pattern back. See the module docstring for the
    syntax and the limits. Build one with ``SpiffeIdPattern(text)``; a malformed pattern, or
    one beyond the limits, raises :class:`InvalidSpiffeIdError` naming the fault.

    Matching never backtracks: the ID's path is split into segments once; the segments before
    ``**`` are compared with the first segments of the ID, those after it with the last ones
    (at most one ``**``, so there is nothing to search for at segment level); within a segment
    each ``*`` chunk is placed once at its leftmost position (:class:`_SegmentMatcher`). The
    work is at most :data:`MAX_PATTERN_SEGMENTS` segment comparisons of at most
    :data:`MAX_PATTERN_WILDCARDS` + 1 chunk placements each, every one a C-level string
    operation over at most the ID's length (``x0tta6bl4 bench glob`` measures it).
    """

    __slots__ = ("_head", "_tail", "_text", "_trust_domain")

    def __init__(self, pattern: str) -> None:
        if not isinstance(pattern, str) or not pattern:
            raise InvalidSpiffeIdError("SPIFFE ID pattern is empty")
        if len(pattern) > MAX_PATTERN_LENGTH:
            raise InvalidSpiffeIdError(
                f"SPIFFE ID pattern is longer than {MAX_PATTERN_LENGTH} characters"
            )
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
        segments = path.split("/") if sep else []
        self._text = f"{_SCHEME}{self._trust_domain.name}{'/' + path if sep else ''}"
        self._head, self._tail = _compile_segments(self._text, segments)

    @property
    def trust_domain(self) -> TrustDomain:
        """The (literal) trust domain of the pattern."""
        return self._trust_domain

    def matches(self, spiffe_id: SpiffeId | str) -> bool:
        """Whether ``spiffe_id`` matches (a malformed string raises InvalidSpiffeIdError)."""
        sid = parse_spiffe_id(spiffe_id, require_path=False)
        if sid.trust_domain != self._trust_domain:
            return False
        path = sid.path
        segments = path.split("/")[1:] if path else []
        head, tail = self._head, self._tail
        if tail is None:  # no "**": one pattern segment per ID segment
            if len(segments) != len(head):
                return False
        elif len(segments) < len(head) + len(tail):
            return False
        for matcher, value in zip(head, segments, strict=False):
            if matcher is not None and not matcher.matches(value):
                return False
        if tail:
            for matcher, value in zip(tail, segments[len(segments) - len(tail) :], strict=True):
                if matcher is not None and not matcher.matches(value):
                    return False
        return True

    def __str__(self) -> str:
        return self._text

    def __repr__(self) -> str:
        return f"SpiffeIdPattern({self._text!r})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, SpiffeIdPattern) and other._text == self._text

    def __hash__(self) -> int:
        return hash(self._text)


_Matchers: TypeAlias = tuple["_SegmentMatcher | None", ...]


def _compile_segments(pattern: str, segments: list[str]) -> tuple[_Matchers, _Matchers | None]:
    """The matchers before and after the ``**`` (``None`` after: there is no ``**``).

    A ``None`` matcher is a segment that is exactly ``*`` (any one segment). Consecutive
    ``**`` segments mean the same as one and are merged. Raises InvalidSpiffeIdError for a
    malformed segment or a pattern beyond the limits.
    """
    if len(segments) > MAX_PATTERN_SEGMENTS:
        raise InvalidSpiffeIdError(
            f"SPIFFE ID pattern {pattern!r:.80} has more than {MAX_PATTERN_SEGMENTS} path segments"
        )
    head: list[_SegmentMatcher | None] = []
    tail: list[_SegmentMatcher | None] | None = None
    wildcards = 0
    previous = ""
    for segment in segments:
        if segment == "**":
            if previous == "**":
                continue
            if tail is not None:
                raise InvalidSpiffeIdError(
                    f"SPIFFE ID pattern {pattern!r:.80} has more than {MAX_PATTERN_GLOBSTARS} "
                    "'**' segment"
                )
            tail = []
            previous = segment
            continue
        previous = segment
        if not segment:
            raise InvalidSpiffeIdError(
                f"SPIFFE ID pattern {pattern!r:.80} has an empty path segment"
            )
        if segment in {".", ".."} or not _PATTERN_SEGMENT_RE.fullmatch(segment):
            raise InvalidSpiffeIdError(
                f"SPIFFE ID pattern {pattern!r:.80}: invalid path segment {segment!r:.80}"
            )
        target = head if tail is None else tail
        if segment == "*":
            wildcards += 1
            target.append(None)
            continue
        count = segment.count("*") + segment.count("?")
        if count and len(segment) > MAX_GLOB_SEGMENT:
            raise InvalidSpiffeIdError(
                f"SPIFFE ID pattern {pattern!r:.80}: a path segment holding '*' or '?' may be "
                f"at most {MAX_GLOB_SEGMENT} characters"
            )
        if any("?" in run and len(run) > MAX_SEARCHED_CHUNK for run in segment.split("*")[1:-1]):
            raise InvalidSpiffeIdError(
                f"SPIFFE ID pattern {pattern!r:.80}: a run between two '*' that holds '?' may be "
                f"at most {MAX_SEARCHED_CHUNK} characters"
            )
        wildcards += count
        target.append(_SegmentMatcher(segment))
    if wildcards > MAX_PATTERN_WILDCARDS:
        raise InvalidSpiffeIdError(
            f"SPIFFE ID pattern {pattern!r:.80} has more than {MAX_PATTERN_WILDCARDS} "
            "wildcards ('*' and '?')"
        )
    return tuple(head), None if tail is None else tuple(tail)
