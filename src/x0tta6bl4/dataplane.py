"""Which data plane a node runs: the native one (Rust, ``x0tta6bl4_native``) or the Python
reference.

Both implement the same wire (docs/transport.md is the single spec; the cross tests hold them
to identical bytes). The native one is the default when it is built (``make setup`` builds it
with cargo and maturin, ``scripts/build-native.sh``); ``--dataplane python`` (or
``X0_DATAPLANE=python``) selects the reference, which is also the fallback on a machine
without a Rust toolchain. Asking for ``native`` when it is not built is an error, never a
silent fallback.
"""

from __future__ import annotations

import functools
import importlib
import os
from types import ModuleType
from typing import Literal

__all__ = [
    "DATAPLANES",
    "ENV_VAR",
    "Dataplane",
    "native_error",
    "native_module",
    "resolve",
]

Dataplane = Literal["native", "python"]
#: The values of ``--dataplane``.
DATAPLANES: tuple[Dataplane, ...] = ("native", "python")
#: The environment variable of ``--dataplane``.
ENV_VAR = "X0_DATAPLANE"


@functools.cache
def _load() -> tuple[ModuleType | None, str | None]:
    try:
        return importlib.import_module("x0tta6bl4_native"), None
    except ImportError as exc:
        return None, f"the native data plane is not built ({exc}); run `make setup` with cargo"


def native_module() -> ModuleType | None:
    """The extension module ``x0tta6bl4_native``, or None if it is not installed."""
    return _load()[0]


def native_error() -> str | None:
    """Why the native data plane cannot be used (None if it can)."""
    return _load()[1]


def resolve(choice: str | None = None) -> Dataplane:
    """The data plane to run: ``choice``, else ``$X0_DATAPLANE``, else native when built.

    Raises :class:`ValueError` for an unknown name and :class:`RuntimeError` when ``native``
    is asked for but not built.
    """
    name = choice or os.environ.get(ENV_VAR) or ""
    if not name:
        return "native" if native_module() is not None else "python"
    if name == "python":
        return "python"
    if name != "native":
        raise ValueError(f"unknown data plane {name!r}: choose one of {', '.join(DATAPLANES)}")
    if native_module() is None:
        raise RuntimeError(native_error() or "the native data plane is not built")
    return "native"
