"""The result of one ``up`` run: heal events and the final health summary (``--json``)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

__all__ = ["HealEvent", "Summary"]


@dataclass
class HealEvent:
    """One chaos kill and what the mesh did about it (times in milliseconds, None = not seen).

    * ``mttd_ms``: kill → the first neighbour's ``/v1/status`` shows the link to ``node``
      no longer ``up`` (detection);
    * ``mttr_ms``: kill → every ordered pair of the *surviving* nodes has a route again and no
      route goes to or through ``node`` (repair: the mesh routed around the failure);
    * ``rejoin_ms``: restart → ``node`` is ready and every pair, ``node`` included, has a
      route again.
    """

    node: str
    killed_at: float
    mttd_ms: float | None = None
    mttr_ms: float | None = None
    rejoin_ms: float | None = None
    detected_by: str | None = None
    poll_interval_ms: float = 0.0

    @property
    def complete(self) -> bool:
        return None not in (self.mttd_ms, self.mttr_ms, self.rejoin_ms)


@dataclass
class Summary:
    """The ``--json`` document (keys documented in docs/up.md)."""

    nodes: int
    ready: int
    reachable_pairs: int
    total_pairs: int
    healthy: bool
    controllers: int
    store: str
    mode: str
    duration_s: float
    startup_s: float
    controller_url: str
    ui_url: str
    state_dir: str | None
    identity: str = "embedded"
    heal_events: list[HealEvent] = field(default_factory=list)
    unreachable: list[list[str]] = field(default_factory=list)
    not_ready: list[str] = field(default_factory=list)
    leftover_processes: list[int] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        """A JSON-ready dict."""
        return asdict(self)
