"""What every request handler of one controller app shares (``app.state.controller``)."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from ipaddress import IPv4Network
from typing import Any

from x0tta6bl4.controller.auth import Authenticator
from x0tta6bl4.controller.ca import CaHolder
from x0tta6bl4.controller.config import ControllerSettings
from x0tta6bl4.controller.jwt_bundles import JwtBundleCache
from x0tta6bl4.controller.listeners import ControllerTls
from x0tta6bl4.controller.metrics import ControllerMetrics
from x0tta6bl4.controller.registration import Registrar
from x0tta6bl4.controller.startup import StoreMarker
from x0tta6bl4.controller.store.base import Store

__all__ = ["ControllerState"]


@dataclass
class ControllerState:
    """The components of one running controller app."""

    settings: ControllerSettings
    store: Store
    ca: CaHolder
    auth: Authenticator
    metrics: ControllerMetrics
    registrar: Registrar
    network: IPv4Network
    bundles: JwtBundleCache
    replica_id: str
    clock: Callable[[], float] = time.time
    store_open: bool = False
    cache: dict[str, Any] = field(default_factory=dict)
    marker: StoreMarker | None = None
    """Records, in the state directory, that the store has held nodes (controller/startup.py)."""
    #: The TLS listener's identity (the X.509-SVID it presents).
    tls: ControllerTls | None = None
