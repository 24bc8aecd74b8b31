"""Strict JSON records: the error every record raises and the checks their ``from_json`` share.

A record's ``from_json(data)`` accepts exactly the documented fields with exactly the
documented types: :func:`exact_fields` refuses unknown and missing fields, :func:`check_bool`
refuses ``1`` where ``true`` is meant. Both raise :class:`ModelError`, whose message names the
offending field. The controller's records (:mod:`x0tta6bl4.controller.models`) and the mesh
policy (:mod:`x0tta6bl4.policy`) are built on them, so one ``except ModelError`` catches a bad
record of either.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, cast

__all__ = ["ModelError", "check_bool", "exact_fields"]


class ModelError(ValueError):
    """A record or its JSON form is invalid; the message names the offending field."""


def check_bool(value: object, what: str) -> bool:
    """``value`` if it is a bool (not merely truthy), else :class:`ModelError` naming ``what``."""
    if not isinstance(value, bool):
        raise ModelError(f"{what} must be true or false; got {value!r:.40}")
    return value


def exact_fields(data: object, what: str, required: tuple[str, ...]) -> Mapping[str, Any]:
    """``data`` as a mapping holding exactly the ``required`` keys, else :class:`ModelError`."""
    if not isinstance(data, Mapping):
        raise ModelError(f"{what} must be a JSON object; got {type(data).__name__}")
    unknown = sorted(str(key) for key in data if key not in required)
    if unknown:
        raise ModelError(f"{what} has unknown field(s): {', '.join(unknown)}")
    missing = [key for key in required if key not in data]
    if missing:
        raise ModelError(f"{what} is missing field(s): {', '.join(missing)}")
    return cast(Mapping[str, Any], data)
