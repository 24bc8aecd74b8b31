"""``bench flood`` runs end to end with tiny floods.

Checks the shape of the result (keys and types) and that the measurements happened, never
speed: the figures depend on the machine.
"""

from __future__ import annotations

import os

import pytest

from x0tta6bl4.bench import flood

pytestmark = pytest.mark.timeout(240)


def test_flood_measures_time_to_link_under_each_flood() -> None:
    result = flood.run(trials=1, partials=20, rate=40.0, hosts=1, spoofed_rate=500.0)
    assert result["trials"] == 1
    assert result["targets"] == flood.TARGETS
    assert isinstance(result["meets_targets"], bool)
    baseline = result["baseline"]
    assert baseline["linked"] == 1
    assert baseline["time_to_link_p50_ms"] > 0
    scenarios = ["slowloris", "cookie_flood"]
    if os.geteuid() == 0:
        scenarios.append("spoofed")
    else:
        assert "skipped" in result["spoofed"]
    for name in scenarios:
        entry = result[name]
        for key in ("offered_pps", "offered_bytes_per_s", "victim_pps", "responders"):
            assert isinstance(entry[key], int), (name, key)
        assert isinstance(entry["victim_cpu"], float), name
        assert entry["offered_pps"] > 0, name
        assert entry["victim_pps"] > 0, name
        assert entry["linked"] in (0, 1), name
        assert isinstance(entry["drops"], dict), name
    assert result["slowloris"]["flood"]["sources"] == 20
    assert result["cookie_flood"]["offered_inits_per_s"] > 0
    assert "baseline" in flood.format_table(result)


def test_flood_rejects_bad_parameters() -> None:
    with pytest.raises(ValueError, match="positive"):
        flood.run(trials=0)
    with pytest.raises(ValueError, match="unknown scenarios"):
        flood.run(scenarios=("nope",))
