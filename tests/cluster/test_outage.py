"""A node whose Redis goes away and comes back: /readyz says so, and fragment wake-ups resume.

The node reaches Redis through a TCP relay on loopback that the test cuts and restores."""

from __future__ import annotations

import asyncio
import contextlib
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

from openkvs.cluster.base import NodeInfo, new_node_id
from openkvs.cluster.redisbus import RedisCluster

from ..engines import redis_url
from ..support import ServerThread, make_settings


class Relay:
    """Forwards loopback TCP connections to ``target``; ``cut`` drops them all."""

    def __init__(self, host: str, port: int) -> None:
        self.target = (host, port)
        self.port = 0
        self._server: asyncio.Server | None = None
        self._writers: list[asyncio.StreamWriter] = []

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", self.port)
        self.port = self._server.sockets[0].getsockname()[1]

    async def cut(self) -> None:
        assert self._server is not None
        self._server.close()
        for writer in self._writers:
            writer.transport.abort()
        self._writers.clear()
        await self._server.wait_closed()
        self._server = None

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_reader, up_writer = await asyncio.open_connection(*self.target)
        except OSError:
            writer.transport.abort()
            return
        self._writers += [writer, up_writer]

        async def pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
            with contextlib.suppress(ConnectionError, OSError):
                while data := await src.read(65536):
                    dst.write(data)
                    await dst.drain()
            dst.transport.abort()

        await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))


def readyz(srv: ServerThread) -> int:
    try:
        with urllib.request.urlopen(f"{srv.http_endpoint}/readyz", timeout=10) as resp:
            return int(resp.status)
    except urllib.error.HTTPError as exc:
        return exc.code


async def wait_status(srv: ServerThread, status: int, within: float) -> None:
    deadline = asyncio.get_running_loop().time() + within
    while (got := await asyncio.to_thread(readyz, srv)) != status:
        assert asyncio.get_running_loop().time() < deadline, f"/readyz stayed {got}"
        await asyncio.sleep(0.2)


async def test_bus_outage_and_recovery(tmp_path: Path, redis_prefix: str) -> None:
    url = redis_url()
    parts = urllib.parse.urlsplit(url)
    relay = Relay(parts.hostname or "127.0.0.1", parts.port or 6379)
    await relay.start()
    other = RedisCluster(url, redis_prefix, NodeInfo(new_node_id()))
    await other.start()
    srv: ServerThread | None = None
    try:
        bus = f"redis://127.0.0.1:{relay.port}{parts.path or '/0'}?prefix={redis_prefix}"
        # Started from a thread: its start-up talks to Redis through the relay on this loop.
        srv = await asyncio.to_thread(ServerThread, make_settings(tmp_path, bus_url=bus))
        await wait_status(srv, 200, 10)

        await relay.cut()
        await wait_status(srv, 503, 10)
        await relay.start()  # the same port again
        await wait_status(srv, 200, 15)

        # The subscription is back: a fragment committed on the other node wakes this one.
        deadline = asyncio.get_running_loop().time() + 15
        while True:
            event = await asyncio.to_thread(srv.call, _changed(srv, 11))
            other.notifier.notify(11, 1)
            if await asyncio.to_thread(srv.call, _woken(event, 0.5)):
                break
            assert asyncio.get_running_loop().time() < deadline, "wake-ups did not resume"
        # ... and goes on doing so (not a wake-up of everyone after a reconnection).
        for number in (2, 3):
            event = await asyncio.to_thread(srv.call, _changed(srv, 11))
            other.notifier.notify(11, number)
            assert await asyncio.to_thread(srv.call, _woken(event, 3.0))
    finally:
        if srv is not None:
            await asyncio.to_thread(srv.close)
        await other.stop()
        if relay._server is not None:
            await relay.cut()


async def _changed(srv: ServerThread, sid: int) -> asyncio.Event:
    return srv.services.fragments.changed(sid)


async def _woken(event: asyncio.Event, timeout: float) -> bool:
    try:
        await asyncio.wait_for(event.wait(), timeout)
    except TimeoutError:
        return False
    return True
