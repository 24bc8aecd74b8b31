"""Exceptions raised by the stores.

::

    StoreError
    ├── StoreUnavailableError   the backend could not be reached or did not answer; retryable
    ├── CidrExhaustedError      no free overlay address left; nothing was written
    ├── ConflictError           an optimistic-concurrency check failed (expected revision)
    ├── OwnershipError          the node ID is registered to another SPIFFE ID; nothing written
    ├── NotFoundError           the node (or other object) does not exist
    ├── RevisionCompactedError  a watch asked for history the store no longer keeps
    ├── SchemaError             the database was written by a newer, incompatible version
    ├── StoreCorruptError       the stored data is damaged (integrity check, a bad record)
    ├── StoreMissingError       no store where one was expected (empty, 0-byte, new) and
    │                           creating one was not allowed
    └── InvalidStoreUrlError    (also a ValueError) the store URL cannot be used

A ``StoreUnavailableError`` raised by a write means the outcome is unknown: the write may or
may not have been applied. Every write of the store interface is safe to retry (registration
is an upsert by its owner, deletes are idempotent), except ``put_policy`` with an expected
revision, whose retry may report a :class:`ConflictError` for its own earlier success.
"""

from __future__ import annotations

__all__ = [
    "CidrExhaustedError",
    "ConflictError",
    "InvalidStoreUrlError",
    "NotFoundError",
    "OwnershipError",
    "RevisionCompactedError",
    "SchemaError",
    "StoreCorruptError",
    "StoreError",
    "StoreMissingError",
    "StoreUnavailableError",
]


class StoreError(Exception):
    """Base class of every store error."""


class StoreUnavailableError(StoreError):
    """The backend is unreachable or did not answer in time. Retry, possibly elsewhere."""


class CidrExhaustedError(StoreError):
    """Every usable address of the overlay network is taken; nothing was written."""


class ConflictError(StoreError):
    """The object changed since the revision the caller expected."""

    def __init__(self, message: str, *, current_revision: int) -> None:
        super().__init__(message)
        self.current_revision = current_revision


class OwnershipError(StoreError):
    """``register_node`` (or ``touch_node`` with an owner) for a node ID that is registered to
    another SPIFFE ID.

    Checked inside the write's own transaction, so of several SPIFFE IDs racing for one new
    node ID exactly one wins and the others get this error; nothing was written.
    """

    def __init__(self, node_id: str) -> None:
        super().__init__(f"node {node_id!r} is registered to another SPIFFE ID")
        self.node_id = node_id


class NotFoundError(StoreError):
    """The requested object does not exist."""


class RevisionCompactedError(StoreError):
    """The requested revision is older than the history the store keeps."""

    def __init__(self, requested: int, compacted: int) -> None:
        super().__init__(
            f"revision {requested} is no longer available (history compacted up to "
            f"{compacted}); take a new snapshot and watch from its revision"
        )
        self.requested = requested
        self.compacted = compacted


class SchemaError(StoreError):
    """The stored data uses a schema this version does not understand."""


class StoreCorruptError(StoreError):
    """Stored data is damaged: a database failing its integrity check, or a record (``where``
    names it: ``node 'n1'``, ``policy``, ``event 42``, or the file) that does not decode.

    The store never repairs or skips such data by itself: the operator decides (restore a
    backup, delete the record, start a fresh store).
    """

    def __init__(self, where: str, fault: str) -> None:
        super().__init__(f"{where}: {fault}")
        self.where = where
        self.fault = fault


class StoreMissingError(StoreError):
    """The store holds no x0tta6bl4 data (a missing, 0-byte or new database, an empty etcd
    prefix) and the store was opened with ``create=False``: nothing was written."""


class InvalidStoreUrlError(StoreError, ValueError):
    """The store URL is malformed or names an unsupported backend."""
