"""A webhook receiver for tests: aiohttp on loopback, recording every POST."""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

from aiohttp import web

from openkvs.ops.events import SIGNATURE_HEADER, verify

SECRET = "webhook-test-secret"


class Receiver:
    """Records every POST (raw body, headers, arrival time); can fail or stall on demand."""

    def __init__(self) -> None:
        self.requests: list[tuple[bytes, dict[str, str], float]] = []
        self.fail_first = 0  # answer 500 to this many requests first
        self.always_fail = False
        self.release = asyncio.Event()
        self.release.set()
        self.url = ""

    async def handle(self, request: web.Request) -> web.Response:
        body = await request.read()
        self.requests.append((body, dict(request.headers), time.monotonic()))
        await self.release.wait()
        if self.always_fail or len(self.requests) <= self.fail_first:
            return web.Response(status=500)
        return web.Response(status=204)

    def events(self) -> list[dict[str, Any]]:
        out = []
        for body, headers, _ in self.requests:
            assert headers.get("Content-Type") == "application/json"
            assert verify(SECRET, body, headers.get(SIGNATURE_HEADER)), headers
            out.append(json.loads(body))
        return out
