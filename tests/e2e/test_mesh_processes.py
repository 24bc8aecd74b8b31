"""Real processes: an embedded SPIFFE issuer, a controller subprocess and ``x0tta6bl4 node``
subprocesses on loopback; mesh ping through the CLI; the mesh keeps forwarding with the
controller stopped; a node restarts with the same key and rejoins; membership changes (an
admin deleting a node, a policy by node SPIFFE ID) drop links at once (issue 12)."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.integration.controller_support import (
    ADMIN_TOKEN,
    NODE_A,
    TD,
    Identity,
    free_port,
    mesh_node_id,
    running_issuer,
    spawn_controller,
    spawn_node,
    tls_request,
    wait_ready,
)
from x0tta6bl4.controller.ca import load_ca_files
from x0tta6bl4.crypto.pqsvid import verify_svid
from x0tta6bl4.crypto.suite import SigningKey
from x0tta6bl4.protocol.constants import MessageType
from x0tta6bl4.protocol.handshake import (
    Credential,
    HandshakeConfig,
    HandshakeState,
    InitiatorHandshake,
)

pytestmark = pytest.mark.timeout(180)

NODES = ("n1", "n2", "n3")


class Mesh:
    def __init__(self, tmp: Path, identity: Identity) -> None:
        self.tmp = tmp
        self.identity = identity
        self.controller_port = free_port()
        self.tls_port = free_port()
        self.controller: subprocess.Popen[bytes] | None = None
        self.nodes: dict[str, subprocess.Popen[bytes]] = {}
        self.http: dict[str, int] = {n: free_port() for n in NODES}
        self.udp: dict[str, int] = {n: free_port() for n in NODES}
        self.admin_token_file = tmp / "admin-token"
        self.admin_token_file.write_text(ADMIN_TOKEN + "\n")
        self.env = {
            **os.environ,
            "SPIFFE_ENDPOINT_SOCKET": f"unix://{identity.issuer.socket_path}",
            "X0_LOG_FORMAT": "json",
        }

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.controller_port}"

    @property
    def api(self) -> str:
        return f"https://127.0.0.1:{self.tls_port}"

    def start_controller(self) -> None:
        self.controller = spawn_controller(
            [
                "--listen",
                f"127.0.0.1:{self.controller_port}",
                "--tls-listen",
                f"127.0.0.1:{self.tls_port}",
                "--store",
                f"sqlite:///{self.tmp / 'ctl.db'}",
                "--local-ca",
                "--state-dir",
                str(self.tmp / "ctl"),
                "--admin-token-file",
                str(self.admin_token_file),
            ],
            env={"SPIFFE_ENDPOINT_SOCKET": f"unix://{self.identity.issuer.socket_path}"},
            log=self.tmp / "controller.log",
            identity=self.identity,
        )
        wait_ready(self.base, self.controller)

    def admin(self, method: str, path: str, **kwargs: object) -> httpx.Response:
        """An admin request over TLS (the admin token, no client certificate)."""
        headers = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
        return tls_request(self.api, self.identity, method, path, headers=headers, **kwargs)

    def link_up(self, name: str, peer: str) -> bool:
        links = self.get(name, "/v1/status").json()["links"]
        return any(link["peer"] == peer and link["state"] == "up" for link in links)

    def stop_controller(self) -> None:
        assert self.controller is not None
        self.controller.terminate()
        self.controller.wait(20)

    def start_node(self, name: str) -> None:
        self.nodes[name] = spawn_node(
            self.api,
            name,
            f"127.0.0.1:{self.udp[name]}",
            self.http[name],
            self.tmp / name,
            env=self.env,
            log=self.tmp / f"{name}.log",
            identity=self.identity,
        )

    def stop_node(self, name: str) -> None:
        proc = self.nodes.pop(name)
        proc.terminate()
        proc.wait(20)

    def get(self, name: str, path: str) -> httpx.Response:
        return httpx.get(f"http://127.0.0.1:{self.http[name]}{path}", timeout=5)

    def wait(self, predicate: object, timeout: float = 60.0) -> None:
        assert callable(predicate)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for name, proc in self.nodes.items():
                assert proc.poll() is None, (
                    f"{name} exited: {(self.tmp / f'{name}.log').read_text()}"
                )
            try:
                if predicate():
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        logs = {n: (self.tmp / f"{n}.log").read_text()[-2000:] for n in self.nodes}
        raise AssertionError(f"condition not met in {timeout} s; logs: {logs}")

    def all_routes(self) -> bool:
        for name in self.nodes:
            status = self.get(name, "/v1/status").json()
            dests = {r["dest"] for r in status.get("routes", [])}
            if dests != set(self.nodes) - {name}:
                return False
        return True

    def ping(self, src: str, target: str) -> dict[str, object]:
        out = subprocess.run(
            [
                sys.executable, "-m", "x0tta6bl4", "ping", target,
                "--node", f"http://127.0.0.1:{self.http[src]}", "--count", "2", "--json",
            ],
            capture_output=True, env=self.env, timeout=60, check=False,
        )  # fmt: skip
        assert out.returncode == 0, out.stderr.decode() + out.stdout.decode()
        data: dict[str, object] = json.loads(out.stdout)
        return data

    def metric(self, name: str, series: str) -> float:
        """One series of node ``name``'s /metrics (0 when absent)."""
        for line in self.get(name, "/metrics").text.splitlines():
            key, _, value = line.rpartition(" ")
            if key == series:
                return float(value)
        return 0.0

    def controller_metric(self, series: str) -> float:
        for line in httpx.get(f"{self.base}/metrics", timeout=5).text.splitlines():
            key, _, value = line.rpartition(" ")
            if key == series:
                return float(value)
        return 0.0

    def forge(self, node_id: str) -> tuple[bytes, SigningKey]:
        """A PQ SVID the mesh CA itself signs (the controller's local CA files) for
        ``node_id`` under its own SPIFFE ID, with a fresh key, as a stolen CA key or a bug in
        the controller could produce: the node ID's registration is not involved."""
        ca = load_ca_files(
            self.tmp / "ctl" / "ca" / "ca.crt", self.tmp / "ctl" / "ca" / "ca.key", trust_domain=TD
        )
        key = SigningKey.generate()
        der = ca.signer.issue(
            spiffe_id=mesh_node_id(node_id),
            node_id=node_id,
            public_key=key.public_bytes,
            now=time.time(),
            ttl_seconds=600,
        )
        return der, key

    def handshake(self, target: str, cert_der: bytes, key: SigningKey) -> HandshakeState:
        """One link handshake as initiator with ``cert_der`` from a real UDP socket against
        node ``target``'s UDP port. Returns the initiator's state: ``WAIT_CONFIRM`` when the
        node answered INIT (cookie included) and we sent FINISH, but no transport packet
        followed within 3 s (the node refused FINISH); ``CONFIRMED`` if one did."""
        ca = load_ca_files(
            self.tmp / "ctl" / "ca" / "ca.crt", self.tmp / "ctl" / "ca" / "ca.key", trust_domain=TD
        )
        config = HandshakeConfig(
            credential=Credential(cert_der, key),
            verify_peer=lambda der: verify_svid(der, ca.bundle, time.time()),
            authorize=lambda _peer: True,
        )
        machine = InitiatorHandshake(config, time.monotonic(), expected_node_id=target)
        address = ("127.0.0.1", self.udp[target])
        finished_at: float | None = None
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            sock.bind(("127.0.0.1", 0))
            sock.settimeout(0.05)
            deadline = time.monotonic() + 20
            while time.monotonic() < deadline and not machine.failed:
                for datagram in machine.datagrams_to_send():
                    sock.sendto(datagram, address)
                now = time.monotonic()
                if machine.state is HandshakeState.WAIT_CONFIRM:
                    finished_at = finished_at if finished_at is not None else now
                    if now - finished_at > 3.0:
                        break
                try:
                    data, _ = sock.recvfrom(65535)
                except TimeoutError:
                    data = b""
                now = time.monotonic()
                if data[:1] == bytes([MessageType.TRANSPORT]):
                    machine.confirm(now)  # the responder's first packet under the new keys
                    break
                if data:
                    machine.receive_datagram(data, now)
                timer = machine.get_timer()
                if timer is not None and timer <= now:
                    machine.handle_timer(now)
        return machine.state

    def close(self) -> None:
        for name in list(self.nodes):
            self.stop_node(name)
        if self.controller is not None and self.controller.poll() is None:
            self.stop_controller()


