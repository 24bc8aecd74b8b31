"""``x0tta6bl4 bench handshake`` runs real handshakes and reports the documented keys."""

from __future__ import annotations

import json

from typer.testing import CliRunner

from x0tta6bl4.bench.handshake import format_table, run
from x0tta6bl4.cli import app

KEYS = {"handshakes_per_second", "p50_ms", "p99_ms", "primitive_ms", "handshake_ms", "ratio"}


def test_bench_function_reports_keys_and_types() -> None:
    result = run(iterations=3, warmup=1)
    assert set(result) >= KEYS
    for key in KEYS:
        assert isinstance(result[key], float), key
        assert result[key] > 0, key
    assert result["iterations"] == 3
    assert result["p50_ms"] <= result["p99_ms"]
    assert "ratio" in format_table(result)


def test_bench_handshake_command_prints_json() -> None:
    out = CliRunner().invoke(app, ["bench", "handshake", "--json", "--iterations", "2"])
    assert out.exit_code == 0, out.output
    assert set(json.loads(out.stdout)) >= KEYS
