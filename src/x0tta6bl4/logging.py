"""Structured logging for every x0tta6bl4 process (structlog on top of the standard library).

:func:`configure_logging` is called once by each command. Output is JSON lines when stderr is
not a terminal (in a cluster) or when ``--log-format json`` is given, and a readable console
rendering otherwise. Standard-library loggers (uvicorn, asyncio) go through the same
renderer.

Warnings and errors are rate-limited per message (:class:`RateLimitFilter`, on the handler):
outside input can trigger some of them (a malformed HTTP request, a failed accept, a damaged
store record), and a flood of input must not become a flood of log. At most
:data:`LOG_BURST` lines of one message pass at once, then one per :data:`LOG_INTERVAL`
seconds; the next line let through says how many were suppressed.

A processor, :func:`redact_secrets`, replaces the value of every event key whose name looks
like it holds a secret (``token``, ``key``, ``secret``, ``authorization``, ``password`` …,
also nested in dicts) with ``"[redacted]"``, so a careless ``log.info("x", token=t)`` never
leaks it. Nothing should rely on it: secrets are simply not logged.
"""

from __future__ import annotations

import logging
import sys
import threading
import time
from collections.abc import Mapping, MutableMapping
from typing import Any, Literal

import structlog

__all__ = [
    "LOG_BURST",
    "LOG_FORMATS",
    "LOG_INTERVAL",
    "LOG_LEVELS",
    "LOG_MAX_KEYS",
    "REDACTED",
    "LogFormat",
    "RateLimitFilter",
    "configure_logging",
    "get_logger",
    "is_secret_key",
    "redact_secrets",
]

LogFormat = Literal["json", "console"]
LOG_FORMATS: tuple[str, ...] = ("json", "console")
LOG_LEVELS: tuple[str, ...] = ("debug", "info", "warning", "error", "critical")
REDACTED = "[redacted]"

LOG_BURST = 10
"""Warnings or errors of one message let through at once before rate limiting starts."""
LOG_INTERVAL = 10.0
"""Then one line of that message per this many seconds."""
LOG_MAX_KEYS = 256
"""Distinct messages tracked; beyond, the rest share one budget."""

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


class RateLimitFilter(logging.Filter):
    """Lets WARNING and above through at most :data:`LOG_BURST` lines per (logger, message)
    at once, then one per :data:`LOG_INTERVAL` seconds (a token bucket per message). The next
    line let through after a suppression carries the count (``suppressed`` in structured
    events, ``[N similar lines suppressed]`` after plain messages). Thread-safe."""

    def __init__(
        self,
        burst: int = LOG_BURST,
        interval: float = LOG_INTERVAL,
        *,
        clock: Any = time.monotonic,
    ) -> None:
        super().__init__()
        self._burst = burst
        self._interval = interval
        self._clock = clock
        self._lock = threading.Lock()
        # key -> [tokens, last refill, suppressed since the last line let through]
        self._buckets: dict[tuple[str, str], list[float]] = {}

    @staticmethod
    def _message(record: logging.LogRecord) -> str:
        msg = record.msg
        if isinstance(msg, Mapping):  # a structlog event on its way to the formatter
            msg = msg.get("event", "")
        return str(msg).split("\n", 1)[0][:120]

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno < logging.WARNING:
            return True
        key = (record.name, self._message(record))
        now = self._clock()
        with self._lock:
            bucket = self._buckets.get(key)
            if bucket is None:
                if len(self._buckets) >= LOG_MAX_KEYS:
                    key = ("", "(other messages)")
                    bucket = self._buckets.setdefault(key, [float(self._burst), now, 0.0])
                else:
                    bucket = self._buckets[key] = [float(self._burst), now, 0.0]
            tokens = min(float(self._burst), bucket[0] + (now - bucket[1]) / self._interval)
            bucket[1] = now
            if tokens < 1.0:
                bucket[0] = tokens
                bucket[2] += 1
                return False
            bucket[0] = tokens - 1.0
            suppressed, bucket[2] = int(bucket[2]), 0.0
        if suppressed:
            _annotate(record, suppressed)
        return True


def _annotate(record: logging.LogRecord, suppressed: int) -> None:
    if isinstance(record.msg, MutableMapping):
        record.msg["suppressed"] = suppressed
    elif isinstance(record.msg, str) and not record.args:
        record.msg = f"{record.msg} [{suppressed} similar lines suppressed]"


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
    handler.addFilter(RateLimitFilter())
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(numeric)
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access"):
        lg = logging.getLogger(name)
        lg.handlers.clear()
        lg.propagate = True
    # Access logs would duplicate our own request metrics and may carry query strings; so would
    # the HTTP client's line per request (a node's status reports, ``up``'s readiness polls).
    for name in ("uvicorn.access", "httpx", "httpcore"):
        logging.getLogger(name).setLevel(logging.WARNING)
    return chosen


def get_logger(name: str) -> Any:
    """A structlog logger bound to ``name``."""
    return structlog.stdlib.get_logger(name)
