"""The Bus contract, for LocalBus and for RedisBus (two nodes, each a RedisCluster with its bus,
on one key prefix): presence and replacement, the viewer cap, delivery, TTL buffering and its
bounds, calls between nodes. With LocalBus both "nodes" are the same bus. (Which node runs a
channel's storage sessions is the cluster's SessionRegistry: tests/cluster/test_contract.py.)"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest

from openkvs.cluster.base import NODE_TTL, NodeInfo, new_node_id
from openkvs.cluster.factory import open_cluster
from openkvs.cluster.redisbus import RedisCluster
from openkvs.config import ConfigError, Settings
from openkvs.errors import ClientLimitExceededException, InvalidArgumentException
from openkvs.signaling import cluster
from openkvs.signaling.bus import (
    Bus,
    Delivery,
    LocalBus,
    Location,
    NodeUnreachable,
    ViewerLimitReached,
)
from openkvs.signaling.redisbus import RedisBus

from ..engines import redis_url
from .conftest import FakeMonotonic

ARN = "arn:aws:kinesisvideo:us-east-1:000000000000:channel/c/1"
OTHER = "arn:aws:kinesisvideo:us-east-1:000000000000:channel/d/2"
_conns = itertools.count(1)


class ListPeer:
    """A Peer that keeps what it is given, up to ``room`` events."""

    def __init__(self, client_id: str | None, room: int = 1000, arn: str = ARN) -> None:
        self.channel_arn = arn
        self.client_id = client_id
        self.connection_id = f"conn-{client_id}-{next(_conns)}"
        self.room = room
        self.got: list[str] = []
        self.gone_away = False

    def deliver(self, text: str) -> bool:
        if len(self.got) >= self.room:
            return False
        self.got.append(text)
        return True

    def go_away(self, grace: float | None = None) -> None:
        self.gone_away = True

    def close(self) -> None:
        return None


MakeBus = Callable[..., Awaitable[Bus]]


@pytest.fixture(params=["local", "redis"])
async def make_bus(request: pytest.FixtureRequest) -> AsyncIterator[MakeBus]:
    """``await make_bus(**options)``: a started bus; each call is another node of the same
    deployment (for LocalBus: the same bus, whatever the options)."""
    started: list[Bus] = []
    clusters: list[RedisCluster] = []
    local: list[LocalBus] = []

    async def make(**options: Any) -> Bus:
        if request.param == "local":
            if not local:
                local.append(LocalBus(**options))
                started.append(local[0])
                await local[0].start()
            return local[0]
        prefix = request.getfixturevalue("redis_prefix")
        bus = await start_node(prefix, clusters, **options)
        started.append(bus)
        return bus

    yield make
    for bus in started:
        await bus.stop()
    for node in clusters:
        await node.stop()


async def start_node(
    prefix: str, clusters: list[RedisCluster], *, node_ttl: float = NODE_TTL, **options: Any
) -> RedisBus:
    """A node's cluster and its signaling bus, started (the cluster is added to ``clusters``)."""
    node = RedisCluster(redis_url(), prefix, NodeInfo(new_node_id()), node_ttl=node_ttl)
    await node.start()
    clusters.append(node)
    bus = RedisBus(node, **options)
    await bus.start()
    return bus


async def eventually(check: Callable[[], Any], timeout: float = 3.0) -> None:
    async with asyncio.timeout(timeout):
        while not check():
            await asyncio.sleep(0.01)


async def pending_count(bus: Bus, key: tuple[str, str | None]) -> int:
    if isinstance(bus, LocalBus):
        return bus.pending_count(key)
    assert isinstance(bus, RedisBus)
    return await bus.pending_count(key)


async def pending_bytes(bus: Bus) -> int:
    if isinstance(bus, LocalBus):
        return bus.pending_bytes
    assert isinstance(bus, RedisBus)
    return await bus.pending_bytes()


