"""Connection lifecycle: replacement with GO_AWAY, idle timeout, maximum age, ping/pong, slow
clients, channel deletion and server shutdown."""

from __future__ import annotations

import asyncio
import base64
import socket
import time
from collections.abc import Awaitable, Callable
from urllib.parse import urlsplit

import aiohttp

from openkvs.signaling.bus import MAX_PENDING_PER_PARTICIPANT, LocalBus

from ..support import ServerThread
from .kvs import Client, b64json, presigned_url, setup_channel, unb64json

OFFER = {"type": "offer", "sdp": "v=0\r\n"}


async def on_server(server: ServerThread, fn: Callable[[], Awaitable[object]]) -> object:
    async def run() -> object:
        return await fn()

    return await asyncio.wrap_future(server.submit(run()))


async def test_new_master_replaces_the_old_one(make_server: Callable[..., ServerThread]) -> None:
    server = make_server(signaling_go_away_grace=0.6)
    arn = setup_channel(server, "masters")
    old = await Client.connect(server, arn)
    viewer = await Client.connect(server, arn, "v")
    new = await Client.connect(server, arn)
    replaced_at = time.monotonic()
    assert await old.recv() == {"messageType": "GO_AWAY"}
    # Until the grace period ends the old connection is open but no longer the master.
    await old.send("SDP_ANSWER", OFFER, recipient="v", correlation_id="late")
    status = (await old.recv())["statusResponse"]
    assert status["correlationId"] == "late" and status["errorType"] == "InvalidArgumentException"
    closed = await old.wait_closed()
    assert closed.data == aiohttp.WSCloseCode.GOING_AWAY
    assert time.monotonic() - replaced_at >= 0.5
    await viewer.send("SDP_OFFER", OFFER)
    assert (await new.recv())["senderClientId"] == "v"
    await viewer.expect_nothing(0.2)
    for c in (old, viewer, new):
        await c.close()


async def test_new_viewer_with_the_same_client_id_replaces_the_old_one(
    make_server: Callable[..., ServerThread],
) -> None:
    server = make_server(signaling_go_away_grace=0.2)
    arn = setup_channel(server, "viewers")
    master = await Client.connect(server, arn)
    first = await Client.connect(server, arn, "same")
    second = await Client.connect(server, arn, "same")
    assert await first.recv() == {"messageType": "GO_AWAY"}
    await first.wait_closed()
    await master.send("SDP_ANSWER", OFFER, recipient="same")
    assert (await second.recv())["messageType"] == "SDP_ANSWER"
    for c in (master, first, second):
        await c.close()


async def test_idle_timeout(make_server: Callable[..., ServerThread]) -> None:
    server = make_server(signaling_idle_timeout=0.6, signaling_go_away_grace=0.2)
    arn = setup_channel(server, "idle")
    busy = await Client.connect(server, arn, "busy")
    quiet = await Client.connect(server, arn, "quiet")
    started = time.monotonic()
    # Client pings count as activity (the C SDK pings every 10 s).
    for _ in range(6):
        await busy.ws.ping()
        await asyncio.sleep(0.2)
    assert await quiet.recv() == {"messageType": "GO_AWAY"}
    assert 0.5 <= time.monotonic() - started
    await quiet.wait_closed()
    await busy.expect_nothing(0.1)
    assert await busy.recv(timeout=2) == {"messageType": "GO_AWAY"}
    for c in (busy, quiet):
        await c.close()


async def test_maximum_connection_age(make_server: Callable[..., ServerThread]) -> None:
    server = make_server(signaling_max_connection_age=0.8, signaling_go_away_grace=0.2)
    arn = setup_channel(server, "age")
    master = await Client.connect(server, arn)
    viewer = await Client.connect(server, arn, "v")
    started = time.monotonic()
    go_away = None
    while go_away is None:
        await viewer.send("ICE_CANDIDATE", {"candidate": "", "sdpMid": "0"})  # busy, not idle
        try:
            go_away = await viewer.recv(timeout=0.2)
        except TimeoutError:
            continue
    assert go_away == {"messageType": "GO_AWAY"}
    assert 0.7 <= time.monotonic() - started < 3
    await viewer.wait_closed()
    for c in (master, viewer):
        await c.close()


async def test_ping_pong(make_server: Callable[..., ServerThread]) -> None:
    server = make_server(signaling_ping_interval=0.3)
    arn = setup_channel(server, "pings")
    # The server answers client pings.
    client = await Client.connect(server, arn, "pinger", autoping=False)
    await client.ws.ping(b"hello")
    msg = await client.ws.receive(timeout=2)
    while msg.type is aiohttp.WSMsgType.PING:  # the server's own heartbeat may come first
        msg = await client.ws.receive(timeout=2)
    assert (msg.type, msg.data) == (aiohttp.WSMsgType.PONG, b"hello")
    # The server pings; a client that never answers is disconnected...
    msg = await client.ws.receive(timeout=2)
    assert msg.type is aiohttp.WSMsgType.PING
    await client.wait_closed(timeout=3)
    assert not await on_server(server, lambda: server.services.hub.is_connected(arn, "pinger"))
    # ...one that answers (aiohttp's default autoping) stays.
    steady = await Client.connect(server, arn, "steady")
    await steady.expect_nothing(1.2)
    assert await on_server(server, lambda: server.services.hub.is_connected(arn, "steady"))
    for c in (client, steady):
        await c.close()


