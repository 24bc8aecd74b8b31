"""A real cluster made by ``scripts/cluster``, as the tests drive it: kubectl and helm.

:class:`RealCluster` wraps the cluster's directory: ``kubectl(...)`` / ``get(...)`` run the real
kubectl against ``DIR/kubeconfig``, ``exec_in(...)`` runs a command in a pod, ``node_run(...)``
runs a command inside a node's network and mount namespaces (its containerd, say), and
``port_forward(...)`` keeps a ``kubectl port-forward`` open for the duration of a ``with``.
"""

from __future__ import annotations

import contextlib
import json
import re
import socket
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, TypeVar

__all__ = [
    "NAMESPACE",
    "REPO_ROOT",
    "CommandError",
    "RealCluster",
    "parse_time",
    "wait_until",
]

REPO_ROOT = Path(__file__).resolve().parents[2]
NAMESPACE = "x0tta6bl4-staging"
SCRIPT = REPO_ROOT / "scripts" / "cluster"
T = TypeVar("T")


class CommandError(RuntimeError):
    def __init__(self, cmd: list[str], proc: subprocess.CompletedProcess[str]) -> None:
        super().__init__(f"{' '.join(cmd)} exited {proc.returncode}: {proc.stderr.strip()[-3000:]}")
        self.returncode = proc.returncode
        self.stdout = proc.stdout
        self.stderr = proc.stderr


def parse_time(value: str) -> float:
    return datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()


def wait_until(
    what: str, probe: Callable[[], T | None], timeout: float, interval: float = 1.0
) -> T:
    """Poll ``probe`` until it returns something truthy; fail with the last value otherwise."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while True:
        try:
            last = probe()
            if last:
                return last
        except (CommandError, OSError, ValueError, KeyError) as exc:
            last = exc
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not reached within {timeout:.0f} s (last: {last!r})")
        time.sleep(interval)


@dataclass
class RealCluster:
    dir: Path

    @property
    def kubeconfig(self) -> Path:
        return self.dir / "kubeconfig"

    @property
    def state(self) -> dict[str, Any]:
        data: dict[str, Any] = json.loads((self.dir / "cluster.json").read_text())
        return data

    @property
    def nodes(self) -> list[str]:
        return list(self.state["nodes"])

    def tool(self, name: str) -> str:
        return str(REPO_ROOT / ".tools" / "bin" / name)

    def run(
        self, cmd: list[str], *, input: str | None = None, check: bool = True, timeout: float = 300
    ) -> subprocess.CompletedProcess[str]:
        proc = subprocess.run(
            cmd, input=input, text=True, capture_output=True, timeout=timeout, check=False
        )
        if check and proc.returncode != 0:
            raise CommandError(cmd, proc)
        return proc

    def kubectl(
        self, *args: str, input: str | None = None, check: bool = True, timeout: float = 300
    ) -> subprocess.CompletedProcess[str]:
        return self.run(
            [self.tool("kubectl"), f"--kubeconfig={self.kubeconfig}", *args],
            input=input,
            check=check,
            timeout=timeout,
        )

    def helm(
        self, *args: str, check: bool = True, timeout: float = 900
    ) -> subprocess.CompletedProcess[str]:
        return self.run(
            [self.tool("helm"), f"--kubeconfig={self.kubeconfig}", *args],
            check=check,
            timeout=timeout,
        )

    def get(self, *args: str, namespace: str | None = NAMESPACE) -> Any:
        ns = [f"--namespace={namespace}"] if namespace else []
        return json.loads(self.kubectl("get", *args, *ns, "-o", "json").stdout)

    def pods(self, selector: str, namespace: str = NAMESPACE) -> list[dict[str, Any]]:
        items: list[dict[str, Any]] = self.get("pods", "-l", selector, namespace=namespace)["items"]
        return items

    def exec_in(
        self,
        pod: str,
        *cmd: str,
        namespace: str = NAMESPACE,
        check: bool = True,
        timeout: float = 120,
    ) -> subprocess.CompletedProcess[str]:
        return self.kubectl("exec", "-n", namespace, pod, "--", *cmd, check=check, timeout=timeout)

    def apply(self, obj: dict[str, Any]) -> None:
        self.kubectl("apply", "-f", "-", input=json.dumps(obj))

    def node_run(
        self, node: str, *cmd: str, check: bool = True
    ) -> subprocess.CompletedProcess[str]:
        cid = self.state["id"]
        ns = f"x0{cid}-{node.replace('worker-', 'w')}"
        mnt = f"/run/x0tta6bl4-cluster/{cid}/{node}.mnt"
        return self.run(
            ["nsenter", f"--net=/run/netns/{ns}", f"--mount={mnt}", "--", *cmd], check=check
        )

    def script(self, *args: str, timeout: float = 3600) -> subprocess.CompletedProcess[str]:
        return self.run([str(SCRIPT), *args, "--dir", str(self.dir)], timeout=timeout)

    @contextlib.contextmanager
    def port_forward(self, target: str, remote: int, namespace: str = NAMESPACE) -> Iterator[int]:
        """``kubectl port-forward TARGET :REMOTE``; yields the local port it chose."""
        proc = subprocess.Popen(
            [
                self.tool("kubectl"),
                f"--kubeconfig={self.kubeconfig}",
                "-n",
                namespace,
                "port-forward",
                "--address=127.0.0.1",
                target,
                f":{remote}",
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        try:
            assert proc.stdout is not None
            line = proc.stdout.readline()
            match = re.search(r"127\.0\.0\.1:(\d+)", line)
            if not match:
                proc.kill()
                raise AssertionError(
                    f"port-forward {target}: {line!r} {proc.stderr.read() if proc.stderr else ''}"
                )
            port = int(match.group(1))
            with socket.create_connection(("127.0.0.1", port), timeout=10):
                pass
            yield port
        finally:
            proc.terminate()
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
            for pipe in (proc.stdout, proc.stderr):
                if pipe is not None:
                    pipe.close()