async def test_attach_replaces_and_the_old_connection_learns_it(make_bus: MakeBus) -> None:
    a, b = await make_bus(), await make_bus()
    first, second = ListPeer(None), ListPeer(None)
    assert (await a.attach(first)).replaced is None
    assert await b.locate((ARN, None)) == Location(a.node_id, first.connection_id)
    assert a.is_current(first)
    attached = await b.attach(second)
    assert attached.replaced == Location(a.node_id, first.connection_id)
    await eventually(lambda: first.gone_away)
    await eventually(lambda: not a.is_current(first))
    assert b.is_current(second) and not second.gone_away
    assert await a.locate((ARN, None)) == Location(b.node_id, second.connection_id)
    assert second in b.peers(ARN) and first not in a.peers(ARN)


async def test_detach_only_if_current(make_bus: MakeBus) -> None:
    a, b = await make_bus(), await make_bus()
    first, second = ListPeer("v"), ListPeer("v")
    await a.attach(first)
    await b.attach(second)
    assert not await a.detach(first)  # replaced: nothing to forget
    assert await a.locate((ARN, "v")) == Location(b.node_id, second.connection_id)
    assert await b.detach(second)
    assert await a.locate((ARN, "v")) is None
    assert not await b.detach(second)
    assert await a.viewer_count(ARN) == 0


async def test_viewer_cap_is_atomic_across_nodes(make_bus: MakeBus) -> None:
    a, b = await make_bus(), await make_bus()
    viewers = [ListPeer(f"v{i}") for i in range(12)]
    results = await asyncio.gather(
        *((a if i % 2 else b).attach(p, max_viewers=3) for i, p in enumerate(viewers)),
        return_exceptions=True,
    )
    admitted = [p for p, r in zip(viewers, results, strict=True) if not isinstance(r, Exception)]
    refused = [r for r in results if isinstance(r, Exception)]
    assert len(admitted) == 3 and all(isinstance(r, ViewerLimitReached) for r in refused)
    assert await a.viewer_count(ARN) == await b.viewer_count(ARN) == 3
    # A viewer replacing its own connection is not a new viewer; the master never counts.
    again = ListPeer(admitted[0].client_id)
    assert (await a.attach(again, max_viewers=3)).replaced is not None
    await b.attach(ListPeer(None), max_viewers=3)
    with pytest.raises(ViewerLimitReached):
        await a.attach(ListPeer("late"), max_viewers=3)
    assert await b.viewer_count(ARN) == 3


async def test_delivery_local_and_to_another_node(make_bus: MakeBus) -> None:
    a, b = await make_bus(), await make_bus()
    master, viewer = ListPeer(None), ListPeer("v")
    await a.attach(master)
    await b.attach(viewer)
    assert await a.deliver((ARN, None), "to-master", ttl=5, origin="v", is_offer=False) is (
        Delivery.DELIVERED
    )
    assert master.got == ["to-master"]
    for i in range(5):
        assert await a.deliver((ARN, "v"), f"m{i}", ttl=5, origin="m", is_offer=False) is (
            Delivery.DELIVERED
        )
    await eventually(lambda: len(viewer.got) == 5)
    assert viewer.got == [f"m{i}" for i in range(5)]  # in order


async def test_kept_for_an_absent_participant_and_flushed_on_another_node(
    make_bus: MakeBus,
) -> None:
    a, b = await make_bus(), await make_bus()
    for text in ("one", "two", "three"):
        assert await a.deliver((ARN, "v"), text, ttl=30, origin="m", is_offer=False) is (
            Delivery.BUFFERED
        )
    assert await pending_count(b, (ARN, "v")) == 3
    viewer = ListPeer("v")
    assert (await b.attach(viewer)).flushed == 3
    assert viewer.got == ["one", "two", "three"]
    assert await pending_count(a, (ARN, "v")) == 0 and await pending_bytes(a) == 0
    # Events without a TTL reach connected participants only.
    assert await a.deliver((ARN, "w"), "x", ttl=0, origin="m", is_offer=False) is (Delivery.DROPPED)


