"""Helpers for the controller tests: a real embedded SPIFFE issuer, node requests, a running
controller (in process on its real TLS and plain-HTTP listeners, lifespan included; or a
subprocess) and clients that speak to it the way nodes do (mutual TLS with an X.509-SVID).

The issuer gives this test process every ID of ``IDS`` (uid entries), so a test can act as
any of them; child processes (controllers, nodes) get exactly their own ID through process
entries in the issuer's entries file (:meth:`Identity.attest`), which take precedence."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import os
import secrets
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
from fastapi import FastAPI
from spiffe import SpiffeId

from x0tta6bl4.controller.config import JWT_AUDIENCE, ControllerSettings
from x0tta6bl4.controller.registration import rotation_proof
from x0tta6bl4.controller.server import ControllerServer, build_server
from x0tta6bl4.crypto.pqsvid import proof_of_possession
from x0tta6bl4.crypto.suite import SigningKey
from x0tta6bl4.identity.issuer import EmbeddedIssuer, IssuerConfig
from x0tta6bl4.identity.issuer.entries import parse_entry, process_start_time
from x0tta6bl4.identity.spiffe_ids import parse_trust_domain
from x0tta6bl4.identity.workload_source import WorkloadSource
from x0tta6bl4.tls.client import tls_client
from x0tta6bl4.tls.credentials import StaticCredentials, TlsCredentials

TD = "x0tta6bl4.mesh"


def mesh_node_id(node_id: str, trust_domain: str = TD, namespace: str = "mesh") -> str:
    """The SPIFFE ID of mesh node ``node_id`` in the tests' namespace (docs/identity.md)."""
    return f"spiffe://{trust_domain}/ns/{namespace}/sa/x0tta6bl4-app/node/{node_id}"


# Node identities follow the scheme, so the controller's default node ID mapping
# (spiffe://<td>/**/node/{node}) binds each to one node ID: NODE_A may register "node-1" only,
# NODE_B "node-b", NODE_DEV "dev-1". NODE_A_TWIN is another SPIFFE ID bound to "node-1" (the
# same node name in another namespace): the first registration decides which one owns it.
NODE_A = mesh_node_id("node-1")
NODE_B = mesh_node_id("node-b")
NODE_DEV = mesh_node_id("dev-1", namespace="dev")
NODE_A_TWIN = mesh_node_id("node-1", namespace="mesh-b")
# A Kubernetes node name longer than a node ID (64): bound to its shortened form.
LONG_NODE_NAME = "worker-" + "long" * 25 + ".eu-west-1.compute.internal"
NODE_LONG = mesh_node_id(LONG_NODE_NAME)
ADMIN_ID = f"spiffe://{TD}/ns/ops/sa/admin"
CONTROLLER_ID = f"spiffe://{TD}/ns/mesh/sa/x0tta6bl4-app/controller"
CHECK_ID = f"spiffe://{TD}/ns/mesh/sa/x0tta6bl4-check/check"
ADMIN_TOKEN = "test-admin-token-" + "x" * 16
IDS = (NODE_A, NODE_B, NODE_DEV, NODE_A_TWIN, NODE_LONG, ADMIN_ID, CONTROLLER_ID, CHECK_ID)


PRESENTED: dict[str, bytes] = {}
"""SHA-256 of the X.509-SVID this process last fetched for each SPIFFE ID — the certificate
its TLS clients present for it, so the credential :func:`pop_fields` binds proofs to."""


@dataclass
class Identity:
    """A running issuer and a Workload API client for it."""

    issuer: EmbeddedIssuer
    source: WorkloadSource
    entries_file: Path | None = None
    _attested: dict[int, str] = field(default_factory=dict)

    def token(self, spiffe_id: str, audience: str = JWT_AUDIENCE) -> str:
        svid = self.source.fetch_jwt_svid(audience, subject=SpiffeId(spiffe_id))
        token: str = svid.token
        return token

    def svid(self, spiffe_id: str) -> TlsCredentials:
        """The current X.509-SVID of ``spiffe_id`` (this uid holds every ID) as TLS
        credentials."""
        ctx = self.source.fetch_x509_context()
        for svid in ctx.x509_svids:
            if str(svid.spiffe_id) == spiffe_id:
                td = svid.spiffe_id.trust_domain
                credentials = TlsCredentials.from_svid(svid, ctx.x509_bundle_set, td)
                assert credentials.leaf_sha256 is not None
                PRESENTED[spiffe_id] = credentials.leaf_sha256
                return credentials
        raise AssertionError(f"the issuer gives this process no SVID for {spiffe_id}")

    def credentials(self, spiffe_id: str | None = None) -> StaticCredentials:
        """TLS credentials presenting ``spiffe_id``'s SVID (None: only the trust bundle)."""
        if spiffe_id is not None:
            return StaticCredentials(self.svid(spiffe_id))
        authorities = list(self.issuer.x509_bundle().x509_authorities)
        return StaticCredentials(TlsCredentials.trust_only(authorities, self.issuer.trust_domain))

    def attest(self, pid: int, spiffe_id: str) -> None:
        """Give exactly process ``pid`` the SVID of ``spiffe_id`` (a process entry)."""
        assert self.entries_file is not None, "this issuer has no entries file"
        start = process_start_time(pid)
        assert start is not None, f"process {pid} is not running"
        self._attested[pid] = f"pid:{pid}@{start}={spiffe_id}"
        tmp = self.entries_file.with_suffix(".tmp")
        tmp.write_text("".join(f"{line}\n" for line in self._attested.values()))
        tmp.chmod(0o600)
        os.replace(tmp, self.entries_file)


