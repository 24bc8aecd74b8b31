"""Administering a running SPIRE server through its own CLI (``spire-server … -socketPath``).

:class:`SpireServerAdmin` runs ``spire-server`` subcommands against the server's admin API
socket with ``-output json`` and returns what SPIRE answered: join tokens, registration
entries (created in one batch from a ``-data`` file), the trust bundle, attested agents, and
the local X.509 and JWT authorities (``localauthority … prepare / activate / taint / revoke``:
SPIRE's CA rotation). The CLI is SPIRE's supported admin interface and speaks the server API
over the Unix socket, so nothing here re-implements SPIRE's gRPC API.

A failed command raises :class:`~x0tta6bl4.identity.errors.SpireCommandError` quoting SPIRE's
message; a join token never appears in an error or a log.
"""

from __future__ import annotations

import json
import os
import subprocess
import tempfile
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from x0tta6bl4.identity.errors import SpireCommandError

__all__ = ["Authority", "EntrySpec", "SpireServerAdmin"]

AuthorityKind = Literal["x509", "jwt"]


@dataclass(frozen=True)
class EntrySpec:
    """A registration entry to create: ``spiffe_id`` for workloads matching every selector
    (``"unix:gid:1900000001"``) under agent ``parent_id``. TTLs in seconds (None: the server's
    defaults); ``entry_id`` fixes the entry's ID (SPIRE generates one otherwise)."""

    spiffe_id: str
    parent_id: str
    selectors: tuple[str, ...]
    x509_svid_ttl: int | None = None
    jwt_svid_ttl: int | None = None
    entry_id: str | None = None
    hint: str = ""
    dns_names: tuple[str, ...] = field(default=())

    def to_json(self) -> dict[str, Any]:
        selectors = []
        for selector in self.selectors:
            kind, sep, value = selector.partition(":")
            if not sep or not kind or not value:
                raise ValueError(f"a selector is TYPE:VALUE, not {selector!r}")
            selectors.append({"type": kind, "value": value})
        body: dict[str, Any] = {
            "spiffe_id": self.spiffe_id,
            "parent_id": self.parent_id,
            "selectors": selectors,
        }
        if self.x509_svid_ttl is not None:
            body["x509_svid_ttl"] = self.x509_svid_ttl
        if self.jwt_svid_ttl is not None:
            body["jwt_svid_ttl"] = self.jwt_svid_ttl
        if self.entry_id:
            body["entry_id"] = self.entry_id
        if self.hint:
            body["hint"] = self.hint
        if self.dns_names:
            body["dns_names"] = list(self.dns_names)
        return body


@dataclass(frozen=True)
class Authority:
    """One local authority as ``localauthority … show`` reports it."""

    authority_id: str
    expires_at: int

    @classmethod
    def from_json(cls, data: object) -> Authority | None:
        if not isinstance(data, dict) or not data.get("authority_id"):
            return None
        return cls(str(data["authority_id"]), int(data.get("expires_at", 0) or 0))