async def test_a_message_for_a_socket_that_cannot_take_it_is_kept(make_bus: MakeBus) -> None:
    a, b = await make_bus(), await make_bus()
    full = ListPeer(None, room=0)
    await b.attach(full)
    delivered = await a.deliver((ARN, None), "z", ttl=30, origin="v", is_offer=False)
    # Handed to the node that holds the socket, which keeps it when the socket refuses it.
    assert delivered in (Delivery.BUFFERED, Delivery.DELIVERED)
    await b.detach(full)
    fresh = ListPeer(None)
    for _ in range(300):
        if await pending_count(a, (ARN, None)) == 1:
            break
        await asyncio.sleep(0.01)
    assert (await a.attach(fresh)).flushed == 1 and fresh.got == ["z"]


async def test_kept_messages_expire(make_bus: MakeBus) -> None:
    a, b = await make_bus(), await make_bus()
    await a.deliver((ARN, "v"), "short", ttl=0.3, origin="m", is_offer=False)
    await a.deliver((ARN, "v"), "long", ttl=30, origin="m", is_offer=False)
    await a.deliver((ARN, "w"), "gone", ttl=0.3, origin="m", is_offer=False)
    await asyncio.sleep(0.5)
    await a.prune()
    assert await pending_count(a, (ARN, "w")) == 0
    # LocalBus trims "v" now, RedisBus when "v" is next used: "long" is kept either way.
    assert len("long") <= await pending_bytes(a) <= len("short") + len("long")
    viewer = ListPeer("v")
    assert (await b.attach(viewer)).flushed == 1 and viewer.got == ["long"]
    assert await pending_bytes(a) == 0


async def test_a_newer_offer_supersedes_the_same_senders_pending_messages(
    make_bus: MakeBus,
) -> None:
    a, b = await make_bus(), await make_bus()
    key = (ARN, None)
    await a.deliver(key, "offer-1", ttl=30, origin="viewer:x", is_offer=True)
    await a.deliver(key, "cand-1", ttl=30, origin="viewer:x", is_offer=False)
    await b.deliver(key, "offer-y", ttl=30, origin="viewer:y", is_offer=True)
    await b.deliver(key, "offer-2", ttl=30, origin="viewer:x", is_offer=True)
    assert await pending_count(a, key) == 2
    assert await pending_bytes(a) == len("offer-y") + len("offer-2")
    master = ListPeer(None)
    await a.attach(master)
    assert master.got == ["offer-y", "offer-2"]


async def test_bounds(make_bus: MakeBus) -> None:
    a = await make_bus(max_per_participant=3, max_bytes=10)
    b = await make_bus(max_per_participant=3, max_bytes=10)
    for text in ("a", "b", "c", "d"):
        assert await a.deliver((ARN, None), text, ttl=0.4, origin="v", is_offer=False) is (
            Delivery.BUFFERED
        )
    # "a" went first.
    assert await pending_count(a, (ARN, None)) == 3 and await pending_bytes(a) == 3
    with pytest.raises(ClientLimitExceededException):
        await b.deliver((ARN, "w"), "x" * 8, ttl=5, origin="m", is_offer=False)
    await asyncio.sleep(0.6)
    # The budget is spent by expired messages only: they make room.
    assert await b.deliver((ARN, "w"), "x" * 8, ttl=5, origin="m", is_offer=False) is (
        Delivery.BUFFERED
    )
    assert await pending_bytes(a) == 8 and await pending_count(a, (ARN, None)) == 0


async def test_close_channel_reaches_every_node(make_bus: MakeBus) -> None:
    a, b = await make_bus(), await make_bus()
    master, viewer, elsewhere = ListPeer(None), ListPeer("v"), ListPeer("v", arn=OTHER)
    await a.attach(master)
    await b.attach(viewer)
    await b.attach(elsewhere)
    await a.deliver((ARN, "w"), "kept", ttl=30, origin="m", is_offer=False)
    await a.deliver((OTHER, "w"), "other", ttl=30, origin="m", is_offer=False)
    await a.close_channel(ARN)
    await eventually(lambda: master.gone_away and viewer.gone_away)
    assert not elsewhere.gone_away
    assert await pending_count(b, (ARN, "w")) == 0 and await pending_count(b, (OTHER, "w")) == 1


