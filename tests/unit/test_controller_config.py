"""Controller settings (flags and X0_ variables) and mesh CA files."""

from __future__ import annotations

import re
import time
from pathlib import Path

import pytest
from pydantic import ValidationError

from x0tta6bl4.controller.ca import (
    CaConfigError,
    CaHolder,
    init_ca_dir,
    load_ca_files,
    rotate_ca_dir,
)
from x0tta6bl4.controller.config import ControllerSettings
from x0tta6bl4.crypto.pqsvid import MeshCA
from x0tta6bl4.hostport import parse_hostport

TD = "x0tta6bl4.mesh"


def test_defaults_follow_the_runtime_contract(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("SPIFFE_ENDPOINT_SOCKET", "X0_SPIFFE_SOCKET", "X0_LISTEN", "X0_STORE"):
        monkeypatch.delenv(name, raising=False)
    s = ControllerSettings()
    assert s.listen == "0.0.0.0:8080"
    assert (s.listen_host, s.listen_port) == ("0.0.0.0", 8080)
    assert s.store_url == "sqlite:///var/lib/x0tta6bl4/controller.db"
    assert s.trust_domain == TD
    assert s.spiffe_socket == "/run/spire/agent-sockets/spire-agent.sock"
    assert s.overlay_cidr == "100.96.0.0/16"
    assert (s.pq_svid_ttl, s.node_ttl) == (3600, 60.0)


def test_environment_variables(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("X0_LISTEN", "127.0.0.1:9000")
    monkeypatch.setenv("X0_STORE", "etcd://a:2379,b:2379")
    monkeypatch.setenv("X0_STATE_DIR", str(tmp_path))
    monkeypatch.setenv("SPIFFE_ENDPOINT_SOCKET", "unix:///run/x.sock")
    monkeypatch.setenv("X0_ADMIN_SPIFFE_IDS", f"spiffe://{TD}/ns/a/sa/b, spiffe://{TD}/ops")
    monkeypatch.setenv("X0_LOCAL_CA", "true")
    monkeypatch.setenv("X0_PQ_SVID_TTL", "600")
    s = ControllerSettings()
    assert s.listen_port == 9000
    assert s.store_url == "etcd://a:2379,b:2379"
    assert s.state_dir == tmp_path
    assert s.spiffe_socket == "unix:///run/x.sock"
    assert s.admin_spiffe_ids == (f"spiffe://{TD}/ns/a/sa/b", f"spiffe://{TD}/ops")
    assert s.local_ca is True
    assert s.pq_svid_ttl == 600
    # Flags (init arguments) win over the environment.
    assert ControllerSettings(listen="127.0.0.1:1").listen_port == 1


@pytest.mark.parametrize(
    "kwargs",
    [
        {"listen": "8080"},
        {"listen": "host:99999"},
        {"store": "mysql://x"},
        {"trust_domain": "Bad Domain"},
        {"overlay_cidr": "10.0.0.0/31"},
        {"overlay_cidr": "fd00::/64"},
        {"admin_spiffe_ids": ("not-an-id",)},
        {"pq_svid_ttl": 0},
        {"node_ttl": -1},
        {"log_format": "xml"},
        {"ca_cert_file": Path("/x")},  # without --ca-key-file
        {"unknown": 1},
    ],
)
def test_invalid_settings_are_refused(kwargs: dict[str, object]) -> None:
    with pytest.raises(ValidationError):
        ControllerSettings(**kwargs)  # type: ignore[arg-type]


def test_node_id_mapping_defaults_to_the_trust_domain_and_is_checked(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("X0_NODE_ID_MAPPING", raising=False)
    assert str(ControllerSettings().node_mapping) == f"spiffe://{TD}/**/node/{{node}}"
    other = ControllerSettings(trust_domain="staging.example")
    assert str(other.node_mapping) == "spiffe://staging.example/**/node/{node}"
    assert other.node_mapping.node_id_for("spiffe://staging.example/ns/a/sa/b/node/w1") == "w1"
    assert not ControllerSettings(node_id_mapping="none").node_mapping.enabled
    monkeypatch.setenv("X0_NODE_ID_MAPPING", f"spiffe://{TD}/ns/mesh/sa/*/node/{{node}}")
    narrow = ControllerSettings().node_mapping
    assert narrow.node_id_for(f"spiffe://{TD}/ns/mesh/sa/app/node/n1") == "n1"
    assert narrow.node_id_for(f"spiffe://{TD}/ns/dev/sa/app/node/n1") is None
    monkeypatch.delenv("X0_NODE_ID_MAPPING")
    for bad, message in (
        (f"spiffe://{TD}/ns/mesh/node", "must end with one /{node} segment"),
        (f"spiffe://{TD}/{{node}}/node/{{node}}", "must end with one /{node} segment"),
        ("spiffe://other.example/**/node/{node}", "outside the trust domain"),
        (f"spiffe://{TD}/ns/**/sa/**/node/{{node}}", "**"),
    ):
        with pytest.raises(ValidationError, match=re.escape(message)):
            ControllerSettings(node_id_mapping=bad)


def test_parse_listen_ipv6() -> None:
    assert parse_hostport("[::1]:8080", "listen address") == ("::1", 8080)


def test_ca_init_load_and_refuse_overwrite(tmp_path: Path) -> None:
    ca = init_ca_dir(tmp_path, trust_domain=TD)
    assert (tmp_path / "ca.key").stat().st_mode & 0o777 == 0o600
    loaded = load_ca_files(tmp_path / "ca.crt", tmp_path / "ca.key", trust_domain=TD)
    assert loaded.signer.cert == ca.cert
    assert len(loaded.bundle) == 1
    with pytest.raises(CaConfigError, match="refusing to overwrite"):
        init_ca_dir(tmp_path, trust_domain=TD)


def test_ca_files_that_do_not_match(tmp_path: Path) -> None:
    a, b = tmp_path / "a", tmp_path / "b"
    init_ca_dir(a, trust_domain=TD)
    init_ca_dir(b, trust_domain=TD)
    with pytest.raises(CaConfigError, match="matching the key"):
        load_ca_files(a / "ca.crt", b / "ca.key", trust_domain=TD)
    with pytest.raises(CaConfigError, match="trust domain"):
        load_ca_files(a / "ca.crt", a / "ca.key", trust_domain="other.example")
    (tmp_path / "junk").write_text("junk")
    with pytest.raises(CaConfigError, match="no PEM certificate"):
        load_ca_files(tmp_path / "junk", a / "ca.key", trust_domain=TD)
    with pytest.raises(CaConfigError, match="not an ML-DSA-65 private key"):
        load_ca_files(a / "ca.crt", tmp_path / "junk", trust_domain=TD)
    with pytest.raises(CaConfigError, match="cannot read"):
        load_ca_files(tmp_path / "missing", a / "ca.key", trust_domain=TD)
    # Key material never appears in the messages.
    key_text = (a / "ca.key").read_text()
    with pytest.raises(CaConfigError) as caught:
        load_ca_files(a / "ca.crt", b / "ca.key", trust_domain=TD)
    assert key_text.splitlines()[1] not in str(caught.value)


def test_rotation_keeps_old_ca_until_it_expires(tmp_path: Path) -> None:
    old = init_ca_dir(tmp_path, trust_domain=TD)
    new = rotate_ca_dir(tmp_path, trust_domain=TD)
    loaded = load_ca_files(tmp_path / "ca.crt", tmp_path / "ca.key", trust_domain=TD)
    assert loaded.signer.cert == new.cert
    assert [c.serial_number for c in loaded.bundle.cas] == [
        new.cert.serial_number,
        old.cert.serial_number,
    ]
    # Long after the old CA's lifetime only the signer would remain — simulate with an old CA
    # that expired: a short-lived CA file plus a current one.
    short = MeshCA.create(TD, now=time.time() - 7200, ttl_seconds=3600)
    current = MeshCA.create(TD, now=time.time())
    (tmp_path / "mixed.crt").write_bytes(current.cert_pem() + short.cert_pem())
    (tmp_path / "mixed.key").write_bytes(current.key_pem())
    mixed = load_ca_files(tmp_path / "mixed.crt", tmp_path / "mixed.key", trust_domain=TD)
    assert len(mixed.bundle) == 1


def test_holder_requires_a_source_and_creates_local_ca(tmp_path: Path) -> None:
    with pytest.raises(CaConfigError, match="no mesh CA configured"):
        CaHolder.from_settings(
            trust_domain=TD,
            state_dir=tmp_path,
            ca_cert_file=None,
            ca_key_file=None,
            local_ca=False,
        )
    holder = CaHolder.from_settings(
        trust_domain=TD, state_dir=tmp_path, ca_cert_file=None, ca_key_file=None, local_ca=True
    )
    first = holder.load()
    # A second start reuses the same CA.
    again = CaHolder.from_settings(
        trust_domain=TD, state_dir=tmp_path, ca_cert_file=None, ca_key_file=None, local_ca=True
    ).load()
    assert again.signer.cert == first.signer.cert
