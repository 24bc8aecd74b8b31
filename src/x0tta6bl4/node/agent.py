"""The mesh node agent (``x0tta6bl4 node``): identity, controller, data plane, HTTP API.

Start-up, in order:

1. the ML-DSA-65 node key is loaded from ``<state-dir>/node-key.pem`` (created with mode 0600
   on first start and reused across restarts, so a restarted node keeps its identity);
2. the mesh UDP socket is bound (its port goes into the registration);
3. the node registers with the controller, authenticated by a JWT-SVID from the SPIFFE
   Workload API plus a proof of possession of the key, and receives its PQ SVID, overlay IPv4
   and the mesh CA bundle (retried with backoff until a controller answers);
4. the data plane starts (:class:`~x0tta6bl4.node.udp.MeshEndpoint`), fed with the membership
   (``GET /api/v1/nodes`` with the revoked certificates, plus each member's PQ SVID, cached
   by serial) and the policy, then kept current by a long-poll watch.

Background loops: **watch** (membership, policy), **status** (``PUT …/status`` every 5 s; a
404 means the controller lost our record, e.g. a fresh store: register again), **renew**
(at the SVID's half-life; new handshakes use the new SVID and every link rekeys at once, with
the previous keys still accepted, so nothing is lost). When every controller is down these
loops back off and retry; links, routes and forwarding never depend on them.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from spiffe import JwtBundleSet

from x0tta6bl4.crypto.pqsvid import TrustBundle, verify_svid
from x0tta6bl4.crypto.suite import SigningKey
from x0tta6bl4.dataplane import resolve
from x0tta6bl4.hostport import parse_hostport
from x0tta6bl4.logging import get_logger
from x0tta6bl4.node.config import NodeSettings
from x0tta6bl4.node.control import Admission, ControlClient, ControllerError
from x0tta6bl4.node.core import NodeCore
from x0tta6bl4.node.membership import MembershipError, parse_revoked, parse_serial
from x0tta6bl4.node.model import AppMessage, CoreConfig, Member, NodeIdentity
from x0tta6bl4.node.udp import MeshEndpoint
from x0tta6bl4.policy import Policy, PolicyEngine

if TYPE_CHECKING:
    from x0tta6bl4.node.tun import TunBridge
    from x0tta6bl4.tls.credentials import TlsCredentials, WorkloadCredentials

__all__ = ["NodeAgent", "load_or_create_key"]
KEY_FILE = "node-key.pem"
_log = get_logger(__name__)


def load_or_create_key(state_dir: Path) -> SigningKey:
    """The node's ML-DSA-65 key from ``state_dir`` (created 0600 if absent)."""
    path = state_dir / KEY_FILE
    if path.exists():
        mode = path.stat().st_mode & 0o777
        if mode & 0o077:
            raise PermissionError(f"{path} is accessible by others (mode {mode:o}); chmod 600")
        return SigningKey.from_pem(path.read_bytes())
    state_dir.mkdir(parents=True, exist_ok=True)
    key = SigningKey.generate()
    save_key(state_dir, key)
    return key


