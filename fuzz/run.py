"""Run the fuzz harnesses and print their figures: ``make fuzz`` calls this.

    python fuzz/run.py [--runs N] [--max-time S] [--jobs J] [--json] [HARNESS ...]

Each harness runs as its own process (``python fuzz/<name>.py``) with a fresh working corpus
under ``fuzz/.work/<name>/`` (new inputs land there, never in the committed seeds) followed
by the committed seed corpus ``fuzz/corpus/<name>/`` and the harness's dictionary, if any.
libFuzzer's limits make a hang or runaway memory a finding too: ``-timeout`` seconds per
input, ``-rss_limit_mb``. A crashing input is written to ``fuzz/.work/crashes/``.

Prints one line per harness: inputs run, seconds, exec/s, coverage (libFuzzer's ``cov``
edges and ``ft`` features), findings. Exit status 1 if any harness found something or did not
finish its runs. ``--json`` prints one JSON document on stdout instead of the table.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent
WORK = ROOT / ".work"

#: Every harness, with the largest input libFuzzer may generate for it.
HARNESSES: dict[str, int] = {
    "fragments": 16_384,
    "handshake_messages": 20_000,
    "handshake_sealed": 12_000,
    "transport": 2_048,
    "frames": 16_384,
    "lsa": 8_192,
    "flooding": 20_000,
    "pqsvid": 12_000,
    "jwt_svid": 8_192,
    "api": 8_192,
    "spiffe_ids": 4_096,
    "store_records": 16_384,
    "workload_api": 8_192,
    "node_http": 4_096,
    "node_core": 20_000,
    "native_dataplane": 4_096,
}

_STATS = re.compile(r"#(\d+)\s+(?:DONE|pulse|NEW|REDUCE|INITED)\s+cov: (\d+) ft: (\d+)")
_DONE = re.compile(r"Done (\d+) runs in (\d+) second")


@dataclass
class Result:
    harness: str
    inputs: int
    seconds: float
    exec_per_s: float
    cov: int
    ft: int
    findings: int
    exit_code: int
    command: str
    artifacts: list[str]


def command(name: str, runs: int, max_time: int | None, work: Path) -> list[str]:
    corpus = work / name
    corpus.mkdir(parents=True, exist_ok=True)
    crashes = work / "crashes"
    crashes.mkdir(parents=True, exist_ok=True)
    args = [
        sys.executable,
        str(ROOT / f"{name}.py"),
        str(corpus),
        str(ROOT / "corpus" / name),
        f"-runs={runs}",
        f"-max_len={HARNESSES[name]}",
        "-timeout=10",
        "-rss_limit_mb=2048",
        "-print_final_stats=1",
        f"-artifact_prefix={crashes}/{name}-",
    ]
    if max_time:
        args.append(f"-max_total_time={max_time}")
    dictionary = ROOT / "dict" / f"{name}.dict"
    if dictionary.exists():
        args.append(f"-dict={dictionary}")
    return args


def run_one(name: str, runs: int, max_time: int | None, work: Path) -> Result:
    args = command(name, runs, max_time, work)
    crashes = work / "crashes"
    before = set(crashes.glob(f"{name}-*"))
    # The harness's temporary directories (issuer sockets, stores) go here and are removed.
    scratch = work / "tmp" / name
    scratch.mkdir(parents=True, exist_ok=True)
    start = time.monotonic()
    try:
        proc = subprocess.run(
            args,
            capture_output=True,
            text=True,
            errors="replace",
            check=False,
            cwd=work,
            env={**os.environ, "TMPDIR": str(scratch)},
        )
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    seconds = time.monotonic() - start
    log = proc.stderr
    (work / f"{name}.log").write_text(log)
    stats = _STATS.findall(log)
    inputs, cov, ft = (int(x) for x in stats[-1]) if stats else (0, 0, 0)
    done = _DONE.search(log)
    if done:
        inputs = int(done.group(1))
    artifacts = sorted(str(p) for p in set(crashes.glob(f"{name}-*")) - before)
    findings = len(artifacts) or (1 if proc.returncode != 0 else 0)
    repo = str(ROOT.parent) + "/"
    shown = " ".join(a.replace(repo, "") for a in args[1:])
    return Result(
        harness=name,
        inputs=inputs,
        seconds=round(seconds, 1),
        exec_per_s=round(inputs / seconds, 1) if seconds else 0.0,
        cov=cov,
        ft=ft,
        findings=findings,
        exit_code=proc.returncode,
        command=f"python {shown}",
        artifacts=artifacts,
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("harnesses", nargs="*", help="default: every harness")
    parser.add_argument(
        "--runs",
        type=int,
        default=int(os.environ.get("X0_FUZZ_RUNS", "1000000")),
        help="inputs per harness (env X0_FUZZ_RUNS; default 1000000)",
    )
    parser.add_argument(
        "--max-time",
        type=int,
        default=int(os.environ.get("X0_FUZZ_MAX_TIME", "0")) or None,
        help="stop a harness after this many seconds (env X0_FUZZ_MAX_TIME; default: none)",
    )
    parser.add_argument(
        "--jobs",
        type=int,
        default=int(os.environ.get("X0_FUZZ_JOBS", "1")),
        help="harnesses run at once (env X0_FUZZ_JOBS; default 1)",
    )
    parser.add_argument("--work", type=Path, default=Path(os.environ.get("X0_FUZZ_WORK", WORK)))
    parser.add_argument("--json", action="store_true", help="one JSON document on stdout")
    parser.add_argument(
        "--markdown", action="store_true", help="also print the figures as a docs table"
    )
    opts = parser.parse_args()
    names = opts.harnesses or list(HARNESSES)
    unknown = [n for n in names if n not in HARNESSES]
    if unknown:
        parser.error(f"unknown harness(es): {', '.join(unknown)}; known: {', '.join(HARNESSES)}")
    opts.work.mkdir(parents=True, exist_ok=True)
    work = opts.work.resolve()

    def one(name: str) -> Result:
        result = run_one(name, opts.runs, opts.max_time, work)
        if not opts.json:
            print(
                f"{result.harness:20} {result.inputs:>10} {result.seconds:>9.1f} "
                f"{result.exec_per_s:>9.1f} {result.cov:>6} {result.ft:>7} {result.findings:>8}",
                flush=True,
            )
        return result

    if not opts.json:
        print(
            f"{'harness':20} {'inputs':>10} {'seconds':>9} {'exec/s':>9} {'cov':>6} {'ft':>7} "
            f"{'findings':>8}",
            flush=True,
        )
    with ThreadPoolExecutor(max_workers=max(1, opts.jobs)) as pool:
        results = list(pool.map(one, names))
    failed = [r for r in results if r.findings or (r.inputs < opts.runs and not opts.max_time)]
    if opts.json:
        print(json.dumps([asdict(r) for r in results], indent=2))
    elif opts.markdown:
        print("\n| harness | inputs | seconds | exec/s | cov | ft | findings |")
        print("|---|---:|---:|---:|---:|---:|---:|")
        for r in results:
            print(
                f"| `{r.harness}` | {r.inputs:,} | {r.seconds:,.0f} | {r.exec_per_s:,.0f} "
                f"| {r.cov} | {r.ft} | {r.findings} |"
            )
    else:
        for r in failed:
            print(
                f"{r.harness}: exit {r.exit_code}, log {work / (r.harness + '.log')}, "
                f"artifacts {r.artifacts}",
                file=sys.stderr,
            )
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
