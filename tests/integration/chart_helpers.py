"""Helpers for the Helm chart tests: run the real helm/kubectl, load renders, read containers.

`render()` runs `helm template` on charts/x0tta6bl4 and returns the parsed objects;
`runtime_containers()` extracts the controller's and mesh node's command, args, env, ports and
probes from a render into plain data, so a test can start the same processes locally with the
manifests' own settings; `parse_dockerfile()` reads a Dockerfile into stages and instructions
for static checks (no Docker engine runs on the development machines).
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import subprocess
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

__all__ = [
    "CHART_DIR",
    "GOLDEN_DIR",
    "GUIDE",
    "KUSTOMIZE_DIR",
    "REPO_ROOT",
    "ContainerSpec",
    "DockerInstruction",
    "DockerStage",
    "FieldRef",
    "HelmError",
    "Probe",
    "by_kind_name",
    "container",
    "extract_container",
    "find_tool",
    "guide_manifests",
    "guide_values_staging",
    "helm",
    "helm_env",
    "kustomize_build",
    "parse_dockerfile",
    "render",
    "render_text",
    "runtime_containers",
]

REPO_ROOT = Path(__file__).resolve().parents[2]
CHART_DIR = REPO_ROOT / "charts" / "x0tta6bl4"
GOLDEN_DIR = REPO_ROOT / "tests" / "golden"
KUSTOMIZE_DIR = REPO_ROOT / "deploy" / "kustomize"
# A verbatim copy of the user's deployment guide: its names and values are requirements.
GUIDE = GOLDEN_DIR / "k8s-staging-deployment-guide.md"

Obj = dict[str, Any]


class HelmError(RuntimeError):
    """helm (or kubectl) exited non-zero; `stderr` holds its message."""

    def __init__(self, argv: Sequence[str], returncode: int, stderr: str) -> None:
        super().__init__(f"{shlex.join(argv)} exited {returncode}: {stderr.strip()}")
        self.argv = list(argv)
        self.returncode = returncode
        self.stderr = stderr


def find_tool(name: str) -> str | None:
    """Path of `name` on PATH, else in the repository's .tools/bin, else None."""
    found = shutil.which(name)
    if found:
        return found
    local = REPO_ROOT / ".tools" / "bin" / name
    return str(local) if local.is_file() and os.access(local, os.X_OK) else None


def helm_env(home: Path) -> dict[str, str]:
    """Environment with Helm's config, cache and data directories isolated under `home`."""
    env = dict(os.environ)
    for var, sub in (
        ("HELM_CONFIG_HOME", "config"),
        ("HELM_CACHE_HOME", "cache"),
        ("HELM_DATA_HOME", "data"),
    ):
        path = home / sub
        path.mkdir(parents=True, exist_ok=True)
        env[var] = str(path)
    return env


def _run(tool: str, args: Sequence[str], env: Mapping[str, str] | None, cwd: Path | None) -> str:
    exe = find_tool(tool)
    if exe is None:
        raise FileNotFoundError(
            f"{tool} not found on PATH or in .tools/bin (scripts/install-tools.sh)"
        )
    argv = [exe, *args]
    proc = subprocess.run(
        argv,
        capture_output=True,
        text=True,
        env=dict(env) if env is not None else None,
        cwd=cwd,
        check=False,
        timeout=120,
    )
    if proc.returncode != 0:
        raise HelmError(argv, proc.returncode, proc.stderr)
    return proc.stdout


def helm(*args: str, env: Mapping[str, str] | None = None, cwd: Path | None = None) -> str:
    """Run helm with `args`; returns stdout, raises HelmError on a non-zero exit."""
    return _run("helm", args, env, cwd)


