"""The image scripts/build-image makes (and scripts/cluster loads into every node) is the
Dockerfile's image: same entrypoint, command, user, working directory, volume, ports,
environment, labels and Python, a virtualenv at the same path, and a state directory the
non-root user owns. Read from the OCI archive itself (index -> manifest -> config, layers)."""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path
from typing import Any

import pytest

from tests.cluster.kube import REPO_ROOT, RealCluster
from tests.integration.chart_helpers import parse_dockerfile

pytestmark = pytest.mark.timeout(3600)


def _blob(tar: tarfile.TarFile, digest: str) -> bytes:
    f = tar.extractfile("./blobs/" + digest.replace(":", "/"))
    assert f is not None
    return f.read()


def oci_image(path: Path) -> tuple[dict[str, Any], dict[str, tarfile.TarInfo], dict[str, Any]]:
    """(config, {path: member of the layers}, manifest) of the single image in an OCI archive."""
    with tarfile.open(path) as tar:
        index = json.loads(tar.extractfile("./index.json").read())  # type: ignore[union-attr]
        manifest = json.loads(_blob(tar, index["manifests"][0]["digest"]))
        config = json.loads(_blob(tar, manifest["config"]["digest"]))
        files: dict[str, tarfile.TarInfo] = {}
        for layer in manifest["layers"]:
            with tarfile.open(fileobj=io.BytesIO(_blob(tar, layer["digest"]))) as lt:
                for m in lt.getmembers():
                    files[m.name.lstrip("./").rstrip("/")] = m
    return config, files, manifest


@pytest.fixture(scope="module")
def image(
    cluster_up: RealCluster,
) -> tuple[dict[str, Any], dict[str, tarfile.TarInfo], dict[str, Any]]:
    return oci_image(cluster_up.dir / "images" / "x0tta6bl4-mesh.tar")


@pytest.fixture(scope="module")
def runtime_stage() -> dict[str, list[str]]:
    _, stages = parse_dockerfile((REPO_ROOT / "Dockerfile").read_text())
    runtime = stages[-1]
    out: dict[str, list[str]] = {}
    for ins in runtime.instructions:
        out.setdefault(ins.keyword, []).append(ins.value)
    out["FROM"] = [runtime.base]
    return out


def _docker_env(values: list[str]) -> dict[str, str]:
    env: dict[str, str] = {}
    for value in values:
        for token in value.split():
            k, _, v = token.partition("=")
            env[k] = v
    return env


def test_entrypoint_cmd_user_workdir_volume_ports(
    image: Any, runtime_stage: dict[str, list[str]]
) -> None:
    cfg = image[0]["config"]
    assert cfg["Entrypoint"] == json.loads(runtime_stage["ENTRYPOINT"][-1])
    assert cfg["Cmd"] == json.loads(runtime_stage["CMD"][-1])
    assert cfg["User"] == runtime_stage["USER"][-1] == "65532:65532"
    assert cfg["WorkingDir"] == runtime_stage["WORKDIR"][-1]
    assert set(cfg["Volumes"]) == set(json.loads(runtime_stage["VOLUME"][-1]))
    assert set(cfg["ExposedPorts"]) == set(" ".join(runtime_stage["EXPOSE"]).split())


def test_environment_matches(image: Any, runtime_stage: dict[str, list[str]]) -> None:
    env = dict(e.split("=", 1) for e in image[0]["config"]["Env"])
    want = _docker_env(runtime_stage["ENV"])
    for key, value in want.items():
        if key == "PATH":
            # The Dockerfile prepends the venv to the base image's PATH.
            assert env["PATH"].startswith(value.split(":$PATH")[0] + ":")
        else:
            assert env[key] == value, key


def test_labels_match(image: Any, runtime_stage: dict[str, list[str]]) -> None:
    labels = image[0]["config"]["Labels"]
    docker = " ".join(runtime_stage["LABEL"])
    for key in ("title", "description", "version", "revision", "licenses", "source", "base.name"):
        assert f"org.opencontainers.image.{key}=" in docker
        assert labels[f"org.opencontainers.image.{key}"], key
    assert labels["org.opencontainers.image.licenses"] == "Apache-2.0"


def test_same_python_and_venv_path(image: Any, runtime_stage: dict[str, list[str]]) -> None:
    _, files, _ = image
    base = runtime_stage["FROM"][0]
    assert base.startswith("python:3.13-")
    assert "trixie" in base
    # Debian trixie's python3 is 3.13: the same minor version as the Dockerfile's base image.
    assert "usr/bin/python3.13" in files
    assert "opt/x0tta6bl4/bin/x0tta6bl4" in files
    assert any(p.startswith("opt/x0tta6bl4/lib/python3.13/site-packages/x0tta6bl4/") for p in files)
    # The native data plane, as the Dockerfile's image has it (built where cargo exists).
    assert any(
        p.startswith("opt/x0tta6bl4/lib/python3.13/site-packages/x0tta6bl4_native/_native")
        for p in files
    )
    # Byte code compiled at build time (the root filesystem is read-only at run time).
    assert any(p.endswith(".cpython-313.pyc") and "site-packages/x0tta6bl4/" in p for p in files)


def test_state_dir_owned_by_the_user_and_no_build_leftovers(image: Any) -> None:
    _, files, _ = image
    state = files["var/lib/x0tta6bl4"]
    assert (state.uid, state.gid, state.mode & 0o777) == (65532, 65532, 0o750)
    passwd = files["etc/passwd"]
    assert passwd.isfile()
    for leftover in ("tmp/build-ca.crt", "tmp/wheels", "root/.cache/pip"):
        assert leftover not in files
