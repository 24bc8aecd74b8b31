"""The real TUN device (``node/tun.py``) inside a throw-away network namespace: creation,
address/MTU, routes kept in step, a packet the kernel sends into it, a packet we write out of
it reaching a local socket, and the interface gone when the descriptor closes."""

from __future__ import annotations

import json
import os
import secrets
import shutil
import subprocess
import sys

import pytest

from x0tta6bl4.node.tun import TunDevice, TunError

_SKIP = (
    "needs root (network namespaces, TUN interfaces)"
    if os.geteuid() != 0
    else "needs /dev/net/tun"
    if not os.path.exists("/dev/net/tun")
    else "needs the iproute2 'ip' command"
    if shutil.which("ip") is None
    else None
)

_SCRIPT = r"""
import json, select, socket, struct, subprocess, sys
from x0tta6bl4.node.overlay import TUN_MTU, parse_ipv4
from x0tta6bl4.node.tun import TunDevice

def routes():
    out = subprocess.run(["ip", "-j", "-4", "route"], capture_output=True, text=True, check=True)
    return sorted(r["dst"] for r in json.loads(out.stdout) if r.get("dev") == dev.name)

result = {}
# argv[1] == "vnet": IFF_VNET_HDR (the native data plane's TUN); with no offload asked for, the
# device's own reads and writes still give and take plain packets behind a zero header.
dev = TunDevice.open(vnet_hdr=sys.argv[1] == "vnet")
result["name"] = dev.name
dev.configure("100.96.0.1", TUN_MTU)
link = json.loads(subprocess.run(["ip", "-j", "addr", "show", dev.name], capture_output=True,
                                 text=True, check=True).stdout)[0]
result["mtu"] = link["mtu"]
result["addrs"] = [f'{a["local"]}/{a["prefixlen"]}' for a in link["addr_info"]]
result["failed"] = dev.set_routes(["100.96.0.2", "100.96.0.3", "100.96.0.1"])
result["routes_1"] = routes()
dev.set_routes(["100.96.0.3", "100.96.0.4"])
result["routes_2"] = routes()

# The kernel sends a UDP datagram for 100.96.0.3 into the TUN.
out = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
out.sendto(b"hello", ("100.96.0.3", 9999))
select.select([dev.fd], [], [], 5)
packets = dev.read_batch()
header = parse_ipv4(packets[0])
src, dst = socket.inet_ntoa(header.src), socket.inet_ntoa(header.dst)
result["read"] = [src, dst, packets[0][-5:].decode()]

# A packet written to the TUN reaches a local socket (UDP checksum 0: none).
sink = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
sink.bind(("100.96.0.1", 0))
port = sink.getsockname()[1]
body = b"world"
udp = struct.pack("!HHHH", 4000, port, 8 + len(body), 0) + body
ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(udp), 0, 0, 64, 17, 0,
                 socket.inet_aton("100.96.0.3"), socket.inet_aton("100.96.0.1"))
total = sum(struct.unpack("!10H", ip))
total = (total & 0xFFFF) + (total >> 16)
ip = ip[:10] + struct.pack("!H", ~total & 0xFFFF) + ip[12:]
result["written"] = dev.write(ip + udp)
sink.settimeout(5)
data, addr = sink.recvfrom(100)
result["received"] = [data.decode(), addr[0], addr[1]]

dev.close()
gone = subprocess.run(["ip", "link", "show", dev.name], capture_output=True)
result["gone"] = gone.returncode != 0
print(json.dumps(result))
"""


@pytest.mark.skipif(_SKIP is not None, reason=_SKIP or "")
@pytest.mark.parametrize("mode", ["plain", "vnet"])
def test_tun_device_in_a_namespace(mode: str) -> None:
    ns = f"x0t-dev-{secrets.token_hex(3)}"
    subprocess.run(["ip", "netns", "add", ns], check=True)
    try:
        subprocess.run(["ip", "-n", ns, "link", "set", "lo", "up"], check=True)
        out = subprocess.run(
            ["ip", "netns", "exec", ns, sys.executable, "-c", _SCRIPT, mode],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert out.returncode == 0, out.stderr
        result = json.loads(out.stdout)
    finally:
        subprocess.run(["ip", "netns", "del", ns], capture_output=True, check=False)
    assert result["name"] == "x0t0"
    assert result["mtu"] == 1274
    assert result["addrs"] == ["100.96.0.1/32"]
    assert result["failed"] == []
    assert result["routes_1"] == ["100.96.0.2", "100.96.0.3"]  # never a route to ourselves
    assert result["routes_2"] == ["100.96.0.3", "100.96.0.4"]
    assert result["read"] == ["100.96.0.1", "100.96.0.3", "hello"]
    assert result["written"] is True
    assert result["received"][:2] == ["world", "100.96.0.3"]
    assert result["gone"] is True


def test_tun_name_too_long_is_refused_before_anything_happens() -> None:
    with pytest.raises(TunError, match="longer than 15 bytes"):
        TunDevice.open("x" * 16)