def render_text(
    values: Iterable[str | Path] = (),
    sets: Mapping[str, str] | None = None,
    *,
    namespace: str = "x0tta6bl4-staging",
    release: str = "x0tta6bl4",
    chart: str | Path = CHART_DIR,
    env: Mapping[str, str] | None = None,
) -> str:
    """`helm template` output for the chart with values files (relative to the chart) and --set."""
    args = ["template", release, str(chart), "--namespace", namespace]
    for v in values:
        path = Path(v)
        args += ["-f", str(path if path.is_absolute() else CHART_DIR / path)]
    for key, value in (sets or {}).items():
        args += ["--set", f"{key}={value}"]
    return helm(*args, env=env)


def render(
    values: Iterable[str | Path] = (),
    sets: Mapping[str, str] | None = None,
    **kwargs: Any,
) -> list[Obj]:
    """Objects rendered by `helm template` (see render_text), empty documents dropped."""
    text = render_text(values, sets, **kwargs)
    return [d for d in yaml.safe_load_all(text) if d]


def kustomize_build(path: Path) -> list[Obj]:
    """Objects built by `kubectl kustomize path` (kustomize built into kubectl)."""
    return [
        d for d in yaml.safe_load_all(_run("kubectl", ["kustomize", str(path)], None, None)) if d
    ]


def by_kind_name(objs: Iterable[Obj]) -> dict[tuple[str, str], Obj]:
    """Objects keyed by (kind, metadata.name); a duplicate key is an error."""
    out: dict[tuple[str, str], Obj] = {}
    for o in objs:
        key = (o["kind"], o["metadata"]["name"])
        if key in out:
            raise ValueError(f"duplicate object {key}")
        out[key] = o
    return out


def container(workload: Obj, name: str) -> Obj:
    """The container `name` of a Deployment/DaemonSet/StatefulSet (or Pod)."""
    spec = workload["spec"] if workload["kind"] == "Pod" else workload["spec"]["template"]["spec"]
    for c in spec["containers"]:
        if c["name"] == name:
            return dict(c)
    raise KeyError(f"{workload['kind']}/{workload['metadata']['name']} has no container {name}")


@dataclass(frozen=True)
class FieldRef:
    """An env var the kubelet fills from the pod (valueFrom.fieldRef.fieldPath)."""

    field_path: str


@dataclass(frozen=True)
class Probe:
    """An httpGet probe resolved to a numeric port."""

    path: str
    port: int
    scheme: str = "HTTP"


@dataclass(frozen=True)
class ContainerSpec:
    """What a process needs to run as the container would: argv, env, ports and probes."""

    name: str
    image: str
    argv: list[str]
    env: dict[str, str | FieldRef]
    ports: dict[str, tuple[int, str]]
    probes: dict[str, Probe] = field(default_factory=dict)


def _resolve_port(port: int | str, ports: Mapping[str, tuple[int, str]]) -> int:
    if isinstance(port, int):
        return port
    if port.isdigit():
        return int(port)
    if port not in ports:
        raise KeyError(f"probe names port {port!r}, which the container does not declare")
    return ports[port][0]


def extract_container(workload: Obj, name: str) -> ContainerSpec:
    """Read one container of a rendered workload into a ContainerSpec."""
    c = container(workload, name)
    ports = {
        p["name"]: (int(p["containerPort"]), p.get("protocol", "TCP")) for p in c.get("ports", [])
    }
    env: dict[str, str | FieldRef] = {}
    for e in c.get("env", []):
        if "value" in e:
            env[e["name"]] = str(e["value"])
        elif "fieldRef" in e.get("valueFrom", {}):
            env[e["name"]] = FieldRef(e["valueFrom"]["fieldRef"]["fieldPath"])
        else:
            raise ValueError(f"env {e['name']} of {name}: unsupported source {e.get('valueFrom')}")
    probes: dict[str, Probe] = {}
    for kind in ("startupProbe", "livenessProbe", "readinessProbe"):
        probe = c.get(kind)
        if probe is None:
            continue
        get = probe["httpGet"]
        probes[kind] = Probe(
            get["path"], _resolve_port(get["port"], ports), get.get("scheme", "HTTP")
        )
    return ContainerSpec(
        name=name,
        image=c["image"],
        argv=[*c.get("command", []), *c.get("args", [])],
        env=env,
        ports=ports,
        probes=probes,
    )


