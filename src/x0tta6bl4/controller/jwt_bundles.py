"""The JWT bundles the controller validates node tokens with, kept fresh from its Workload API.

:class:`JwtBundleCache` holds the last :class:`spiffe.JwtBundleSet` fetched through a
blocking fetch function (``WorkloadSource.fetch_jwt_bundles``, run in a worker thread). It
refreshes every ``interval`` seconds and, at most once per ``min_interval``, on demand when a
token names a signing key the cached bundle does not hold yet (the issuer rotated its JWT
key): see :meth:`refresh_soon`.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable

from spiffe import JwtBundleSet

from x0tta6bl4.identity.errors import IdentityError
from x0tta6bl4.logging import get_logger

__all__ = ["JwtBundleCache"]

_log = get_logger(__name__)


class JwtBundleCache:
    """Latest JWT bundles; ``get()`` is the :data:`~x0tta6bl4.controller.auth.JwtBundleProvider`."""

    def __init__(
        self,
        fetch: Callable[[], JwtBundleSet],
        *,
        interval: float = 30.0,
        min_interval: float = 2.0,
    ) -> None:
        self._fetch = fetch
        self._interval = interval
        self.min_interval = min_interval
        self._bundles: JwtBundleSet | None = None
        self._fetched_at = -float("inf")
        self._lock = asyncio.Lock()
        self._task: asyncio.Task[None] | None = None
        self.last_error: str | None = None

    def get(self) -> JwtBundleSet | None:
        """The cached bundles (None until the first successful fetch)."""
        return self._bundles

    async def refresh(self) -> bool:
        """Fetch now (one fetch at a time); True on success."""
        async with self._lock:
            try:
                bundles = await asyncio.to_thread(self._fetch)
            except IdentityError as err:
                self.last_error = f"{type(err).__name__}: {err}"
                _log.warning("jwt bundle fetch failed", error=self.last_error)
                return False
            self._bundles = bundles
            self._fetched_at = time.monotonic()
            self.last_error = None
            return True

    async def refresh_soon(self) -> bool:
        """Refresh unless the bundles were fetched less than ``min_interval`` ago.

        Returns True if a refresh happened and succeeded (the caller may retry validation).
        """
        if time.monotonic() - self._fetched_at < self.min_interval:
            return False
        return await self.refresh()

    async def _run(self) -> None:
        while True:
            await self.refresh()
            delay = self._interval if self._bundles is not None else self.min_interval
            await asyncio.sleep(delay)

    def start(self) -> None:
        """Start periodic refreshing on the running loop."""
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name="jwt-bundle-refresh")

    async def stop(self) -> None:
        """Stop refreshing."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