def stalled_master(server: ServerThread, arn: str) -> socket.socket:
    """A master that completes the WebSocket handshake and then never reads."""
    url = urlsplit(presigned_url(server, arn))
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.connect(("127.0.0.1", server.http_port))
    key = base64.b64encode(b"stalled-client!!").decode()
    sock.sendall(
        (
            f"GET /?{url.query} HTTP/1.1\r\nHost: {url.netloc}\r\nUpgrade: websocket\r\n"
            f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n"
        ).encode()
    )
    head = b""
    while b"\r\n\r\n" not in head:
        head += sock.recv(1)
    assert head.startswith(b"HTTP/1.1 101"), head
    return sock


async def test_a_client_that_does_not_read_is_dropped(
    make_server: Callable[..., ServerThread],
) -> None:
    server = make_server(signaling_send_queue=4, signaling_ping_interval=0)
    arn = setup_channel(server, "slow")
    sock = await asyncio.to_thread(stalled_master, server, arn)
    hub = server.services.hub
    payload = b64json({"type": "offer", "sdp": "x" * 6000})

    async def flood() -> tuple[int, int]:
        sent_while_connected = 0
        for _ in range(3000):
            if not await hub.is_connected(arn, None):
                break
            await hub.send(arn, None, "ICE_CANDIDATE", payload)
            sent_while_connected += 1
            await asyncio.sleep(0)  # let the writer push what the socket takes
        for _ in range(MAX_PENDING_PER_PARTICIPANT + 10):
            await hub.send(arn, None, "ICE_CANDIDATE", payload)
        bus = hub.bus
        assert isinstance(bus, LocalBus)
        return sent_while_connected, bus.pending_count((arn, None))

    sent, kept = await asyncio.wrap_future(server.submit(flood()))
    assert sent < 3000  # dropped long before the flood ended
    assert kept == MAX_PENDING_PER_PARTICIPANT  # later messages wait, within their bound
    sock.close()
    master = await Client.connect(server, arn)
    got = [await master.recv() for _ in range(kept)]
    assert {e["messageType"] for e in got} == {"ICE_CANDIDATE"}
    await master.expect_nothing(0.2)
    await master.close()


async def test_deleting_the_channel_sends_go_away(make_server: Callable[..., ServerThread]) -> None:
    server = make_server(signaling_go_away_grace=0.2)
    arn = setup_channel(server, "doomed")
    master = await Client.connect(server, arn)
    viewer = await Client.connect(server, arn, "v")
    kv = server.client("kinesisvideo")
    await asyncio.to_thread(kv.delete_signaling_channel, ChannelARN=arn)
    for c in (master, viewer):
        assert await c.recv() == {"messageType": "GO_AWAY"}
        assert (await c.wait_closed()).data == aiohttp.WSCloseCode.GOING_AWAY
        await c.close()


async def test_disabling_media_storage_sends_go_away(
    make_server: Callable[..., ServerThread],
) -> None:
    server = make_server(signaling_go_away_grace=0.2)
    arn = setup_channel(server, "stored")
    kv = server.client("kinesisvideo")
    stream = kv.create_stream(StreamName="stored-stream", DataRetentionInHours=1)["StreamARN"]
    kv.update_media_storage_configuration(
        ChannelARN=arn, MediaStorageConfiguration={"StreamARN": stream, "Status": "ENABLED"}
    )
    master = await Client.connect(server, arn)
    await asyncio.to_thread(
        kv.update_media_storage_configuration,
        ChannelARN=arn,
        MediaStorageConfiguration={"Status": "DISABLED"},
    )
    assert await master.recv() == {"messageType": "GO_AWAY"}
    await master.wait_closed()
    await master.close()


async def test_server_shutdown_sends_go_away(server: ServerThread) -> None:
    arn = setup_channel(server, "bye")
    master = await Client.connect(server, arn)
    viewer = await Client.connect(server, arn, "v")
    await viewer.send("SDP_OFFER", OFFER)
    assert unb64json((await master.recv())["messagePayload"]) == OFFER
    started = time.monotonic()
    await asyncio.to_thread(server.stop_server)
    assert time.monotonic() - started < 3  # open WebSockets do not hold the shutdown up
    for c in (master, viewer):
        assert await c.recv() == {"messageType": "GO_AWAY"}
        await c.wait_closed()
        await c.close()
