"""Run the application on the TLS port and (optionally) the plain HTTP port."""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import socket
import ssl
from typing import Any

from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError

from . import clock
from .app import SERVICES_KEY, SafeAccessLogger, build_app
from .config import Settings
from .services import Services
from .tls import TLS_DIR, TlsFiles, ensure_local_ca, server_context

logger = logging.getLogger(__name__)

# A drain (SIGTERM) ends within this many seconds, finished or not.
DRAIN_LIMIT = 30.0
# How long the drain waits for storage sessions to end after their participants got GO_AWAY,
# before the remaining ones are stopped by the server's own shutdown.
SESSION_WAIT = 15.0


class _ConnectionLog(logging.LoggerAdapter):  # type: ignore[type-arg]
    """aiohttp's connection-level log. A request that is not valid HTTP (a bad header, a broken
    chunk) is answered 400 by aiohttp before openkvs sees it; that is the client's error and is
    logged in one line, without a traceback."""

    def exception(self, msg: object, *args: object, **kwargs: object) -> None:
        exc = kwargs.get("exc_info")
        if isinstance(exc, HttpProcessingError):
            self.logger.info("refused a malformed HTTP request: %s", exc.message)
            return
        self.logger.exception(msg, *args, **kwargs)


@dataclasses.dataclass
class Bound:
    port: int | None
    http_port: int | None
    tls: TlsFiles


def tls_files(settings: Settings) -> TlsFiles:
    if settings.tls_cert is not None and settings.tls_key is not None:
        return TlsFiles(None, settings.tls_cert, settings.tls_key)
    return ensure_local_ca(settings.data_dir / TLS_DIR, [settings.host])


class Server:
    """Owns the aiohttp runner; ``await start()`` then ``await stop()``.

    Tests pass pre-bound sockets (``tls_sock``/``http_sock``) to get random free ports.
    """

    def __init__(
        self,
        settings: Settings,
        services: Services | None = None,
        *,
        tls_sock: socket.socket | None = None,
        http_sock: socket.socket | None = None,
    ) -> None:
        self.settings = settings
        self.app = build_app(settings, services)
        self._runner: web.AppRunner | None = None
        self._tls_sock = tls_sock
        self._http_sock = http_sock
        self.bound: Bound | None = None
        self.ssl_context: ssl.SSLContext | None = None

    async def start(self) -> Bound:
        s = self.settings
        s.data_dir.mkdir(parents=True, exist_ok=True)
        files = tls_files(s)
        self.ssl_context = server_context(files)
        self._runner = web.AppRunner(
            self.app,
            access_log_class=SafeAccessLogger,
            handle_signals=False,
            shutdown_timeout=5,
            logger=_ConnectionLog(logging.getLogger("aiohttp.server"), {}),
        )
        await self._runner.setup()
        site: web.BaseSite
        if self._tls_sock is not None:
            site = web.SockSite(self._runner, self._tls_sock, ssl_context=self.ssl_context)
            port: int | None = self._tls_sock.getsockname()[1]
        else:
            site = web.TCPSite(self._runner, s.host, s.port, ssl_context=self.ssl_context)
            port = s.port
        await site.start()
        http_port: int | None = None
        if self._http_sock is not None:
            await web.SockSite(self._runner, self._http_sock).start()
            http_port = self._http_sock.getsockname()[1]
        elif s.http_port:
            await web.TCPSite(self._runner, s.host, s.http_port).start()
            http_port = s.http_port
        self.bound = Bound(port, http_port, files)
        return self.bound

    async def drain(self, limit: float = DRAIN_LIMIT) -> bool:
        """Stop gracefully: refuse new sessions, uploads and signaling connections (``/readyz``
        answers 503 from here on), send GO_AWAY to every signaling client, end PutMedia uploads
        after their last whole fragment, wait for storage sessions to end (each flushes its
        partial fragment), then stop. False when ``limit`` seconds passed first."""
        services = self.app[SERVICES_KEY]
        services.health.drain()
        started = clock.monotonic()
        logger.info("draining: %d storage session(s) live", _live_sessions(services.sessions))
        try:
            async with asyncio.timeout(limit):
                await services.hub.shutdown()
                await services.dataplane.shutdown()
                wait_until = started + min(SESSION_WAIT, limit / 2)
                # Sessions end in their own tasks (in this process or a worker's): poll.
                while _live_sessions(services.sessions) and clock.monotonic() < wait_until:  # noqa: ASYNC110
                    await asyncio.sleep(0.05)
                await self.stop()
        except TimeoutError:
            logger.error("drain did not finish within %.0f s", limit)
            return False
        logger.info("drained in %.2f s", clock.monotonic() - started)
        return True

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
        for sock in (self._tls_sock, self._http_sock):
            if sock is not None:
                sock.close()


def _live_sessions(sessions: Any) -> int:
    """Storage sessions still running (masters and viewers), for the drain's wait."""
    masters = getattr(sessions, "masters", {})
    viewers = getattr(sessions, "viewers", {})
    return len(masters) + sum(len(v) for v in viewers.values())
