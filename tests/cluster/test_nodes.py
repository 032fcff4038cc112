"""Real openkvs servers sharing one Redis bus: the app wiring of the coordination (the PutMedia
writer lease, fragment wake-ups, readiness, start-up without the bus).

Each server has its own metadata store here, so "the same stream" on two nodes is the stream
with the same id in each (a fresh store numbers its first stream 1)."""

from __future__ import annotations

import asyncio
import json
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from openkvs.cluster.base import ClusterUnavailable
from openkvs.server import Server

from ..dataplane.mediafiles import clusters, header_part, producer_mkv
from ..dataplane.producer import Producer
from ..engines import redis_url
from ..support import ServerThread, free_port, make_settings

MakeServer = Callable[..., ServerThread]


@pytest.fixture
def bus_url(redis_prefix: str) -> str:
    return f"{redis_url()}?prefix={redis_prefix}"


def create_stream(srv: ServerThread, name: str) -> int:
    srv.client("kinesisvideo").create_stream(StreamName=name, DataRetentionInHours=24)
    return srv.services.control.get_stream(name=name).id


def events(acks: list[dict[str, Any]]) -> list[str]:
    return [a["EventType"] for a in acks]


async def test_one_writer_per_stream_across_nodes(make_server: MakeServer, bus_url: str) -> None:
    a = make_server(bus_url=bus_url)
    b = make_server(bus_url=bus_url, putmedia_handover_wait=0.5)
    assert a.services.cluster.distributed and b.services.cluster.distributed
    assert create_stream(a, "cam") == create_stream(b, "cam")
    data = producer_mkv()
    first = Producer(a, stream_name="cam")
    await first.connect()
    assert await first.read_head() == 200
    await first.send(header_part(data) + clusters(data)[0])
    assert "PERSISTED" in events([await first.ack() or {} for _ in range(3)])
    # A second producer through the other node is refused like one through the same node.
    second = Producer(b, stream_name="cam")
    await second.connect()
    assert await second.read_head() == 400
    assert second.response_headers["x-amzn-errortype"] == "ConnectionLimitExceededException"
    await second.end_and_close()
    for c in clusters(data)[1:]:
        await first.send(c)
    await first.end()
    assert events(await first.acks_until_end()).count("PERSISTED") == 2
    await first.close()
    # The first upload is over: its lease is released and the other node takes the stream.
    third = Producer(b, stream_name="cam")
    await third.connect()
    assert await third.read_head() == 200
    await third.send(data)
    await third.end()
    assert events(await third.acks_until_end()).count("PERSISTED") == 3
    await third.close()


async def test_idle_writer_on_another_node_gives_way(make_server: MakeServer, bus_url: str) -> None:
    a = make_server(bus_url=bus_url, putmedia_handover_idle=0.5)
    b = make_server(bus_url=bus_url, putmedia_handover_wait=8.0)
    create_stream(a, "cam")
    create_stream(b, "cam")
    data = producer_mkv()
    gone = Producer(a, stream_name="cam")
    await gone.connect()
    assert await gone.read_head() == 200
    await gone.send(header_part(data))  # then nothing: a producer that vanished
    loop = asyncio.get_running_loop()
    started = loop.time()
    taker = Producer(b, stream_name="cam")
    await taker.connect()
    assert await taker.read_head() == 200
    took = loop.time() - started
    assert took < 5.0  # well before the 8 s handover wait: the idle holder was told to end
    await gone.acks_until_end(timeout=5)
    assert gone.eof  # the vanished producer's request was ended for the new one
    await taker.send(data)
    await taker.end()
    assert events(await taker.acks_until_end()).count("PERSISTED") == 3
    await taker.close()
    await gone.close()


