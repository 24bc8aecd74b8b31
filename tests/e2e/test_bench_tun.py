"""``x0tta6bl4 bench tun`` end to end with tiny parameters: three namespaces, the TUN mesh and
wireguard-go on the same veths, iperf3 and ping; every key present, nothing left behind."""

from __future__ import annotations

import json
import os
import shutil
import subprocess

import pytest

from x0tta6bl4.bench import tun

pytestmark = pytest.mark.timeout(300)


def _why_skip() -> str | None:
    if os.geteuid() != 0 or not os.path.exists("/dev/net/tun"):
        return "needs root and /dev/net/tun (network namespaces, TUN interfaces)"
    missing = [t for t in ("ip", "iperf3", "wg", "ping") if shutil.which(t) is None]
    if missing:
        return f"needs {', '.join(missing)} (scripts/setup-system.sh installs them)"
    try:
        tun.find_wireguard_go()
    except tun.TunBenchError as exc:
        return str(exc)
    return None


def _namespaces() -> set[str]:
    out = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, check=True)
    return {line.split()[0] for line in out.stdout.splitlines() if line.startswith("x0b-")}


@pytest.mark.parametrize("dataplane", ["native", "python"])
def test_bench_tun_reports_every_key_and_cleans_up(dataplane: str) -> None:
    reason = _why_skip()
    if reason is not None:
        pytest.skip(reason)
    before = _namespaces()
    result = tun.run(seconds=1.0, rounds=1, count=20, dataplane=dataplane)
    assert result["dataplane"] == dataplane
    for key in (
        "mbps_1hop",
        "mbps_2hop",
        "wireguard_go_mbps",
        "ratio_vs_wireguard_go",
        "latency_us_p50_1hop",
        "latency_us_p99_1hop",
    ):
        assert isinstance(result[key], float), key
        assert result[key] > 0, key
    assert result["latency_us_p99_1hop"] >= result["latency_us_p50_1hop"]
    assert "wireguard-go" in tun.format_table(result)
    json.dumps(result)
    assert _namespaces() == before


def test_bench_tun_breakdown_switches_the_native_offloads() -> None:
    reason = _why_skip()
    if reason is not None:
        pytest.skip(reason)
    with pytest.raises(tun.TunBenchError, match="needs native"):
        tun.run(seconds=1.0, rounds=1, count=5, dataplane="python", breakdown=True)
    before = _namespaces()
    result = tun.run(seconds=1.0, rounds=1, count=20, dataplane="native", breakdown=True)
    # Node a's TUN and socket took the offloads; a's kernel handed it TCP super-packets, r
    # merged received segments into super-packets for its own TUN.
    assert "tso4" in result["offload"]["tun"], result["offload"]
    counters = result["offload_counters"]
    assert counters["a"]["tun_gso_reads"] > 0, counters
    assert counters["a"]["tun_gso_segments"] > counters["a"]["tun_gso_reads"], counters
    assert counters["r"]["tun_coalesced"] > 0, counters
    assert set(result["breakdown_mbps_1hop"]) == {"none", "udp", "tun", "all"}
    assert all(v > 0 for v in result["breakdown_mbps_1hop"].values()), result
    assert result["breakdown_mbps_1hop"]["all"] == round(result["mbps_1hop"], 1)
    assert "offloads none" in tun.format_table(result)
    json.dumps(result)
    assert _namespaces() == before
