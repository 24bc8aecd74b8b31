"""Golden renders in tests/golden (regenerate with UPDATE_GOLDEN=1)."""

from __future__ import annotations

import os

import pytest

from tests.integration.chart_helpers import (
    GOLDEN_DIR,
    render_text,
)
from tests.integration.staging_deployment.common import (
    NS,
    PRODUCTION,
    STAGING,
)


@pytest.mark.parametrize(
    ("name", "values", "namespace"),
    [("staging", STAGING, NS), ("production", PRODUCTION, "x0tta6bl4")],
)
def test_golden_render(name: str, values: list[str], namespace: str) -> None:
    text = render_text(values, namespace=namespace)
    golden = GOLDEN_DIR / f"{name}.yaml"
    if os.environ.get("UPDATE_GOLDEN") == "1":
        golden.write_text(text, encoding="utf-8")
    assert golden.is_file(), f"{golden} missing: run with UPDATE_GOLDEN=1 to create it"
    assert text == golden.read_text(encoding="utf-8"), (
        f"render differs from {golden}; review, then UPDATE_GOLDEN=1"
    )