@pytest.fixture
def mesh(tmp_path: Path) -> Iterator[Mesh]:
    with running_issuer(tmp_path / "id", ids=(NODE_A,)) as identity:
        m = Mesh(tmp_path, identity)
        try:
            m.start_controller()
            for name in NODES:
                m.start_node(name)
            m.wait(lambda: all(m.get(n, "/ready").status_code == 200 for n in NODES))
            m.wait(m.all_routes)
            yield m
        finally:
            m.close()


def test_process_mesh_ping_metrics_controller_outage_and_restart(mesh: Mesh) -> None:
    result = mesh.ping("n1", "n3")
    assert result["received"] == 2
    status = mesh.get("n2", "/v1/status").json()
    assert status["registered"] is True
    assert status["pq_svid_not_after"] > time.time()
    overlay = status["overlay_ip"]
    assert mesh.ping("n1", overlay)["node_id"] == "n2"
    metrics = mesh.get("n1", "/metrics").text
    for name in (
        'x0tta6bl4_node_links{state="up"} 2.0',
        "x0tta6bl4_node_link_down_events_total",
        'x0tta6bl4_node_handshakes_total{result="ok"}',
        "x0tta6bl4_node_pq_svid_expiry_timestamp_seconds",
        "x0tta6bl4_node_route_count 2.0",
        'x0tta6bl4_node_routing_events_total{event="originated"}',
        'x0tta6bl4_node_routing_events_total{event="announces_received"}',
    ):
        assert name in metrics

    # Every controller down: links, routes and forwarding keep working.
    mesh.stop_controller()
    mesh.wait(lambda: mesh.get("n1", "/v1/status").json()["controller_reachable"] is False)
    assert mesh.ping("n1", "n3")["received"] == 2
    assert mesh.get("n1", "/ready").status_code == 200

    # A node restarts with the same key (state dir) and rejoins; the controller returns.
    key_before = (mesh.tmp / "n3" / "node-key.pem").read_bytes()
    mesh.stop_node("n3")
    mesh.start_controller()
    mesh.start_node("n3")
    mesh.wait(lambda: mesh.get("n3", "/ready").status_code == 200)
    mesh.wait(mesh.all_routes)
    assert (mesh.tmp / "n3" / "node-key.pem").read_bytes() == key_before
    assert mesh.ping("n1", "n3")["received"] == 2
    mesh.wait(lambda: mesh.get("n1", "/v1/status").json()["controller_reachable"] is True)


