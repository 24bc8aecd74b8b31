"""A short run of every fuzz harness under ``fuzz/`` (``make fuzz`` runs them for 10⁶ inputs).

Each harness runs as its own process, exactly as ``python fuzz/<name>.py`` runs it: first its
whole seed corpus (real messages, plus the inputs of past findings), then a few thousand
mutated inputs or up to 20 seconds, whichever comes first. Any crash, uncaught exception, hang
(libFuzzer's ``-timeout``) or runaway memory fails the test, with the harness's output.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
FUZZ = ROOT / "fuzz"
sys.path.insert(0, str(FUZZ))
from run import HARNESSES  # noqa: E402

pytestmark = [pytest.mark.slow, pytest.mark.timeout(240)]

_RUNS = 3000
_SECONDS = 20


@pytest.fixture
def scratch() -> Iterator[Path]:
    """A short temporary directory (the issuer's Unix socket path must fit in 100 bytes),
    removed afterwards with whatever the harness left in it."""
    path = Path(tempfile.mkdtemp(prefix="x0fz-"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


def test_every_harness_is_listed() -> None:
    scripts = {p.stem for p in FUZZ.glob("*.py")} - {"fuzzlib", "run", "make_corpus"}
    assert scripts == set(HARNESSES)
    for name in HARNESSES:
        assert any((FUZZ / "corpus" / name).iterdir()), f"{name} has no seed corpus"


@pytest.mark.parametrize("name", sorted(HARNESSES))
def test_harness_short_run(name: str, scratch: Path) -> None:
    if name == "native_dataplane":
        from x0tta6bl4.dataplane import native_error

        if native_error() is not None:
            pytest.skip(f"no native data plane to compare: {native_error()}")
    corpus = scratch / "corpus"
    corpus.mkdir()
    command = [
        sys.executable,
        str(FUZZ / f"{name}.py"),
        str(corpus),
        str(FUZZ / "corpus" / name),
        f"-runs={_RUNS}",
        f"-max_total_time={_SECONDS}",
        f"-max_len={HARNESSES[name]}",
        "-timeout=30",
        "-rss_limit_mb=2048",
        f"-artifact_prefix={scratch}/",
    ]
    dictionary = FUZZ / "dict" / f"{name}.dict"
    if dictionary.exists():
        command.append(f"-dict={dictionary}")
    env = {**os.environ, "TMPDIR": str(scratch)}
    proc = subprocess.run(
        command,
        capture_output=True,
        text=True,
        errors="replace",
        cwd=scratch,
        env=env,
        timeout=200,
        check=False,
    )
    tail = proc.stderr[-4000:]
    crashes = [
        p.name
        for p in scratch.iterdir()
        if p.name.startswith(("crash-", "timeout-", "oom-", "leak-"))
    ]
    assert not crashes, f"{name}: {crashes}\n{tail}"
    assert proc.returncode == 0, f"{name}: exit {proc.returncode}\n{tail}"
    done = re.search(r"Done (\d+) runs", proc.stderr)
    assert done is not None, tail
    seeds = sum(1 for _ in (FUZZ / "corpus" / name).iterdir())
    assert int(done.group(1)) >= min(_RUNS, seeds + 100), tail


def test_make_fuzz_runner_reports_figures(scratch: Path) -> None:
    """``fuzz/run.py`` (what ``make fuzz`` runs): one JSON document with the figures."""
    proc = subprocess.run(
        [
            sys.executable,
            str(FUZZ / "run.py"),
            "--runs",
            "500",
            "--work",
            str(scratch),
            "--json",
            "fragments",
            "frames",
        ],
        capture_output=True,
        text=True,
        timeout=200,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = json.loads(proc.stdout)
    assert [r["harness"] for r in results] == ["fragments", "frames"]
    for r in results:
        assert r["inputs"] >= 500
        assert r["findings"] == 0
        assert r["cov"] > 0
        assert r["ft"] >= r["cov"]
        assert r["exec_per_s"] > 0
        assert r["command"].startswith(f"python fuzz/{r['harness']}.py ")
