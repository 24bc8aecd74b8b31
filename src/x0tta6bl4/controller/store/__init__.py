"""The controller's durable state behind one interface, with SQLite and etcd backends.

Use :func:`open_store` with a store URL (``sqlite:///PATH`` or
``etcd://HOST:PORT[,HOST:PORT…]``), then ``async with store: …``. The interface is
:class:`Store`; errors derive from :class:`StoreError`. See ``docs/store.md``.
"""

from __future__ import annotations

from x0tta6bl4.controller.store.base import MAX_BLOB_SIZE, Leadership, Store
from x0tta6bl4.controller.store.errors import (
    CidrExhaustedError,
    ConflictError,
    InvalidStoreUrlError,
    NotFoundError,
    OwnershipError,
    RevisionCompactedError,
    SchemaError,
    StoreCorruptError,
    StoreError,
    StoreMissingError,
    StoreUnavailableError,
)
from x0tta6bl4.controller.store.url import (
    EtcdUrl,
    SqliteUrl,
    StoreUrl,
    default_store_url,
    open_store,
    parse_store_url,
)

__all__ = [
    "MAX_BLOB_SIZE",
    "CidrExhaustedError",
    "ConflictError",
    "EtcdUrl",
    "InvalidStoreUrlError",
    "Leadership",
    "NotFoundError",
    "OwnershipError",
    "RevisionCompactedError",
    "SchemaError",
    "SqliteUrl",
    "Store",
    "StoreCorruptError",
    "StoreError",
    "StoreMissingError",
    "StoreUnavailableError",
    "StoreUrl",
    "default_store_url",
    "open_store",
    "parse_store_url",
]
