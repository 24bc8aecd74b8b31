"""The embedded issuer attests exact processes: ``pid:PID@START`` entries, an entries file.

Real issuer on a real Unix socket, real subprocesses of the same uid: only the process an
entry names gets its SPIFFE ID; its siblings (same uid) and a process that merely inherits
the pid number (another start time) get PermissionDenied; the entries file is read again when
it changes, and ignored while others may write it.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from spiffe import TrustDomain

from x0tta6bl4.identity.errors import InvalidEntryError
from x0tta6bl4.identity.issuer import EmbeddedIssuer, IssuerConfig
from x0tta6bl4.identity.issuer.entries import Entry, parse_entry, process_start_time
from x0tta6bl4.identity.workload_source import Backoff, WorkloadSource

TD = TrustDomain("x0tta6bl4.mesh")
NODE_1 = "spiffe://x0tta6bl4.mesh/ns/local/sa/x0tta6bl4-app/node/node-01"
NODE_2 = "spiffe://x0tta6bl4.mesh/ns/local/sa/x0tta6bl4-app/node/node-02"

# A child that waits for a line on stdin, then fetches its SVID and prints its SPIFFE ID (or
# the error class), so the test can register its pid before it asks.
CHILD = """
import sys
from x0tta6bl4.identity.workload_source import Backoff, WorkloadSource
sys.stdin.readline()
try:
    svid = WorkloadSource(sys.argv[1], backoff=Backoff(attempts=1)).fetch_x509_svid()
    print(svid.spiffe_id)
except Exception as err:
    print(type(err).__name__)
"""


@pytest.fixture
def workdir() -> Iterator[Path]:
    import shutil
    import tempfile

    path = Path(tempfile.mkdtemp(prefix="x0-pe-", dir="/tmp"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


def _child(sock: Path) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-c", CHILD, str(sock)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )


def _ask(child: subprocess.Popen[str]) -> str:
    assert child.stdin is not None
    out, _ = child.communicate("go\n", timeout=60)
    return out.strip()


def _write_entries(path: Path, lines: list[str]) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text("".join(f"{line}\n" for line in lines))
    tmp.chmod(0o600)
    os.replace(tmp, path)


def test_only_the_named_process_gets_its_identity(workdir: Path) -> None:
    entries_file = workdir / "entries"
    issuer = EmbeddedIssuer(
        IssuerConfig(
            socket_path=workdir / "w.sock",
            state_dir=workdir / "state",
            trust_domain=TD,
            entries_file=entries_file,
        )
    )
    issuer.start()
    try:
        one, two, three = (_child(issuer.socket_path) for _ in range(3))
        start_one = process_start_time(one.pid)
        start_two = process_start_time(two.pid)
        _write_entries(
            entries_file,
            [
                "# written after the processes started, as up does",
                f"pid:{one.pid}@{start_one}={NODE_1}",
                f"pid:{two.pid}@{start_two}={NODE_2}",
                # The pid of the third child, with another start time: a reused pid number.
                f"pid:{three.pid}@{(process_start_time(three.pid) or 0) + 1}={NODE_1}",
            ],
        )
        assert _ask(one) == NODE_1
        assert _ask(two) == NODE_2
        assert _ask(three) == "NoIdentityError"
        # This test process runs as the same uid: it gets nothing either.
        with pytest.raises(Exception, match="no identity"):
            WorkloadSource(issuer.socket_path, backoff=Backoff(attempts=1)).fetch_x509_svid()
    finally:
        issuer.stop()


def test_entries_file_is_reread_and_ignored_when_others_may_write_it(workdir: Path) -> None:
    entries_file = workdir / "entries"
    me = f"uid:{os.geteuid()}={NODE_1}"
    _write_entries(entries_file, [me])
    issuer = EmbeddedIssuer(
        IssuerConfig(
            socket_path=workdir / "w.sock",
            state_dir=workdir / "state",
            trust_domain=TD,
            entries_file=entries_file,
        )
    )
    issuer.start()
    try:
        source = WorkloadSource(issuer.socket_path, backoff=Backoff(attempts=1))
        assert str(source.fetch_x509_svid().spiffe_id) == NODE_1
        _write_entries(entries_file, [f"uid:{os.geteuid()}={NODE_2}"])
        assert str(source.fetch_x509_svid().spiffe_id) == NODE_2
        # World-writable: ignored, the entries read before stay in force.
        entries_file.chmod(0o666)
        time.sleep(0.01)
        entries_file.write_text(f"uid:{os.geteuid()}={NODE_1}\n")
        assert str(source.fetch_x509_svid().spiffe_id) == NODE_2
        # A file that does not parse is ignored too.
        _write_entries(entries_file, ["this is not an entry"])
        assert str(source.fetch_x509_svid().spiffe_id) == NODE_2
        # Removed: no entries.
        entries_file.unlink()
        with pytest.raises(Exception, match="no identity"):
            source.fetch_x509_svid()
    finally:
        issuer.stop()


def test_parse_process_and_uid_selectors() -> None:
    mine = process_start_time(os.getpid())
    assert mine is not None
    entry = parse_entry(f"pid:{os.getpid()}={NODE_1}", TD)
    assert entry == Entry(None, entry.spiffe_id, os.getpid(), mine)
    assert entry.matches(os.geteuid(), os.getpid())
    assert not entry.matches(os.geteuid(), os.getppid())
    assert parse_entry(f"uid:{os.geteuid()}={NODE_1}", TD).uid == os.geteuid()
    assert parse_entry(f"user:root={NODE_1}", TD).uid == 0
    for bad in (
        f"pid:0={NODE_1}",
        f"pid:abc={NODE_1}",
        f"pid:1@x={NODE_1}",
        f"pid:4194303={NODE_1}",  # not running
        f"gid:1={NODE_1}",
        f"uid:x={NODE_1}",
    ):
        with pytest.raises(InvalidEntryError):
            parse_entry(bad, TD)
