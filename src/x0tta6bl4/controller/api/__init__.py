"""The controller's HTTP API: routes, request/response schemas and error answers."""

from __future__ import annotations

__all__: list[str] = []
