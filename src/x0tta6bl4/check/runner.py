"""Run categories of checks in order, with ``--wait`` retries and fatal stops.

Rules:

- Checks run one at a time, in category order then check order.
- A check passes (``None`` or a detail string), fails (:class:`CheckFailedError`, or any other
  exception, reported as ``TypeName: message``), or is skipped (:class:`CheckSkippedError`).
  Each attempt is bounded by ``attempt_timeout`` seconds; running out is a failure.
- With ``wait > 0`` a failing check of severity error or fatal whose ``retry`` is true is
  tried again every ``interval`` seconds until it passes or ``wait`` seconds have passed
  since the run started (one deadline for the whole run, as ``linkerd check --wait``).
  Warnings are not retried: they never block readiness.
- A failed fatal check ends the run: later checks are not run and not reported.

:func:`run_checks` returns the :class:`Report`; :func:`run_categories` also prints it (as a
table while it runs, or as JSON or JUnit XML at the end). Both the cluster checks
(:mod:`.app`) and the local ones (:mod:`.checks_local`) run through it.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, TextIO, TypeVar

from x0tta6bl4.check.model import (
    Category,
    Check,
    CheckFailedError,
    CheckSkippedError,
    Report,
    Result,
    Severity,
    Status,
)
from x0tta6bl4.check.report_json import render_json
from x0tta6bl4.check.report_junit import render_junit
from x0tta6bl4.check.report_table import TableReporter

__all__ = ["DEFAULT_ATTEMPT_TIMEOUT", "DEFAULT_INTERVAL", "run_categories", "run_checks"]

C = TypeVar("C")

DEFAULT_INTERVAL = 2.0
"""Seconds between two attempts of a failing check under ``--wait``."""
DEFAULT_ATTEMPT_TIMEOUT = 30.0
"""Seconds one attempt of a check may take."""

_MAX_ERROR = 2000


async def _attempt(check: Check[C], ctx: C, timeout: float) -> tuple[Status, str | None]:
    """One attempt: (status, message) where message is the detail, error or skip reason."""
    try:
        detail = await asyncio.wait_for(check.fn(ctx), timeout)
    except CheckSkippedError as exc:
        return Status.SKIPPED, str(exc)
    except CheckFailedError as exc:
        return Status.ERROR, str(exc)
    except TimeoutError:
        return Status.ERROR, f"no answer within {timeout:g} s"
    except Exception as exc:  # a broken check is reported, not raised
        return Status.ERROR, f"{type(exc).__name__}: {exc}"[:_MAX_ERROR]
    return Status.SUCCESS, detail


async def run_checks(
    categories: Sequence[Category[C]],
    ctx: C,
    *,
    wait: float = 0.0,
    interval: float = DEFAULT_INTERVAL,
    attempt_timeout: float = DEFAULT_ATTEMPT_TIMEOUT,
    on_result: Callable[[Result], None] | None = None,
    on_retry: Callable[[Check[C], str], None] | None = None,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
) -> Report:
    """Run every check of ``categories`` against ``ctx`` and return the :class:`Report`.

    ``on_result`` is called with each result as soon as it is final (the table reporter
    prints as it goes); ``on_retry`` with a check and its error before each retry.
    """
    if wait < 0 or interval <= 0 or attempt_timeout <= 0:
        raise ValueError("wait must be >= 0, interval and attempt_timeout > 0")
    report = Report()
    deadline = clock() + wait
    for category in categories:
        for check in category.checks:
            started = clock()
            attempts = 0
            while True:
                attempts += 1
                status, message = await _attempt(check, ctx, attempt_timeout)
                retryable = (
                    status is Status.ERROR
                    and check.retry
                    and check.severity is not Severity.WARNING
                    and clock() + interval <= deadline
                )
                if not retryable:
                    break
                if on_retry is not None:
                    on_retry(check, message or "")
                await sleep(interval)
            if status is Status.ERROR and check.severity is Severity.WARNING:
                status = Status.WARNING
            result = Result(
                category=category.name,
                anchor=check.anchor,
                description=check.description,
                severity=check.severity,
                status=status,
                error=message if status is not Status.SUCCESS else None,
                detail=message if status is Status.SUCCESS else None,
                hint=check.hint,
                attempts=attempts,
                duration=clock() - started,
            )
            report.results.append(result)
            if on_result is not None:
                on_result(result)
            if status is Status.ERROR and check.severity is Severity.FATAL:
                report.stopped_by = check.anchor
                return report
    return report


async def run_categories(
    categories: Sequence[Category[Any]],
    ctx: Any,
    out: TextIO,
    *,
    output: str = "table",
    wait: float = 0.0,
    interval: float = DEFAULT_INTERVAL,
) -> Report:
    """Run ``categories`` on ``ctx`` and print the report to ``out`` in ``output`` format."""
    table = TableReporter(out) if output == "table" else None
    report = await run_checks(
        categories,
        ctx,
        wait=wait,
        interval=interval,
        on_result=table.on_result if table else None,
        on_retry=(lambda c, e: table.on_retry(c.description, e)) if table else None,
    )
    if table is not None:
        table.finish(report)
    elif output == "json":
        out.write(render_json(report))
    else:
        out.write(render_junit(report))
    out.flush()
    return report