async def test_calls_between_nodes(make_bus: MakeBus) -> None:
    a, b = await make_bus(), await make_bus()

    async def echo(args: dict[str, Any]) -> Any:
        if args.get("fail"):
            raise InvalidArgumentException("no such thing")
        return {"echo": args["x"], "node": b.node_id}

    b.serve("test.echo", echo)
    assert await a.call(b.node_id, "test.echo", {"x": 1}, limit=3) == {
        "echo": 1,
        "node": b.node_id,
    }
    with pytest.raises(InvalidArgumentException, match="no such thing"):
        await a.call(b.node_id, "test.echo", {"fail": True}, limit=3)
    with pytest.raises(NodeUnreachable):
        await a.call("no-such-node", "test.echo", {"x": 1}, limit=3)


async def test_presence_does_not_outlive_a_dead_node(redis_prefix: str) -> None:
    # A node whose heartbeat lapses (it died without stopping) counts as gone.
    clusters: list[RedisCluster] = []
    dead = await start_node(redis_prefix, clusters, node_ttl=1.0)
    live = await start_node(redis_prefix, clusters)
    try:
        await dead.attach(ListPeer(None))
        await dead.attach(ListPeer("v1"), max_viewers=1)
        assert await live.locate((ARN, None)) is not None
        await asyncio.sleep(1.5)  # the node's heartbeat keeps its presence
        assert await live.locate((ARN, None)) is not None
        await clusters[0].stop(graceful=False)  # a crash: the heartbeat expires
        async with asyncio.timeout(5):
            while await live.locate((ARN, None)) is not None:
                await asyncio.sleep(0.05)
        assert await live.viewer_count(ARN) == 0
        master = ListPeer(None)
        assert (await live.attach(master)).replaced is None
        await live.attach(ListPeer("v2"), max_viewers=1)  # the dead node's viewer is not counted
        assert await live.deliver((ARN, None), "x", ttl=5, origin="v", is_offer=False) is (
            Delivery.DELIVERED
        )
    finally:
        await dead.stop()
        await live.stop()
        for node in clusters:
            await node.stop()


async def test_local_bus_expiry_follows_the_clock(monotonic: FakeMonotonic) -> None:
    bus = LocalBus(max_per_participant=3, max_bytes=10)
    await bus.deliver((ARN, None), "a", ttl=5, origin="v", is_offer=False)
    monotonic.advance(6)
    await bus.prune()
    assert bus.pending_bytes == 0 and bus.pending_count((ARN, None)) == 0


async def test_a_lapsed_heartbeat_puts_this_nodes_connections_back(redis_prefix: str) -> None:
    import redis.asyncio as aioredis

    clusters: list[RedisCluster] = []
    bus = await start_node(redis_prefix, clusters, node_ttl=1.5)  # beats every 0.5 s
    other = await start_node(redis_prefix, clusters)
    r = aioredis.Redis.from_url(redis_url(), decode_responses=True)
    try:
        master = ListPeer(None)
        await bus.attach(master)
        # As if this node had stalled past its TTL and another node had cleaned up after it.
        await r.delete(f"{redis_prefix}:node:{bus.node_id}", f"{bus.prefix}ch:{ARN}")
        assert await other.locate((ARN, None)) is None
        for _ in range(200):
            if await other.locate((ARN, None)) is not None:
                break
            await asyncio.sleep(0.02)
        assert await other.locate((ARN, None)) == Location(bus.node_id, master.connection_id)
        assert await other.deliver((ARN, None), "x", ttl=5, origin="v", is_offer=False) is (
            Delivery.DELIVERED
        )
        await eventually(lambda: master.got == ["x"])
    finally:
        await r.aclose()
        await bus.stop()
        await other.stop()
        for node in clusters:
            await node.stop()


