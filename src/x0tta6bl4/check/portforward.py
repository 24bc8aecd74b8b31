"""One HTTP GET to a pod's port through the API server's ``pods/portforward`` subresource.

This is what ``kubectl port-forward`` does (its WebSocket form, subprotocol
``v4.channel.k8s.io``): the kubelet connects to the port on the pod's own loopback, so the
request arrives as local traffic. The checks use it from outside the cluster, where the API
server's service and pod proxies would connect from the control plane's address — traffic
that the chart's default-deny NetworkPolicy rightly drops on a cluster that enforces
policies (found on the real cluster of ``scripts/cluster``).

Framing (k8s.io/apimachinery wsstream, "channel" protocol): every binary message starts with
a channel byte; for port N of the ``ports`` query, channel 2N carries data and 2N+1 errors,
and the first two bytes received on each channel are the port number (little-endian). The
HTTP/1.1 response is parsed by h11; at most ``max_body`` bytes are read.
"""

from __future__ import annotations

from collections.abc import Mapping
from urllib.parse import urlencode

import aiohttp
import h11

__all__ = ["PROTOCOL", "PortForwardError", "http_get"]

PROTOCOL = "v4.channel.k8s.io"


class PortForwardError(Exception):
    """The port-forward could not be set up or carried no valid HTTP answer."""

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


async def http_get(
    session: aiohttp.ClientSession,
    url: str,
    headers: Mapping[str, str],
    port: int,
    path: str,
    *,
    timeout: float,
    max_body: int,
    request_headers: Mapping[str, str] | None = None,
) -> tuple[int, bytes]:
    """GET ``path`` on ``port`` of the pod whose ``.../portforward`` URL is ``url``.

    ``request_headers`` go with the HTTP request to the pod (``headers`` are the API
    server's: credentials for the upgrade). Returns (HTTP status, body). Raises
    :class:`PortForwardError` when the API server refuses the upgrade (``status`` set: 403
    without ``create pods/portforward``, 404 for a server that has no such subresource) or
    the stream breaks.
    """
    ws_url = url.replace("https://", "wss://", 1).replace("http://", "ws://", 1)
    ws_url += "?" + urlencode({"ports": str(port)})
    try:
        ws = await session.ws_connect(
            ws_url,
            protocols=(PROTOCOL,),
            headers=dict(headers),
            timeout=aiohttp.ClientWSTimeout(ws_receive=timeout, ws_close=timeout),
            max_msg_size=max_body + 65536,
        )
    except aiohttp.WSServerHandshakeError as exc:
        raise PortForwardError(f"port-forward refused: HTTP {exc.status}", exc.status) from None
    except (aiohttp.ClientError, OSError, TimeoutError) as exc:
        raise PortForwardError(f"port-forward failed: {type(exc).__name__}: {exc}") from None
    conn = h11.Connection(h11.CLIENT)
    wire = (
        conn.send(
            h11.Request(
                method="GET",
                target=path,
                headers=[
                    ("Host", f"localhost:{port}"),
                    ("Connection", "close"),
                    *dict(request_headers or {}).items(),
                ],
            )
        )
        or b""
    ) + (conn.send(h11.EndOfMessage()) or b"")
    pending_port = {0: 2, 1: 2}
    errors = b""
    status: int | None = None
    body = bytearray()
    try:
        async with ws:
            await ws.send_bytes(b"\x00" + wire)
            while True:
                msg = await ws.receive(timeout=timeout)
                if msg.type != aiohttp.WSMsgType.BINARY:
                    break
                data: bytes = msg.data
                if not data:
                    continue
                channel, payload = data[0], data[1:]
                skip = min(pending_port.get(channel, 0), len(payload))
                if skip:
                    pending_port[channel] -= skip
                    payload = payload[skip:]
                if channel == 1:
                    errors += payload
                    continue
                if channel == 0 and payload:
                    conn.receive_data(payload)
                    status, done = _drain(conn, body, status, max_body)
                    if done:
                        break
        if conn.their_state is h11.SEND_BODY:
            # The stream ended: for a body delimited by the connection's close, that is its end.
            conn.receive_data(b"")
            status, _ = _drain(conn, body, status, max_body)
    except h11.RemoteProtocolError as exc:
        raise PortForwardError(f"port-forward: not an HTTP answer: {exc}") from None
    except (aiohttp.ClientError, OSError, TimeoutError) as exc:
        raise PortForwardError(f"port-forward broke: {type(exc).__name__}: {exc}") from None
    if status is None or conn.their_state not in (h11.DONE, h11.CLOSED, h11.MUST_CLOSE):
        detail = errors.decode("utf-8", "replace").strip() or "no complete answer"
        raise PortForwardError(f"port-forward to port {port}: {detail}")
    return status, bytes(body)


def _drain(
    conn: h11.Connection, body: bytearray, status: int | None, max_body: int
) -> tuple[int | None, bool]:
    """Feed h11's events into (status, body); True once the response is complete."""
    while True:
        event = conn.next_event()
        if event is h11.NEED_DATA or event is h11.PAUSED:
            return status, False
        if isinstance(event, h11.Response):
            status = event.status_code
        elif isinstance(event, h11.Data):
            body += event.data
            if len(body) > max_body:
                raise PortForwardError(f"answer larger than {max_body} bytes")
        elif isinstance(event, h11.EndOfMessage | h11.ConnectionClosed):
            return status, True
