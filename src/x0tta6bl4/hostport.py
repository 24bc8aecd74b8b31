"""``HOST:PORT`` as flags, variables and stored endpoints write it: one parser, one printer.

``[V6]:PORT`` names an IPv6 address (validated); any other host is taken as written (a name or
an IPv4 address). Every listen address and advertised endpoint of the controller and the node
goes through :func:`parse_hostport`.
"""

from __future__ import annotations

import ipaddress

__all__ = ["format_hostport", "parse_hostport"]


def parse_hostport(value: str, what: str) -> tuple[str, int]:
    """``HOST:PORT`` or ``[V6]:PORT`` → ``(host, port)`` (the IPv6 host without brackets).

    Raises :class:`ValueError` naming ``what`` (``--listen-udp``, ``listen address``, …).
    """
    text = value.strip()
    if text.startswith("["):
        host, sep, port_text = text[1:].partition("]:")
        if sep:
            try:
                ipaddress.IPv6Address(host)
            except ValueError:
                raise ValueError(f"{what} has an invalid IPv6 address: {value!r}") from None
    else:
        host, sep, port_text = text.rpartition(":")
    if not sep or not host or not (port_text.isascii() and port_text.isdigit()):
        raise ValueError(f"{what} must be HOST:PORT, got {value!r}")
    port = int(port_text)
    if not 0 <= port <= 65535:
        raise ValueError(f"{what} port must be 0..65535, got {port}")
    return host, port


def format_hostport(host: str, port: int) -> str:
    """The ``HOST:PORT`` text of an address (``[V6]:PORT`` for an IPv6 address)."""
    try:
        if ipaddress.ip_address(host).version == 6:
            return f"[{host}]:{port}"
    except ValueError:
        pass
    return f"{host}:{port}"
