"""Coordination through Redis, for nodes that share one (``bus_url = "redis://host:6379/0"``).

Keys and channels all start with the bus prefix ``<p>`` (default ``openkvs``):

* ``<p>:lease:<name>`` holds the token of a lease's owner (``SET NX PX``; renewed and released by
  scripts that compare the token first, so a lease that expired and was taken by another node is
  never extended or deleted by its former owner);
* ``<p>:storage:<channel ARN>`` holds the id of the node that runs a channel's storage sessions
  (claimed by a script that keeps a live owner's claim; refreshed by each claim, forgotten a day
  after the last);
* ``<p>:node:<node id>`` is a node's heartbeat (expires ``NODE_TTL`` s after the last beat). It
  is the one heartbeat of the node: the storage claims here and the signaling bus's presence
  scripts (``signaling/redis_lua.py``) treat a node whose heartbeat is gone as absent;
* channel ``<p>:fragments`` carries ``"<node id> <stream id> <fragment number>"`` per committed
  fragment, and ``<p>:yield`` the names of leases whose holders are asked to yield;
* the signaling bus (``signaling/redisbus.py``) keeps its keys under ``<p>:sig:``.

A node holds one Redis connection pool (this cluster's client, shared with the signaling bus)
and two subscriptions (this one's and the signaling bus's).

Publishing a fragment notification never holds up the commit: it goes through a bounded queue,
and a notification dropped (queue full, Redis unreachable) only delays a live reader until its
next poll of the metadata store.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import Awaitable, Callable
from typing import Any

import redis.asyncio as aioredis

from .base import (
    NODE_TTL,
    Cluster,
    ClusterUnavailable,
    Lease,
    LeaseDutyLock,
    NodeInfo,
    YieldCallback,
    cancel_tasks,
    lease_token,
)
from .local import LocalNotifier

logger = logging.getLogger(__name__)

# Called after each heartbeat with whether it had lapsed (RedisCluster.on_beat).
BeatHook = Callable[[bool], Awaitable[None]]

CONNECT_TIMEOUT = 3.0
COMMAND_TIMEOUT = 5.0
OUTBOX_SIZE = 4096  # fragment notifications waiting to be published

_RENEW = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return 0
"""

_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
"""

# How long a channel's storage claim is remembered after the last claim.
STORAGE_TTL = 24 * 3600.0

# KEYS[1] the channel's claim. ARGV: the heartbeat key prefix, this node, a node to replace even
# if alive ('' for none), the claim's TTL ms. -> the node that runs the channel's sessions (this
# one unless another live node holds them)
_CLAIM = """
local v = redis.call('GET', KEYS[1])
if v and v ~= ARGV[2] and v ~= ARGV[3] and redis.call('EXISTS', ARGV[1] .. v) == 1 then
  return v
end
redis.call('SET', KEYS[1], ARGV[2], 'PX', tonumber(ARGV[4]))
return ARGV[2]
"""

# KEYS[1] the channel's claim. ARGV: the heartbeat key prefix. -> the live owner or false
_OWNER = """
local v = redis.call('GET', KEYS[1])
if v and redis.call('EXISTS', ARGV[1] .. v) == 1 then return v end
return false
"""


class RedisNotifier(LocalNotifier):
    """This node's waiters as locally, plus a publication per fragment for the other nodes."""

    def __init__(self, node_id: str, outbox_size: int = OUTBOX_SIZE) -> None:
        super().__init__()
        self._node_id = node_id
        self.outbox: asyncio.Queue[str] = asyncio.Queue(outbox_size)
        self.dropped = 0

    def notify(self, stream_id: int, number: int) -> None:
        super().notify(stream_id, number)
        try:
            self.outbox.put_nowait(f"{self._node_id} {stream_id} {number}")
        except asyncio.QueueFull:
            self.dropped += 1
            if self.dropped == 1 or self.dropped % 1000 == 0:
                logger.warning("fragment notifications dropped: %d (bus too slow)", self.dropped)

    def deliver(self, data: str) -> None:
        """A notification from the bus: wake the stream's waiters unless it is our own."""
        parts = data.split(" ")
        if len(parts) != 3 or parts[0] == self._node_id or not parts[1].isdigit():
            return
        super().notify(int(parts[1]), int(parts[2]) if parts[2].isdigit() else 0)

    def wake_everyone(self) -> None:
        """Wake every waiter to read the store again (notifications may have been lost)."""
        events = list(self._changed.values())
        self._changed.clear()
        for event in events:
            event.set()