def save_key(state_dir: Path, key: SigningKey) -> None:
    """Write ``key`` to ``state_dir`` (0600, atomically replacing the previous one)."""
    path = state_dir / KEY_FILE
    tmp = path.with_suffix(".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as out:
        out.write(key.to_pem())
    os.replace(tmp, path)


def _der(pem: bytes) -> bytes:
    return x509.load_pem_x509_certificate(pem).public_bytes(serialization.Encoding.DER)


class NodeAgent:
    """One node: run it with :meth:`run`; stop it by setting the event passed to ``run``."""

    def __init__(self, settings: NodeSettings, *, config: CoreConfig | None = None) -> None:
        self.settings = settings
        self._previous_key: SigningKey | None = None
        self.node_id = settings.resolved_node_id()
        self.config = config or CoreConfig(
            heartbeat_interval=settings.heartbeat_interval, dead_after=settings.dead_after
        )
        self.endpoint: MeshEndpoint | None = None
        self.admission: Admission | None = None
        self.identity: NodeIdentity | None = None
        self.controller_ok = False
        self.app_inbox: asyncio.Queue[AppMessage] = asyncio.Queue(maxsize=4096)
        self._pongs: dict[int, asyncio.Future[float]] = {}
        self._seq = 0
        self._key: SigningKey | None = None
        self._client: ControlClient | None = None
        self._credentials: WorkloadCredentials | None = None
        self._svid: TlsCredentials | None = None
        self._advertise = ""
        self._source: Any = None
        #: Member PQ SVIDs (DER) by serial: only the current members' certificates.
        self._member_cache: dict[int, bytes] = {}
        self.revision = 0
        #: TUN mode (``--tun``): the overlay interface wired to the data plane.
        self.tun: TunBridge | None = None

    # --- queries ------------------------------------------------------------------------------

    @property
    def core(self) -> NodeCore | None:
        return None if self.endpoint is None else self.endpoint.core

    @property
    def registered(self) -> bool:
        return self.admission is not None

    def ready(self) -> tuple[bool, str]:
        core = self.core
        if not self.registered or core is None:
            return False, "not registered"
        if core.up_links() or not core.members:
            return True, "ok"
        return False, "no link up"

    def status(self) -> dict[str, Any]:
        core = self.core
        base: dict[str, Any] = {
            "node_id": self.node_id,
            "registered": self.registered,
            "controller": self.settings.controller,
            "controller_reachable": self.controller_ok,
            "advertise": self._advertise,
            "revision": self.revision,
        }
        if core is not None:
            base.update(core.status())
        if self.endpoint is not None:
            base["dataplane"] = self.endpoint.dataplane
            native = self.endpoint.native_counters()
            if native:
                base["native"] = native
        if self.tun is not None:
            base["tun"] = self.tun.status()
        return base

    def resolve(self, target: str) -> str:
        """A node id, SPIFFE ID or overlay IP → node id (ValueError if unknown/ambiguous)."""
        core = self.core
        if core is None:
            raise ValueError("the node is not running yet")
        members = core.members
        if target in members:
            return target
        matches = [m.node_id for m in members.values() if target in (m.spiffe_id, m.overlay_ip)]
        if len(matches) == 1:
            return matches[0]
        if len(matches) > 1:
            raise ValueError(f"{target!r} names {len(matches)} nodes: {', '.join(sorted(matches))}")
        raise ValueError(f"no mesh node {target!r}")

    # --- traffic ------------------------------------------------------------------------------

    def send_app(self, dest: str, channel: int, payload: bytes) -> None:
        """Send an application datagram to node ``dest`` (end-to-end encrypted)."""
        endpoint = self._require_endpoint()
        endpoint.call(lambda core, now: core.send_app(dest, channel, payload, now))

    async def ping(self, dest: str, timeout: float = 2.0) -> float:
        """One mesh echo to ``dest``; the RTT in seconds (TimeoutError when lost)."""
        endpoint = self._require_endpoint()
        self._seq = (self._seq + 1) & 0xFFFFFFFF
        seq = self._seq
        future: asyncio.Future[float] = asyncio.get_running_loop().create_future()
        self._pongs[seq] = future
        try:
            endpoint.call(lambda core, now: core.ping(dest, seq, now))
            return await asyncio.wait_for(future, timeout)
        finally:
            self._pongs.pop(seq, None)

    def _require_endpoint(self) -> MeshEndpoint:
        if self.endpoint is None:
            raise ValueError("the node is not registered yet")
        return self.endpoint

    def _on_app(self, message: AppMessage) -> None:
        if self.tun is not None and message.channel == self.tun.channel:
            self.tun.deliver(message)
            return
        with contextlib.suppress(asyncio.QueueFull):
            self.app_inbox.put_nowait(message)

    def _on_pong(self, src: str, seq: int, rtt: float) -> None:
        future = self._pongs.get(seq)
        if future is not None and not future.done():
            future.set_result(rtt)

    # --- lifecycle ----------------------------------------------------------------------------

    def _workload_source(self) -> Any:
        if self._source is None:
            from x0tta6bl4.identity.workload_source import WorkloadSource

            self._source = WorkloadSource(
                self.settings.spiffe_socket, trust_domain=self.settings.trust_domain
            )
        return self._source

    async def jwt_bundles(self) -> JwtBundleSet:
        """The JWT bundles of the node's Workload API (to verify callers of ``/v1/ping``)."""
        bundles: JwtBundleSet = await asyncio.to_thread(self._workload_source().fetch_jwt_bundles)
        return bundles

    async def _control(self) -> ControlClient:
        """The controller client, once the node has its X.509-SVID (fetched here, retried by
        the caller): it presents that SVID in mutual TLS and expects the controller's ID."""
        if self._client is not None:
            return self._client
        if self._credentials is None:
            from x0tta6bl4.tls.credentials import WorkloadCredentials

            self._credentials = WorkloadCredentials(
                self._workload_source(), self.settings.trust_domain
            )
        if self._svid is None:
            self._svid = await asyncio.to_thread(self._credentials.start)
            self._credentials.on_change(self._svid_rotated)
        own = self._svid.spiffe_id
        assert own is not None
        expected = self.settings.expected_controller(str(own))
        self._client = ControlClient(self.settings.controller, self._credentials, expected)
        _log.info(
            "node.identity", spiffe_id=str(own), controller=self.settings.controller,
            controller_spiffe_id=expected,
        )  # fmt: skip
        return self._client

    def _svid_rotated(self, credentials: TlsCredentials) -> None:
        self._svid = credentials

    def _identity(self, admission: Admission) -> NodeIdentity:
        assert self._key is not None
        cert = _der(admission.pq_svid_pem)
        bundle = TrustBundle.from_pem(admission.trust_domain, admission.ca_bundle_pem)
        verified = verify_svid(cert, bundle, time.time())
        if verified.public_key_bytes != self._key.public_bytes or verified.node_id != self.node_id:
            raise ControllerError(200, "bad_svid", "the PQ SVID does not certify our key/node id")
        return NodeIdentity(
            node_id=self.node_id,
            spiffe_id=verified.spiffe_id,
            signing_key=self._key,
            cert_der=cert,
            bundle=bundle,
            not_after=verified.not_after,
            overlay_ip=admission.overlay_ip,
        )

    async def _register(self, renew: bool) -> None:
        client = await self._control()
        assert self._key is not None
        if self._previous_key is not None and not renew:
            # --rotate-key: the new key, with the old key's rotation proof; kept once admitted.
            admission = await client.register(
                self.node_id, self._advertise, self._key, previous_key=self._previous_key
            )
            await asyncio.to_thread(save_key, self.settings.state_dir, self._key)
            self._previous_key = None
            _log.info("node.key_rotated", node_id=self.node_id)
        else:
            call = client.renew if renew else client.register
            admission = await call(self.node_id, self._advertise, self._key)
        identity = self._identity(admission)
        self.admission, self.identity = admission, identity
        self.controller_ok = True
        if self.endpoint is not None:
            self.endpoint.call(lambda core, now: core.set_identity(identity, now))
        if self.tun is not None and self.endpoint is not None:
            await self.tun.set_address(admission.overlay_ip)
        _log.info(
            "node.registered" if not renew else "node.renewed",
            node_id=self.node_id,
            overlay_ip=admission.overlay_ip,
            not_after=admission.pq_svid_not_after,
        )

    async def _register_until_done(self, stop: asyncio.Event) -> None:
        delay = 0.2
        while not stop.is_set():
            try:
                await self._register(renew=False)
                return
            except (ControllerError, OSError) as exc:
                self.controller_ok = False
                _log.warning("node.register_failed", error=str(exc), retry_in=delay)
            except Exception as exc:  # identity errors: the Workload API may not be up yet
                _log.warning("node.register_failed", error=type(exc).__name__, retry_in=delay)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), delay)
            delay = min(delay * 2, 5.0)

    async def run(self, stop: asyncio.Event, *, http: bool = True) -> None:
        """Run until ``stop`` is set."""
        self._key = await asyncio.to_thread(load_or_create_key, self.settings.state_dir)
        if self.settings.rotate_key:
            self._previous_key, self._key = self._key, SigningKey.generate()
        host, port = self.settings.listen_udp
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_DGRAM)
        sock.bind((host, port))
        self._advertise = self.settings.resolved_advertise(sock.getsockname()[1])
        if self.settings.tun:
            from x0tta6bl4.node.tun import TunBridge

            try:  # fail fast: before registering
                self.tun = TunBridge.open(vnet_hdr=resolve(self.settings.dataplane) == "native")
            except OSError:
                sock.close()
                raise
        server_task: asyncio.Task[None] | None = None
        if http:
            from x0tta6bl4.node.http import serve_http

            server_task = asyncio.create_task(serve_http(self, self.settings.http, stop))
        tasks: list[asyncio.Task[None]] = []
        try:
            await self._register_until_done(stop)
            if stop.is_set():
                return
            identity = self.identity
            assert identity is not None
            protocol = MeshEndpoint(
                identity,
                config=self.config,
                on_app=self._on_app,
                on_pong=self._on_pong,
                dataplane=self.settings.dataplane,
            )
            protocol.attach(sock)
            self.endpoint = protocol
            if self.tun is not None and identity.overlay_ip is not None:
                await self.tun.start(protocol, identity.overlay_ip)
            tasks = [
                asyncio.create_task(self._watch_loop(stop)),
                asyncio.create_task(self._status_loop(stop)),
                asyncio.create_task(self._renew_loop(stop)),
            ]
            await stop.wait()
        finally:
            for task in tasks:
                task.cancel()
            for task in tasks:
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task
            if self.tun is not None:
                self.tun.close()
            if self.endpoint is not None:
                self.endpoint.close()
            else:
                sock.close()
            if server_task is not None:
                stop.set()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await server_task
            if self._client is not None:
                await self._client.close()
            if self._credentials is not None:
                await asyncio.to_thread(self._credentials.stop)

    # --- loops --------------------------------------------------------------------------------

    async def _sleep(self, stop: asyncio.Event, seconds: float) -> bool:
        """Sleep; True if ``stop`` was set meanwhile."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), max(0.0, seconds))
        return stop.is_set()

    async def refresh(self) -> None:
        """Fetch the membership (with member certificates and revocations) and the policy;
        apply both. A malformed answer raises ControllerError and changes nothing."""
        assert self._client is not None
        listing = await self._client.list_nodes()
        try:
            revoked = parse_revoked(listing.get("revoked"))
            nodes = listing.get("nodes", [])
            serials = [
                None if node.get("pq_svid_serial") is None else parse_serial(node["pq_svid_serial"])
                for node in nodes
            ]
        except (MembershipError, AttributeError) as exc:
            raise ControllerError(200, "bad_response", f"node list: {exc}") from None
        members: list[Member] = []
        cache: dict[int, bytes] = {}
        for node, listed in zip(nodes, serials, strict=True):
            node_id = str(node["node_id"])
            if node_id == self.node_id:
                continue
            serial = listed
            cert = None if serial is None else self._member_cache.get(serial)
            if cert is None or serial is None:  # new (or a controller that lists no serials)
                detail = await self._client.get_node(node_id)
                parsed = x509.load_pem_x509_certificate(str(detail["pq_svid"]).encode())
                cert = parsed.public_bytes(serialization.Encoding.DER)
                serial = parsed.serial_number
            cache[serial] = cert
            try:
                endpoint = parse_hostport(str(node["endpoint"]), "endpoint")
            except ValueError:
                continue
            members.append(
                Member(node_id, str(node["spiffe_id"]), endpoint, str(node["overlay_ip"]), cert)
            )
        policy = await self._client.get_policy()
        engine = PolicyEngine(
            Policy.from_json({"rules": policy.get("rules", [])}), self.settings.trust_domain
        )
        mesh = self._require_endpoint()

        def apply(core: NodeCore, now: float) -> None:
            core.set_policy(engine.may_link, engine.may_talk, now)
            core.set_members(members, now, revoked)

        mesh.call(apply)
        self._member_cache = cache
        if self.tun is not None:
            await self.tun.set_members(members)
        self.revision = max(self.revision, int(listing.get("revision", 0)))
        self.controller_ok = True

    async def _watch_loop(self, stop: asyncio.Event) -> None:
        assert self._client is not None
        delay = 0.5
        stale = True
        while not stop.is_set():
            try:
                if stale:
                    await self.refresh()
                    stale = False
                answer = await self._client.watch(self.revision, 25.0)
                delay = 0.5
                if answer.get("events"):
                    stale = True
                self.revision = max(self.revision, int(answer.get("revision", self.revision)))
            except ControllerError as exc:
                self.controller_ok = exc.status != 0 and self.controller_ok
                stale = True
                if exc.status == 410:
                    continue
                _log.warning("node.watch_failed", error=str(exc), retry_in=delay)
                if await self._sleep(stop, delay):
                    return
                delay = min(delay * 2, 5.0)
            except Exception as exc:
                stale = True
                _log.warning("node.watch_failed", error=type(exc).__name__, retry_in=delay)
                if await self._sleep(stop, delay):
                    return
                delay = min(delay * 2, 5.0)

    async def _status_loop(self, stop: asyncio.Event) -> None:
        assert self._client is not None
        while not await self._sleep(stop, 5.0):
            core = self.core
            if core is None:
                continue
            links = [
                {"peer": link["peer"], "up": link["state"] == "up", "rtt_ms": link["rtt_ms"]}
                for link in core.status()["links"]
            ][:1024]
            try:
                await self._client.put_status(self.node_id, links)
                self.controller_ok = True
            except ControllerError as exc:
                self.controller_ok = exc.status != 0
                if exc.status == 404:
                    # Our record is gone (an admin deleted it, or it expired): register again.
                    # A refusal (e.g. 403 policy_denied: kept out on purpose) is logged, and
                    # retried at the next report.
                    try:
                        await self._register(renew=False)
                    except (ControllerError, OSError) as err:
                        _log.warning("node.register_failed", error=str(err), after="status_404")
            except Exception as exc:  # e.g. no SVID any more: the report did not get through
                self.controller_ok = False
                _log.warning("node.status_failed", error=type(exc).__name__)

    async def _renew_loop(self, stop: asyncio.Event) -> None:
        delay = 2.0
        while not stop.is_set():
            admission = self.admission
            assert admission is not None
            if await self._sleep(stop, admission.renew_after - time.time()):
                return
            try:
                await self._register(renew=True)
                delay = 2.0
            except ControllerError as exc:
                if exc.status == 404:
                    with contextlib.suppress(ControllerError, OSError):
                        await self._register(renew=False)
                _log.warning("node.renew_failed", error=str(exc), retry_in=delay)
                if await self._sleep(stop, delay):
                    return
                delay = min(delay * 2, 30.0)
            except Exception as exc:
                _log.warning("node.renew_failed", error=type(exc).__name__, retry_in=delay)
                if await self._sleep(stop, delay):
                    return
                delay = min(delay * 2, 30.0)
