"""Settings of ``x0tta6bl4 node``: every flag and its ``X0_…`` variable (docs/runtime-contract.md).

:class:`NodeSettings` is a pydantic-settings model, like the controller's: the CLI passes the
flags it was given; anything not given comes from the environment (``X0_CONTROLLER``,
``X0_LISTEN_UDP`` …, ``SPIFFE_ENDPOINT_SOCKET`` for the Workload API socket, and the
Kubernetes downward-API variables ``X0_NODE_NAME`` and ``X0_POD_IP``) and then from the
defaults. Unknown settings are refused; invalid values fail with the name of the setting.
"""

from __future__ import annotations

import socket
from pathlib import Path
from typing import Annotated, Any

from pydantic import AliasChoices, BeforeValidator, Field, ValidationInfo, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from x0tta6bl4.defaults import (
    DEFAULT_CONTROLLER,
    DEFAULT_NODE_HTTP,
    DEFAULT_NODE_LISTEN_UDP,
    DEFAULT_STATE_DIR,
    DEFAULT_TRUST_DOMAIN,
)
from x0tta6bl4.hostport import format_hostport, parse_hostport
from x0tta6bl4.identity.errors import IdentityError
from x0tta6bl4.identity.node_ids import (
    MAX_NODE_ID_LENGTH,
    NODE_ID_RE,
    controller_id_for,
    node_id_from_name,
)
from x0tta6bl4.identity.spiffe_ids import parse_spiffe_id
from x0tta6bl4.protocol.failure import DEFAULT_DEAD_AFTER, DEFAULT_INTERVAL

__all__ = [
    "MAX_NODE_ID_LENGTH",
    "HostPort",
    "NodeSettings",
    "node_id_from_name",
]


def _hostport(value: Any, info: ValidationInfo) -> Any:
    if isinstance(value, str):
        return parse_hostport(value, f"--{(info.field_name or 'address').replace('_', '-')}")
    return value


HostPort = Annotated[tuple[str, int], NoDecode, BeforeValidator(_hostport)]
"""An address given as ``HOST:PORT`` (flag or variable) or as ``(host, port)``."""


class NodeSettings(BaseSettings):
    """Configuration of one node agent (see ``docs/node.md``)."""

    model_config = SettingsConfigDict(
        env_prefix="X0_", extra="forbid", frozen=True, populate_by_name=True
    )

    controller: str = DEFAULT_CONTROLLER
    listen_udp: HostPort = parse_hostport(DEFAULT_NODE_LISTEN_UDP, "--listen-udp")
    http: HostPort = parse_hostport(DEFAULT_NODE_HTTP, "--http")
    advertise: HostPort | None = None
    node_id: str | None = None
    state_dir: Path = Path(DEFAULT_STATE_DIR)
    spiffe_socket: str | None = Field(
        default=None,
        validation_alias=AliasChoices(
            "spiffe_socket", "SPIFFE_ENDPOINT_SOCKET", "X0_SPIFFE_SOCKET"
        ),
    )
    trust_domain: str = DEFAULT_TRUST_DOMAIN
    tun: bool = False
    #: Replace the key at start, with a rotation proof by the old one (docs/api.md).
    rotate_key: bool = False
    heartbeat_interval: float = DEFAULT_INTERVAL
    dead_after: int = DEFAULT_DEAD_AFTER
    #: The packet path: ``native`` / ``python``; None: native when built (``x0tta6bl4.dataplane``).
    dataplane: str | None = None
    #: The Kubernetes node this pod runs on (downward API), the default node ID.
    node_name: str | None = None
    #: This pod's IP (downward API), the default advertised host.
    pod_ip: str | None = None
    #: The controller's SPIFFE ID (None: next to the node's own, see expected_controller).
    controller_spiffe_id: str | None = None

    @field_validator("controller")
    @classmethod
    def _check_controller(cls, value: str) -> str:
        if not value.startswith("https://"):
            raise ValueError(
                f"--controller must be the controller's https:// URL (its API is served over "
                f"TLS only, e.g. {DEFAULT_CONTROLLER}), got {value!r}"
            )
        return value

    @field_validator("controller_spiffe_id")
    @classmethod
    def _check_controller_id(cls, value: str | None, info: ValidationInfo) -> str | None:
        if value is None:
            return None
        trust_domain = info.data.get("trust_domain", DEFAULT_TRUST_DOMAIN)
        try:
            return str(parse_spiffe_id(value, trust_domain=trust_domain))
        except IdentityError as err:
            raise ValueError(f"--controller-spiffe-id: {err}") from None

    @field_validator("heartbeat_interval")
    @classmethod
    def _check_heartbeat(cls, value: float) -> float:
        if not 0.005 <= value <= 60:
            raise ValueError("--heartbeat-interval must be within 0.005..60 seconds")
        return value

    @field_validator("dead_after")
    @classmethod
    def _check_dead_after(cls, value: int) -> int:
        if not 1 <= value <= 100:
            raise ValueError("--dead-after must be within 1..100")
        return value

    @field_validator("dataplane")
    @classmethod
    def _check_dataplane(cls, value: str | None) -> str | None:
        if value not in (None, "native", "python"):
            raise ValueError(f"--dataplane must be native or python, got {value!r}")
        return value

    @field_validator("node_id")
    @classmethod
    def _check_node_id(cls, value: str | None) -> str | None:
        if value is not None and not NODE_ID_RE.fullmatch(value):
            raise ValueError(
                f"--node-id must be 1..{MAX_NODE_ID_LENGTH} letters, digits, '.', '_' or '-', "
                f"starting and ending with a letter or digit; got {value!r}"
            )
        return value

    def expected_controller(self, own_spiffe_id: str) -> str:
        """The SPIFFE ID the controller must present: ``--controller-spiffe-id``, else the
        controller's ID next to ``own_spiffe_id`` (:func:`controller_id_for`).

        Raises ValueError when neither gives one.
        """
        if self.controller_spiffe_id is not None:
            return self.controller_spiffe_id
        derived = controller_id_for(own_spiffe_id)
        if derived is None:
            raise ValueError(
                f"cannot tell the controller's SPIFFE ID from this node's ({own_spiffe_id}, "
                "not …/node/<name>): pass --controller-spiffe-id"
            )
        return str(derived)

    def resolved_node_id(self) -> str:
        """--node-id, else X0_NODE_NAME (the Kubernetes node), else the hostname; a name
        longer than 64 characters is shortened (:func:`node_id_from_name`).

        Raises ValueError naming the source when the result is still not a valid node id.
        """
        if self.node_id is not None:
            return self.node_id
        source = "X0_NODE_NAME" if self.node_name else "the hostname"
        node_id = node_id_from_name(self.node_name or socket.gethostname())
        if not NODE_ID_RE.fullmatch(node_id):
            raise ValueError(
                f"{source} {node_id!r} is not a valid node id (letters, digits, '.', '_', '-'); "
                "pass --node-id"
            )
        return node_id

    def resolved_advertise(self, bound_port: int) -> str:
        """Where peers reach us: --advertise, else X0_POD_IP, else the bound or a local IP."""
        if self.advertise is not None:
            return format_hostport(*self.advertise)
        host = self.pod_ip or self.listen_udp[0]
        if host in ("0.0.0.0", "::", ""):  # noqa: S104
            host = _local_ip()
        return format_hostport(host, bound_port)


def _local_ip() -> str:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        try:
            probe.connect(("192.0.2.1", 9))  # no packet is sent
            return str(probe.getsockname()[0])
        except OSError:
            return "127.0.0.1"
