"""The check runner: order, severities, fatal stop, --wait retries on an explicit clock."""

from __future__ import annotations

import pytest

from x0tta6bl4.check.model import (
    HINT_BASE,
    Category,
    Check,
    CheckFailedError,
    CheckSkippedError,
    Severity,
    Status,
)
from x0tta6bl4.check.runner import run_checks


class Clock:
    """A hand-advanced clock; ``sleep`` advances it."""

    def __init__(self) -> None:
        self.t = 0.0

    def __call__(self) -> float:
        return self.t

    async def sleep(self, seconds: float) -> None:
        self.t += seconds


async def ok(_: None) -> str:
    return "fine"


async def bad(_: None) -> str:
    raise CheckFailedError("broken")


async def skip(_: None) -> str:
    raise CheckSkippedError("not here")


async def crash(_: None) -> str:
    raise RuntimeError("boom")


async def test_statuses_and_exit_code() -> None:
    cats: list[Category[None]] = [
        Category(
            "a",
            [
                Check("c-ok", "ok", ok),
                Check("c-warn", "warn", bad, Severity.WARNING),
                Check("c-skip", "skip", skip),
            ],
        )
    ]
    report = await run_checks(cats, None)
    assert [r.status for r in report.results] == [Status.SUCCESS, Status.WARNING, Status.SKIPPED]
    assert report.success
    assert report.exit_code() == 0
    assert report.results[0].detail == "fine"
    assert report.results[1].error == "broken"
    assert report.results[1].hint == HINT_BASE + "c-warn"


async def test_error_fails_and_fatal_stops() -> None:
    cats: list[Category[None]] = [
        Category("a", [Check("e", "e", crash), Check("f", "f", bad, Severity.FATAL)]),
        Category("b", [Check("never", "never", ok)]),
    ]
    report = await run_checks(cats, None)
    assert report.exit_code() == 1
    assert report.stopped_by == "f"
    assert [r.anchor for r in report.results] == ["e", "f"]
    assert report.results[0].error == "RuntimeError: boom"


async def test_wait_retries_until_pass() -> None:
    clock = Clock()
    calls = 0

    async def flaky(_: None) -> str:
        nonlocal calls
        calls += 1
        if calls < 4:
            raise CheckFailedError("not yet")
        return "now"

    retried: list[str] = []
    report = await run_checks(
        [Category("a", [Check("x", "x", flaky)])],
        None,
        wait=60,
        interval=2,
        clock=clock,
        sleep=clock.sleep,
        on_retry=lambda c, e: retried.append(e),
    )
    assert report.success
    assert report.results[0].attempts == 4
    assert retried == ["not yet"] * 3
    assert clock.t == 6


async def test_wait_gives_up_at_the_deadline_and_skips_warnings_and_static_checks() -> None:
    clock = Clock()
    report = await run_checks(
        [
            Category(
                "a",
                [
                    Check("x", "x", bad),
                    Check("w", "w", bad, Severity.WARNING),
                    Check("s", "s", bad, retry=False),
                ],
            )
        ],
        None,
        wait=10,
        interval=3,
        clock=clock,
        sleep=clock.sleep,
    )
    attempts = {r.anchor: r.attempts for r in report.results}
    assert attempts == {"x": 4, "w": 1, "s": 1}
    assert clock.t == 9


async def test_attempt_timeout_is_a_failure() -> None:
    import asyncio

    async def hang(_: None) -> str:
        await asyncio.Event().wait()
        return ""

    report = await run_checks([Category("a", [Check("h", "h", hang)])], None, attempt_timeout=0.01)
    assert report.results[0].status is Status.ERROR
    assert "no answer within" in (report.results[0].error or "")


async def test_bad_arguments() -> None:
    with pytest.raises(ValueError, match="wait"):
        await run_checks([], None, wait=-1)
