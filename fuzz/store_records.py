"""Fuzz harness: the store's record decoding — what ``SqliteStore`` and ``EtcdStore`` do with
a stored value (``NodeRecord.from_json(loads(raw))``, ``Policy.from_json(loads(raw))``).

The first input byte chooses the record kind (even: node record, odd: policy), the rest is
the stored bytes. Checked: only ``ModelError`` escapes; a decoded record encodes (``dumps``)
to JSON that decodes to an equal record, and that encoding is a fixed point.

    python fuzz/store_records.py [libFuzzer flags] [corpus dirs]
"""

from __future__ import annotations

import fuzzlib

with fuzzlib.instrumented():
    from x0tta6bl4.controller.models import NodeRecord, dumps, loads
    from x0tta6bl4.policy import Policy
    from x0tta6bl4.records import ModelError


def test_one_input(data: bytes) -> None:
    if not data:
        return
    kind = Policy if data[0] % 2 else NodeRecord
    try:
        record = kind.from_json(loads(data[1:]))
    except ModelError:
        return
    encoded = dumps(record.to_json())
    again = kind.from_json(loads(encoded))
    assert again == record, "record does not round-trip"
    assert dumps(again.to_json()) == encoded, "encoding is not a fixed point"


if __name__ == "__main__":
    fuzzlib.run(test_one_input)
