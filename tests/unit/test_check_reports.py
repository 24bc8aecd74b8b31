"""Reporters: JSON shape, JUnit XML parses, table marks and colour only when asked."""

from __future__ import annotations

import io
import json
import xml.etree.ElementTree as ET

from x0tta6bl4.check.model import HINT_BASE, Report, Result, Severity, Status
from x0tta6bl4.check.report_json import render_json
from x0tta6bl4.check.report_junit import render_junit
from x0tta6bl4.check.report_table import render_table


def result(anchor: str, status: Status, category: str = "cat", error: str | None = None) -> Result:
    return Result(
        category=category,
        anchor=anchor,
        description=f"desc {anchor} <&>",
        severity=Severity.ERROR,
        status=status,
        error=error,
        detail=None,
        hint=HINT_BASE + anchor,
        attempts=1,
        duration=0.25,
    )


REPORT = Report(
    [
        result("a", Status.SUCCESS),
        result("b", Status.WARNING, error="meh"),
        result("c", Status.ERROR, "other", error='bad "quoted" <x>'),
        result("d", Status.SKIPPED, "other", error="n/a"),
    ]
)


def test_json_shape() -> None:
    data = json.loads(render_json(REPORT))
    assert data["success"] is False
    assert [c["name"] for c in data["categories"]] == ["cat", "other"]
    first = data["categories"][1]["checks"][0]
    assert {"description", "result", "error", "hint"} <= first.keys()
    assert first["result"] == "error"
    assert first["hint"] == HINT_BASE + "c"


def test_junit_parses() -> None:
    text = render_junit(REPORT)
    root = ET.fromstring(text.split("\n", 1)[1])
    assert root.get("tests") == "4"
    assert root.get("failures") == "1"
    assert root.get("skipped") == "1"
    failure = root.find(".//testcase[@id='c']/failure")
    assert failure is not None
    assert failure.get("message") == 'bad "quoted" <x>'
    out = root.find(".//testcase[@id='b']/system-out")
    assert out is not None
    assert "warning: meh" in (out.text or "")


def test_table_marks_without_colour() -> None:
    out = io.StringIO()
    render_table(REPORT, out)
    text = out.getvalue()
    assert "√ desc a <&>" in text
    assert "‼ desc b <&>" in text
    assert "× desc c <&>" in text
    assert "- desc d <&> (skipped: n/a)" in text
    assert f"see {HINT_BASE}c for hints" in text
    assert text.rstrip().endswith("Status check results are ×")
    assert "\x1b[" not in text


def test_table_colour_when_forced() -> None:
    out = io.StringIO()
    render_table(Report([result("a", Status.SUCCESS)]), out, color=True)
    assert "\x1b[" in out.getvalue()
    assert out.getvalue().rstrip().endswith("√\x1b[0m")
