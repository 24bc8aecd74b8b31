"""etcd over TLS with client certificates (issue #12, "The store speaks TLS too"), real etcd.

A one-member cluster from Debian's etcd binary serves its client and peer ports over TLS and
requires a client certificate signed by its etcd CA. The controller's store (``etcds://``
with ``--etcd-*-file``) works through it; a client without a certificate, with a certificate
of another CA, or speaking plain gRPC is refused; the URL and flag combinations that would
silently skip TLS are refused before anything connects.
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import aetcd
import grpc
import pytest

from tests.integration.etcd_cluster import ETCD_MISSING_REASON, EtcdCluster, etcd_binary
from x0tta6bl4.controller.store.errors import InvalidStoreUrlError, StoreUnavailableError
from x0tta6bl4.controller.store.etcd import EtcdStore
from x0tta6bl4.controller.store.etcd_tls import (
    EtcdTlsFiles,
    TlsEtcdClient,
    chart_hosts,
    write_etcd_pki,
)
from x0tta6bl4.controller.store.url import open_store
from x0tta6bl4.policy import Policy, PolicyRule

pytestmark = [
    pytest.mark.etcd,
    pytest.mark.skipif(etcd_binary() is None, reason=ETCD_MISSING_REASON),
]


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EtcdCluster]:
    with EtcdCluster(tmp_path_factory.mktemp("etcd-tls"), size=1, tls=True) as running:
        yield running


async def test_store_works_over_tls_with_the_client_certificate(cluster: EtcdCluster) -> None:
    store = open_store(cluster.url(), state_dir="/nonexistent", etcd_tls=cluster.client_tls)
    assert isinstance(store, EtcdStore)
    assert "etcds://" in repr(store)
    async with store:
        assert await store.ping()
        policy = Policy(rules=(PolicyRule(source="*", to="*", action="link", allow=True),))
        revision = await store.put_policy(policy, None)
        assert (await store.get_policy()).revision == revision


async def _try_get(client: aetcd.Client) -> BaseException | None:
    try:
        async with asyncio.timeout(10):
            await client.connect()
            await client.get(b"/x0tta6bl4/policy")
    except Exception as err:
        return err
    finally:
        await client.close()
    return None


async def test_a_client_without_a_certificate_is_refused(cluster: EtcdCluster) -> None:
    host, port = cluster.endpoints[0]
    ca = cluster.client_tls.ca_file.read_bytes()
    # TLS, trusting the server, but presenting no certificate.
    no_cert = TlsEtcdClient(
        host=host,
        port=port,
        timeout=3,
        credentials=lambda: grpc.ssl_channel_credentials(root_certificates=ca),
    )
    assert await _try_get(no_cert) is not None
    # Plain gRPC to the TLS port.
    plain = aetcd.Client(host=host, port=port, timeout=3)
    assert await _try_get(plain) is not None
    # The right client certificate works on the same member (the refusals are about the cert).
    good = TlsEtcdClient(
        host=host, port=port, timeout=3, credentials=cluster.client_tls.channel_credentials
    )
    assert await _try_get(good) is None


async def test_a_certificate_of_another_ca_is_refused(cluster: EtcdCluster, tmp_path: Path) -> None:
    other = write_etcd_pki(tmp_path / "other", ["127.0.0.1"], days=1).client
    host, port = cluster.endpoints[0]
    ca = cluster.client_tls.ca_file.read_bytes()

    def foreign() -> grpc.ChannelCredentials:
        return grpc.ssl_channel_credentials(
            root_certificates=ca,
            private_key=other.key_file.read_bytes(),
            certificate_chain=other.cert_file.read_bytes(),
        )

    client = TlsEtcdClient(host=host, port=port, timeout=3, credentials=foreign)
    assert await _try_get(client) is not None
    # And a controller trusting another CA does not accept this etcd either.
    store = EtcdStore(cluster.endpoints, tls=other, timeout=2.0)
    with pytest.raises(StoreUnavailableError, match="CERTIFICATE_VERIFY_FAILED"):
        async with store:
            await store.ping()


def test_urls_and_files_that_would_skip_tls_are_refused(tmp_path: Path) -> None:
    files = write_etcd_pki(tmp_path / "pki", ["127.0.0.1"], days=1).client
    with pytest.raises(InvalidStoreUrlError, match="etcds:// needs --etcd-ca-file"):
        open_store("etcds://127.0.0.1:2379", state_dir=tmp_path)
    with pytest.raises(InvalidStoreUrlError, match="plain etcd://"):
        open_store("etcd://127.0.0.1:2379", state_dir=tmp_path, etcd_tls=files)
    with pytest.raises(InvalidStoreUrlError, match="need an etcds://"):
        open_store("sqlite:///x.db", state_dir=tmp_path, etcd_tls=files)
    missing = EtcdTlsFiles(files.ca_file, files.cert_file, tmp_path / "nope.key")
    with pytest.raises(InvalidStoreUrlError, match="--etcd-key-file"):
        open_store("etcds://127.0.0.1:2379", state_dir=tmp_path, etcd_tls=missing)
    garbage = tmp_path / "garbage.pem"
    garbage.write_text("-----BEGIN CERTIFICATE-----\nnope\n-----END CERTIFICATE-----\n")
    with pytest.raises(InvalidStoreUrlError, match="etcd TLS files"):
        open_store(
            "etcds://127.0.0.1:2379",
            state_dir=tmp_path,
            etcd_tls=EtcdTlsFiles(garbage, files.cert_file, files.key_file),
        )


def _controller(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "x0tta6bl4", "controller", *args],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
        check=False,
    )


def test_controller_refuses_etcds_without_its_client_certificate(tmp_path: Path) -> None:
    result = _controller(
        "--store", "etcds://127.0.0.1:1", "--local-ca", "--state-dir", str(tmp_path)
    )
    assert result.returncode == 2
    assert "--etcd-ca-file" in result.stderr
    result = _controller("--store", "etcds://127.0.0.1:1", "--etcd-ca-file", str(tmp_path / "x"))
    assert result.returncode == 2
    assert "must be given together" in result.stderr


def test_etcd_certs_command_writes_the_chart_files_once(tmp_path: Path) -> None:
    out = tmp_path / "etcd-certs"
    result = subprocess.run(
        [sys.executable, "-m", "x0tta6bl4", "controller", "etcd-certs", "--out", str(out),
         "--namespace", "x0", "--replicas", "3"],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    for name in ("ca.crt", "ca.key", "server.crt", "server.key", "client.crt", "client.key"):
        assert (out / name).is_file()
    for key in ("ca.key", "server.key", "client.key"):
        assert (out / key).stat().st_mode & 0o077 == 0
    assert "x0tta6bl4-etcd-server-tls" in result.stdout
    assert "x0tta6bl4-etcd-client-tls" in result.stdout
    from cryptography import x509

    server = x509.load_pem_x509_certificate((out / "server.crt").read_bytes())
    names = server.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    dns = set(names.get_values_for_type(x509.DNSName))
    assert set(chart_hosts("x0", 3)) - {"127.0.0.1"} <= dns
    assert "x0tta6bl4-etcd-2.x0tta6bl4-etcd.x0.svc" in dns
    again = subprocess.run(
        [sys.executable, "-m", "x0tta6bl4", "controller", "etcd-certs", "--out", str(out)],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert again.returncode == 2
    assert "refusing to overwrite" in again.stderr
