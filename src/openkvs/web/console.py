"""The web console at ``/console/``: static files built from ``web/console/src`` (our own code
plus the npm packages of the committed lockfile) into ``web/console/dist`` at setup time
(``make run`` runs ``node src/openkvs/web/console/build.mjs``). Every API call the console makes
is an ordinary SigV4-signed request to the public APIs; these routes only serve files."""

from __future__ import annotations

import re
from pathlib import Path

from aiohttp import web

DIST = Path(__file__).parent / "console" / "dist"
PREFIX = "/console/"
# A file the build writes: plain names, one level of folders at most, no dot-files.
_NAME = re.compile(r"[A-Za-z0-9_-][A-Za-z0-9._-]{0,99}(/[A-Za-z0-9_-][A-Za-z0-9._-]{0,99})?")
_TYPES = {
    ".html": "text/html",
    ".js": "text/javascript",
    ".css": "text/css",
    ".map": "application/json",
    ".svg": "image/svg+xml",
    ".png": "image/png",
    ".ico": "image/x-icon",
}
# The console talks to this server only (the data endpoints may be its other port).
CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data: blob:; "
    "media-src 'self' blob:; worker-src 'self' blob:; connect-src 'self' https: wss: http: ws:; "
    "frame-ancestors 'none'; base-uri 'none'; form-action 'none'"
)
NOT_BUILT = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>openkvs console: not built</title></head>
<body><h1>The openkvs web console has not been built</h1>
<p>Its files are built from the repository's lockfile at setup time. Run <code>make run</code>,
or <code>npm ci &amp;&amp; node src/openkvs/web/console/build.mjs</code> in the repository, then
reload this page.</p></body></html>
"""


def _headers(content_type: str) -> dict[str, str]:
    return {
        "Content-Type": f"{content_type}; charset=utf-8"
        if content_type.startswith("text/") or content_type == "application/json"
        else content_type,
        "Content-Security-Policy": CSP,
        "X-Content-Type-Options": "nosniff",
        "Referrer-Policy": "no-referrer",
        "Cache-Control": "no-cache",
    }


def add_routes(router: web.UrlDispatcher, directory: Path | None = None) -> None:
    root = (directory or DIST).resolve()

    async def redirect(request: web.Request) -> web.StreamResponse:
        raise web.HTTPMovedPermanently(PREFIX)

    async def serve(request: web.Request) -> web.StreamResponse:
        name = request.match_info.get("name", "") or "index.html"
        if not (root / "index.html").is_file():
            return web.Response(status=503, text=NOT_BUILT, headers=_headers("text/html"))
        if not _NAME.fullmatch(name) or ".." in name:
            raise web.HTTPNotFound()
        path = (root / name).resolve()
        if root not in path.parents or not path.is_file():
            raise web.HTTPNotFound()
        content_type = _TYPES.get(path.suffix, "application/octet-stream")
        return web.FileResponse(path, headers=_headers(content_type))

    router.add_get("/console", redirect)
    router.add_get(PREFIX, serve)
    router.add_get(PREFIX + "{name:.+}", serve)
