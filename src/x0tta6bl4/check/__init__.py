"""``x0tta6bl4 check``: the deployment guide's validation steps and checklist as checks.

:mod:`.model` defines checks, categories, severities and results; :mod:`.runner` runs them
(ordering, ``--wait`` retries, fatal stops); ``report_*`` render a :class:`~.model.Report`;
:mod:`.kube` is a thin async Kubernetes client; ``checks_*`` hold the checks themselves.
Every check's hint points at an anchor of ``docs/checks.md``.
"""

from __future__ import annotations

from x0tta6bl4.check.model import (
    HINT_BASE,
    Category,
    Check,
    CheckFailedError,
    CheckSkippedError,
    Report,
    Result,
    Severity,
    Status,
)
from x0tta6bl4.check.runner import run_checks

__all__ = [
    "HINT_BASE",
    "Category",
    "Check",
    "CheckFailedError",
    "CheckSkippedError",
    "Report",
    "Result",
    "Severity",
    "Status",
    "run_checks",
]
