"""``bench heal`` and ``bench dataplane`` run end to end with tiny parameters.

These check the shape of the results (keys and types) and that the measurements happened,
never speed: the figures depend on the machine.
"""

from __future__ import annotations

import pytest

from x0tta6bl4.bench import dataplane, heal
from x0tta6bl4.node.model import CoreConfig
from x0tta6bl4.protocol.neighbours import SelectionConfig

# A ring (two links per node), so that killing a node leaves pairs to re-route.
RING = CoreConfig(selection=SelectionConfig(small_mesh=1, degree=2, random_links=0))


def test_heal_measures_detection_and_repair_of_real_nodes() -> None:
    result = heal.run(6, events=2, workers=2, settle=0.2, ping_sample=2, config=RING)
    for key in ("nodes", "workers", "links", "events", "failed_events", "steady_link_downs"):
        assert isinstance(result[key], int), key
    for key in ("converge_s", "mttd_p50_ms", "mttd_p99_ms", "mttr_p50_ms", "mttr_p99_ms"):
        assert isinstance(result[key], float), key
    assert result["nodes"] == 6
    assert result["converged"] is True
    assert result["links"] == 6  # the ring
    assert result["events"] + result["failed_events"] == 2
    assert result["events"] >= 1
    assert "2 worker processes" in result["mode"]
    assert result["targets"] == heal.TARGETS
    assert isinstance(result["meets_targets"], bool)
    first = result["details"][0]
    assert first["affected_pairs"] > 0
    assert first["detectors"] == 2  # both ring neighbours had a link to the victim
    assert first["mttd_ms"] >= 0
    assert first["mttr_ms"] >= 0
    assert first["first_detector"] is not None
    assert first["pings_sent"] == 2
    assert first["pings_ok"] == 2
    assert result["mttd_p50_ms"] <= result["mttd_p99_ms"]
    assert "mttd" in heal.format_table(result)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"nodes": 2}, "at least 3"),
        ({"nodes": 5, "events": 4}, "events"),
        ({"nodes": 5, "events": 1, "workers": 6}, "workers"),
        ({"nodes": 5, "events": 1, "settle": -1.0}, "settle"),
        (
            {"nodes": 5, "events": 1, "config": CoreConfig(link_filter=lambda a, b: True)},
            "link_filter",
        ),
    ],
)
def test_heal_rejects_bad_parameters(kwargs: dict[str, object], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        heal.run(**kwargs)  # type: ignore[arg-type]


def test_dataplane_measures_raw_and_mesh_echo() -> None:
    result = dataplane.run(samples=5, window=2, duration=0.3, rounds=1)
    for key in ("raw_pps", "pps_1hop", "pps_2hop", "pps_3hop"):
        assert isinstance(result[key], int), key
        assert result[key] > 0, key
    for key in (
        "raw_latency_us",
        "latency_us_1hop",
        "latency_us_2hop",
        "latency_us_3hop",
        "ratio",
        "cpu_ratio_1hop",
    ):
        assert isinstance(result[key], float), key
        assert result[key] > 0, key
    assert result["ratio_definition"] == "raw_pps / pps_1hop"
    assert "ratio" in dataplane.format_table(result)


def test_dataplane_rejects_bad_parameters() -> None:
    with pytest.raises(ValueError, match="positive"):
        dataplane.run(window=0)
