"""Which neighbours a node keeps links with, and when it tries to connect them.

:class:`Neighbourhood` owns the node's link table (one :class:`~x0tta6bl4.node.peers.Link` per
peer) and the rules that change it:

* **selection**: every ``reselect_interval`` seconds, and at once after a membership, policy
  or link up/down change (:meth:`~Neighbourhood.reselect`), the members the policy allows are
  ranked by :func:`~x0tta6bl4.protocol.neighbours.select_neighbours` on their link *cost*
  (windowed minimum RTT with a floor and hysteresis, never the raw RTT: queueing delay on a
  busy host must not churn the choice, each new link costs a handshake, a database sync and
  an advert). A peer whose link was up and is now declared dead is left out, so that the
  ring closes around it.
* **maintenance**: a wanted link without working keys, or one that is down, gets a handshake;
  failed attempts back off exponentially from ``retry_initial`` to ``retry_max``; a link that
  was up keeps being retried while its peer is a member, wanted or not. The smaller node id
  starts a new link at once, the larger one ``initiate_delay`` later (so both ends rarely
  start it together).
* **entries**: a link gets its entry and failure detector when its first keys are installed
  (:meth:`~Neighbourhood.ensure`, inbound links included) and loses them when the membership or
  the policy removes the peer (:meth:`~Neighbourhood.close`).

Sans-IO, like the rest of the node's state machines: ``now`` is passed in.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

from x0tta6bl4.node.channels import Channels
from x0tta6bl4.node.model import Addr, CoreConfig, Member
from x0tta6bl4.node.peers import Link
from x0tta6bl4.protocol.failure import FailureDetector, FailureDetectorConfig
from x0tta6bl4.protocol.neighbours import Candidate, select_neighbours
from x0tta6bl4.protocol.router import Router

__all__ = ["LinkAllowed", "Neighbourhood"]

#: ``allowed(node_id, spiffe_id)``: whether this node may link with that member.
LinkAllowed = Callable[[str, str], bool]


class Neighbourhood:
    """The link table of node ``node_id`` and its selection (see the module docstring)."""

    def __init__(
        self,
        node_id: str,
        config: CoreConfig,
        *,
        fd_config: FailureDetectorConfig,
        channels: Channels[Addr],
        router: Router,
        allowed: LinkAllowed,
        now: float,
    ) -> None:
        self.node_id = node_id
        self._config = config
        self._fd_config = fd_config
        self._channels = channels
        self._router = router
        self._allowed = allowed
        #: Every peer with a link entry, wanted by the selection or not.
        self.links: dict[str, Link] = {}
        #: When the next selection runs.
        self.select_at = now

    def reselect(self, now: float) -> None:
        """Run the selection at the next timer (something it depends on changed)."""
        self.select_at = now

    def select(self, members: Mapping[str, Member], now: float) -> None:
        """Mark the links the selection wants; give new ones an entry and a first attempt."""
        config = self._config
        self.select_at = now + config.reselect_interval
        cost_unit = self._fd_config.cost_unit
        candidates = []
        for node_id, member in members.items():
            link = self.links.get(node_id)
            if link is not None and link.ever_up and not link.up:
                continue  # declared dead: let the selection close the ring around it
            if not self._allowed(node_id, member.spiffe_id):
                continue
            fd = None if link is None else link.fd
            rtt = None if fd is None or fd.cost is None else fd.cost * cost_unit
            candidates.append(Candidate(node_id, rtt))
        chosen = select_neighbours(self.node_id, candidates, config=config.selection)
        for node_id in chosen:
            link = self.links.get(node_id)
            if link is None:
                delay = 0.0 if self.node_id < node_id else config.initiate_delay
                link = Link(node_id, now + delay, config.retry_initial)
                self.links[node_id] = link
            link.wanted = True
        for node_id, link in self.links.items():
            if node_id not in chosen:
                link.wanted = False

    def maintain(self, members: Mapping[str, Member], now: float) -> None:
        """Start handshakes on wanted links that have no working keys or are down."""
        for node_id, link in self.links.items():
            if link.up:
                continue
            channel = self._channels.get(node_id)
            member = members.get(node_id)
            if not link.wanted and not (link.ever_up and member is not None):
                link.attempt_due = None
                continue
            if channel is not None and channel.initiator and not channel.initiator.done:
                link.attempt_due = None
                continue
            if link.attempt_due is None:
                link.attempt_due = now + link.backoff
            if now < link.attempt_due:
                continue
            addr = member.endpoint if member is not None else None
            if addr is None and channel is not None:
                addr = channel.addr
            if addr is None:
                continue
            self._channels.connect(node_id, addr, now)
            link.attempt_due = now + link.backoff
            link.backoff = min(link.backoff * 2, self._config.retry_max)

    def close(self, node_id: str, now: float) -> None:
        """Forget the link to ``node_id``: its entry, its keys, and its place in our advert."""
        link = self.links.pop(node_id, None)
        if link is not None and link.up:
            self._router.neighbour_down(node_id, now)
        self._channels.forget(node_id)

    def ensure(self, node_id: str, now: float) -> Link:
        """The link to ``node_id`` has keys: its entry, created if need be, with a detector."""
        config = self._config
        link = self.links.get(node_id)
        if link is None:
            link = Link(node_id, now + config.retry_initial, config.retry_initial)
            link.wanted = False
            self.links[node_id] = link
        elif not link.up:
            link.attempt_due = now + config.retry_initial
        if link.fd is None:
            link.fd = FailureDetector(node_id, now, self._fd_config)
        return link
