"""Structured logging: JSON or console output, and secrets never reach the output."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator

import pytest

from x0tta6bl4.logging import (
    LOG_BURST,
    LOG_INTERVAL,
    LOG_MAX_KEYS,
    REDACTED,
    RateLimitFilter,
    configure_logging,
    get_logger,
    is_secret_key,
)


@pytest.fixture(autouse=True)
def _restore_root_logger() -> Iterator[None]:
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)


def test_json_output_redacts_secret_keys() -> None:
    out = io.StringIO()
    assert configure_logging("json", "info", stream=out) == "json"
    get_logger("t").info(
        "registered",
        node_id="n1",
        token="eyJhbGciOi.secret.token",
        api_key="k",
        headers={"Authorization": "Bearer abc", "accept": "json"},
        items=[{"client_secret": "s"}],
    )
    line = json.loads(out.getvalue().strip().splitlines()[-1])
    assert line["event"] == "registered"
    assert line["node_id"] == "n1"
    assert line["level"] == "info"
    assert line["token"] == REDACTED
    assert line["api_key"] == REDACTED
    assert line["headers"] == {"Authorization": REDACTED, "accept": "json"}
    assert line["items"] == [{"client_secret": REDACTED}]
    assert "eyJhbGciOi" not in out.getvalue()
    assert "Bearer abc" not in out.getvalue()


def test_stdlib_loggers_share_the_renderer_and_level() -> None:
    out = io.StringIO()
    configure_logging("json", "warning", stream=out)
    logging.getLogger("uvicorn.error").warning("from uvicorn")
    get_logger("t").info("dropped below the level")
    lines = [json.loads(x) for x in out.getvalue().strip().splitlines()]
    assert [x["event"] for x in lines] == ["from uvicorn"]


def test_console_is_chosen_for_a_terminal_and_json_otherwise() -> None:
    class Tty(io.StringIO):
        def isatty(self) -> bool:
            return True

    tty = Tty()
    assert configure_logging(None, stream=tty) == "console"
    get_logger("t").info("hello", password="p")
    text = tty.getvalue()
    assert "hello" in text
    assert f"password={REDACTED}" in text or f"password='{REDACTED}'" in text
    assert configure_logging(None, stream=io.StringIO()) == "json"


@pytest.mark.parametrize(("fmt", "level"), [("xml", "info"), ("json", "loud")])
def test_bad_format_or_level_is_refused(fmt: str, level: str) -> None:
    with pytest.raises(ValueError, match="unknown log"):
        configure_logging(fmt, level, stream=io.StringIO())


def test_secret_key_names() -> None:
    for name in ("token", "admin_token", "Authorization", "private_key", "secret", "PASSWORD"):
        assert is_secret_key(name), name
    for name in ("node_id", "event", "kid", "spiffe_id", "overlay_ip"):
        assert not is_secret_key(name), name


def test_warnings_are_rate_limited_per_message() -> None:
    """Outside input can trigger warnings (a malformed request, a failed accept): a flood of
    them becomes LOG_BURST lines, then one per LOG_INTERVAL carrying the suppressed count."""
    out = io.StringIO()
    configure_logging("json", "info", stream=out)
    clock = [0.0]
    handler = logging.getLogger().handlers[0]
    handler.filters[:] = [RateLimitFilter(clock=lambda: clock[0])]
    log = get_logger("flood")
    stdlib = logging.getLogger("uvicorn.error")
    for _ in range(1000):
        log.warning("store error", error="bad record")
        stdlib.warning("Invalid HTTP request received.")
        log.info("node registered")  # below WARNING: never limited
    lines = [json.loads(line) for line in out.getvalue().splitlines()]
    assert sum(line["event"] == "store error" for line in lines) == LOG_BURST
    assert sum(line["event"] == "Invalid HTTP request received." for line in lines) == LOG_BURST
    assert sum(line["event"] == "node registered" for line in lines) == 1000
    clock[0] = LOG_INTERVAL
    log.warning("store error", error="bad record")
    stdlib.warning("Invalid HTTP request received.")
    stdlib.warning("%s", "with args")  # plain text with arguments is let through unchanged
    tail = [json.loads(line) for line in out.getvalue().splitlines()[len(lines) :]]
    assert tail[0]["event"] == "store error"
    assert tail[0]["suppressed"] == 1000 - LOG_BURST
    assert tail[1]["event"] == (
        f"Invalid HTTP request received. [{1000 - LOG_BURST} similar lines suppressed]"
    )
    assert tail[2]["event"] == "with args"


def test_rate_limit_keys_are_bounded() -> None:
    limiter = RateLimitFilter(burst=1, interval=3600.0, clock=lambda: 0.0)
    passed = 0
    for index in range(LOG_MAX_KEYS + 500):
        record = logging.LogRecord("x", logging.ERROR, __file__, 1, f"message {index}", (), None)
        passed += limiter.filter(record)
    # The first LOG_MAX_KEYS messages each pass once; the rest share one budget of one line.
    assert passed == LOG_MAX_KEYS + 1
