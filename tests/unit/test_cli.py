"""The command line's own surface: help, version, and the public package API."""

from __future__ import annotations

import json
import subprocess
import sys

from typer.testing import CliRunner

import x0tta6bl4
from x0tta6bl4.cli import app

runner = CliRunner()


def test_help_lists_commands() -> None:
    result = runner.invoke(app, ["--help"])
    assert result.exit_code == 0
    for command in ("up", "controller", "node", "identity", "check", "ping", "bench", "version"):
        assert command in result.output


def test_every_subcommand_has_help() -> None:
    for command in ("up", "controller", "node", "identity", "check", "ping", "bench", "version"):
        result = runner.invoke(app, [command, "--help"])
        assert result.exit_code == 0, command
        assert "Usage" in result.output, command


def test_controller_help_says_where_tls_is_served() -> None:
    result = runner.invoke(app, ["controller", "--help"], env={"COLUMNS": "200"})
    assert result.exit_code == 0
    text = " ".join(result.output.split())
    assert "served over TLS only, on --tls-listen (default 0.0.0.0:8443)" in text
    assert "/health, /ready, /metrics and /ui only" in text
    assert "--tls-listen" in text


def test_version_text_and_json() -> None:
    result = runner.invoke(app, ["version"])
    assert result.exit_code == 0
    assert result.output.startswith(f"x0tta6bl4 {x0tta6bl4.__version__}")
    result = runner.invoke(app, ["version", "--json"])
    data = json.loads(result.output)
    assert data["x0tta6bl4"] == x0tta6bl4.__version__
    assert data["openssl"].startswith("OpenSSL")


def test_console_script_runs_as_module() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "x0tta6bl4", "version", "--json"],
        capture_output=True,
        text=True,
        check=True,
    )
    assert json.loads(out.stdout)["x0tta6bl4"] == x0tta6bl4.__version__


def test_public_api_is_explicit() -> None:
    assert x0tta6bl4.__all__ == ["__version__"]