class SpireServerAdmin:
    """``spire-server`` admin commands against the server API socket ``socket_path``."""

    def __init__(self, binary: Path, socket_path: Path, *, timeout: float = 30.0) -> None:
        self.binary = Path(binary)
        self.socket_path = Path(socket_path)
        self.timeout = timeout

    # ------------------------------------------------------------------ plumbing

    def run(self, *args: str, secret: bool = False) -> dict[str, Any]:
        """Run ``spire-server ARGS -socketPath … -output json`` and parse its answer.

        ``secret``: the answer holds a credential, so SPIRE's own output is kept out of any
        error message.
        """
        command = " ".join(args[:2])
        argv = [str(self.binary), *args, "-socketPath", str(self.socket_path), "-output", "json"]
        try:
            done = subprocess.run(  # noqa: S603 - our binary, argv built here
                argv, capture_output=True, text=True, timeout=self.timeout, check=False
            )
        except subprocess.TimeoutExpired:
            raise SpireCommandError(command, f"no answer within {self.timeout:g} s") from None
        except OSError as err:
            raise SpireCommandError(command, f"cannot run {self.binary}: {err.strerror}") from None
        if done.returncode != 0:
            detail = "(output withheld: it may hold a credential)" if secret else _tail(done)
            raise SpireCommandError(command, f"exit status {done.returncode}: {detail}")
        try:
            answer = json.loads(done.stdout) if done.stdout.strip() else {}
        except ValueError:
            detail = "(output withheld)" if secret else done.stdout[-300:]
            raise SpireCommandError(command, f"answer is not JSON: {detail}") from None
        if not isinstance(answer, dict):
            raise SpireCommandError(command, "answer is not a JSON object")
        return answer

    def healthy(self) -> bool:
        """``spire-server healthcheck``: the server answers on its admin socket."""
        try:
            done = subprocess.run(  # noqa: S603
                [str(self.binary), "healthcheck", "-socketPath", str(self.socket_path)],
                capture_output=True,
                timeout=self.timeout,
                check=False,
            )
        except (OSError, subprocess.TimeoutExpired):
            return False
        return done.returncode == 0

    # ------------------------------------------------------------------ agents

    def generate_token(self, *, spiffe_id: str | None = None, ttl: int = 600) -> str:
        """A single-use join token; ``spiffe_id`` also creates an alias entry naming the agent
        that attests with it (the parent of workload entries)."""
        args = ["token", "generate", "-ttl", str(ttl)]
        if spiffe_id:
            args += ["-spiffeID", spiffe_id]
        answer = self.run(*args, secret=True)
        token = answer.get("value")
        if not isinstance(token, str) or not token:
            raise SpireCommandError("token generate", "no token in the answer")
        return token

    def agents(self) -> list[dict[str, Any]]:
        """Attested agents (``agent list``)."""
        agents = self.run("agent", "list").get("agents", [])
        return [a for a in agents if isinstance(a, dict)]

    def evict_agent(self, spiffe_id: str) -> None:
        """Forget an attested agent; it must attest anew."""
        self.run("agent", "evict", "-spiffeID", spiffe_id)

    # ------------------------------------------------------------------ entries

    def create_entries(self, entries: Sequence[EntrySpec]) -> list[str]:
        """Create ``entries`` in one batch; their IDs, in order. Any refusal is an error."""
        if not entries:
            return []
        body = json.dumps({"entries": [e.to_json() for e in entries]})
        fd, name = tempfile.mkstemp(prefix="x0-spire-entries-", suffix=".json")
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as handle:
                handle.write(body)
            answer = self.run("entry", "create", "-data", name)
        finally:
            os.unlink(name)
        ids: list[str] = []
        for spec, result in zip(entries, answer.get("results", []), strict=False):
            status = result.get("status", {})
            if status.get("code", 0) not in (0, None):
                raise SpireCommandError(
                    "entry create", f"{spec.spiffe_id}: {status.get('message', 'refused')}"
                )
            ids.append(str(result.get("entry", {}).get("id", "")))
        if len(ids) != len(entries):
            raise SpireCommandError("entry create", f"{len(ids)} results for {len(entries)}")
        return ids

    def entries(self) -> list[dict[str, Any]]:
        """Every registration entry (``entry show``)."""
        found = self.run("entry", "show").get("entries", [])
        return [e for e in found if isinstance(e, dict)]

    def delete_entries(self, entry_ids: Iterable[str]) -> None:
        """Delete entries by ID (one batch)."""
        ids = list(entry_ids)
        if not ids:
            return
        fd, name = tempfile.mkstemp(prefix="x0-spire-delete-", suffix=".json")
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as handle:
                json.dump({"ids": ids}, handle)
            answer = self.run("entry", "delete", "-file", name)
        finally:
            os.unlink(name)
        for result in answer.get("results", []):
            status = result.get("status", {})
            if status.get("code", 0) not in (0, None):
                raise SpireCommandError(
                    "entry delete", f"{result.get('id', '?')}: {status.get('message', 'refused')}"
                )

    # ------------------------------------------------------------------ bundle and CA

    def bundle_pem(self) -> str:
        """The trust domain's X.509 authorities as PEM (``bundle show -format pem``)."""
        argv = [str(self.binary), "bundle", "show", "-socketPath", str(self.socket_path)]
        try:
            done = subprocess.run(  # noqa: S603
                [*argv, "-format", "pem"],
                capture_output=True,
                text=True,
                timeout=self.timeout,
                check=False,
            )
        except (OSError, subprocess.TimeoutExpired) as err:
            raise SpireCommandError("bundle show", str(err)) from None
        if done.returncode != 0 or "BEGIN CERTIFICATE" not in done.stdout:
            raise SpireCommandError("bundle show", _tail(done))
        return done.stdout

    def bundle(self) -> dict[str, Any]:
        """The bundle as SPIRE's API returns it (X.509 and JWT authorities, sequence)."""
        return self.run("bundle", "show")

    def authorities(self, kind: AuthorityKind) -> dict[str, Authority | None]:
        """``localauthority KIND show``: the ``active``, ``prepared`` and ``old`` authority."""
        answer = self.run("localauthority", kind, "show")
        return {
            slot: Authority.from_json(answer.get(slot)) for slot in ("active", "prepared", "old")
        }

    def prepare_authority(self, kind: AuthorityKind) -> Authority:
        """Prepare the next authority (published in the bundle, not yet signing)."""
        answer = self.run("localauthority", kind, "prepare")
        found = Authority.from_json(answer.get("prepared_authority"))
        if found is None:
            raise SpireCommandError(f"localauthority {kind} prepare", "no prepared authority")
        return found

    def activate_authority(self, kind: AuthorityKind, authority_id: str) -> None:
        """Sign with the prepared authority from now on (the old one stays trusted)."""
        self.run("localauthority", kind, "activate", "-authorityID", authority_id)

    def taint_authority(self, kind: AuthorityKind, authority_id: str) -> None:
        """Mark the old authority tainted: agents replace every SVID it signed."""
        self.run("localauthority", kind, "taint", "-authorityID", authority_id)

    def revoke_authority(self, kind: AuthorityKind, authority_id: str) -> None:
        """Remove the (tainted) old authority from the bundle."""
        self.run("localauthority", kind, "revoke", "-authorityID", authority_id)


def _tail(done: subprocess.CompletedProcess[str]) -> str:
    text = (done.stderr or done.stdout or "").strip()
    return text[-500:] if text else "no output"