class RedisLeases:
    def __init__(self, client: aioredis.Redis, prefix: str, node_id: str) -> None:
        self._client = client
        self._prefix = prefix
        self._node_id = node_id
        self._renew = client.register_script(_RENEW)
        self._release = client.register_script(_RELEASE)
        self._callbacks: list[YieldCallback] = []
        self.yield_channel = f"{prefix}:yield"

    def _key(self, name: str) -> str:
        return f"{self._prefix}:lease:{name}"

    async def acquire(self, name: str, ttl: float) -> Lease | None:
        lease = Lease(name, lease_token(self._node_id), ttl)
        ok = await self._client.set(self._key(name), lease.token, nx=True, px=_ms(ttl))
        return lease if ok else None

    async def renew(self, lease: Lease) -> bool:
        done = await self._renew(keys=[self._key(lease.name)], args=[lease.token, _ms(lease.ttl)])
        return bool(done)

    async def release(self, lease: Lease) -> bool:
        done = await self._release(keys=[self._key(lease.name)], args=[lease.token])
        return bool(done)

    async def holder(self, name: str) -> str | None:
        token = await self._client.get(self._key(name))
        return None if token is None else str(token).partition(":")[0]

    async def ask_to_yield(self, name: str) -> None:
        await self._client.publish(self.yield_channel, name)

    def on_yield(self, callback: YieldCallback) -> None:
        self._callbacks.append(callback)

    def deliver(self, name: str) -> None:
        for callback in list(self._callbacks):
            try:
                callback(name)
            except Exception:  # noqa: BLE001 - one callback failing is not the asker's
                logger.exception("lease yield callback failed")


class RedisSessionRegistry:
    def __init__(self, client: aioredis.Redis, prefix: str, node_id: str) -> None:
        self._prefix = prefix
        self._node_id = node_id
        self._claim = client.register_script(_CLAIM)
        self._owner = client.register_script(_OWNER)

    def _key(self, channel_arn: str) -> str:
        return f"{self._prefix}:storage:{channel_arn}"

    async def owner(self, channel_arn: str) -> str | None:
        node = await self._owner(keys=[self._key(channel_arn)], args=[f"{self._prefix}:node:"])
        return None if node is None else str(node)

    async def claim(self, channel_arn: str, *, instead_of: str | None = None) -> str:
        node = await self._claim(
            keys=[self._key(channel_arn)],
            args=[f"{self._prefix}:node:", self._node_id, instead_of or "", _ms(STORAGE_TTL)],
        )
        return str(node)


class RedisNodeRegistry:
    def __init__(self, client: aioredis.Redis, prefix: str) -> None:
        self._client = client
        self._prefix = prefix

    def _key(self, node_id: str) -> str:
        return f"{self._prefix}:node:{node_id}"

    async def beat(self, node: NodeInfo, ttl: float) -> bool:
        """Refresh the heartbeat; False when it had lapsed (or is new)."""
        info = {"address": node.address, "port": node.port, "started": node.started}
        value = json.dumps({"node": node.node_id, **info})
        return (
            await self._client.set(self._key(node.node_id), value, px=_ms(ttl), get=True)
            is not None
        )

    async def forget(self, node_id: str) -> None:
        await self._client.delete(self._key(node_id))

    async def live_nodes(self) -> list[NodeInfo]:
        keys = [k async for k in self._client.scan_iter(match=self._key("*"), count=200)]
        if not keys:
            return []
        nodes = []
        for value in await self._client.mget(keys):
            if value is None:
                continue  # expired between the scan and the read
            data = json.loads(value)
            nodes.append(NodeInfo(data["node"], data["address"], data["port"], data["started"]))
        return sorted(nodes, key=lambda n: n.node_id)

    async def is_alive(self, node_id: str) -> bool:
        return bool(await self._client.exists(self._key(node_id)))


