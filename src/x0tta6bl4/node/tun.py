"""The overlay TUN interface of ``x0tta6bl4 node --tun`` (Linux, needs CAP_NET_ADMIN).

:meth:`TunDevice.open` opens ``/dev/net/tun`` and creates an IPv4 TUN interface
(``TUNSETIFF`` with ``IFF_TUN | IFF_NO_PI``: every read is one raw IP packet) in non-blocking
mode; the interface vanishes when the descriptor is closed. With ``vnet_hdr`` (the native
data plane's choice) it also sets ``IFF_VNET_HDR``: every read and write then starts with a
10-byte ``virtio_net_hdr``, which lets the native data plane turn on the TUN's offloads (TCP
segmentation and checksum offload: 64 KB super-packets per read and write, see
``native/src/offload.rs``); this class's own reads and writes carry a zero header then (no
offload is on until the native data plane asks for it, so the kernel hands it plain packets).
:meth:`TunDevice.configure` gives it the overlay address (``/32``), the MTU and brings it up;
:meth:`TunDevice.set_routes`
keeps one ``/32`` route per mesh member's overlay address through it (the registration
answer carries our address, not the overlay network, and per-member routes send into the
TUN exactly what some node can receive). Netlink calls go through pyroute2's ``IPRoute``.

:class:`TunBridge` joins the device to a node's data plane. With the Python reference,
packets read from the TUN (``loop.add_reader``) go through
:class:`~x0tta6bl4.node.overlay.Overlay` to ``NodeCore.send_app(owner, TUN_CHANNEL, packet)``;
packets that arrive on that channel are checked (anti-spoofing) and written to the TUN. With
the native data plane, the bridge hands it a duplicate of the TUN descriptor and the overlay
map (``set_tun``, ``set_overlay``): the data plane's thread reads and writes the TUN and seals
packets into end-to-end sessions itself, with the same checks and drop reasons; it hands up
only packets for a destination without an established session (``send_app`` queues them and
starts the handshake) and packets over the MTU (answered here with ICMP "fragmentation
needed"). :meth:`TunDevice.write` never blocks (a full queue drops). One TUN node per network
namespace: two would fight over the same routes.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import fcntl
import os
import struct
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from pyroute2 import IPRoute
from pyroute2.netlink.exceptions import NetlinkError

from x0tta6bl4.logging import get_logger
from x0tta6bl4.node.core import NodeCore
from x0tta6bl4.node.drops import NodeDrop
from x0tta6bl4.node.model import AppMessage, Member
from x0tta6bl4.node.overlay import TUN_CHANNEL, TUN_MTU, Overlay
from x0tta6bl4.node.udp import MeshEndpoint

__all__ = ["DEFAULT_NAME", "TUN_PATH", "TunBridge", "TunDevice", "TunError"]

TUN_PATH = "/dev/net/tun"
#: Interface name template: the kernel picks the first free ``x0t<N>``.
DEFAULT_NAME = "x0t%d"

_TUNSETIFF = 0x400454CA
_IFF_TUN = 0x0001
_IFF_NO_PI = 0x1000
_IFF_VNET_HDR = 0x4000
#: ``sizeof(struct virtio_net_hdr)``: the prefix of every read and write with ``IFF_VNET_HDR``.
VNET_HDR_LEN = 10
_NO_VNET_HDR = bytes(VNET_HDR_LEN)
_IFNAMSIZ = 16
_READ_SIZE = 65535
_log = get_logger(__name__)


class TunError(OSError):
    """The TUN interface could not be created or configured (the message says why)."""


class TunDevice:
    """One open TUN interface: its descriptor, name and the routes we installed."""

    def __init__(self, fd: int, name: str, *, vnet_hdr: bool = False) -> None:
        self.fd = fd
        self.name = name
        #: Reads and writes carry a virtio-net header (``IFF_VNET_HDR``).
        self.vnet_hdr = vnet_hdr
        self.address: str | None = None
        self.mtu: int | None = None
        self._routes: set[str] = set()
        #: Packets the kernel would not take (queue full) or refused.
        self.write_errors = 0
        self.closed = False

    @classmethod
    def open(cls, name: str = DEFAULT_NAME, *, vnet_hdr: bool = False) -> TunDevice:
        """Create the interface; :class:`TunError` with the reason if we may not.

        ``vnet_hdr``: with ``IFF_VNET_HDR`` (for the native data plane's offloads)."""
        if len(name.encode()) >= _IFNAMSIZ:
            raise TunError(errno.EINVAL, f"interface name {name!r} is longer than 15 bytes")
        try:
            fd = os.open(TUN_PATH, os.O_RDWR | os.O_NONBLOCK | os.O_CLOEXEC)
        except FileNotFoundError:
            raise TunError(
                errno.ENOENT, f"{TUN_PATH} is missing (in a container: mount the device)"
            ) from None
        except PermissionError:
            raise TunError(errno.EACCES, f"no permission to open {TUN_PATH}") from None
        try:
            flags = _IFF_TUN | _IFF_NO_PI | (_IFF_VNET_HDR if vnet_hdr else 0)
            request = struct.pack("16sH22x", name.encode(), flags)
            answer = fcntl.ioctl(fd, _TUNSETIFF, request)
        except OSError as exc:
            os.close(fd)
            hint = " (needs CAP_NET_ADMIN)" if exc.errno == errno.EPERM else ""
            raise TunError(exc.errno, f"cannot create TUN {name!r}: {exc.strerror}{hint}") from None
        created = answer[:_IFNAMSIZ].rstrip(b"\0").decode()
        return cls(fd, created, vnet_hdr=vnet_hdr)

    # --- configuration ------------------------------------------------------------------------

    def configure(self, address: str, mtu: int) -> None:
        """Address ``address/32`` (replacing any other), MTU, IPv6 off, link up."""
        with contextlib.suppress(OSError):  # only IPv4 is carried; no IPv6 chatter
            Path(f"/proc/sys/net/ipv6/conf/{self.name}/disable_ipv6").write_text("1")
        try:
            with IPRoute() as ipr:
                index = self._index(ipr)
                ipr.link("set", index=index, mtu=mtu, state="up")
                for entry in ipr.get_addr(index=index, family=2):
                    old = entry.get_attr("IFA_LOCAL")
                    if old != address:
                        ipr.addr("del", index=index, address=old, prefixlen=entry["prefixlen"])
                if self.address != address:
                    with contextlib.suppress(NetlinkError):  # already there
                        ipr.addr("add", index=index, address=address, prefixlen=32)
        except NetlinkError as exc:
            raise TunError(exc.code, f"cannot configure {self.name}: {exc}") from None
        if self.address != address:
            self._routes.clear()  # the kernel dropped the routes with the old source address
        self.address, self.mtu = address, mtu

    def set_routes(self, addresses: Iterable[str]) -> list[str]:
        """Route exactly ``addresses`` (``/32`` each) into the TUN; the ones that failed."""
        wanted = set(addresses) - {self.address}
        failed: list[str] = []
        try:
            with IPRoute() as ipr:
                index = self._index(ipr)
                for address in sorted(self._routes - wanted):
                    with contextlib.suppress(NetlinkError):
                        ipr.route("del", dst=f"{address}/32", oif=index)
                    self._routes.discard(address)
                for address in sorted(wanted - self._routes):
                    try:
                        ipr.route("replace", dst=f"{address}/32", oif=index, prefsrc=self.address)
                    except NetlinkError:
                        failed.append(address)
                    else:
                        self._routes.add(address)
        except NetlinkError as exc:
            raise TunError(exc.code, f"cannot route into {self.name}: {exc}") from None
        return failed

    @property
    def routes(self) -> list[str]:
        return sorted(self._routes)

    def _index(self, ipr: IPRoute) -> int:
        found = ipr.link_lookup(ifname=self.name)
        if not found:
            raise TunError(errno.ENODEV, f"interface {self.name} is gone")
        return int(found[0])

    # --- packets ------------------------------------------------------------------------------

    def read_batch(self, limit: int = 64) -> list[bytes]:
        """Up to ``limit`` packets that are ready (never blocks)."""
        packets: list[bytes] = []
        skip = VNET_HDR_LEN if self.vnet_hdr else 0
        for _ in range(limit):
            try:
                packet = os.read(self.fd, _READ_SIZE + skip)
            except (BlockingIOError, InterruptedError):
                break
            packets.append(packet[skip:])
        return packets

    def write(self, packet: bytes) -> bool:
        """Hand one IP packet to the kernel; False (counted) if it was not taken."""
        try:
            if self.vnet_hdr:
                os.writev(self.fd, (_NO_VNET_HDR, packet))
            else:
                os.write(self.fd, packet)
        except OSError:
            self.write_errors += 1
            return False
        return True

    def close(self) -> None:
        """Close the descriptor: the interface and its routes disappear."""
        if not self.closed:
            self.closed = True
            os.close(self.fd)


class TunBridge:
    """The TUN device wired to a running node's :class:`MeshEndpoint` (one event loop)."""

    #: The application channel that carries IP packets.
    channel = TUN_CHANNEL

    def __init__(self, device: TunDevice, *, mtu: int = TUN_MTU) -> None:
        self.device = device
        self.mtu = mtu
        self.overlay: Overlay | None = None
        self._endpoint: MeshEndpoint | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._members: list[Member] = []

    @classmethod
    def open(
        cls, name: str = DEFAULT_NAME, *, mtu: int = TUN_MTU, vnet_hdr: bool = False
    ) -> TunBridge:
        """Create the TUN interface now (fail fast, before registering); ``vnet_hdr`` for a
        node whose data plane is native (its offloads need ``IFF_VNET_HDR``)."""
        return cls(TunDevice.open(name, vnet_hdr=vnet_hdr), mtu=mtu)

    async def start(self, endpoint: MeshEndpoint, overlay_ip: str) -> None:
        """Configure address/MTU, then carry packets both ways."""
        self._endpoint = endpoint
        self.overlay = Overlay(overlay_ip, mtu=self.mtu, dropped=endpoint.core.dropped)
        await asyncio.to_thread(self.device.configure, overlay_ip, self.mtu)
        self._loop = asyncio.get_running_loop()
        if endpoint.native is not None:
            endpoint.on_tun = self._from_native
            self._push_overlay()
            endpoint.native.set_tun(os.dup(self.device.fd))
        else:
            self._loop.add_reader(self.device.fd, self._readable)
        _log.info(
            "node.tun_up",
            interface=self.device.name,
            address=overlay_ip,
            mtu=self.mtu,
            dataplane=endpoint.dataplane,
            offload=self.offload(),
        )

    def offload(self) -> list[str]:
        """The TUN offloads the native data plane turned on (empty: plain packets)."""
        endpoint = self._endpoint
        if endpoint is None or endpoint.native is None:
            return []
        names: list[str] = endpoint.native.tun_offload()
        return names

    def _push_overlay(self) -> None:
        """The native data plane's copy of the overlay map (address → owner node)."""
        endpoint, overlay = self._endpoint, self.overlay
        if endpoint is None or endpoint.native is None or overlay is None:
            return
        members = {m.overlay_ip: m.node_id for m in self._members if m.overlay_ip is not None}
        endpoint.native.set_overlay(_unpack(overlay.local_ip), overlay.mtu, members)

    def _from_native(self, dest: str, packet: bytes, now: float) -> None:
        """A TUN packet the native data plane hands up (no session yet, or over the MTU)."""
        overlay, endpoint = self.overlay, self._endpoint
        if overlay is None or endpoint is None:
            return
        decision = overlay.outbound(packet)
        if decision.reply is not None:
            self.device.write(decision.reply)
        if decision.dest is not None:
            _send_all(endpoint.core, [(decision.dest, decision.packet)], now)

    async def set_address(self, overlay_ip: str) -> None:
        """Our overlay address changed (the controller re-registered us)."""
        if self.overlay is None or self.device.address == overlay_ip:
            return
        self.overlay.set_local_ip(overlay_ip)
        self._push_overlay()
        await asyncio.to_thread(self.device.configure, overlay_ip, self.mtu)
        await self.set_members(self._members)

    async def set_members(self, members: list[Member]) -> None:
        """New membership: who owns which address, and the routes into the TUN."""
        self._members = members
        if self.overlay is None:
            return
        self.overlay.set_members(members)
        self._push_overlay()
        failed = await asyncio.to_thread(self.device.set_routes, self.overlay.addresses())
        if failed:
            _log.warning("node.tun_route_failed", addresses=failed[:8], count=len(failed))

    def deliver(self, message: AppMessage) -> None:
        """A packet that arrived on :data:`TUN_CHANNEL` from ``message.src``."""
        if self.overlay is None or self.device.closed:
            return
        packet = self.overlay.inbound(message.src, message.payload)
        if packet is not None:
            self.device.write(packet)

    def _readable(self) -> None:
        overlay, endpoint = self.overlay, self._endpoint
        if overlay is None or endpoint is None or endpoint.closed:
            return
        sends: list[tuple[str, bytes]] = []
        for packet in self.device.read_batch():
            decision = overlay.outbound(packet)
            if decision.reply is not None:
                self.device.write(decision.reply)
            if decision.dest is not None:
                sends.append((decision.dest, decision.packet))
        if sends:
            endpoint.call(lambda core, now: _send_all(core, sends, now))

    def status(self) -> dict[str, Any]:
        overlay = self.overlay
        counters: dict[str, int] = {} if overlay is None else dict(overlay.counters)
        endpoint = self._endpoint
        if endpoint is not None:
            # Packets the native data plane carried itself (the rest went through `overlay`).
            native = endpoint.native_counters()
            for key in ("packets_in", "packets_out", "bytes_in", "bytes_out"):
                if f"tun_{key}" in native:
                    counters[key] = counters.get(key, 0) + native[f"tun_{key}"]
        return {
            "interface": self.device.name,
            "address": self.device.address,
            "mtu": self.mtu,
            "routes": len(self.device.routes),
            "write_errors": self.device.write_errors,
            "offload": self.offload(),
            "counters": counters,
        }

    def close(self) -> None:
        endpoint = self._endpoint
        if endpoint is not None and endpoint.native is not None and not endpoint.closed:
            with contextlib.suppress(OSError, RuntimeError):
                endpoint.native.set_tun(None)
        if self._loop is not None and not self.device.closed:
            with contextlib.suppress(ValueError, OSError, RuntimeError):
                self._loop.remove_reader(self.device.fd)
        self.device.close()


def _send_all(core: NodeCore, sends: list[tuple[str, bytes]], now: float) -> None:
    for dest, packet in sends:
        try:
            core.send_app(dest, TUN_CHANNEL, packet, now)
        except ValueError:
            core.dropped[NodeDrop.TUN_NO_ROUTE] += 1


def _unpack(packed: bytes) -> str:
    return ".".join(str(b) for b in packed)
