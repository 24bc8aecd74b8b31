"""Drop reasons come from closed sets, and docs/metrics.md lists exactly those sets.

``x0tta6bl4_node_packets_dropped_total{reason}`` takes its labels from
:class:`~x0tta6bl4.protocol.errors.DropReason` and :class:`~x0tta6bl4.node.drops.NodeDrop`
(plus the ``handshake_`` and ``e2e_`` prefixes), ``x0tta6bl4_registrations_rejected_total``
from the controller's refusal enums. Each enum is compared with its table in the docs both
ways, and nodes fed junk and tampered datagrams count nothing outside the sets.
"""

from __future__ import annotations

import random
import re
from pathlib import Path

import pytest

from tests.unit.test_node_core import Net
from x0tta6bl4.controller.api.errors import REGISTRATION_REJECTIONS
from x0tta6bl4.node.drops import NodeDrop, e2e_label, handshake_label, is_drop_label
from x0tta6bl4.protocol.errors import DropReason, RemoteProtocolError

METRICS = Path(__file__).resolve().parents[2] / "docs" / "metrics.md"


def _table_after(heading: str) -> list[str]:
    """The first-column names of the table that follows ``heading`` in docs/metrics.md."""
    lines = METRICS.read_text().splitlines()
    start = lines.index(heading)
    names: list[str] = []
    for line in lines[start + 1 :]:
        if line.startswith("#"):
            break
        match = re.match(r"\| `([a-z0-9_]+)` \|", line)
        if match:
            names.append(match.group(1))
    return names


@pytest.mark.parametrize(
    ("heading", "enum"),
    [
        ("### Protocol: `x0tta6bl4.protocol.errors.DropReason`", DropReason),
        ("### Node: `x0tta6bl4.node.drops.NodeDrop`", NodeDrop),
    ],
)
def test_every_drop_reason_is_documented_and_nothing_else(
    heading: str, enum: type[DropReason] | type[NodeDrop]
) -> None:
    documented = _table_after(heading)
    assert len(documented) == len(set(documented)), "a reason is documented twice"
    assert set(documented) == {member.value for member in enum}


def test_the_registration_rejections_are_documented_exactly() -> None:
    row = next(
        line
        for line in METRICS.read_text().splitlines()
        if line.startswith("| `x0tta6bl4_registrations_rejected_total` |")
    )
    labels = row.split("|")[3]
    listed = labels[labels.index("(") + 1 : labels.rindex(")")]
    documented = re.findall(r"`([a-z_]+)`", listed)
    assert set(documented) == set(REGISTRATION_REJECTIONS)
    assert len(documented) == len(REGISTRATION_REJECTIONS)


def test_a_reason_outside_the_set_is_a_bug_not_a_label() -> None:
    assert RemoteProtocolError("bad_length").reason is DropReason.BAD_LENGTH
    with pytest.raises(ValueError, match="not_a_reason"):
        RemoteProtocolError("not_a_reason")


def test_labels_are_the_enums_and_their_prefixed_forms() -> None:
    assert is_drop_label(NodeDrop.NO_ROUTE)
    assert is_drop_label(handshake_label(DropReason.OVER_BUDGET))
    assert is_drop_label(e2e_label(handshake_label(DropReason.BAD_LENGTH)))
    assert is_drop_label(e2e_label(NodeDrop.UNEXPECTED_FRAME))
    for bogus in ("no_such", "handshake_no_route", "e2e_e2e_replay", "HANDSHAKE_REPLAY", ""):
        assert not is_drop_label(bogus), bogus


def test_nodes_fed_junk_and_tampered_datagrams_count_only_known_reasons() -> None:
    net = Net(3)
    net.announce()
    net.run_until(net.converged)
    a = net.cores["node-000"]
    for core in net.cores.values():
        core.send_app("node-002" if core is a else "node-000", 7, b"hello", net.now)
    rng = random.Random(1)
    captured: list[tuple[bytes, tuple[str, int]]] = []
    for core in net.live():
        captured.extend(core.datagrams_to_send())
    assert captured
    stranger = ("10.9.9.9", 4000)
    neighbour = net.addr["node-001"]
    for _ in range(3000):
        kind = rng.random()
        if kind < 0.4:  # tampered or replayed real datagrams
            data, _addr = rng.choice(captured)
            if rng.random() < 0.7:
                mutable = bytearray(data)
                mutable[rng.randrange(len(mutable))] ^= 1 << rng.randrange(8)
                data = bytes(mutable)
            a.receive_datagram(data, neighbour, net.now)
        else:  # junk with every first byte
            size = rng.choice((0, 1, 4, 5, 16, 80, 200, 1200, 1500))
            data = bytes([rng.randrange(256)]) + rng.randbytes(size) if size else b""
            a.receive_datagram(data, rng.choice((stranger, neighbour)), net.now)
        net.advance(0.001)
    dropped = a.status()["dropped"]
    assert not [label for label in dropped if not is_drop_label(label)]
    assert len(dropped) >= 8, dropped  # the junk reached many different checks