def test_bus_url() -> None:
    local = open_cluster(Settings.load({}, None, {}))
    bus = cluster.make_bus(local)
    assert isinstance(bus, LocalBus) and bus.node_id == local.node.node_id
    settings = Settings.load({}, None, {"bus_url": "redis://127.0.0.1:1/0?prefix=x"})
    shared = open_cluster(settings)
    bus = cluster.make_bus(shared)
    assert isinstance(bus, RedisBus) and bus.node_id == shared.node.node_id
    assert bus.prefix == "x:sig:"
    assert Settings.load({}, None, {"bus_url": "redis://h:1/0?prefix=p"}).bus_url.startswith(
        "redis://"
    )
    with pytest.raises(ConfigError, match="bus_url"):
        Settings.load({}, None, {"bus_url": "postgres://h/db"})


@pytest.mark.parametrize("reconnected", [False, True], ids=["kept", "sent-after-reconnect"])
async def test_a_node_whose_subscription_dropped_gets_what_was_sent_meanwhile(
    redis_prefix: str, reconnected: bool
) -> None:
    """B's subscriptions are cut (as a network blip would), both at once; its Redis client
    connects and subscribes again by itself. A message sent before that is kept in Redis and
    B takes it; one sent once B's client has subscribed again goes to that subscription, which
    B must keep reading (replacing it dropped the message). No message is lost either way."""
    import redis
    import redis.asyncio as aioredis

    clusters: list[RedisCluster] = []
    a = await start_node(redis_prefix, clusters)
    b = await start_node(redis_prefix, clusters)
    r = aioredis.Redis.from_url(redis_url(), decode_responses=True)
    try:
        viewer = ListPeer("v")
        await b.attach(viewer)
        channel = f"{redis_prefix}:sig:to:{b.node_id}"

        async def subscribers() -> int:
            return int(dict(await r.pubsub_numsub(channel)).get(channel, 0))

        sent: list[str] = []
        outcomes: list[Delivery] = []
        # Listed and killed from a blocking client, so that B's node (in this event loop)
        # cannot connect again before A sends. Its client may still win that race now and
        # then (it takes the message then): cut again until a message is kept.
        with redis.Redis.from_url(redis_url(), decode_responses=True) as blocking:
            for attempt in range(1 if reconnected else 5):
                async with asyncio.timeout(5):
                    while await subscribers() < 1:
                        await asyncio.sleep(0.005)
                ours = [c for c in blocking.client_list() if c["name"] == f"openkvs-{b.node_id}"]
                subscribed = [c for c in ours if int(c.get("sub", 0)) > 0]
                assert len(subscribed) == 2  # the cluster's subscription and the bus's
                for client in subscribed:
                    blocking.client_kill_filter(_id=client["id"])
                if reconnected:
                    async with asyncio.timeout(5):
                        while await subscribers() < 1:
                            await asyncio.sleep(0.005)
                sent.append(f"during-{attempt}")
                outcomes.append(
                    await a.deliver((ARN, "v"), sent[-1], ttl=30, origin="m", is_offer=False)
                )
                await eventually(lambda: viewer.got == sent, timeout=5)
                if outcomes[-1] is not Delivery.DELIVERED:
                    break
        assert outcomes[-1] is (Delivery.DELIVERED if reconnected else Delivery.BUFFERED)
        await asyncio.sleep(0.5)  # nothing replaces the subscription later either
        # And B listens again.
        assert await a.deliver((ARN, "v"), "after", ttl=30, origin="m", is_offer=False) is (
            Delivery.DELIVERED
        )
        await eventually(lambda: viewer.got == [*sent, "after"])
    finally:
        await r.aclose()
        await a.stop()
        await b.stop()
        for node in clusters:
            await node.stop()