@contextlib.contextmanager
def running_issuer(
    directory: Path, trust_domain: str = TD, ids: tuple[str, ...] = IDS
) -> Iterator[Identity]:
    """An embedded issuer on a Unix socket in ``directory`` giving this test process every ID
    of ``ids`` (process entries for its own pid) and each child process exactly the ID
    :meth:`Identity.attest` gives it (its entries file); other processes of this uid get
    nothing."""
    td = parse_trust_domain(trust_domain)
    me = os.getpid()
    entries_file = directory / "entries"
    config = IssuerConfig(
        socket_path=directory / "workload.sock",
        state_dir=directory / "state",
        trust_domain=td,
        entries=tuple(parse_entry(f"pid:{me}={sid}", td) for sid in ids),
        entries_file=entries_file,
    )
    issuer = EmbeddedIssuer(config)
    issuer.start()
    try:
        identity = Identity(
            issuer, WorkloadSource(config.socket_path, trust_domain=trust_domain), entries_file
        )
        for sid in ids:  # what this process presents for each ID (see PRESENTED)
            identity.svid(sid)
        yield identity
    finally:
        issuer.stop()


def pop_fields(
    key: SigningKey,
    *,
    spiffe_id: str,
    node_id: str,
    nonce: bytes | None = None,
    timestamp: int | None = None,
    credential_sha256: bytes | None = None,
) -> dict[str, Any]:
    """A proof of possession body for ``key``, bound to ``credential_sha256`` (by default the
    X.509-SVID this process presents for ``spiffe_id``, :data:`PRESENTED`; 32 zero bytes for
    an ID it holds none of)."""
    nonce = nonce if nonce is not None else secrets.token_bytes(32)
    timestamp = timestamp if timestamp is not None else int(time.time())
    if credential_sha256 is None:
        credential_sha256 = PRESENTED.get(spiffe_id, bytes(32))
    signature = proof_of_possession(
        key,
        spiffe_id=spiffe_id,
        node_id=node_id,
        nonce=nonce,
        timestamp=timestamp,
        credential_sha256=credential_sha256,
    )
    return {
        "nonce": base64.b64encode(nonce).decode(),
        "timestamp": timestamp,
        "signature": base64.b64encode(signature).decode(),
        "credential_sha256": credential_sha256.hex(),
    }


def register_body(
    key: SigningKey,
    *,
    spiffe_id: str,
    node_id: str,
    endpoint: str = "127.0.0.1:7810",
    **pop: Any,
) -> dict[str, Any]:
    """A complete ``POST /api/v1/nodes/register`` body."""
    return {
        "node_id": node_id,
        "endpoint": endpoint,
        "ml_dsa_public_key": base64.b64encode(key.public_bytes).decode(),
        "pop": pop_fields(key, spiffe_id=spiffe_id, node_id=node_id, **pop),
    }