def runtime_containers(objs: Iterable[Obj]) -> dict[str, ContainerSpec]:
    """The controller's and mesh node's ContainerSpec from a render, keyed "controller"/"node"."""
    index = by_kind_name(objs)
    return {
        "controller": extract_container(index["Deployment", "x0tta6bl4-controller"], "controller"),
        "node": extract_container(index["DaemonSet", "x0tta6bl4-mesh-node"], "node"),
    }


def _heredocs(text: str) -> list[str]:
    """Bodies of `kubectl apply -f - <<EOF ... EOF` blocks in the guide."""
    bodies: list[str] = []
    lines = text.splitlines()
    i = 0
    while i < len(lines):
        if "kubectl apply -f - <<EOF" in lines[i]:
            j = lines.index("EOF", i + 1)
            bodies.append("\n".join(lines[i + 1 : j]))
            i = j
        i += 1
    return bodies


def guide_manifests(guide: Path = GUIDE) -> dict[tuple[str, str], Obj]:
    """The objects the deployment guide applies inline, keyed by (kind, name)."""
    return by_kind_name(yaml.safe_load(b) for b in _heredocs(guide.read_text(encoding="utf-8")))


def guide_values_staging(guide: Path = GUIDE) -> str:
    """The guide's values-staging.yaml block, verbatim."""
    text = guide.read_text(encoding="utf-8")
    start = text.index("Create `values-staging.yaml`:")
    begin = text.index("```yaml\n", start) + len("```yaml\n")
    return text[begin : text.index("```", begin)]


@dataclass(frozen=True)
class DockerInstruction:
    """One Dockerfile instruction: upper-case keyword and its argument (continuations joined)."""

    keyword: str
    value: str

    def json_args(self) -> list[str] | None:
        """The exec-form (JSON array) arguments, or None for shell form."""
        if not self.value.startswith("["):
            return None
        parsed = json.loads(self.value)
        if not (isinstance(parsed, list) and all(isinstance(a, str) for a in parsed)):
            raise ValueError(f"{self.keyword}: exec form must be a list of strings")
        return parsed


@dataclass
class DockerStage:
    """A build stage: its base image, optional `AS` name and instructions after FROM."""

    base: str
    name: str | None
    instructions: list[DockerInstruction] = field(default_factory=list)

    def all(self, keyword: str) -> list[DockerInstruction]:
        """Instructions of this stage with the given keyword, in order."""
        return [i for i in self.instructions if i.keyword == keyword]


def parse_dockerfile(text: str) -> tuple[dict[str, str], list[DockerStage]]:
    """Global ARG defaults and the stages of a Dockerfile (comments dropped, `\\` lines joined)."""
    logical: list[str] = []
    buf = ""
    for raw in text.splitlines():
        stripped = raw.strip()
        if not buf and (not stripped or stripped.startswith("#")):
            continue
        if buf and stripped.startswith("#"):
            continue
        if stripped.endswith("\\"):
            buf += stripped[:-1] + " "
            continue
        logical.append(buf + stripped)
        buf = ""
    if buf:
        raise ValueError("Dockerfile ends inside a line continuation")
    args: dict[str, str] = {}
    stages: list[DockerStage] = []
    for line in logical:
        keyword, _, value = line.partition(" ")
        keyword = keyword.upper()
        value = " ".join(value.split())
        if keyword == "FROM":
            parts = value.split()
            parts = [p for p in parts if not p.startswith("--platform")]
            base = parts[0]
            for k, v in args.items():
                base = base.replace("${" + k + "}", v).replace("$" + k, v)
            name = parts[2] if len(parts) >= 3 and parts[1].upper() == "AS" else None
            stages.append(DockerStage(base=base, name=name))
        elif not stages:
            if keyword != "ARG":
                raise ValueError(f"{keyword} before the first FROM")
            k, _, v = value.partition("=")
            args[k] = v
        else:
            stages[-1].instructions.append(DockerInstruction(keyword, value))
    return args, stages
