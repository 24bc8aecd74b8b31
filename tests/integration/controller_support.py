"""Helpers for the controller tests: a real embedded SPIFFE issuer, node requests, a running
controller app (in process, lifespan included) and a controller subprocess."""

from __future__ import annotations

import base64
import contextlib
import os
import secrets
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
from fastapi import FastAPI
from spiffe import SpiffeId

from x0tta6bl4.controller.app import create_app
from x0tta6bl4.controller.config import JWT_AUDIENCE, ControllerSettings
from x0tta6bl4.crypto.pqsvid import proof_of_possession
from x0tta6bl4.crypto.suite import SigningKey
from x0tta6bl4.identity.issuer import EmbeddedIssuer, IssuerConfig
from x0tta6bl4.identity.issuer.entries import parse_entry
from x0tta6bl4.identity.spiffe_ids import parse_trust_domain
from x0tta6bl4.identity.workload_source import WorkloadSource

TD = "x0tta6bl4.mesh"
NODE_A = f"spiffe://{TD}/ns/mesh/sa/node-a"
NODE_B = f"spiffe://{TD}/ns/mesh/sa/node-b"
NODE_DEV = f"spiffe://{TD}/ns/dev/sa/node-dev"
ADMIN_ID = f"spiffe://{TD}/ns/ops/sa/admin"
ADMIN_TOKEN = "test-admin-token-" + "x" * 16
IDS = (NODE_A, NODE_B, NODE_DEV, ADMIN_ID)


@dataclass
class Identity:
    """A running issuer and a Workload API client for it."""

    issuer: EmbeddedIssuer
    source: WorkloadSource

    def token(self, spiffe_id: str, audience: str = JWT_AUDIENCE) -> str:
        svid = self.source.fetch_jwt_svid(audience, subject=SpiffeId(spiffe_id))
        token: str = svid.token
        return token


@contextlib.contextmanager
def running_issuer(
    directory: Path, trust_domain: str = TD, ids: tuple[str, ...] = IDS
) -> Iterator[Identity]:
    """An embedded issuer on a Unix socket in ``directory`` giving this uid every ID."""
    td = parse_trust_domain(trust_domain)
    uid = os.getuid()
    config = IssuerConfig(
        socket_path=directory / "workload.sock",
        state_dir=directory / "state",
        trust_domain=td,
        entries=tuple(parse_entry(f"{uid}={sid}", td) for sid in ids),
    )
    issuer = EmbeddedIssuer(config)
    issuer.start()
    try:
        yield Identity(issuer, WorkloadSource(config.socket_path, trust_domain=trust_domain))
    finally:
        issuer.stop()


def pop_fields(
    key: SigningKey,
    *,
    spiffe_id: str,
    node_id: str,
    nonce: bytes | None = None,
    timestamp: int | None = None,
) -> dict[str, Any]:
    """A proof of possession body for ``key``."""
    nonce = nonce if nonce is not None else secrets.token_bytes(32)
    timestamp = timestamp if timestamp is not None else int(time.time())
    signature = proof_of_possession(
        key, spiffe_id=spiffe_id, node_id=node_id, nonce=nonce, timestamp=timestamp
    )
    return {
        "nonce": base64.b64encode(nonce).decode(),
        "timestamp": timestamp,
        "signature": base64.b64encode(signature).decode(),
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


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def controller_settings(state_dir: Path, identity: Identity, **extra: Any) -> ControllerSettings:
    """Settings for a local controller with a local CA, the admin token and admin ID."""
    token_file = state_dir / "admin-token"
    state_dir.mkdir(parents=True, exist_ok=True)
    token_file.write_text(ADMIN_TOKEN + "\n")
    values: dict[str, Any] = {
        "listen": "127.0.0.1:0",
        "state_dir": state_dir,
        "trust_domain": TD,
        "spiffe_socket": str(identity.issuer.socket_path),
        "local_ca": True,
        "admin_token_file": token_file,
        "admin_spiffe_ids": (ADMIN_ID,),
    }
    values.update(extra)
    return ControllerSettings(**values)


@contextlib.asynccontextmanager
async def app_client(app: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    """Run ``app``'s lifespan and yield a client talking to it in process."""
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://controller") as c:
            yield c


@contextlib.asynccontextmanager
async def controller(
    state_dir: Path, identity: Identity, **extra: Any
) -> AsyncIterator[tuple[FastAPI, httpx.AsyncClient]]:
    """A controller app with its lifespan running, and a client for it."""
    app = create_app(
        controller_settings(state_dir, identity, **extra),
        jwt_bundle_fetch=identity.source.fetch_jwt_bundles,
    )
    async with app_client(app) as client:
        yield app, client


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
) -> subprocess.Popen[bytes]:
    """Start ``x0tta6bl4 controller ARGS`` as a subprocess (logs to ``log``); ``popen``: more
    ``subprocess.Popen`` arguments (e.g. the group id a SPIRE entry selects)."""
    full_env = {**os.environ, **(env or {})}
    command = [sys.executable, "-m", "x0tta6bl4", "controller", *args]
    if log is None:
        return subprocess.Popen(
            command,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.STDOUT,
            env=full_env,
            **(popen or {}),
        )
    with open(log, "ab") as out:  # the child keeps its own descriptor
        return subprocess.Popen(
            command, stdout=out, stderr=subprocess.STDOUT, env=full_env, **(popen or {})
        )


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
) -> subprocess.Popen[bytes]:
    """Start ``x0tta6bl4 node`` on loopback as a subprocess, appending to ``log``.

    It listens on and advertises ``udp`` (HOST:PORT), serves HTTP on ``127.0.0.1:http_port``
    and keeps its key in ``state_dir``; ``extra`` flags follow. ``env`` is the whole
    environment of the child; ``popen``: more ``subprocess.Popen`` arguments.
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
        return subprocess.Popen(
            args, stdout=out, stderr=subprocess.STDOUT, env=env, **(popen or {})
        )


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


class ServerThread:
    """An ASGI app on a real uvicorn server in a background thread (its own event loop)."""

    def __init__(self, app: Any, port: int | None = None) -> None:
        import threading

        import uvicorn

        self.port = port if port is not None else free_port()
        config = uvicorn.Config(
            app, host="127.0.0.1", port=self.port, lifespan="on", log_config=None
        )
        self.server = uvicorn.Server(config)
        self._thread = threading.Thread(target=self.server.run, daemon=True)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def __enter__(self) -> ServerThread:
        self._thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                raise AssertionError("uvicorn did not start")
            time.sleep(0.01)
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self._thread.join(timeout=30)
