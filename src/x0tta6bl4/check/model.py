"""Checks, categories, severities and results.

A :class:`Check` is a description, an anchor in ``docs/checks.md`` (its hint), a severity and
an async function over a context object (a Kubernetes client, an HTTP client to a local
mesh, …). The function returns ``None`` or a short detail string when the check passes,
raises :class:`CheckFailedError` when it fails and :class:`CheckSkippedError` when it does not apply
(monitoring turned off, a store without etcd, …).

Severities::

    error    the check failing makes the run fail (exit 1)
    warning  reported with ‼, the run still succeeds (exit 0)
    fatal    like error, and nothing after it runs (e.g. the API server is unreachable)
"""

from __future__ import annotations

import enum
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Generic, TypeVar

__all__ = [
    "HINT_BASE",
    "Category",
    "Check",
    "CheckFailedError",
    "CheckFn",
    "CheckSkippedError",
    "Report",
    "Result",
    "Severity",
    "Status",
]

HINT_BASE = "https://github.com/x0tta6bl4/x0tta6bl4/blob/main/docs/checks.md#"
"""Every hint is this URL followed by the check's anchor in ``docs/checks.md``."""

C = TypeVar("C")


class Severity(enum.StrEnum):
    """What a failing check does to the run."""

    ERROR = "error"
    WARNING = "warning"
    FATAL = "fatal"


class Status(enum.StrEnum):
    """The outcome of one check (the ``result`` field of the JSON report)."""

    SUCCESS = "success"
    WARNING = "warning"
    ERROR = "error"
    SKIPPED = "skipped"


class CheckFailedError(Exception):
    """Raised by a check function: the check failed, ``str(exc)`` says what is wrong."""


class CheckSkippedError(Exception):
    """Raised by a check function: the check does not apply, ``str(exc)`` says why."""


CheckFn = Callable[[C], Awaitable[str | None]]


@dataclass(frozen=True, slots=True)
class Check(Generic[C]):
    """One check: ``anchor`` names it and is its section in docs/checks.md."""

    anchor: str
    description: str
    fn: CheckFn[C]
    severity: Severity = Severity.ERROR
    retry: bool = True
    """Whether ``--wait`` retries this check while it fails (not for static facts such as
    the Kubernetes version)."""

    @property
    def hint(self) -> str:
        """The URL of this check's section in docs/checks.md."""
        return HINT_BASE + self.anchor


@dataclass(frozen=True, slots=True)
class Category(Generic[C]):
    """A named group of checks, run in order."""

    name: str
    checks: Sequence[Check[C]]


@dataclass(frozen=True, slots=True)
class Result:
    """What one check gave: status, the failure (or skip) message, a detail on success."""

    category: str
    anchor: str
    description: str
    severity: Severity
    status: Status
    error: str | None
    detail: str | None
    hint: str
    attempts: int
    duration: float


@dataclass(slots=True)
class Report:
    """All results of a run, in order; ``stopped_by`` is the anchor of a failed fatal check."""

    results: list[Result] = field(default_factory=list)
    stopped_by: str | None = None

    @property
    def success(self) -> bool:
        """True when no check ended in error (warnings and skips are fine)."""
        return not any(r.status is Status.ERROR for r in self.results)

    def categories(self) -> list[tuple[str, list[Result]]]:
        """Results grouped by category, categories in the order they first appear."""
        groups: dict[str, list[Result]] = {}
        for result in self.results:
            groups.setdefault(result.category, []).append(result)
        return list(groups.items())

    def exit_code(self) -> int:
        """0 when successful (only warnings at worst), else 1."""
        return 0 if self.success else 1
