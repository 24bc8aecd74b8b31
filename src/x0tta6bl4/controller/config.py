"""Controller settings: every flag of ``x0tta6bl4 controller`` and its ``X0_…`` variable.

:class:`ControllerSettings` is a pydantic-settings model. The CLI passes the flags it was
given; anything not given comes from the environment (``X0_LISTEN``, ``X0_STORE`` …, and
``SPIFFE_ENDPOINT_SOCKET`` for the Workload API socket) and then from the defaults of
``docs/runtime-contract.md``. Invalid values fail loudly with the name of the setting.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

from pydantic import AliasChoices, Field, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from x0tta6bl4 import defaults
from x0tta6bl4.controller.ipam import DEFAULT_OVERLAY_CIDR, parse_overlay_cidr
from x0tta6bl4.controller.store.etcd_tls import EtcdTlsFiles
from x0tta6bl4.controller.store.url import default_store_url
from x0tta6bl4.hostport import parse_hostport
from x0tta6bl4.httpserver import MAX_CONNECTIONS, MIN_CONNECTIONS
from x0tta6bl4.identity.errors import InvalidSpiffeIdError
from x0tta6bl4.identity.node_ids import NodeIdMapping, default_node_mapping
from x0tta6bl4.identity.spiffe_ids import (
    DEFAULT_TRUST_DOMAIN,
    parse_spiffe_id,
    parse_trust_domain,
)

__all__ = [
    "DEFAULT_LISTEN",
    "DEFAULT_SPIFFE_SOCKET",
    "DEFAULT_STATE_DIR",
    "DEFAULT_TLS_LISTEN",
    "JWT_AUDIENCE",
    "ControllerSettings",
]

DEFAULT_LISTEN = "0.0.0.0:8080"
DEFAULT_TLS_LISTEN = "0.0.0.0:8443"
DEFAULT_STATE_DIR = Path(defaults.DEFAULT_STATE_DIR)
DEFAULT_SPIFFE_SOCKET = "/run/spire/agent-sockets/spire-agent.sock"
JWT_AUDIENCE = "x0tta6bl4-controller"
"""The audience nodes request their JWT-SVID for."""


class ControllerSettings(BaseSettings):
    """Configuration of one controller replica (see ``docs/controller.md``)."""

    model_config = SettingsConfigDict(
        env_prefix="X0_", extra="forbid", frozen=True, populate_by_name=True
    )

    listen: str = DEFAULT_LISTEN
    tls_listen: str = DEFAULT_TLS_LISTEN
    store: str | None = None
    state_dir: Path = DEFAULT_STATE_DIR
    trust_domain: str = DEFAULT_TRUST_DOMAIN
    spiffe_socket: str = Field(
        default=DEFAULT_SPIFFE_SOCKET,
        validation_alias=AliasChoices(
            "spiffe_socket", "SPIFFE_ENDPOINT_SOCKET", "X0_SPIFFE_SOCKET"
        ),
    )
    ca_cert_file: Path | None = None
    etcd_ca_file: Path | None = None
    etcd_cert_file: Path | None = None
    etcd_key_file: Path | None = None
    ca_key_file: Path | None = None
    local_ca: bool = False
    admin_token_file: Path | None = None
    admin_spiffe_ids: Annotated[tuple[str, ...], NoDecode] = ()
    node_id_mapping: str | None = None
    overlay_cidr: str = DEFAULT_OVERLAY_CIDR
    pq_svid_ttl: int = Field(default=3600, ge=60, le=30 * 86400)
    node_ttl: float = Field(default=60.0, gt=0, le=86400)
    log_format: str | None = None
    log_level: str = "info"
    max_body_bytes: int = Field(default=64 * 1024, ge=1024, le=16 * 1024 * 1024)
    clock_skew_seconds: int = Field(default=60, ge=1, le=3600)
    watch_max_timeout: float = Field(default=60.0, gt=0, le=600)
    sse_keepalive_seconds: float = Field(default=15.0, gt=0, le=300)
    fresh_store: bool = False
    tls_handshake_timeout: float = Field(default=10.0, gt=0, le=120)
    tls_max_handshakes: int = Field(default=256, ge=1, le=65536)
    max_connections: int = Field(default=MAX_CONNECTIONS, ge=MIN_CONNECTIONS, le=1_000_000)

    @field_validator("listen", "tls_listen")
    @classmethod
    def _check_listen(cls, value: str) -> str:
        parse_hostport(value, "listen address")
        return value

    @field_validator("store")
    @classmethod
    def _check_store(cls, value: str | None) -> str | None:
        if value is None or value == "":
            return None
        if not value.startswith(("sqlite:///", "etcd://", "etcds://")):
            raise ValueError(
                "store must be sqlite:///PATH, etcd://HOST:PORT[,HOST:PORT...] or "
                "etcds://HOST:PORT[,HOST:PORT...] (TLS)"
            )
        return value

    @field_validator("trust_domain")
    @classmethod
    def _check_trust_domain(cls, value: str) -> str:
        return parse_trust_domain(value).name

    @field_validator("overlay_cidr")
    @classmethod
    def _check_cidr(cls, value: str) -> str:
        return str(parse_overlay_cidr(value))

    @field_validator("admin_spiffe_ids", mode="before")
    @classmethod
    def _split_admin_ids(cls, value: Any) -> Any:
        if isinstance(value, str):
            return tuple(part.strip() for part in value.split(",") if part.strip())
        return value

    @field_validator("admin_spiffe_ids")
    @classmethod
    def _check_admin_ids(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        return tuple(str(parse_spiffe_id(v)) for v in value)

    @field_validator("node_id_mapping")
    @classmethod
    def _check_node_id_mapping(cls, value: str | None) -> str | None:
        if value is None or not value.strip():
            return None
        try:
            NodeIdMapping(value)
        except InvalidSpiffeIdError as err:
            raise ValueError(str(err)) from None
        return value.strip()

    @field_validator("log_format")
    @classmethod
    def _check_log_format(cls, value: str | None) -> str | None:
        if value not in (None, "json", "console"):
            raise ValueError("log format must be json or console")
        return value

    @model_validator(mode="after")
    def _check_ca(self) -> ControllerSettings:
        plain, tls = (
            parse_hostport(self.listen, "listen address"),
            parse_hostport(self.tls_listen, "tls listen address"),
        )
        if plain[1] != 0 and plain[1] == tls[1]:
            raise ValueError(
                f"--listen ({self.listen}) and --tls-listen ({self.tls_listen}) need different "
                "ports: plain HTTP and TLS are two listeners"
            )
        mapping = self.node_mapping
        if mapping.enabled and mapping.trust_domain != parse_trust_domain(self.trust_domain):
            raise ValueError(
                f"--node-id-mapping {str(mapping)!r} is outside the trust domain "
                f"{self.trust_domain!r}: no node could register"
            )
        if (self.ca_cert_file is None) != (self.ca_key_file is None):
            raise ValueError("--ca-cert-file and --ca-key-file must be given together")
        etcd_files = (self.etcd_ca_file, self.etcd_cert_file, self.etcd_key_file)
        if any(f is not None for f in etcd_files) and not all(f is not None for f in etcd_files):
            raise ValueError(
                "--etcd-ca-file, --etcd-cert-file and --etcd-key-file must be given together"
            )
        return self

    @property
    def node_mapping(self) -> NodeIdMapping:
        """The node ID ↔ SPIFFE ID binding (default ``spiffe://<td>/**/node/{node}``)."""
        return NodeIdMapping(self.node_id_mapping or default_node_mapping(self.trust_domain))

    @property
    def listen_host(self) -> str:
        """Host part of :attr:`listen`."""
        return parse_hostport(self.listen, "listen address")[0]

    @property
    def listen_port(self) -> int:
        """Port part of :attr:`listen`."""
        return parse_hostport(self.listen, "listen address")[1]

    @property
    def tls_host(self) -> str:
        """Host part of :attr:`tls_listen`."""
        return parse_hostport(self.tls_listen, "tls listen address")[0]

    @property
    def tls_port(self) -> int:
        """Port part of :attr:`tls_listen`."""
        return parse_hostport(self.tls_listen, "tls listen address")[1]

    @property
    def etcd_tls(self) -> EtcdTlsFiles | None:
        """The etcd client certificate files (for an ``etcds://`` store), or None."""
        if self.etcd_ca_file is None or self.etcd_cert_file is None or self.etcd_key_file is None:
            return None
        return EtcdTlsFiles(self.etcd_ca_file, self.etcd_cert_file, self.etcd_key_file)

    @property
    def store_url(self) -> str:
        """The store URL, defaulting to a SQLite file under the state directory."""
        if self.store:
            return self.store
        return default_store_url(self.state_dir)
