"""Store URLs: ``sqlite:///PATH``, ``etcd://HOST:PORT[,HOST:PORT…]`` or ``etcds://…``, and
``open_store``.

``sqlite://`` is followed by a file path: ``sqlite:///var/lib/x0tta6bl4/controller.db`` is
absolute (as is ``sqlite:////var/…``); a relative path (``sqlite://controller.db``) is
resolved against the state directory. ``etcd://`` lists one or more client endpoints,
comma-separated; IPv6 hosts are bracketed (``etcd://[fd00::1]:2379``). ``etcds://`` is the
same over TLS with a client certificate (the files come from ``--etcd-ca-file``,
``--etcd-cert-file``, ``--etcd-key-file``; :mod:`~x0tta6bl4.controller.store.etcd_tls`).
Nothing else (user info, query, fragment, other schemes) is accepted.
"""

from __future__ import annotations

import ipaddress
import os
import re
from dataclasses import dataclass
from pathlib import Path

from x0tta6bl4.controller.store.base import Store
from x0tta6bl4.controller.store.errors import InvalidStoreUrlError
from x0tta6bl4.controller.store.etcd_tls import EtcdTlsFiles

__all__ = [
    "EtcdUrl",
    "SqliteUrl",
    "StoreUrl",
    "default_store_url",
    "open_store",
    "parse_store_url",
]

_HOSTNAME = re.compile(
    r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*"
)


@dataclass(frozen=True, slots=True)
class SqliteUrl:
    """A parsed ``sqlite://`` URL."""

    path: Path


@dataclass(frozen=True, slots=True)
class EtcdUrl:
    """A parsed ``etcd://`` or ``etcds://`` URL: its endpoints, in order, and TLS or not."""

    endpoints: tuple[tuple[str, int], ...]
    tls: bool = False


StoreUrl = SqliteUrl | EtcdUrl


def default_store_url(state_dir: str | os.PathLike[str]) -> str:
    """The default store: ``controller.db`` in the state directory."""
    return f"sqlite://{Path(state_dir).absolute() / 'controller.db'}"


def _parse_endpoint(text: str, url: str) -> tuple[str, int]:
    host, sep, port_text = text.rpartition(":")
    if not sep or not host:
        raise InvalidStoreUrlError(f"etcd endpoint {text!r} in {url!r} must be HOST:PORT")
    if not (port_text.isascii() and port_text.isdigit()) or not 1 <= int(port_text) <= 65535:
        raise InvalidStoreUrlError(f"etcd endpoint {text!r} in {url!r} has an invalid port")
    if host.startswith("[") and host.endswith("]"):
        try:
            ipaddress.IPv6Address(host[1:-1])
        except ValueError:
            raise InvalidStoreUrlError(
                f"etcd endpoint {text!r} in {url!r} has an invalid IPv6 address"
            ) from None
    elif not _HOSTNAME.fullmatch(host) or len(host) > 253:
        raise InvalidStoreUrlError(f"etcd endpoint {text!r} in {url!r} has an invalid host")
    return host, int(port_text)


def parse_store_url(url: str, *, state_dir: str | os.PathLike[str]) -> StoreUrl:
    """Parse a store URL, raising :class:`InvalidStoreUrlError` with the reason."""
    if not isinstance(url, str) or not url.strip():
        raise InvalidStoreUrlError(
            "store URL is empty; use sqlite:///PATH or etcd://HOST:PORT[,HOST:PORT...]"
        )
    scheme, sep, rest = url.partition("://")
    if not sep:
        raise InvalidStoreUrlError(
            f"store URL {url!r} has no scheme; use sqlite:///PATH or etcd://HOST:PORT[,...]"
        )
    if any(char in rest for char in "?#") or any(char.isspace() for char in url):
        raise InvalidStoreUrlError(
            f"store URL {url!r} must not contain a query, fragment or whitespace"
        )
    if scheme == "sqlite":
        if not rest or rest.endswith("/"):
            raise InvalidStoreUrlError(f"store URL {url!r} must name a file: sqlite:///PATH")
        # Absolute after collapsing leading slashes; relative paths live in the state dir.
        path = Path("/" + rest.lstrip("/")) if rest.startswith("/") else Path(state_dir) / rest
        return SqliteUrl(path=path)
    if scheme in ("etcd", "etcds"):
        rest = rest.removesuffix("/")
        if not rest:
            raise InvalidStoreUrlError(f"store URL {url!r} names no etcd endpoint")
        if "@" in rest or "/" in rest:
            raise InvalidStoreUrlError(
                f"store URL {url!r} must be {scheme}://HOST:PORT[,HOST:PORT...] (no user or path)"
            )
        endpoints = tuple(_parse_endpoint(part, url) for part in rest.split(","))
        if len(set(endpoints)) != len(endpoints):
            raise InvalidStoreUrlError(f"store URL {url!r} lists an endpoint twice")
        return EtcdUrl(endpoints=endpoints, tls=scheme == "etcds")
    raise InvalidStoreUrlError(
        f"store URL scheme {scheme!r} is not supported; use sqlite:///PATH, "
        "etcd://HOST:PORT[,HOST:PORT...] or etcds://HOST:PORT[,HOST:PORT...] (TLS)"
    )


def open_store(
    url: str,
    *,
    state_dir: str | os.PathLike[str],
    node_ttl: int = 60,
    etcd_tls: EtcdTlsFiles | None = None,
) -> Store:
    """Build (not yet open) the store named by ``url``; ``await store.open()`` or use
    ``async with``. ``node_ttl`` is the etcd lease TTL of node records, in seconds;
    ``etcd_tls`` the client certificate files an ``etcds://`` URL needs (and only it takes).

    Raises :class:`InvalidStoreUrlError` for a bad URL, ``etcds://`` without the files (or
    with unreadable ones), or files with a plain ``etcd://`` URL (which would silently not
    use them).
    """
    parsed = parse_store_url(url, state_dir=state_dir)
    if isinstance(parsed, SqliteUrl):
        if etcd_tls is not None:
            raise InvalidStoreUrlError("--etcd-*-file options need an etcds:// store URL")
        from x0tta6bl4.controller.store.sqlite import SqliteStore

        return SqliteStore(parsed.path)
    if parsed.tls and etcd_tls is None:
        raise InvalidStoreUrlError(
            "etcds:// needs --etcd-ca-file, --etcd-cert-file and --etcd-key-file (the etcd CA "
            "and this controller's client certificate)"
        )
    if not parsed.tls and etcd_tls is not None:
        raise InvalidStoreUrlError(
            "--etcd-*-file options are given but the store URL is plain etcd://; use etcds://"
        )
    from x0tta6bl4.controller.store.etcd import EtcdStore

    return EtcdStore(parsed.endpoints, node_ttl=node_ttl, tls=etcd_tls)