class RedisCluster(Cluster):
    """A node of a cluster that coordinates through one Redis."""

    def __init__(
        self,
        url: str,
        prefix: str,
        node: NodeInfo,
        *,
        display_url: str | None = None,
        node_ttl: float = NODE_TTL,
    ) -> None:
        self.node = node
        self._display_url = display_url or url
        self._prefix = prefix
        self._node_ttl = node_ttl
        self._client: aioredis.Redis = aioredis.Redis.from_url(
            url,
            decode_responses=True,
            socket_connect_timeout=CONNECT_TIMEOUT,
            socket_timeout=COMMAND_TIMEOUT,
            client_name=f"openkvs-{node.node_id}",  # CLIENT LIST tells the nodes apart
        )
        self._redis_notifier = RedisNotifier(node.node_id)
        self.notifier = self._redis_notifier
        self._leases = RedisLeases(self._client, prefix, node.node_id)
        self.leases = self._leases
        self.sessions = RedisSessionRegistry(self._client, prefix, node.node_id)
        self._nodes = RedisNodeRegistry(self._client, prefix)
        self.nodes = self._nodes
        self.duties = LeaseDutyLock(self.leases)
        self._fragments_channel = f"{prefix}:fragments"
        self._pubsub: Any = None
        self._tasks: list[asyncio.Task[None]] = []
        self._beat_hooks: list[BeatHook] = []

    @property
    def redis(self) -> aioredis.Redis:
        """This node's Redis client (one connection pool, shared with the signaling bus)."""
        return self._client

    @property
    def prefix(self) -> str:
        """The key prefix ``<p>`` (keys are ``<p>:...``)."""
        return self._prefix

    @property
    def node_ttl(self) -> float:
        return self._node_ttl

    def on_beat(self, hook: BeatHook) -> None:
        """Run ``await hook(lapsed)`` after each heartbeat; ``lapsed`` is True when the heartbeat
        had run out before it (this node stalled or Redis lost it: the other nodes counted this
        one as gone meanwhile)."""
        self._beat_hooks.append(hook)

    @property
    def distributed(self) -> bool:
        return True

    async def start(self) -> None:
        try:
            async with asyncio.timeout(CONNECT_TIMEOUT * 2):
                await self._client.ping()
                await self._nodes.beat(self.node, self._node_ttl)
                pubsub = self._client.pubsub()
                self._pubsub = pubsub
                await subscribe_confirmed(
                    pubsub, [self._fragments_channel, self._leases.yield_channel]
                )
        except Exception as exc:
            await self._close()
            raise ClusterUnavailable(
                f"cannot reach the coordination bus at {self._display_url} "
                f"({exc or type(exc).__name__}); check bus_url and that Redis is running"
            ) from exc
        self._tasks = [
            asyncio.create_task(self._listen(), name="openkvs-bus-listen"),
            asyncio.create_task(self._publish(), name="openkvs-bus-publish"),
            asyncio.create_task(self._heartbeat(), name="openkvs-node-heartbeat"),
        ]
        logger.info("node %s joined the cluster at %s", self.node.node_id, self._display_url)

    async def stop(self, *, graceful: bool = True) -> None:
        await cancel_tasks(self._tasks)
        self._tasks = []
        if graceful:
            with contextlib.suppress(Exception):
                async with asyncio.timeout(COMMAND_TIMEOUT):
                    await self._nodes.forget(self.node.node_id)
        await self._close()

    async def _close(self) -> None:
        if self._pubsub is not None:
            with contextlib.suppress(Exception):
                await self._pubsub.aclose()
            self._pubsub = None
        with contextlib.suppress(Exception):
            await self._client.aclose()

    async def reachable(self) -> bool:
        return bool(await self._client.ping())

    async def _heartbeat(self) -> None:
        while True:
            await asyncio.sleep(self._node_ttl / 3)
            try:
                lapsed = not await self._nodes.beat(self.node, self._node_ttl)
            except Exception as exc:  # noqa: BLE001 - retried at the next beat
                logger.warning("node heartbeat failed: %s", exc or type(exc).__name__)
                continue
            if lapsed:
                logger.warning("node %s: its heartbeat had lapsed", self.node.node_id)
            for hook in list(self._beat_hooks):
                try:
                    await hook(lapsed)
                except Exception as exc:  # noqa: BLE001 - retried at the next beat
                    logger.warning("after the heartbeat: %s", exc or type(exc).__name__)

    async def _publish(self) -> None:
        outbox = self._redis_notifier.outbox
        while True:
            message = await outbox.get()
            try:
                await self._client.publish(self._fragments_channel, message)
            except Exception as exc:  # noqa: BLE001 - readers poll the store meanwhile
                logger.warning("publishing a fragment notification failed: %s", exc)

    async def _listen(self) -> None:
        backoff = 0.1
        while True:
            try:
                message = await self._pubsub.get_message(timeout=1.0)
            except Exception as exc:  # noqa: BLE001 - reconnected at the next read
                logger.warning(
                    "bus subscription broke: %s; retrying in %.1f s",
                    exc or type(exc).__name__,
                    backoff,
                )
                self._redis_notifier.wake_everyone()
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 5.0)
                continue
            backoff = 0.1
            if message is None:
                continue
            if message.get("type") == "subscribe":
                # Subscribed again after a gap (see ``subscribe_confirmed``): notifications
                # sent meanwhile are lost, so waiting readers look at the store.
                logger.warning("bus subscription was renewed by the client")
                self._redis_notifier.wake_everyone()
                continue
            if message.get("type") != "message":
                continue
            try:
                self._dispatch(str(message["channel"]), str(message["data"]))
            except Exception:  # noqa: BLE001 - one bad message is not the subscription's end
                logger.exception("bad bus message on %s", message.get("channel"))

    def _dispatch(self, channel: str, data: str) -> None:
        if channel == self._fragments_channel:
            self._redis_notifier.deliver(data)
        elif channel == self._leases.yield_channel:
            self._leases.deliver(data)

    async def delete_all_keys(self) -> int:
        """Delete every key under this bus prefix (tests isolate themselves by prefix)."""
        keys = [k async for k in self._client.scan_iter(match=f"{self._prefix}:*", count=500)]
        if keys:
            await self._client.delete(*keys)
        return len(keys)


async def subscribe_confirmed(pubsub: Any, channels: list[str]) -> None:
    """Subscribe ``pubsub`` to ``channels`` and read Redis's confirmation of each: from then on
    nothing published to them is missed. After a lost connection the Redis client connects and
    subscribes again by itself, so any later ``subscribe`` message a listener reads means
    "subscribed again after a gap" (what was published meanwhile is gone). Callers bound the
    wait."""
    await pubsub.subscribe(*channels)
    confirmed = 0
    while confirmed < len(channels):
        msg = await pubsub.get_message(timeout=1.0)
        if msg is not None and msg.get("type") == "subscribe":
            confirmed += 1


def _ms(seconds: float) -> int:
    return max(1, round(seconds * 1000))


__all__ = ["RedisCluster", "subscribe_confirmed"]
