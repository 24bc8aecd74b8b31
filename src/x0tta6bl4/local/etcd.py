"""A local etcd cluster for ``up --store etcd``: members from Debian's ``etcd`` binary.

The cluster speaks TLS only, as the chart's does: a fresh etcd CA under the state directory
(:func:`~x0tta6bl4.controller.store.etcd_tls.write_etcd_pki`) signs the members' certificate
(client and peer ports, ``127.0.0.1``/``localhost``) and the controllers' client certificate;
members require a client certificate on both ports, and the controllers use ``etcds://``.

:class:`EtcdPlan` chooses names, ports and data directories and builds the command line of
each member (``--initial-cluster-state=new`` on a fresh data directory, ``existing`` when a
kept ``--state-dir`` already holds one, so a rerun finds its data again). The members run under
the :class:`~x0tta6bl4.local.supervisor.Supervisor` like every other component; readiness is
etcd's own ``/health`` on the client port. Stopping is the supervisor's SIGTERM, which etcd
handles cleanly. A missing binary is a :class:`~x0tta6bl4.local.errors.PrerequisiteError`
that says how to install it.
"""

from __future__ import annotations

import os
import platform
import shutil
from dataclasses import dataclass
from pathlib import Path

from x0tta6bl4.controller.store.etcd_tls import EtcdPki, member_tls_args, write_etcd_pki
from x0tta6bl4.local.errors import PrerequisiteError
from x0tta6bl4.local.ports import PortAllocator
from x0tta6bl4.local.supervisor import ProcessSpec

__all__ = [
    "ETCD_INSTALL_HINT",
    "EtcdMember",
    "EtcdPlan",
    "etcd_binary",
    "etcd_env",
    "find_etcd",
    "member_argv",
]

ETCD_INSTALL_HINT = (
    "--store etcd needs the etcd server binary, which is not installed: run "
    "`apt-get install etcd-server` (or `make system`), or use --store sqlite"
)


def etcd_binary() -> str | None:
    """Path of the ``etcd`` binary (on ``PATH`` or ``/usr/bin/etcd``), or None."""
    found = shutil.which("etcd")
    if found:
        return found
    return "/usr/bin/etcd" if os.access("/usr/bin/etcd", os.X_OK) else None


def find_etcd() -> str:
    """Path of the ``etcd`` binary; :class:`PrerequisiteError` with the install hint if none."""
    found = etcd_binary()
    if found is None:
        raise PrerequisiteError(ETCD_INSTALL_HINT)
    return found


def etcd_env() -> dict[str, str]:
    """Extra environment for etcd members (etcd 3.4 refuses non-amd64 unless told)."""
    env: dict[str, str] = {}
    machine = platform.machine().lower()
    if machine not in ("x86_64", "amd64"):
        env["ETCD_UNSUPPORTED_ARCH"] = {"aarch64": "arm64"}.get(machine, machine)
    return env


def member_argv(
    binary: str,
    *,
    name: str,
    data_dir: Path,
    client_url: str,
    peer_url: str,
    initial_cluster: str,
    token: str,
    tls: tuple[Path, Path, Path] | None = None,
) -> list[str]:
    """The command line of one loopback member of a new cluster.

    ``initial_cluster`` is ``NAME=PEER_URL,…`` for every member; ``token`` names the
    cluster. Elections are tuned fast (heartbeat 50 ms, election timeout 500 ms); the log
    (zap, warnings and worse) goes to stderr. ``tls`` = (CA, certificate, key): serve both
    ports with TLS and require client certificates (the URLs must then be ``https://``).
    """
    extra = [] if tls is None else member_tls_args(*tls)
    return [
        binary,
        f"--name={name}",
        f"--data-dir={data_dir}",
        f"--listen-client-urls={client_url}",
        f"--advertise-client-urls={client_url}",
        f"--listen-peer-urls={peer_url}",
        f"--initial-advertise-peer-urls={peer_url}",
        f"--initial-cluster={initial_cluster}",
        "--initial-cluster-state=new",
        f"--initial-cluster-token={token}",
        "--heartbeat-interval=50",
        "--election-timeout=500",
        "--logger=zap",
        "--log-outputs=stderr",
        "--log-level=warn",
        *extra,
    ]


@dataclass(frozen=True)
class EtcdMember:
    """One member: name, loopback ports, data directory."""

    name: str
    client_port: int
    peer_port: int
    data_dir: Path

    @property
    def client_url(self) -> str:
        return f"https://127.0.0.1:{self.client_port}"

    @property
    def peer_url(self) -> str:
        return f"https://127.0.0.1:{self.peer_port}"


class EtcdPlan:
    """The members of a local cluster of ``size`` under ``base`` and their process specs."""

    def __init__(self, base: Path, logs: Path, ports: PortAllocator, size: int = 3) -> None:
        if size < 1:
            raise ValueError("an etcd cluster needs at least one member")
        self.binary = find_etcd()
        self.logs = logs
        self.members = [
            EtcdMember(
                name=f"etcd-{index}",
                client_port=ports.free("tcp"),
                peer_port=ports.free("tcp"),
                data_dir=base / f"m{index}",
            )
            for index in range(size)
        ]
        # A kept state dir: the members' data says who is in the cluster (ports may differ
        # from the last run, so it is simplest and safe to start the cluster anew).
        for member in self.members:
            if member.data_dir.exists():
                shutil.rmtree(member.data_dir)
        # A fresh etcd CA each run (ports and so on are new too): nothing to trust from before.
        pki_dir = base / "pki"
        if pki_dir.exists():
            shutil.rmtree(pki_dir)
        self.pki: EtcdPki = write_etcd_pki(pki_dir, ["127.0.0.1", "localhost"], days=30)

    @property
    def store_url(self) -> str:
        """The controllers' ``--store`` URL naming every member (TLS: :attr:`pki`'s client
        files go with it as ``--etcd-ca-file`` … ``--etcd-key-file``)."""
        return "etcds://" + ",".join(f"127.0.0.1:{m.client_port}" for m in self.members)

    def env(self) -> dict[str, str]:
        """Environment for the members (see :func:`etcd_env`)."""
        return etcd_env()

    def specs(self, token: str) -> list[ProcessSpec]:
        """One process spec per member (``token`` names this cluster)."""
        initial = ",".join(f"{m.name}={m.peer_url}" for m in self.members)
        return [
            ProcessSpec(
                name=member.name,
                kind="etcd",
                log=self.logs / f"{member.name}.log",
                env=self.env(),
                argv=member_argv(
                    self.binary,
                    name=member.name,
                    data_dir=member.data_dir,
                    client_url=member.client_url,
                    peer_url=member.peer_url,
                    initial_cluster=initial,
                    token=token,
                    tls=(self.pki.ca, self.pki.server_cert, self.pki.server_key),
                ),
            )
            for member in self.members
        ]
