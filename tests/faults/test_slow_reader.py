"""A GetMedia consumer that reads far slower than a producer writes does not grow the server's
memory: GetMedia pulls one fragment at a time from the store and waits on the socket's
backpressure, so what the reader has not taken stays on disk."""

from __future__ import annotations

import asyncio
import json
import os
import socket
import ssl
import time
from typing import Any

import pytest
from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials

from ..dataplane.mediafiles import block, craft_cluster, segment_start, video_only_tracks
from ..dataplane.producer import Producer
from ..webrtc.procserver import ProcessServer
from .common import LONG, rss_kib, server_pid

pytestmark = pytest.mark.slow

START_MS = 1_700_000_000_000
FRAME = 40_000  # bytes per frame: 1.2 MB per one-second fragment at 30 fps


def fragment(i: int) -> bytes:
    payload = os.urandom(FRAME)
    return craft_cluster(
        START_MS + i * 1000, [block(1, k * 33, payload, k == 0) for k in range(30)]
    )


async def slow_get_media(srv: ProcessServer, stream: str, stop: asyncio.Event) -> int:
    """GetMedia from the start of the stream, reading 16 KiB every 50 ms; returns bytes read."""
    body = json.dumps({"StreamName": stream, "StartSelector": {"StartSelectorType": "EARLIEST"}})
    url = f"{srv.endpoint}/getMedia"
    req = AWSRequest("POST", url, data=body.encode(), headers={"Content-Type": "application/json"})
    akid, secret = srv.keys
    SigV4Auth(Credentials(akid, secret), "kinesisvideo", srv.settings.region).add_auth(req)
    sock = socket.create_connection(("127.0.0.1", srv.port))
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 32 * 1024)
    ctx = ssl.create_default_context(cafile=srv.ca)
    reader, writer = await asyncio.open_connection(sock=sock, ssl=ctx, server_hostname="127.0.0.1")
    head = ["POST /getMedia HTTP/1.1", f"Host: 127.0.0.1:{srv.port}"]
    head += [f"{k}: {v}" for k, v in req.headers.items()]
    head += [f"Content-Length: {len(body)}", "Connection: close"]
    writer.write(("\r\n".join(head) + "\r\n\r\n" + body).encode())
    await writer.drain()
    status = await reader.readline()
    assert b" 200 " in status, status
    got = 0
    while not stop.is_set():
        data = await reader.read(16 * 1024)
        if not data:
            break
        got += len(data)
        await asyncio.sleep(0.05)
    writer.transport.abort()
    return got


async def test_slow_getmedia_reader_does_not_grow_server_memory(tmp_path: Any) -> None:
    n = 80 if LONG else 40
    srv = ProcessServer(tmp_path / "data")
    srv.start()
    try:
        srv.client("kinesisvideo").create_stream(StreamName="slow", DataRetentionInHours=1)
        producer = Producer(srv, stream_name="slow")  # type: ignore[arg-type]
        await producer.connect()
        assert await producer.read_head() == 200
        await producer.send(segment_start() + video_only_tracks())
        for i in range(3):
            await producer.send(fragment(i))
        stop = asyncio.Event()
        reader = asyncio.ensure_future(slow_get_media(srv, "slow", stop))
        await asyncio.sleep(1.0)
        before = rss_kib(server_pid(srv))
        peak = before
        sent = 0
        t0 = time.monotonic()
        for i in range(3, n):
            data = fragment(i)
            await producer.send(data)
            sent += len(data)
            if i % 5 == 0:
                peak = max(peak, rss_kib(server_pid(srv)))
        await producer.end()
        acks = 0
        while (a := await producer.ack(30)) is not None:
            acks += a.get("EventType") == "PERSISTED"
            if acks >= n - 1:
                break
        await asyncio.sleep(1.0)
        peak = max(peak, rss_kib(server_pid(srv)))
        stop.set()
        got = await reader
        await producer.close()
        lag = sent - got
        growth = (peak - before) * 1024
        print(
            f"\nslow GetMedia reader: {sent / 1e6:.0f} MB ingested in"
            f" {time.monotonic() - t0:.1f} s, {got / 1e6:.1f} MB read, lag"
            f" {lag / 1e6:.0f} MB; server RSS {before / 1024:.0f} MiB -> peak"
            f" {peak / 1024:.0f} MiB (+{growth / 2**20:.1f} MiB)"
        )
        assert got > 0
        assert lag > 30e6  # the reader is far behind ...
        assert growth < lag / 3  # ... and the server did not keep what it has not read
    finally:
        srv.stop()
