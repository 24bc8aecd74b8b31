"""Decoding stored records: malformed bytes raise ModelError and nothing else (the stores
report it as a store fault). Inputs found by the fuzz harness ``fuzz/store_records.py``."""

from __future__ import annotations

import pytest

from x0tta6bl4.controller.models import NodeRecord, loads
from x0tta6bl4.policy import Policy
from x0tta6bl4.records import ModelError


@pytest.mark.parametrize(
    "raw",
    [
        b"[" * 5000,
        b'{"a":' * 5000,
        b'{"rules":' + b"[" * 100_000,
        "[" * 3000,
    ],
)
def test_deeply_nested_json_is_a_model_error(raw: bytes | str) -> None:
    with pytest.raises(ModelError, match="nested too deeply"):
        loads(raw)
    with pytest.raises(ModelError):
        NodeRecord.from_json(loads(raw))
    with pytest.raises(ModelError):
        Policy.from_json(loads(raw))


def test_nesting_within_the_limit_still_parses() -> None:
    value = loads(b"[" * 50 + b"]" * 50)
    for _ in range(49):
        assert isinstance(value, list)
        assert len(value) == 1
        value = value[0]
    assert value == []
