"""``up --chaos``: kill random nodes on a schedule, measure detection, repair and rejoin.

One kill at a time: wait ``interval`` seconds, SIGKILL a random running node's process group
(an abrupt crash: no goodbye to anyone), then poll the surviving nodes' ``/v1/status`` every
``poll`` seconds until (1) a neighbour reports the link to the victim as not ``up``
(detection) and (2) every surviving pair has a route that avoids the victim (repair); then
restart the victim with the same identity and ports and wait until every pair, the victim
included, is routed again (rejoin). Times are measured on the monotonic clock of ``up``; their
resolution is the poll interval (recorded with each event). A phase that does not finish within
``phase_timeout`` leaves its time as None.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence

import httpx

from x0tta6bl4.local.observe import NodeView, fetch_nodes, routed_pairs
from x0tta6bl4.local.summary import HealEvent

__all__ = ["ChaosScheduler", "repaired"]


def repaired(views: Mapping[str, NodeView], survivors: Sequence[str], victim: str) -> bool:
    """Every ordered survivor pair has a route, and no route leads to or through ``victim``."""
    routed, total = routed_pairs(views, survivors)
    if routed != total:
        return False
    for name in survivors:
        view = views[name]
        if victim in view.routes:
            return False
        for dest in survivors:
            if dest != name and victim in view.routes.get(dest, ()):
                return False
    return True


class ChaosScheduler:
    """Runs kill/restart rounds until stopped; events land in :attr:`events` as they happen."""

    def __init__(
        self,
        *,
        client: httpx.AsyncClient,
        urls: Mapping[str, str],
        kill: Callable[[str], None],
        restart: Callable[[str], None],
        interval: float = 5.0,
        poll: float = 0.025,
        phase_timeout: float = 20.0,
        rng: random.Random | None = None,
        on_event: Callable[[HealEvent], Awaitable[None] | None] | None = None,
    ) -> None:
        if interval <= 0 or poll <= 0 or phase_timeout <= 0:
            raise ValueError("chaos interval, poll and phase timeout must be positive")
        self._client = client
        self._urls = dict(urls)
        self._kill = kill
        self._restart = restart
        self.interval = interval
        self.poll = poll
        self.phase_timeout = phase_timeout
        self._rng = rng or random.Random()  # noqa: S311 - chaos, not cryptography
        self._on_event = on_event
        self.events: list[HealEvent] = []
        self.current: HealEvent | None = None

    async def run(self, stop: asyncio.Event) -> None:
        """Kill/restart rounds until ``stop`` is set (a round in progress is finished)."""
        if len(self._urls) < 3:
            return  # with fewer than three nodes there is nothing to route around
        while not stop.is_set():
            try:
                await asyncio.wait_for(stop.wait(), self.interval)
                return
            except TimeoutError:
                pass
            await self.round()

    async def _views(self, names: Sequence[str]) -> dict[str, NodeView]:
        return await fetch_nodes(
            self._client, {n: self._urls[n] for n in names}, timeout=max(1.0, self.poll * 20)
        )

    async def round(self, victim: str | None = None) -> HealEvent:
        """One kill → detect → repair → restart → rejoin cycle."""
        names = sorted(self._urls)
        victim = victim or self._rng.choice(names)
        survivors = [n for n in names if n != victim]
        before = await self._views(survivors)
        watchers = [n for n in survivors if (link := before[n].link(victim)) and link.state == "up"]
        event = HealEvent(
            node=victim, killed_at=time.time(), poll_interval_ms=round(self.poll * 1e3, 1)
        )
        self.current = event
        start = time.monotonic()
        self._kill(victim)
        deadline = start + self.phase_timeout
        while time.monotonic() < deadline:
            views = await self._views(survivors)
            now = time.monotonic()
            if event.mttd_ms is None:
                for name in watchers or survivors:
                    link = views[name].link(victim)
                    if views[name].error is None and link is not None and link.state != "up":
                        event.mttd_ms = round((now - start) * 1e3, 1)
                        event.detected_by = name
                        break
            if event.mttd_ms is not None and repaired(views, survivors, victim):
                event.mttr_ms = round((now - start) * 1e3, 1)
                break
            await asyncio.sleep(self.poll)
        self._restart(victim)
        restarted = time.monotonic()
        deadline = restarted + self.phase_timeout
        while time.monotonic() < deadline:
            views = await self._views(names)
            routed, total = routed_pairs(views, names)
            if views[victim].ready and routed == total:
                event.rejoin_ms = round((time.monotonic() - restarted) * 1e3, 1)
                break
            await asyncio.sleep(max(self.poll, 0.1))
        self.events.append(event)
        self.current = None
        if self._on_event is not None:
            result = self._on_event(event)
            if result is not None:
                await result
        return event
