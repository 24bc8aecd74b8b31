"""Fuzz harness: a mesh node's data plane taking datagrams — ``NodeCore.receive_datagram``.

Two sans-IO :class:`NodeCore` s (node-a, node-b, PQ SVIDs of one mesh CA) are joined by an
in-memory wire and a simulated clock; they run the real handshake and keep their link up
between inputs. The first input byte chooses the mode, the rest are records separated by
:data:`fuzzlib.SEP`:

* even: each record is a UDP datagram reaching node-a from an address nobody owns (what an
  attacker on the network sends: handshake fragments, cookie replies, transport packets with
  unknown indices, garbage);
* odd: each record is a plaintext that node-b seals on its link to node-a, so node-a decrypts
  exactly the fuzzer's bytes and dispatches the frames as it does for a real peer: heartbeats
  and probes into the failure detector, FRAGMENT frames into link reassembly, LSAs and
  LSDB_* frames into the router, ROUTED frames forwarded or opened end to end.

After each record the cores exchange what they want to send and run their timers. Checked:
``receive_datagram``/``handle_timer`` never raise; what node-a holds for unauthenticated
senders stays bounded (no per-address state for a datagram that does not authenticate).

    python fuzz/node_core.py [libFuzzer flags] [corpus dirs]
"""

from __future__ import annotations

import time

import fuzzlib

with fuzzlib.instrumented():
    from x0tta6bl4.crypto.pqsvid import MeshCA
    from x0tta6bl4.defaults import DEFAULT_TRUST_DOMAIN
    from x0tta6bl4.node.core import NodeCore
    from x0tta6bl4.node.localmesh import issue_identity
    from x0tta6bl4.node.model import Member

START = 100.0
ADDR = {"node-a": ("10.0.0.1", 7810), "node-b": ("10.0.0.2", 7810)}
STRANGER = ("10.9.9.9", 40000)


class Wire:
    """node-a and node-b, an in-memory wire between them and a simulated clock."""

    def __init__(self) -> None:
        ca = MeshCA.create(DEFAULT_TRUST_DOMAIN, now=time.time())
        self.now = START
        offset = time.time() - START
        self.cores = {
            name: NodeCore(
                issue_identity(ca, name, key=fuzzlib.signing_key(f"node/{name}")),
                START,
                wall_offset=offset,
            )
            for name in ADDR
        }
        members = [
            Member(n, c.identity.spiffe_id, ADDR[n], cert_der=c.identity.cert_der)
            for n, c in self.cores.items()
        ]
        for core in self.cores.values():
            core.set_members(members, self.now)
        self.settle(2.0)
        assert self.cores["node-a"].links.can_send("node-b"), "the link did not come up"

    def transfer(self) -> None:
        owner = {a: n for n, a in ADDR.items()}
        for _ in range(64):  # bounded: a reply storm would be a finding of its own
            moved = False
            for name, core in self.cores.items():
                for data, addr in core.datagrams_to_send():
                    dst = owner.get(addr)
                    if dst is not None:
                        self.cores[dst].receive_datagram(data, ADDR[name], self.now)
                        moved = True
            if not moved:
                return

    def settle(self, seconds: float) -> None:
        end = self.now + seconds
        while True:
            due = min(c.get_timer() for c in self.cores.values())
            if due > end:
                self.now = end
                self.transfer()
                return
            self.now = max(self.now, due)
            for core in self.cores.values():
                if core.get_timer() <= self.now:
                    core.handle_timer(self.now)
            self.transfer()


_wire: Wire | None = None


def test_one_input(data: bytes) -> None:
    global _wire
    if not data:
        return
    if _wire is None:
        _wire = Wire()
    wire = _wire
    a, b = wire.cores["node-a"], wire.cores["node-b"]
    for record in fuzzlib.split(data[1:], 16):
        if data[0] % 2 == 0:
            a.receive_datagram(record, STRANGER, wire.now)
            a.datagrams_to_send()  # answers to the stranger go nowhere
        elif b.links.send("node-a", record, wire.now):
            wire.transfer()
        wire.settle(0.02)
    router = a.router
    assert len(router._waiting) <= router.config.max_waiting_for_key
    if not b.links.can_send("node-a"):
        wire.settle(3.0)  # fuzzed heartbeats may take the link down; it comes back


if __name__ == "__main__":
    fuzzlib.run(test_one_input)