def _drop_time(mesh: Mesh, peers: tuple[str, ...], gone: str, since: float) -> float:
    """Poll until none of ``peers`` has an up link to ``gone``; the seconds since ``since``
    (a ``time.monotonic()``) it took."""
    mesh.wait(lambda: not any(mesh.link_up(p, gone) for p in peers), timeout=60)
    return time.monotonic() - since


def test_membership_changes_drop_links_at_once(mesh: Mesh) -> None:
    """An admin deleting n3 — still running and heartbeating, its PQ SVID still valid, so
    nothing but the membership can drop its links — drops the links of n1 and n2 to it
    (watch stream -> membership -> links closed), and n3's handshakes are refused from then
    on; a link rule naming two nodes' SPIFFE IDs closes their link. The times printed are the
    figures of docs/node.md ("Membership and links")."""
    n1, n2, n3 = (mesh_node_id(n) for n in ("n1", "n2", "n3"))
    every = [{"from": "*", "to": "*", "action": a, "allow": True} for a in ("link", "talk")]
    # n3 may not join again: without this its next status report (404) would re-register it.
    deny_join = {"from": n3, "to": "*", "action": "join", "allow": False}
    allow_join = {"from": "*", "to": "*", "action": "join", "allow": True}
    answer = mesh.admin("PUT", "/api/v1/policy", json={"rules": [deny_join, allow_join, *every]})
    assert answer.status_code == 200, answer.text
    mesh.wait(lambda: mesh.link_up("n1", "n3") and mesh.link_up("n2", "n3"))
    failed = mesh.get("n1", "/v1/status").json()["counters"].get("handshakes_failed", 0)

    started = time.monotonic()
    assert mesh.admin("DELETE", "/api/v1/nodes/n3").status_code == 204
    took = _drop_time(mesh, ("n1", "n2"), "n3", started)
    print(f"admin delete -> links to the deleted node down on both peers: {took:.3f} s")
    assert mesh.nodes["n3"].poll() is None  # n3 runs on: the membership dropped the links
    # n3 keeps handshaking with its still valid certificate; n1 refuses every attempt.
    mesh.wait(
        lambda: mesh.get("n1", "/v1/status").json()["counters"].get("handshakes_failed", 0) > failed
    )
    assert not mesh.link_up("n1", "n3")
    assert not mesh.link_up("n2", "n3")
    assert mesh.admin("GET", "/api/v1/nodes/n3").status_code == 404
    # What keeps n3 out (docs/api.md, "Deleting a node"): its agent got 404 at its next status
    # report and registers again, and the join rule refuses it, every time.
    denied = 'x0tta6bl4_registrations_rejected_total{reason="policy_denied"}'
    mesh.wait(lambda: mesh.controller_metric(denied) >= 2)
    assert "policy_denied" in (mesh.tmp / "n3.log").read_text()  # the node says why
    assert mesh.admin("GET", "/api/v1/nodes/n3").status_code == 404
    # The deleted node's certificate is published as revoked until its notAfter.
    revoked = mesh.admin("GET", "/api/v1/nodes").json()["revoked"]
    assert [r["node_id"] for r in revoked] == ["n3"]
    # A certificate the mesh CA signs for the deleted node ID (another key, n3's SPIFFE ID)
    # does not link either: the node answers INIT, then refuses FINISH (not a member). n3
    # itself stops first, so that every refusal counted from here on is this handshake's.
    mesh.stop_node("n3")
    unauthorized = 'x0tta6bl4_node_handshake_failures_total{reason="unauthorized"}'
    time.sleep(1.0)
    before = mesh.metric("n1", unauthorized)
    assert mesh.handshake("n1", *mesh.forge("n3")) is HandshakeState.WAIT_CONFIRM
    mesh.wait(lambda: mesh.metric("n1", unauthorized) > before)
    assert not mesh.link_up("n1", "n3")
    assert mesh.link_up("n1", "n2")

    # A link rule by node SPIFFE ID: n1 and n2 may no longer link (both stay members).
    # (n3 stays barred from joining: its status reports, every 5 s, would re-register it.)
    rules = [{"from": n1, "to": n2, "action": "link", "allow": False}, deny_join, allow_join]
    rules += every
    started = time.monotonic()
    assert mesh.admin("PUT", "/api/v1/policy", json={"rules": rules}).status_code == 200
    took = _drop_time(mesh, ("n1",), "n2", started)
    print(f"link rule by node SPIFFE ID -> link closed: {took:.3f} s")
    assert not mesh.link_up("n2", "n1")
    nodes = mesh.admin("GET", "/api/v1/nodes").json()["nodes"]
    assert {n["node_id"] for n in nodes} == {"n1", "n2"}


