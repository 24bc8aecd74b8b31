"""The JUnit XML report, for CI systems: one ``<testsuite>`` per category, one
``<testcase>`` per check (``classname`` = category, ``name`` = description). Errors become
``<failure>`` (message = the error, text = error and hint), skips ``<skipped>``, and
warnings pass with the warning and hint in ``<system-out>`` (JUnit has no warning state)."""

from __future__ import annotations

import xml.etree.ElementTree as ET

from x0tta6bl4.check.model import Report, Status

__all__ = ["render_junit"]


def render_junit(report: Report) -> str:
    """The report as a JUnit XML document (UTF-8 text with an XML declaration)."""
    root = ET.Element("testsuites", name="x0tta6bl4 check")
    total = failures = skipped = 0
    total_time = 0.0
    for name, results in report.categories():
        suite = ET.SubElement(root, "testsuite", name=name)
        suite_failures = suite_skipped = 0
        suite_time = 0.0
        for r in results:
            case = ET.SubElement(
                suite,
                "testcase",
                classname=name,
                name=r.description,
                time=f"{r.duration:.3f}",
            )
            case.set("id", r.anchor)
            if r.status is Status.ERROR:
                suite_failures += 1
                failure = ET.SubElement(
                    case, "failure", message=r.error or "", type=r.severity.value
                )
                failure.text = f"{r.error or ''}\nsee {r.hint} for hints"
            elif r.status is Status.SKIPPED:
                suite_skipped += 1
                ET.SubElement(case, "skipped", message=r.error or "")
            elif r.status is Status.WARNING:
                out = ET.SubElement(case, "system-out")
                out.text = f"warning: {r.error or ''}\nsee {r.hint} for hints"
            suite_time += r.duration
        suite.set("tests", str(len(results)))
        suite.set("failures", str(suite_failures))
        suite.set("errors", "0")
        suite.set("skipped", str(suite_skipped))
        suite.set("time", f"{suite_time:.3f}")
        total += len(results)
        failures += suite_failures
        skipped += suite_skipped
        total_time += suite_time
    root.set("tests", str(total))
    root.set("failures", str(failures))
    root.set("errors", "0")
    root.set("skipped", str(skipped))
    root.set("time", f"{total_time:.3f}")
    ET.indent(root)
    return '<?xml version="1.0" encoding="UTF-8"?>\n' + ET.tostring(root, encoding="unicode") + "\n"
