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
    itself came in on the plain port.
    """
    if settings.public_url:
        url = settings.public_url.rstrip("/")
        if websocket:
            url = "wss://" + url[8:] if url.startswith("https://") else "ws://" + url[7:]
        return url
    secure = request.secure
    host = request.headers.get("Host", "")
    if not _HOST.fullmatch(host):
        port = settings.port if secure else settings.http_port
        host = f"{settings.host}:{port}"
    if websocket:
        return ("wss://" if secure else "ws://") + host
    return ("https://" if secure else "http://") + host