def test_an_impostor_cannot_take_a_live_node_id(mesh: Mesh) -> None:
    """Issue 12, the original attack: processes claiming n2's node ID with fresh keys — one
    under another node's SPIFFE ID (the node ID mapping binds it to n4), one under n2's own
    SPIFFE ID (a process that obtained n2's identity but not its key): both 409
    node_id_taken; n2's record and links are unchanged and no peer ever completes a
    handshake with an impostor (it never gets a PQ SVID)."""
    fields = ("spiffe_id", "endpoint", "overlay_ip", "ml_dsa_public_key", "pq_svid")

    def record() -> tuple[object, ...]:
        detail = mesh.admin("GET", "/api/v1/nodes/n2").json()
        return tuple(detail[f] for f in fields)

    before = record()
    impostors: list[subprocess.Popen[bytes]] = []
    try:
        refusals = (
            (mesh_node_id("n4"), "node_id_taken"),
            (mesh_node_id("n2"), "node_id_taken"),
        )
        for i, (spiffe_id, reason) in enumerate(refusals):
            name, http = f"impostor{i}", free_port()
            impostors.append(
                spawn_node(
                    mesh.api, "n2", f"127.0.0.1:{free_port()}", http, mesh.tmp / name,
                    env=mesh.env, log=mesh.tmp / f"{name}.log", identity=mesh.identity,
                    spiffe_id=spiffe_id,
                )
            )  # fmt: skip
            log = mesh.tmp / f"{name}.log"
            mesh.wait(lambda log=log, r=reason: r in log.read_text())  # type: ignore[misc]
            status = httpx.get(f"http://127.0.0.1:{http}/v1/status", timeout=5).json()
            assert status["registered"] is False
        assert record() == before
        for proc in impostors:
            assert proc.poll() is None  # still trying, still refused
        assert mesh.link_up("n1", "n2")
        assert mesh.link_up("n3", "n2")
    finally:
        for proc in impostors:
            proc.terminate()
            proc.wait(20)


