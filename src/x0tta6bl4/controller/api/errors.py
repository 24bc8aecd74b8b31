"""The controller API's error answers: ``{"error": "<machine_reason>", "detail": "..."}``.

Handlers raise :class:`ApiError`; the app turns it (and request validation failures, unknown
routes, oversized bodies) into that JSON shape. ``error`` is a stable machine-readable reason
listed in ``docs/api.md``; ``detail`` is for humans and never holds a token or a key.
"""

from __future__ import annotations

from collections.abc import Mapping

__all__ = ["ApiError", "error_body"]


class ApiError(Exception):
    """An HTTP error answer with a machine-readable ``reason``."""

    def __init__(
        self,
        status: int,
        reason: str,
        detail: str,
        *,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(f"{status} {reason}: {detail}")
        self.status = status
        self.reason = reason
        self.detail = detail
        self.headers = dict(headers or {})


def error_body(reason: str, detail: str) -> dict[str, str]:
    """The JSON body of an error answer."""
    return {"error": reason, "detail": detail}
