"""The Dockerfile, checked statically (no Docker engine runs here)."""

from __future__ import annotations

from typing import Any

import pytest

from tests.integration.chart_helpers import (
    REPO_ROOT,
    parse_dockerfile,
)
from tests.integration.staging_deployment.common import (
    Index,
)


@pytest.fixture(scope="module")
def dockerfile() -> tuple[dict[str, str], list[Any]]:
    return parse_dockerfile((REPO_ROOT / "Dockerfile").read_text(encoding="utf-8"))


def test_dockerfile_is_multi_stage_on_debian_trixie_python(
    dockerfile: tuple[dict[str, str], list[Any]],
) -> None:
    args, stages = dockerfile
    assert args["PYTHON_IMAGE"] == "python:3.13-slim-trixie"
    assert args["RUST_IMAGE"] == "rust:1-slim-trixie"
    assert [s.name for s in stages] == ["rust", "build", "runtime"]
    assert all(s.base == "python:3.13-slim-trixie" for s in stages[1:])
    _rust, build, runtime = stages
    runs = " ".join(i.value for i in build.all("RUN"))
    # The package and its native data plane from the repository, not from an index.
    assert "pip install . ./native" in runs
    assert "import x0tta6bl4_native" in runs
    copied = [i.value for i in build.all("COPY")]
    assert "pyproject.toml README.md ./" in copied
    assert "src ./src" in copied
    assert "native ./native" in copied
    assert "--from=rust /usr/local/cargo /usr/local/cargo" in copied
    assert [i.value for i in runtime.all("COPY")] == ["--from=build /opt/x0tta6bl4 /opt/x0tta6bl4"]
    assert "pip" not in " ".join(i.value for i in runtime.all("RUN"))


def test_dockerfile_runtime_is_non_root_and_read_only_friendly(
    dockerfile: tuple[dict[str, str], list[Any]], staging: Index
) -> None:
    _, stages = dockerfile
    runtime = stages[-1]
    assert runtime.all("USER")[-1].value == "65532:65532"
    (entry,) = runtime.all("ENTRYPOINT")
    assert entry.json_args() == ["x0tta6bl4"]
    env = " ".join(i.value for i in runtime.all("ENV"))
    assert "PYTHONDONTWRITEBYTECODE=1" in env
    assert "X0_STATE_DIR=/var/lib/x0tta6bl4" in env
    assert runtime.all("VOLUME")[0].json_args() == ["/var/lib/x0tta6bl4"]
    # The chart runs the image with the same UID and gives it exactly these writable paths.
    pod = staging["Deployment", "x0tta6bl4-controller"]["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsUser"] == 65532
    writable = {
        m["mountPath"] for m in pod["containers"][0]["volumeMounts"] if not m.get("readOnly")
    }
    assert writable == {"/tmp", "/var/lib/x0tta6bl4"}
    exposed = runtime.all("EXPOSE")[0].value.split()
    assert exposed == ["8080/tcp", "7810/udp", "7811/tcp"]


def test_dockerfile_labels_and_build_context(dockerfile: tuple[dict[str, str], list[Any]]) -> None:
    _, stages = dockerfile
    labels = " ".join(i.value for i in stages[-1].all("LABEL"))
    for key in ("title", "description", "version", "revision", "licenses", "source", "base.name"):
        assert f"org.opencontainers.image.{key}=" in labels
    ignore = (REPO_ROOT / ".dockerignore").read_text(encoding="utf-8").split()
    assert ignore[ignore.index("*")] == "*"  # everything excluded by default ...
    for path in ("pyproject.toml", "README.md", "src/", "native/"):
        assert f"!{path}" in ignore  # ... except what the build stage copies
        assert (REPO_ROOT / path).exists()


def test_dockerfile_parser_rejects_garbage() -> None:
    with pytest.raises(ValueError, match="before the first FROM"):
        parse_dockerfile("RUN true\nFROM x\n")
    with pytest.raises(ValueError, match="continuation"):
        parse_dockerfile("FROM x\nRUN a \\\n")
