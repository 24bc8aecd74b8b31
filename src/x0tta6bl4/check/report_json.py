"""The JSON report: ``{success, categories: [{name, checks: [{description, result, error,
hint}]}]}`` (the shape of ``linkerd check -o json``), plus per check its ``id`` (the
docs/checks.md anchor), ``severity``, ``detail`` and ``attempts``, and ``stopped_by`` at the
top (the anchor of a failed fatal check, or null)."""

from __future__ import annotations

import json
from typing import Any

from x0tta6bl4.check.model import Report

__all__ = ["render_json", "report_to_json"]


def report_to_json(report: Report) -> dict[str, Any]:
    """The report as a JSON-serialisable dict."""
    return {
        "success": report.success,
        "stopped_by": report.stopped_by,
        "categories": [
            {
                "name": name,
                "checks": [
                    {
                        "id": r.anchor,
                        "description": r.description,
                        "result": r.status.value,
                        "severity": r.severity.value,
                        "error": r.error,
                        "detail": r.detail,
                        "hint": r.hint,
                        "attempts": r.attempts,
                    }
                    for r in results
                ],
            }
            for name, results in report.categories()
        ],
    }


def render_json(report: Report) -> str:
    """The report as indented JSON text (ends with a newline)."""
    return json.dumps(report_to_json(report), indent=2, ensure_ascii=False) + "\n"
