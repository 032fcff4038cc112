from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from aiohttp import web

from ..support import bound_socket
from .receiver import Receiver


@pytest.fixture
async def receiver() -> AsyncIterator[Receiver]:
    rec = Receiver()
    app = web.Application()
    app.router.add_post("/hook", rec.handle)
    runner = web.AppRunner(app)
    await runner.setup()
    sock = bound_socket()
    await web.SockSite(runner, sock).start()
    rec.url = f"http://127.0.0.1:{sock.getsockname()[1]}/hook?token=abc"
    yield rec
    rec.release.set()
    await runner.cleanup()
