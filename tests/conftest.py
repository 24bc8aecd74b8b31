"""Suite-wide test settings.

Hypothesis' per-example ``deadline`` is a timed assertion: on a loaded or slow machine a
correct example can exceed it and fail the run. Speed is measured by ``x0tta6bl4 bench``, not by
tests, so the deadline is off for every property test.
"""

from __future__ import annotations

from hypothesis import settings

settings.register_profile("x0tta6bl4", deadline=None)
settings.load_profile("x0tta6bl4")
