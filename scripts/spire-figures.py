#!/usr/bin/env python3
"""Measure real SPIRE's SVID rotation, entry-deletion and CA-rotation figures (docs/identity.md,
"SVID lifetimes and rotation, measured") with the settings ``x0tta6bl4 up --identity spire``
uses. Needs root (group ids) and the SPIRE build (``scripts/components/build spire``).

    .venv/bin/python scripts/spire-figures.py [--ttl 20] [--sync 1] [--rounds 4]

Prints one JSON document: server+agent start, first SVID served, certificate lifetimes, the
time between rotations seen on a ``FetchX509SVID`` stream, entry deleted -> refused, and the
CA rotation steps (prepare -> in the bundle, activate+taint -> re-signed, revoke -> gone).
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import shutil
import tempfile
import time
from pathlib import Path

from spiffe import TrustDomain, WorkloadApiClient
from spiffe.workloadapi.x509_context import X509Context

from x0tta6bl4.identity.spire import require_spire
from x0tta6bl4.local.ports import PortAllocator
from x0tta6bl4.local.spire import LocalSpire, SpireSettings
from x0tta6bl4.local.supervisor import Supervisor
from x0tta6bl4.local.workloads import LocalWorkload

TD = "x0tta6bl4.mesh"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--ttl", type=float, default=20.0, help="entry X.509-SVID TTL, seconds")
    parser.add_argument("--sync", type=float, default=1.0, help="agent/server sync periods, s")
    parser.add_argument("--rounds", type=int, default=4, help="rotations to watch")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="x0fig-", dir="/tmp"))
    supervisor = Supervisor()
    spire = LocalSpire(
        require_spire(),
        trust_domain=TD,
        base=work / "spire",
        runtime=work,
        logs=work / "logs",
        ports=PortAllocator("127.0.0.1"),
        settings=SpireSettings(
            x509_svid_ttl=args.ttl,
            jwt_svid_ttl=min(args.ttl, 300.0),
            sync_interval=args.sync,
            cache_reload_interval=args.sync,
        ),
    )
    me = LocalWorkload("self", f"spiffe://{TD}/ns/local/sa/x0tta6bl4-app/node/figures",
                       os.getuid(), os.getgid())  # fmt: skip
    figures: dict[str, object] = {"ttl_s": args.ttl, "sync_s": args.sync}
    t0 = time.monotonic()
    try:
        spire.start(supervisor, [me], timeout=120)
        figures["server_and_agent_ready_s"] = round(time.monotonic() - t0, 1)
        client = WorkloadApiClient(f"unix://{spire.agent_socket}", default_timeout=30)

        def context() -> X509Context:
            while True:
                try:
                    return client.fetch_x509_context()
                except Exception:  # not served yet / being replaced
                    time.sleep(0.1)

        first = context()
        figures["first_svid_s"] = round(time.monotonic() - t0, 1)
        seen: list[tuple[float, X509Context]] = []
        handle = client.stream_x509_contexts(
            lambda ctx: seen.append((time.monotonic(), ctx)), lambda err: None
        )
        while len(seen) < args.rounds + 1:
            time.sleep(0.2)
        handle.cancel()
        figures["lifetimes_s"] = [
            round((c.default_svid.leaf.not_valid_after_utc
                   - c.default_svid.leaf.not_valid_before_utc).total_seconds())
            for _, c in seen
        ]  # fmt: skip
        figures["rotation_gaps_s"] = [round(b[0] - a[0], 1) for a, b in itertools.pairwise(seen)]

        def authorities() -> int:
            bundle = context().x509_bundle_set.get_bundle_for_trust_domain(TrustDomain(TD))
            return 0 if bundle is None else len(bundle.x509_authorities)

        admin = spire.admin
        old = admin.authorities("x509")["active"]
        assert old is not None
        t = time.monotonic()
        prepared = admin.prepare_authority("x509")
        while authorities() < 2:
            time.sleep(0.1)
        figures["ca_prepared_in_bundle_s"] = round(time.monotonic() - t, 1)
        issuer = context().default_svid.leaf.issuer
        admin.activate_authority("x509", prepared.authority_id)
        admin.taint_authority("x509", old.authority_id)
        t = time.monotonic()
        while context().default_svid.leaf.issuer == issuer:
            time.sleep(0.1)
        figures["ca_taint_to_resigned_s"] = round(time.monotonic() - t, 1)
        admin.revoke_authority("x509", old.authority_id)
        t = time.monotonic()
        while authorities() > 1:
            time.sleep(0.1)
        figures["ca_revoke_to_gone_s"] = round(time.monotonic() - t, 1)

        t = time.monotonic()
        admin.delete_entries([spire.entry_ids["self"]])
        while True:
            try:
                client.fetch_x509_svid()
                time.sleep(0.1)
            except Exception:
                break
        figures["entry_deleted_to_refused_s"] = round(time.monotonic() - t, 1)
        del first
    finally:
        supervisor.stop_all(["spire-agent", "spire-server"], timeout=10)
        shutil.rmtree(work, ignore_errors=True)
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
