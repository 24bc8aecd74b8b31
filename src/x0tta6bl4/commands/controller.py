"""``x0tta6bl4 controller``: run the control plane; ``controller ca init|rotate``: mesh CA files.

Flags are listed in ``docs/runtime-contract.md``; every one also reads an ``X0_…`` variable
(``SPIFFE_ENDPOINT_SOCKET`` for the Workload API socket; ``X0_ADMIN_SPIFFE_IDS`` is a
comma-separated list). Flags win over the environment.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from x0tta6bl4.commands._options import LogFormatOption, SpiffeSocketOption
from x0tta6bl4.defaults import DEFAULT_TRUST_DOMAIN

__all__ = ["app"]

app = typer.Typer(
    help="Run the x0tta6bl4 controller (control plane API, mesh CA, node admission). The API is "
    "served over TLS only, on --tls-listen (default 0.0.0.0:8443): TLS 1.3 with the "
    "controller's X.509-SVID, mutual TLS with the caller's. --listen (default 0.0.0.0:8080) "
    "is plain HTTP for /health, /ready, /metrics and /ui only; any other path answers "
    "403 tls_required.",
    invoke_without_command=True,
    context_settings={"help_option_names": ["-h", "--help"]},
)
ca_app = typer.Typer(
    help="Create or rotate the mesh CA files (Secret x0tta6bl4-mesh-ca: ca.crt, ca.key).",
    no_args_is_help=True,
)
app.add_typer(ca_app, name="ca")


def _fail(message: str) -> None:
    typer.echo(f"x0tta6bl4 controller: {message}", err=True)
    raise typer.Exit(2)


@app.callback()
def controller(  # noqa: PLR0917 - one parameter per flag
    ctx: typer.Context,
    listen: Annotated[
        str | None,
        typer.Option(
            "--listen",
            envvar="X0_LISTEN",
            help="plain-HTTP HOST:PORT for /health, /ready, /metrics, /ui only "
            "(default: 0.0.0.0:8080)",
        ),
    ] = None,
    tls_listen: Annotated[
        str | None,
        typer.Option(
            "--tls-listen",
            envvar="X0_TLS_LISTEN",
            help="TLS HOST:PORT of the API (every route; mutual TLS with X.509-SVIDs) "
            "(default: 0.0.0.0:8443)",
        ),
    ] = None,
    tls_handshake_timeout: Annotated[
        float | None,
        typer.Option(
            "--tls-handshake-timeout",
            envvar="X0_TLS_HANDSHAKE_TIMEOUT",
            help="seconds a TLS handshake may take before the connection is closed (10)",
        ),
    ] = None,
    tls_max_handshakes: Annotated[
        int | None,
        typer.Option(
            "--tls-max-handshakes",
            envvar="X0_TLS_MAX_HANDSHAKES",
            help="TLS handshakes in progress at most; more connections are closed (256)",
        ),
    ] = None,
    store: Annotated[
        str | None,
        typer.Option(
            "--store",
            envvar="X0_STORE",
            help="sqlite:///PATH, etcd://HOST:PORT[,HOST:PORT...] or etcds://... (TLS with a "
            "client certificate: --etcd-*-file) (default: SQLite under the state directory)",
        ),
    ] = None,
    etcd_ca_file: Annotated[
        Path | None,
        typer.Option("--etcd-ca-file", envvar="X0_ETCD_CA_FILE", help="etcd CA (etcds://)"),
    ] = None,
    etcd_cert_file: Annotated[
        Path | None,
        typer.Option(
            "--etcd-cert-file", envvar="X0_ETCD_CERT_FILE", help="client certificate for etcd"
        ),
    ] = None,
    etcd_key_file: Annotated[
        Path | None,
        typer.Option("--etcd-key-file", envvar="X0_ETCD_KEY_FILE", help="its private key"),
    ] = None,
    state_dir: Annotated[
        Path | None,
        typer.Option(
            "--state-dir", envvar="X0_STATE_DIR", help="local state (default: /var/lib/x0tta6bl4)"
        ),
    ] = None,
    trust_domain: Annotated[
        str | None,
        typer.Option("--trust-domain", envvar="X0_TRUST_DOMAIN", help="SPIFFE trust domain"),
    ] = None,
    spiffe_socket: SpiffeSocketOption = None,
    ca_cert_file: Annotated[
        Path | None,
        typer.Option("--ca-cert-file", envvar="X0_CA_CERT_FILE", help="mesh CA certificate(s)"),
    ] = None,
    ca_key_file: Annotated[
        Path | None,
        typer.Option("--ca-key-file", envvar="X0_CA_KEY_FILE", help="mesh CA ML-DSA-65 key"),
    ] = None,
    local_ca: Annotated[
        bool | None,
        typer.Option(
            "--local-ca/--no-local-ca",
            envvar="X0_LOCAL_CA",
            help="create the mesh CA under the state dir on first start (local mode only)",
        ),
    ] = None,
    admin_token_file: Annotated[
        Path | None,
        typer.Option("--admin-token-file", envvar="X0_ADMIN_TOKEN_FILE", help="admin token"),
    ] = None,
    admin_spiffe_id: Annotated[
        list[str] | None,
        typer.Option(
            "--admin-spiffe-id",
            help="SPIFFE ID allowed to call admin APIs (repeatable; env X0_ADMIN_SPIFFE_IDS, "
            "comma-separated)",
        ),
    ] = None,
    node_id_mapping: Annotated[
        str | None,
        typer.Option(
            "--node-id-mapping",
            envvar="X0_NODE_ID_MAPPING",
            help="which node ID a SPIFFE ID may register: a pattern ending in /{node} "
            "(default: spiffe://<trust domain>/**/node/{node}), or 'none' (no binding by name)",
        ),
    ] = None,
    overlay_cidr: Annotated[
        str | None,
        typer.Option("--overlay-cidr", envvar="X0_OVERLAY_CIDR", help="overlay IPv4 network"),
    ] = None,
    pq_svid_ttl: Annotated[
        int | None,
        typer.Option("--pq-svid-ttl", envvar="X0_PQ_SVID_TTL", help="PQ SVID lifetime, seconds"),
    ] = None,
    node_ttl: Annotated[
        float | None,
        typer.Option("--node-ttl", envvar="X0_NODE_TTL", help="expire nodes silent this long"),
    ] = None,
    fresh_store: Annotated[
        bool | None,
        typer.Option(
            "--fresh-store/--no-fresh-store",
            envvar="X0_FRESH_STORE",
            help="start even though the store this state directory saw holding nodes is "
            "missing or empty (a new, empty store is created)",
        ),
    ] = None,
    max_connections: Annotated[
        int | None,
        typer.Option(
            "--max-connections",
            envvar="X0_MAX_CONNECTIONS",
            help="cap on open HTTP connections (default 2048; lowered to fit RLIMIT_NOFILE)",
        ),
    ] = None,
    log_format: LogFormatOption = None,
    log_level: Annotated[
        str | None,
        typer.Option("--log-level", envvar="X0_LOG_LEVEL", help="log level (default: info)"),
    ] = None,
) -> None:
    """Run the controller: ``x0tta6bl4 controller --listen HOST:PORT --store URL``."""
    if ctx.invoked_subcommand is not None:
        return
    from pydantic import ValidationError

    from x0tta6bl4.controller.ca import CaConfigError
    from x0tta6bl4.controller.config import ControllerSettings
    from x0tta6bl4.logging import configure_logging

    given: dict[str, Any] = {
        "listen": listen,
        "tls_listen": tls_listen,
        "tls_handshake_timeout": tls_handshake_timeout,
        "tls_max_handshakes": tls_max_handshakes,
        "store": store,
        "etcd_ca_file": etcd_ca_file,
        "etcd_cert_file": etcd_cert_file,
        "etcd_key_file": etcd_key_file,
        "state_dir": state_dir,
        "trust_domain": trust_domain,
        "spiffe_socket": spiffe_socket,
        "ca_cert_file": ca_cert_file,
        "ca_key_file": ca_key_file,
        "local_ca": local_ca,
        "admin_token_file": admin_token_file,
        "admin_spiffe_ids": tuple(admin_spiffe_id) if admin_spiffe_id else None,
        "node_id_mapping": node_id_mapping,
        "overlay_cidr": overlay_cidr,
        "pq_svid_ttl": pq_svid_ttl,
        "node_ttl": node_ttl,
        "max_connections": max_connections,
        "fresh_store": fresh_store,
        "log_format": log_format,
        "log_level": log_level,
    }
    try:
        settings = ControllerSettings(**{k: v for k, v in given.items() if v is not None})
    except ValidationError as err:
        first = err.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "settings"
        _fail(f"invalid {where.replace('_', '-')}: {first['msg']}")
        return
    try:
        configure_logging(settings.log_format, settings.log_level)
    except ValueError as err:
        _fail(str(err))
    from x0tta6bl4.controller.server import serve
    from x0tta6bl4.controller.startup import StartupRefusedError

    try:
        serve(settings)
    except (CaConfigError, ValueError, StartupRefusedError) as err:
        _fail(str(err))


@ca_app.command("init")
def ca_init(
    out: Annotated[
        Path, typer.Option("--out", envvar="X0_CA_OUT", help="directory for ca.crt and ca.key")
    ],
    trust_domain: Annotated[
        str, typer.Option("--trust-domain", envvar="X0_TRUST_DOMAIN", help="trust domain")
    ] = DEFAULT_TRUST_DOMAIN,
) -> None:
    """Create a new mesh CA (ML-DSA-65): writes ca.crt and ca.key (0600); never overwrites."""
    from x0tta6bl4.controller.ca import CaConfigError, init_ca_dir
    from x0tta6bl4.crypto.errors import CryptoError
    from x0tta6bl4.identity.errors import IdentityError

    try:
        ca = init_ca_dir(out, trust_domain=trust_domain)
    except (CaConfigError, CryptoError, IdentityError, OSError) as err:
        _fail(str(err))
        return
    typer.echo(f"wrote {out / 'ca.crt'} and {out / 'ca.key'} ({ca!r})")
    typer.echo(
        "kubectl create secret generic x0tta6bl4-mesh-ca "
        f"--from-file=ca.crt={out / 'ca.crt'} --from-file=ca.key={out / 'ca.key'}"
    )


@ca_app.command("rotate")
def ca_rotate(
    directory: Annotated[
        Path, typer.Option("--dir", envvar="X0_CA_DIR", help="directory holding ca.crt, ca.key")
    ],
    trust_domain: Annotated[
        str, typer.Option("--trust-domain", envvar="X0_TRUST_DOMAIN", help="trust domain")
    ] = DEFAULT_TRUST_DOMAIN,
) -> None:
    """Rotate the mesh CA: a new key signs; ca.crt keeps the previous CA(s) for trust."""
    from x0tta6bl4.controller.ca import CaConfigError, rotate_ca_dir
    from x0tta6bl4.crypto.errors import CryptoError
    from x0tta6bl4.identity.errors import IdentityError

    try:
        ca = rotate_ca_dir(directory, trust_domain=trust_domain)
    except (CaConfigError, CryptoError, IdentityError, OSError) as err:
        _fail(str(err))
        return
    typer.echo(f"rotated the mesh CA in {directory}: new signer {ca!r}")


@app.command("etcd-certs")
def etcd_certs(
    out: Annotated[
        Path, typer.Option("--out", envvar="X0_ETCD_CERTS_OUT", help="directory for the files")
    ],
    namespace: Annotated[
        str,
        typer.Option("--namespace", envvar="X0_NAMESPACE", help="the release namespace"),
    ] = "x0tta6bl4-staging",
    replicas: Annotated[
        int, typer.Option("--replicas", envvar="X0_ETCD_REPLICAS", help="etcd members")
    ] = 3,
    host: Annotated[
        list[str] | None,
        typer.Option("--host", help="another name or IP the members are reached by (repeatable)"),
    ] = None,
    days: Annotated[int, typer.Option("--days", help="validity of the certificates")] = 730,
) -> None:
    """Create the etcd TLS files for the chart: a CA, the members' certificate (client and peer
    ports) and the controllers' client certificate; prints the kubectl commands that make the
    Secrets x0tta6bl4-etcd-server-tls and x0tta6bl4-etcd-client-tls. Never overwrites."""
    from x0tta6bl4.controller.store.etcd_tls import chart_hosts, write_etcd_pki

    if not 1 <= replicas <= 7:
        _fail("--replicas must be 1..7")
    if not 1 <= days <= 3650:
        _fail("--days must be 1..3650")
    try:
        pki = write_etcd_pki(out, [*chart_hosts(namespace, replicas), *(host or [])], days=days)
    except (FileExistsError, OSError) as err:
        _fail(str(err))
        return
    d = pki.directory
    typer.echo(f"wrote the etcd CA, member and client certificates to {d} (keep ca.key offline)")
    typer.echo(
        f"kubectl -n {namespace} create secret generic x0tta6bl4-etcd-server-tls "
        f"--from-file=ca.crt={d / 'ca.crt'} --from-file=tls.crt={d / 'server.crt'} "
        f"--from-file=tls.key={d / 'server.key'}"
    )
    typer.echo(
        f"kubectl -n {namespace} create secret generic x0tta6bl4-etcd-client-tls "
        f"--from-file=ca.crt={d / 'ca.crt'} --from-file=tls.crt={d / 'client.crt'} "
        f"--from-file=tls.key={d / 'client.key'}"
    )