def rotation_body(
    previous: SigningKey, new: SigningKey, *, spiffe_id: str, node_id: str
) -> dict[str, Any]:
    """A register body for ``new`` with the rotation proof of ``previous`` (both bound to the
    credential :func:`pop_fields` binds to)."""
    body = register_body(new, spiffe_id=spiffe_id, node_id=node_id)
    nonce = base64.b64decode(body["pop"]["nonce"])
    signature = rotation_proof(
        previous,
        new.public_bytes,
        spiffe_id=spiffe_id,
        node_id=node_id,
        nonce=nonce,
        timestamp=body["pop"]["timestamp"],
        credential_sha256=bytes.fromhex(body["pop"]["credential_sha256"]),
    )
    body["rotation"] = {"signature": base64.b64encode(signature).decode()}
    return body


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def controller_settings(state_dir: Path, identity: Identity, **extra: Any) -> ControllerSettings:
    """Settings for a local controller with a local CA, the admin token and admin ID."""
    token_file = state_dir / "admin-token"
    state_dir.mkdir(parents=True, exist_ok=True)
    token_file.write_text(ADMIN_TOKEN + "\n")
    values: dict[str, Any] = {
        "listen": "127.0.0.1:0",
        "tls_listen": "127.0.0.1:0",
        "state_dir": state_dir,
        "trust_domain": TD,
        "spiffe_socket": str(identity.issuer.socket_path),
        "local_ca": True,
        "admin_token_file": token_file,
        "admin_spiffe_ids": (ADMIN_ID,),
    }
    values.update(extra)
    return ControllerSettings(**values)


class ControllerClients:
    """Clients of one running controller, as its callers reach it.

    ``tls()`` is a TLS client presenting no certificate (admin-token and JWT-SVID callers);
    ``tls(spiffe_id)`` presents that identity's X.509-SVID (mutual TLS, as nodes do);
    ``plain`` speaks plain HTTP to the probe port. Every TLS client checks that the server is
    ``CONTROLLER_ID``. ``get``/``post``/``put``/``delete`` go through ``tls()``.
    """

    def __init__(self, identity: Identity, api: str, plain: str) -> None:
        self.identity = identity
        self.api = api
        self.plain_url = plain
        self._tls: dict[str | None, httpx.AsyncClient] = {}
        self.plain = httpx.AsyncClient(base_url=plain, timeout=30)

    def tls(self, spiffe_id: str | None = None) -> httpx.AsyncClient:
        client = self._tls.get(spiffe_id)
        if client is None:
            client = tls_client(
                self.api, self.identity.credentials(spiffe_id), CONTROLLER_ID, timeout=30
            )
            self._tls[spiffe_id] = client
        return client

    async def get(self, url: str, **kwargs: Any) -> httpx.Response:
        return await self.tls().get(url, **kwargs)

    async def post(self, url: str, **kwargs: Any) -> httpx.Response:
        return await self.tls().post(url, **kwargs)

    async def put(self, url: str, **kwargs: Any) -> httpx.Response:
        return await self.tls().put(url, **kwargs)

    async def delete(self, url: str, **kwargs: Any) -> httpx.Response:
        return await self.tls().delete(url, **kwargs)

    async def patch(self, url: str, **kwargs: Any) -> httpx.Response:
        return await self.tls().patch(url, **kwargs)

    def stream(self, method: str, url: str, **kwargs: Any) -> Any:
        return self.tls().stream(method, url, **kwargs)

    async def aclose(self) -> None:
        for client in self._tls.values():
            await client.aclose()
        await self.plain.aclose()


@contextlib.asynccontextmanager
async def running_controller(
    settings: ControllerSettings, identity: Identity, *, controller_id: str = CONTROLLER_ID
) -> AsyncIterator[tuple[ControllerServer, ControllerClients]]:
    """A controller on its real TLS and plain-HTTP listeners (loopback, free ports) in this
    event loop, presenting ``controller_id``'s SVID, and clients for it."""
    server = build_server(
        settings, graceful_timeout=2, tls_credentials=identity.credentials(controller_id)
    )
    task = asyncio.create_task(server.serve())
    try:
        deadline = time.monotonic() + 30
        while not server.server.started:
            if task.done():
                task.result()
                raise AssertionError("the controller stopped while starting")
            if time.monotonic() > deadline:
                raise AssertionError("the controller did not start within 30 s")
            await asyncio.sleep(0.02)
        clients = ControllerClients(
            identity,
            f"https://127.0.0.1:{server.tls_port}",
            f"http://127.0.0.1:{server.plain_port}",
        )
        try:
            yield server, clients
        finally:
            await clients.aclose()
    finally:
        server.server.should_exit = True
        await task
        server.close()


