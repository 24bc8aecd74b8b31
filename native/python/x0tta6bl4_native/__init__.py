"""x0tta6bl4's native data plane (Rust, PyO3): the packet path of a mesh node.

The extension module :mod:`x0tta6bl4_native._native` holds the transport session (the same
wire and behaviour as :mod:`x0tta6bl4.protocol.session`, docs/transport.md), the replay
window, the inner-frame decoder, the node's packet path (:class:`Dataplane`: UDP and TUN I/O,
keypair and forwarding tables, heartbeat probes, end-to-end sessions) and the timing loops of
``x0tta6bl4 bench session`` / ``bench dataplane``. Import
it through :mod:`x0tta6bl4.dataplane`, which picks the implementation (``--dataplane``).
"""

from __future__ import annotations

from x0tta6bl4_native._native import (
    AEAD_IMPLEMENTATION,
    DATAPLANE_COUNTERS,
    VERSION,
    Dataplane,
    KeypairInfo,
    KeypairsView,
    ReplayFilter,
    Session,
    decode_frames,
    monotonic,
    raw_echo_bench,
    time_bare_aead,
    time_session,
)

__all__ = [
    "AEAD_IMPLEMENTATION",
    "DATAPLANE_COUNTERS",
    "VERSION",
    "Dataplane",
    "KeypairInfo",
    "KeypairsView",
    "ReplayFilter",
    "Session",
    "decode_frames",
    "monotonic",
    "raw_echo_bench",
    "time_bare_aead",
    "time_session",
]