def test_a_rotated_key_takes_over_and_the_old_certificate_stops_linking(mesh: Mesh) -> None:
    """Issue 12: a second n3 process starts from a copy of n3's state dir with --rotate-key
    (a new key, registered with the old key's rotation proof) while the old n3 keeps running
    with the old key and its still valid PQ SVID. The peers drop their links to the old key
    and link with the new one; the old process never links again. The time printed is the
    membership change -> old links down delay (docs/node.md)."""
    old_udp = f"127.0.0.1:{mesh.udp['n3']}"
    shutil.copytree(mesh.tmp / "n3", mesh.tmp / "n3r")
    old_key = (mesh.tmp / "n3r" / "node-key.pem").read_bytes()
    udp, http = free_port(), free_port()
    new_udp = f"127.0.0.1:{udp}"
    mesh.nodes["n3r"] = spawn_node(
        mesh.api, "n3", new_udp, http, mesh.tmp / "n3r", env=mesh.env,
        log=mesh.tmp / "n3r.log", identity=mesh.identity, extra=("--rotate-key",),
    )  # fmt: skip

    def endpoint(peer: str) -> str | None:
        for link in mesh.get(peer, "/v1/status").json()["links"]:
            if link["peer"] == "n3" and link["state"] == "up":
                return str(link["endpoint"])
        return None

    old_serial = mesh.admin("GET", "/api/v1/nodes/n3").json()["pq_svid_serial"]
    mesh.wait(lambda: mesh.admin("GET", "/api/v1/nodes/n3").json()["endpoint"] == new_udp)
    started = time.monotonic()
    mesh.wait(lambda: all(endpoint(p) != old_udp for p in ("n1", "n2")))
    print(f"key rotation -> links to the old key down: {time.monotonic() - started:.3f} s")
    mesh.wait(lambda: all(endpoint(p) == new_udp for p in ("n1", "n2")))
    assert (mesh.tmp / "n3r" / "node-key.pem").read_bytes() != old_key
    assert mesh.nodes["n3"].poll() is None  # the old key's holder runs on, unlinked
    for _ in range(10):
        assert all(endpoint(p) != old_udp for p in ("n1", "n2"))
        time.sleep(0.3)
    # The old certificate is revoked (published with the rotation) and refused as such.
    listing = mesh.admin("GET", "/api/v1/nodes").json()
    assert [(r["node_id"], r["serial"]) for r in listing["revoked"]] == [("n3", old_serial)]
    assert {n["node_id"]: n["pq_svid_serial"] for n in listing["nodes"]}["n3"] != old_serial
    mesh.wait(
        lambda: any(
            mesh.get(p, "/v1/status").json()["dropped"].get("cert_revoked", 0) > 0
            for p in ("n1", "n2")
        )
    )


def test_a_mesh_ca_certificate_for_an_unregistered_node_id_does_not_link(mesh: Mesh) -> None:
    """Issue 12 (acceptance): a PQ SVID the mesh CA signed for a node ID that was never
    registered, used from a real UDP socket against a real node process: the node answers the
    INIT (the certificate verifies: right CA, valid, the scheme's SPIFFE ID), refuses the
    FINISH as ``unauthorized`` (no current member has that node ID), counts it, and makes no
    link; its links to the members are untouched."""
    unauthorized = 'x0tta6bl4_node_handshake_failures_total{reason="unauthorized"}'
    downs = "x0tta6bl4_node_link_down_events_total"
    before = {n: (mesh.metric(n, unauthorized), mesh.metric(n, downs)) for n in ("n1", "n2")}
    for target in ("n1", "n2"):
        assert mesh.handshake(target, *mesh.forge("ghost")) is HandshakeState.WAIT_CONFIRM
    for name, (refused, down) in before.items():
        mesh.wait(lambda n=name, r=refused: mesh.metric(n, unauthorized) > r)  # type: ignore[misc]
        status = mesh.get(name, "/v1/status").json()
        assert "ghost" not in {link["peer"] for link in status["links"]}
        assert mesh.metric(name, downs) == down  # the members' links never went down
    assert mesh.link_up("n1", "n2")
    assert mesh.link_up("n1", "n3")
    assert mesh.link_up("n2", "n3")
    assert mesh.admin("GET", "/api/v1/nodes/ghost").status_code == 404


def test_an_admin_delete_alone_lets_the_node_register_again(mesh: Mesh) -> None:
    """What DELETE means (docs/api.md, "Deleting a node"): it releases the node ID and drops
    the node's links, but a node that is still running registers again at its next status
    report (404 -> register) and links again — DELETE is for a stale node. Keeping a node
    out takes a join deny for its SPIFFE ID (test_membership_changes_drop_links_at_once)."""
    first = mesh.admin("GET", "/api/v1/nodes/n2").json()["registered_at"]
    assert mesh.admin("DELETE", "/api/v1/nodes/n2").status_code == 204

    def back() -> bool:
        answer = mesh.admin("GET", "/api/v1/nodes/n2")
        return answer.status_code == 200 and answer.json()["registered_at"] > first

    mesh.wait(back)
    mesh.wait(lambda: mesh.link_up("n1", "n2") and mesh.link_up("n3", "n2"))
    assert (
        mesh.controller_metric('x0tta6bl4_registrations_rejected_total{reason="policy_denied"}')
        == 0
    )
