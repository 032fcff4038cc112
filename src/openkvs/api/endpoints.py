"""Endpoints the API hands out: they point back at this server, with no trailing slash."""

from __future__ import annotations

import re

from aiohttp import web

from ..config import Settings

_HOST = re.compile(r"(\[[0-9a-fA-F:.]+\]|[A-Za-z0-9.-]+)(:\d{1,5})?")


def base_url(request: web.Request, settings: Settings, *, websocket: bool = False) -> str:
    """``https://host:port`` (or ``wss://``) for the client that made ``request``.

    ``public_url`` wins when set. Otherwise the request's Host header is reused (validated) with
    the scheme of the port it came in on: TLS for the main port, plain only when the request
    itself came in on the plain port. A Host header without a port names the scheme's default
    port; when the request came in on another port, that port is added. (The KVS Producer SDK
    cuts the Host header at the first ':' and sends ``Host: 127.0.0.1`` to port 18443; handing
    back ``https://127.0.0.1`` would send its PutMedia to port 443.)
    """
    if settings.public_url:
        url = settings.public_url.rstrip("/")
        if websocket:
            url = "wss://" + url[8:] if url.startswith("https://") else "ws://" + url[7:]
        return url
    secure = request.secure
    host = request.headers.get("Host", "")
    match = _HOST.fullmatch(host)
    if match is None:
        port = settings.port if secure else settings.http_port
        host = f"{settings.host}:{port}"
    elif match.group(2) is None:
        local = _local_port(request)
        if local is not None and local != (443 if secure else 80):
            host = f"{host}:{local}"
    if websocket:
        return ("wss://" if secure else "ws://") + host
    return ("https://" if secure else "http://") + host


def _local_port(request: web.Request) -> int | None:
    """The port of this server that ``request`` came in on (None if the socket cannot say)."""
    transport = request.transport
    sockname = transport.get_extra_info("sockname") if transport is not None else None
    if isinstance(sockname, tuple) and len(sockname) >= 2 and isinstance(sockname[1], int):
        return sockname[1]
    return None