async def test_fragment_on_one_node_wakes_readers_on_another(
    make_server: MakeServer, bus_url: str
) -> None:
    a = make_server(bus_url=bus_url)
    b = make_server(bus_url=bus_url)
    sid = create_stream(a, "cam")
    waiting = b.call(_changed(b, sid))
    data = producer_mkv()
    p = Producer(a, stream_name="cam")
    await p.connect()
    assert await p.read_head() == 200
    await p.send(header_part(data) + clusters(data)[0])
    assert "PERSISTED" in events([await p.ack() or {} for _ in range(3)])
    assert b.call(_wait(waiting, 3.0))
    await p.end()
    await p.acks_until_end()
    await p.close()


async def _changed(srv: ServerThread, sid: int) -> asyncio.Event:
    return srv.services.fragments.changed(sid)


async def _wait(event: asyncio.Event, timeout: float) -> bool:
    await asyncio.wait_for(event.wait(), timeout)
    return True


def test_readiness_includes_the_bus(make_server: MakeServer, bus_url: str) -> None:
    srv = make_server(bus_url=bus_url)
    with urllib.request.urlopen(f"{srv.http_endpoint}/readyz", timeout=10) as resp:
        assert resp.status == 200 and json.load(resp) == {"status": "ready"}
    assert "cluster" in srv.services.health._checks
    live = srv.call(srv.services.cluster.nodes.live_nodes())
    assert srv.services.cluster.node.node_id in {n.node_id for n in live}


def test_embedded_default_has_no_bus(make_server: MakeServer) -> None:
    srv = make_server()
    assert srv.settings.bus_url == "local:"
    assert not srv.services.cluster.distributed
    assert srv.services.dataplane.leases is None
    assert "cluster" not in srv.services.health._checks
    assert srv.services.fragments.orphan_min_age is None


async def test_start_fails_fast_without_the_bus(tmp_path: Path) -> None:
    port = free_port()  # nothing listens there
    settings = make_settings(
        tmp_path,
        bus_url=f"redis://user:hunter2@127.0.0.1:{port}/0",
        port=free_port(),
        http_port=0,
    )
    server = Server(settings)
    started = asyncio.get_running_loop().time()
    with pytest.raises(ClusterUnavailable) as info:
        await server.start()
    assert asyncio.get_running_loop().time() - started < 10
    message = str(info.value)
    assert f"redis://127.0.0.1:{port}/0" in message and "check bus_url" in message
    assert "hunter2" not in message
    await server.stop()


async def test_writer_that_lost_its_lease_stops(
    make_server: MakeServer, bus_url: str, redis_prefix: str
) -> None:
    import redis.asyncio as aioredis

    a = make_server(bus_url=bus_url)
    sid = create_stream(a, "cam")
    cls = clusters(data := producer_mkv(10.0, gop_seconds=0.5))
    p = Producer(a, stream_name="cam")
    await p.connect()
    assert await p.read_head() == 200
    await p.send(header_part(data) + cls[0])
    assert "PERSISTED" in events([await p.ack() or {} for _ in range(3)])
    # The lease expires unseen (a long pause of this node) and another node takes it.
    client = aioredis.Redis.from_url(redis_url(), decode_responses=True)
    key = f"{redis_prefix}:lease:putmedia:{sid}"
    try:
        assert str(await client.get(key)).startswith(a.services.cluster.node.node_id + ":")
        await client.set(key, "n-other:token", px=60_000)
    finally:
        await client.aclose()
    # The producer goes on sending; at its next renewal (every 2 s) the holder finds the
    # lease gone and stores nothing more.
    sent = 1
    try:
        for c in cls[1:]:
            await p.send(c)
            sent += 1
            await asyncio.sleep(0.3)
    except ConnectionError:
        pass
    await p.acks_until_end(timeout=10)
    assert p.eof
    stream = a.services.control.get_stream(name="cam")
    stored = len(a.call(a.services.fragments.list_fragments(stream)))
    assert len(cls) == 20 and 1 <= stored <= 12 and stored <= sent < len(cls)
    await p.close()