@contextlib.asynccontextmanager
async def controller(
    state_dir: Path, identity: Identity, **extra: Any
) -> AsyncIterator[tuple[FastAPI, ControllerClients]]:
    """A controller (real listeners, lifespan running) and clients for it."""
    settings = controller_settings(state_dir, identity, **extra)
    async with running_controller(settings, identity) as (server, clients):
        yield server.app, clients


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def spawn_controller(
    args: list[str],
    env: dict[str, str] | None = None,
    log: Path | None = None,
    popen: Mapping[str, Any] | None = None,
    *,
    identity: Identity | None = None,
    spiffe_id: str = CONTROLLER_ID,
) -> subprocess.Popen[bytes]:
    """Start ``x0tta6bl4 controller ARGS`` as a subprocess (logs to ``log``); ``popen``: more
    ``subprocess.Popen`` arguments (e.g. the group id a SPIRE entry selects).

    Without ``--tls-listen`` in ``args`` (or ``X0_TLS_LISTEN`` in ``env``) its TLS listener
    gets a free loopback port (:func:`controller_api` names it); with ``identity`` the process
    is given ``spiffe_id`` (its X.509-SVID) by the issuer."""
    full_env = {**os.environ, **(env or {})}
    if "--tls-listen" not in args and "X0_TLS_LISTEN" not in (env or {}):
        args = [*args, "--tls-listen", f"127.0.0.1:{free_port()}"]
    command = [sys.executable, "-m", "x0tta6bl4", "controller", *args]
    if log is None:
        proc = subprocess.Popen(
            command,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.STDOUT,
            env=full_env,
            **(popen or {}),
        )
    else:
        with open(log, "ab") as out:  # the child keeps its own descriptor
            proc = subprocess.Popen(
                command, stdout=out, stderr=subprocess.STDOUT, env=full_env, **(popen or {})
            )
    if identity is not None:
        identity.attest(proc.pid, spiffe_id)
    return proc


def controller_api(proc: subprocess.Popen[bytes]) -> str:
    """The ``https://`` API URL of a controller started by :func:`spawn_controller`."""
    args = [str(a) for a in proc.args]  # type: ignore[union-attr]
    return f"https://{args[args.index('--tls-listen') + 1]}"


def spawn_node(
    controller_url: str,
    node_id: str,
    udp: str,
    http_port: int,
    state_dir: Path,
    *,
    env: dict[str, str],
    log: Path,
    extra: Sequence[str] = (),
    popen: Mapping[str, Any] | None = None,
    identity: Identity | None = None,
    spiffe_id: str | None = None,
) -> subprocess.Popen[bytes]:
    """Start ``x0tta6bl4 node`` on loopback as a subprocess, appending to ``log``.

    It listens on and advertises ``udp`` (HOST:PORT), serves HTTP on ``127.0.0.1:http_port``
    and keeps its key in ``state_dir``; ``extra`` flags follow. ``env`` is the whole
    environment of the child; ``popen``: more ``subprocess.Popen`` arguments.
    ``controller_url`` is the controller's ``https://`` API. With ``identity`` the process is
    given ``spiffe_id`` (default: :func:`mesh_node_id` of ``node_id``) by the issuer.
    """
    args = [
        sys.executable, "-m", "x0tta6bl4", "node",
        "--controller", controller_url,
        "--listen-udp", udp,
        "--advertise", udp,
        "--http", f"127.0.0.1:{http_port}",
        "--node-id", node_id,
        "--state-dir", str(state_dir),
        *extra,
    ]  # fmt: skip
    with open(log, "ab") as out:  # the child keeps its own descriptor
        proc = subprocess.Popen(
            args, stdout=out, stderr=subprocess.STDOUT, env=env, **(popen or {})
        )
    if identity is not None:
        identity.attest(proc.pid, spiffe_id or mesh_node_id(node_id))
    return proc


def wait_ready(base_url: str, proc: subprocess.Popen[bytes], timeout: float = 30.0) -> None:
    """Poll ``/ready`` until 200; fail if the process exits first."""
    deadline = time.monotonic() + timeout
    last = ""
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"controller exited with {proc.returncode}")
        try:
            r = httpx.get(f"{base_url}/ready", timeout=2)
            if r.status_code == 200:
                return
            last = r.text
        except httpx.HTTPError as err:
            last = repr(err)
        time.sleep(0.05)
    raise AssertionError(f"controller not ready after {timeout} s: {last}")


def tls_request(
    api: str,
    identity: Identity,
    method: str,
    path: str,
    *,
    spiffe_id: str | None = None,
    **kwargs: Any,
) -> httpx.Response:
    """One request to a controller's TLS API from synchronous code: mutual TLS with
    ``spiffe_id``'s SVID (None: no client certificate), the server checked as
    ``CONTROLLER_ID``. Runs its own event loop (in a thread when one is already running)."""

    async def go() -> httpx.Response:
        credentials = identity.credentials(spiffe_id)
        async with tls_client(api, credentials, CONTROLLER_ID, timeout=30) as client:
            response = await client.request(method, path, **kwargs)
            await response.aread()
            return response

    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(go())
    import concurrent.futures

    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        return pool.submit(asyncio.run, go()).result()
