"""Structured logging for every x0tta6bl4 process (structlog on top of the standard library).

:func:`configure_logging` is called once by each command. Output is JSON lines when stderr is
not a terminal (in a cluster) or when ``--log-format json`` is given, and a readable console
rendering otherwise. Standard-library loggers (uvicorn, asyncio) go through the same
renderer.

A processor, :func:`redact_secrets`, replaces the value of every event key whose name looks
like it holds a secret (``token``, ``key``, ``secret``, ``authorization``, ``password`` …,
also nested in dicts) with ``"[redacted]"``, so a careless ``log.info("x", token=t)`` never
leaks it. Nothing should rely on it: secrets are simply not logged.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Mapping, MutableMapping
from typing import Any, Literal

import structlog

__all__ = [
    "LOG_FORMATS",
    "LOG_LEVELS",
    "REDACTED",
    "LogFormat",
    "configure_logging",
    "get_logger",
    "is_secret_key",
    "redact_secrets",
]

LogFormat = Literal["json", "console"]
LOG_FORMATS: tuple[str, ...] = ("json", "console")
LOG_LEVELS: tuple[str, ...] = ("debug", "info", "warning", "error", "critical")
REDACTED = "[redacted]"

_SECRET_WORDS = ("token", "key", "secret", "authorization", "password", "passwd", "cookie")
# Keys that contain a secret word but name no secret.
_NOT_SECRET = frozenset({"key_id", "kid", "public_key_sha256", "keepalive"})


def is_secret_key(name: str) -> bool:
    """Whether an event key named ``name`` may hold a secret (case-insensitive)."""
    lowered = name.lower()
    if lowered in _NOT_SECRET:
        return False
    return any(word in lowered for word in _SECRET_WORDS)


def _redact(value: Any, depth: int = 0) -> Any:
    if depth > 8:
        return value
    if isinstance(value, Mapping):
        return {
            k: (REDACTED if isinstance(k, str) and is_secret_key(k) else _redact(v, depth + 1))
            for k, v in value.items()
        }
    if isinstance(value, list | tuple):
        return type(value)(_redact(v, depth + 1) for v in value)
    return value


def redact_secrets(
    logger: Any, method_name: str, event_dict: MutableMapping[str, Any]
) -> MutableMapping[str, Any]:
    """structlog processor: replace values of secret-looking keys with ``[redacted]``."""
    for name in list(event_dict):
        if name == "event":
            continue
        if is_secret_key(name):
            event_dict[name] = REDACTED
        else:
            event_dict[name] = _redact(event_dict[name])
    return event_dict


def configure_logging(
    log_format: str | None = None, level: str = "info", *, stream: Any = None
) -> LogFormat:
    """Configure structlog and the standard library; return the format chosen.

    ``log_format`` is ``"json"``, ``"console"`` or ``None`` (console on a TTY, else JSON).
    Raises :class:`ValueError` for an unknown format or level.
    """
    out = stream if stream is not None else sys.stderr
    if log_format is None:
        chosen: LogFormat = "console" if getattr(out, "isatty", lambda: False)() else "json"
    elif log_format == "json":
        chosen = "json"
    elif log_format == "console":
        chosen = "console"
    else:
        raise ValueError(f"unknown log format {log_format!r}; use one of {', '.join(LOG_FORMATS)}")
    if level.lower() not in LOG_LEVELS:
        raise ValueError(f"unknown log level {level!r}; use one of {', '.join(LOG_LEVELS)}")
    numeric = logging.getLevelName(level.upper())

    shared: list[Any] = [
        structlog.contextvars.merge_contextvars,
        structlog.stdlib.add_log_level,
        structlog.stdlib.add_logger_name,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        redact_secrets,
    ]
    renderer: Any
    if chosen == "json":
        renderer = structlog.processors.JSONRenderer()
        shared.append(structlog.processors.format_exc_info)
    else:
        renderer = structlog.dev.ConsoleRenderer(colors=False)

    structlog.configure(
        processors=[
            structlog.stdlib.filter_by_level,
            *shared,
            structlog.stdlib.ProcessorFormatter.wrap_for_formatter,
        ],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        cache_logger_on_first_use=False,
    )
    formatter = structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=shared,
        processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta, renderer],
    )
    handler = logging.StreamHandler(out)
    handler.setFormatter(formatter)
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(numeric)
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access"):
        lg = logging.getLogger(name)
        lg.handlers.clear()
        lg.propagate = True
    # Access logs would duplicate our own request metrics and may carry query strings.
    logging.getLogger("uvicorn.access").setLevel(logging.WARNING)
    return chosen


def get_logger(name: str) -> Any:
    """A structlog logger bound to ``name``."""
    return structlog.stdlib.get_logger(name)
