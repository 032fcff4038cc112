"""The signaling :class:`~openkvs.signaling.bus.Bus` for several nodes, on Redis.

Presence lives in one hash per channel (``redis_lua.py`` lists the keys); attaching, the viewer
cap, detaching and keeping messages are Lua scripts, so concurrent nodes see one order. Each
node subscribes to its own pub/sub channel: a message for a participant whose socket is on
another node is published there, and that node hands it to the socket (or keeps it in Redis if
the socket went away meanwhile). A replaced connection's node gets a ``go_away`` message.

The bus rides on the node's :class:`~openkvs.cluster.redisbus.RedisCluster`: its node id, its
Redis client (one connection pool per node) and its heartbeat key ``<prefix>:node:<id>``. A
node's presence entries count only while that heartbeat lives: a node that dies leaves no
participant "connected". Calls between nodes (``call``/``serve``) are request/reply messages on
the same channels.

Pub/sub messages (JSON):

- ``{"op": "deliver", "arn", "p": "m"|"v:<ClientId>", "conn", "t": text, "o": origin,
  "f": "1"|"0" (an offer), "x": expiry ms}``
- ``{"op": "go_away", "arn", "conn"}``
- ``{"op": "close_channel", "arn"}`` (on the all-nodes channel)
- ``{"op": "call", "rid", "from": node, "m": method, "a": args}`` →
  ``{"op": "reply", "rid", "ok": result}`` or ``{"op": "reply", "rid", "err": code, "msg": text}``
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from typing import Any

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from .. import errors, ids
from ..cluster.base import cancel_tasks
from ..cluster.redisbus import RedisCluster, subscribe_confirmed
from ..errors import ClientLimitExceededException, InternalFailure, ServiceError
from . import redis_lua
from .bus import (
    MAX_PENDING_BYTES,
    MAX_PENDING_PER_PARTICIPANT,
    PENDING_FULL_MESSAGE,
    Attached,
    Delivery,
    Handler,
    Location,
    NodeUnreachable,
    ParticipantKey,
    Peer,
    ViewerLimitReached,
    channel_label,
)

logger = logging.getLogger(__name__)

# Outstanding calls to other nodes, and calls from them being served, per node.
MAX_CALLS = 1000
SUBSCRIBE_TIMEOUT = 5.0


def field(client_id: str | None) -> str:
    return "m" if client_id is None else f"v:{client_id}"


def client_of(name: str) -> str | None:
    return None if name == "m" else name[2:]


class RedisBus:
    """A :class:`~openkvs.signaling.bus.Bus` shared by every node that uses the same Redis and
    key prefix; started after ``cluster`` and stopped before it."""

    def __init__(
        self,
        cluster: RedisCluster,
        *,
        max_per_participant: int = MAX_PENDING_PER_PARTICIPANT,
        max_bytes: int = MAX_PENDING_BYTES,
    ) -> None:
        self._cluster = cluster
        self._p = f"{cluster.prefix}:"
        self._k = f"{self._p}sig:"
        self._node = cluster.node.node_id
        self._max_per = max_per_participant
        self._max_bytes = max_bytes
        # Presence hashes outlive the heartbeat: entries of a dead node are removed when met.
        self._presence_ttl_ms = int(cluster.node_ttl * 2000)
        self._redis: aioredis.Redis | None = None
        self._pubsub: Any = None
        self._scripts: dict[str, Any] = {}
        # The connections this node holds: channel ARN → connection id → peer.
        self._local: dict[str, dict[str, Peer]] = {}
        # Stand-ins (``hold``) on this node: connection id → peer.
        self._stand_ins: dict[str, Peer] = {}
        # Messages that arrived for a connection while its attach was running.
        self._held: dict[str, list[str]] = {}
        self._handlers: dict[str, Handler] = {}
        self._calls: dict[str, asyncio.Future[Any]] = {}
        self._tasks: set[asyncio.Task[Any]] = set()
        self._listener: asyncio.Task[None] | None = None
        self._stopped = True
        cluster.on_beat(self._after_beat)

    @property
    def node_id(self) -> str:
        return self._node

    @property
    def prefix(self) -> str:
        """The key prefix (``<prefix>sig:``) under which all of this bus's keys live."""
        return self._k

    # -- lifecycle ------

    async def start(self) -> None:
        r = self._cluster.redis
        self._redis = r
        for name in redis_lua.__all__:
            self._scripts[name] = r.register_script(getattr(redis_lua, name))
        await self._subscribe()
        self._stopped = False
        self._listener = asyncio.create_task(self._listen(), name=f"signaling bus {self._node}")
        logger.info("signaling bus of node %s (keys %s*)", self._node, self._k)

    async def stop(self) -> None:
        if self._stopped:
            return
        self._stopped = True
        if self._listener is not None:
            await cancel_tasks([self._listener])
        r = self._redis
        assert r is not None
        with contextlib.suppress(RedisError, OSError):
            # Forget this node's connections now rather than when its heartbeat runs out.
            held = [(arn, conn, p) for arn, m in self._local.items() for conn, p in m.items()]
            for i in range(0, len(held), 100):
                await asyncio.gather(
                    *(
                        self._scripts["DETACH"](
                            keys=[self._chan(arn)],
                            args=[self._p, self._node, field(peer.client_id), conn],
                        )
                        for arn, conn, peer in held[i : i + 100]
                    )
                )
        for fut in self._calls.values():
            if not fut.done():
                fut.set_exception(InternalFailure("The server is shutting down."))
        self._calls.clear()
        await cancel_tasks(list(self._tasks))
        if self._pubsub is not None:
            with contextlib.suppress(RedisError, OSError):
                await self._pubsub.aclose()
        # The client is the cluster's: it closes it.
        self._local.clear()

    # -- keys ------

    def _chan(self, arn: str) -> str:
        return f"{self._k}ch:{arn}"

    def _queue(self, key: ParticipantKey) -> str:
        return f"{self._k}q:{key[0]}|{field(key[1])}"

    def _hold(self, key: ParticipantKey) -> str:
        return f"{self._k}hold:{key[0]}|{field(key[1])}"

    def _to(self, node: str) -> str:
        return f"{self._k}to:{node}"

    # -- presence ------

    async def attach(self, peer: Peer, *, max_viewers: int = 0) -> Attached:
        arn, conn = peer.channel_arn, peer.connection_id
        members = self._local.setdefault(arn, {})
        members[conn] = peer
        self._held[conn] = []
        ok = False
        try:
            res = await self._scripts["ATTACH"](
                keys=[self._chan(arn), self._queue((arn, peer.client_id))],
                args=[
                    self._p,
                    self._node,
                    field(peer.client_id),
                    conn,
                    max_viewers if peer.client_id is not None else 0,
                    self._presence_ttl_ms,
                    arn,
                ],
            )
            if res[0] == "limit":
                raise ViewerLimitReached(arn)
            ok = True
        finally:
            held = self._held.pop(conn, [])
            if not ok:
                self._forget_local(arn, conn)
        old_node, old_conn = str(res[1]), str(res[2])
        replaced = None
        if old_conn:
            replaced = Location(old_node, old_conn)
            if old_node == self._node:
                old = self._forget_local(arn, old_conn)
                if old is not None:
                    old.go_away()
        sent = 0
        for text in res[3:]:
            if peer.deliver(str(text)):
                sent += 1
        for text in held:
            peer.deliver(text)
        return Attached(replaced, sent)

    def _forget_local(self, arn: str, conn: str) -> Peer | None:
        members = self._local.get(arn)
        if members is None:
            return None
        peer = members.pop(conn, None)
        if not members:
            del self._local[arn]
        return peer

    async def detach(self, peer: Peer) -> bool:
        self._forget_local(peer.channel_arn, peer.connection_id)
        if self._stopped:
            return False
        res = await self._scripts["DETACH"](
            keys=[self._chan(peer.channel_arn)],
            args=[self._p, self._node, field(peer.client_id), peer.connection_id],
        )
        return bool(res)

    def is_current(self, peer: Peer) -> bool:
        return peer.connection_id in self._local.get(peer.channel_arn, {})

    async def locate(self, key: ParticipantKey) -> Location | None:
        res = await self._scripts["LOCATE"](
            keys=[self._chan(key[0])], args=[self._p, self._node, field(key[1])]
        )
        if not res:
            return None
        node, _, conn = str(res).partition("|")
        return Location(node, conn)

    async def viewer_count(self, channel_arn: str) -> int:
        res = await self._scripts["VIEWERS"](
            keys=[self._chan(channel_arn)], args=[self._p, self._node]
        )
        return int(res)

    def peers(self, channel_arn: str | None = None) -> list[Peer]:
        if channel_arn is not None:
            return list(self._local.get(channel_arn, {}).values())
        return [p for members in self._local.values() for p in members.values()]

    # -- delivery ------

    async def deliver(
        self, key: ParticipantKey, text: str, *, ttl: float, origin: str, is_offer: bool
    ) -> Delivery:
        return await self._deliver(key, text, origin, is_offer, int(ttl * 1000), 0, "")

    async def _deliver(
        self,
        key: ParticipantKey,
        text: str,
        origin: str,
        is_offer: bool,
        ttl_ms: int,
        expires_ms: int,
        skip: str,
    ) -> Delivery:
        for _ in range(3):
            res = await self._scripts["DELIVER"](
                keys=[self._chan(key[0]), self._queue(key), self._hold(key)],
                args=[
                    self._p,
                    self._node,
                    field(key[1]),
                    text,
                    origin,
                    "1" if is_offer else "0",
                    max(0, ttl_ms),
                    expires_ms,
                    skip,
                    self._max_per,
                    self._max_bytes,
                    key[0],
                ],
            )
            outcome = res[0]
            if outcome == "local":
                conn = str(res[1])
                if self._hand_over(key[0], conn, text):
                    return Delivery.DELIVERED
                # That connection cannot take it (closing, or dropped for not reading): keep
                # the message for the participant's next connection.
                skip = conn
                continue
            if outcome == "sent":
                return Delivery.DELIVERED
            if outcome == "buffered":
                return Delivery.BUFFERED
            if outcome == "full":
                raise ClientLimitExceededException(PENDING_FULL_MESSAGE)
            return Delivery.DROPPED
        return Delivery.DROPPED

    def _hand_over(self, arn: str, conn: str, text: str) -> bool:
        held = self._held.get(conn)
        if held is not None:
            held.append(text)
            return True
        peer = self._local.get(arn, {}).get(conn) or self._stand_ins.get(conn)
        return peer is not None and peer.deliver(text)

    async def hold(self, key: ParticipantKey, stand_in: Peer, *, ttl: float) -> None:
        self._stand_ins[stand_in.connection_id] = stand_in
        await self._require().set(
            self._hold(key), f"{self._node}|{stand_in.connection_id}", px=max(1, int(ttl * 1000))
        )

    async def release(self, key: ParticipantKey, stand_in: Peer) -> None:
        self._stand_ins.pop(stand_in.connection_id, None)
        if not self._stopped:
            await self._scripts["RELEASE"](
                keys=[self._hold(key)],
                args=[self._p, self._node, f"{self._node}|{stand_in.connection_id}"],
            )

    async def close_channel(self, channel_arn: str) -> None:
        for peer in self.peers(channel_arn):
            peer.go_away()
        r = self._require()
        await r.publish(self._k + "all", json.dumps({"op": "close_channel", "arn": channel_arn}))
        # Channel ARNs are [a-zA-Z0-9:/_.-]: nothing in them is a glob character.
        async for q in r.scan_iter(match=f"{self._k}q:{channel_arn}|*", count=500):
            await self._scripts["FORGET"](keys=[q], args=[self._p, self._node])

    async def prune(self) -> None:
        await self._scripts["PRUNE"](keys=[], args=[self._p, self._node, 1000])

    async def pending_count(self, key: ParticipantKey) -> int:
        return int(await self._require().llen(self._queue(key)))

    async def pending_bytes(self) -> int:
        return int(await self._require().get(self._k + "qtotal") or 0)

    # -- calls between nodes ------

    def serve(self, method: str, handler: Handler) -> None:
        self._handlers[method] = handler

    async def call(self, node: str, method: str, args: dict[str, Any], *, limit: float) -> Any:
        if node == self._node:
            handler = self._handlers.get(method)
            if handler is None:
                raise NodeUnreachable(node)
            return await asyncio.wait_for(handler(args), limit)
        if len(self._calls) >= MAX_CALLS:
            raise ClientLimitExceededException("Too many calls between nodes are waiting.")
        rid = ids.token(12)
        fut: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._calls[rid] = fut
        try:
            body = {"op": "call", "rid": rid, "from": self._node, "m": method, "a": args}
            if not await self._require().publish(self._to(node), json.dumps(body)):
                raise NodeUnreachable(node)
            try:
                return await asyncio.wait_for(fut, limit)
            except TimeoutError:
                raise InternalFailure(
                    f"Node {node} did not answer {method} within {limit:g} seconds."
                ) from None
        finally:
            self._calls.pop(rid, None)

    # -- background ------

    def _require(self) -> aioredis.Redis:
        if self._redis is None:
            raise RuntimeError("the signaling bus is not started")
        return self._redis

    def _spawn(self, coro: Any, name: str) -> None:
        task = asyncio.ensure_future(coro)
        task.set_name(name)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _after_beat(self, lapsed: bool) -> None:
        """After each heartbeat of this node: keep its presence hashes alive; when the heartbeat
        had lapsed (Redis restarted, or this node stalled), other nodes may have dropped its
        entries: put back those nobody took over."""
        r = self._redis
        if r is None or self._stopped or not self._local:
            return
        async with r.pipeline(transaction=False) as pipe:
            for arn, members in self._local.items():
                if lapsed:
                    for conn, peer in members.items():
                        pipe.hsetnx(self._chan(arn), field(peer.client_id), f"{self._node}|{conn}")
                pipe.pexpire(self._chan(arn), self._presence_ttl_ms)
            await pipe.execute()
        if lapsed:
            await self._resync()

    async def _subscribe(self) -> None:
        self._pubsub = self._require().pubsub()
        async with asyncio.timeout(SUBSCRIBE_TIMEOUT):
            await subscribe_confirmed(self._pubsub, [self._to(self._node), self._k + "all"])

    async def _resync(self) -> None:
        """After a gap in this node's subscription: messages sent meanwhile to its participants
        were kept in Redis (nobody was listening); hand them over now."""
        for arn, members in list(self._local.items()):
            for conn, peer in list(members.items()):
                res = await self._scripts["TAKE"](
                    keys=[self._chan(arn), self._queue((arn, peer.client_id))],
                    args=[self._p, self._node, field(peer.client_id), conn],
                )
                for text in res:
                    peer.deliver(str(text))

    async def _listen(self) -> None:
        while True:
            try:
                msg = await self._pubsub.get_message(timeout=1.0)
            except asyncio.CancelledError:
                raise
            except (RedisError, OSError, TimeoutError) as exc:
                # The same subscription object connects and subscribes again at the next read
                # (it may have done so already, with messages for this node waiting in it: a
                # new one would drop them).
                logger.warning("signaling bus subscription lost (%r); subscribing again", exc)
                await asyncio.sleep(0.2)
                continue
            if msg is None:
                continue
            if msg.get("type") == "subscribe":
                # Subscribed again after a gap (see ``subscribe_confirmed``): what was sent to
                # this node meanwhile was kept in Redis; hand it over before what follows.
                if msg.get("channel") == self._to(self._node):
                    logger.warning("signaling bus subscribed again; taking what was kept")
                    try:
                        await self._resync()
                    except (RedisError, OSError, TimeoutError) as exc:
                        logger.warning("signaling bus: taking kept messages failed (%r)", exc)
                continue
            if msg.get("type") != "message":
                continue
            try:
                self._on_message(json.loads(msg["data"]))
            except Exception:  # noqa: BLE001 - one bad message must not stop the listener
                logger.exception("signaling bus: could not handle a message")

    def _on_message(self, body: dict[str, Any]) -> None:
        op = body.get("op")
        if op == "deliver":
            arn, conn, text = str(body["arn"]), str(body["conn"]), str(body["t"])
            if self._hand_over(arn, conn, text):
                return
            # Its socket went away meanwhile: keep the message for the participant's next
            # connection (or hand it to the one that replaced it), until its original expiry.
            expires = int(body.get("x") or 0)
            if expires <= 0:
                return
            key = (arn, client_of(str(body["p"])))
            self._spawn(
                self._rebuffer(key, text, str(body["o"]), body.get("f") == "1", expires, conn),
                "signaling bus: keep",
            )
        elif op == "go_away":
            peer = self._forget_local(str(body["arn"]), str(body["conn"]))
            if peer is not None:
                logger.info(
                    "[%s %s] replaced by a connection on another node",
                    channel_label(peer.channel_arn),
                    peer.client_id or "master",
                )
                peer.go_away()
        elif op == "close_channel":
            for peer in self.peers(str(body["arn"])):
                peer.go_away()
        elif op == "call":
            if len(self._tasks) >= MAX_CALLS:
                logger.warning("signaling bus: too many calls being served; one dropped")
                return
            self._spawn(self._serve_call(body), f"signaling bus: {body.get('m')}")
        elif op == "reply":
            fut = self._calls.get(str(body.get("rid")))
            if fut is None or fut.done():
                return
            if "err" in body:
                fut.set_exception(_error(str(body["err"]), str(body.get("msg", ""))))
            else:
                fut.set_result(body.get("ok"))

    async def _rebuffer(
        self, key: ParticipantKey, text: str, origin: str, is_offer: bool, expires: int, skip: str
    ) -> None:
        try:
            await self._deliver(key, text, origin, is_offer, 0, expires, skip)
        except (ServiceError, RedisError, OSError) as exc:
            logger.info("[%s] a message could not be kept: %r", channel_label(key[0]), exc)

    async def _serve_call(self, body: dict[str, Any]) -> None:
        reply: dict[str, Any] = {"op": "reply", "rid": body.get("rid")}
        handler = self._handlers.get(str(body.get("m")))
        try:
            if handler is None:
                raise InternalFailure(f"Unknown call {body.get('m')!r}.")
            reply["ok"] = await handler(dict(body.get("a") or {}))
        except ServiceError as err:
            reply["err"], reply["msg"] = err.code, err.message
        except Exception:  # noqa: BLE001 - the caller gets an InternalFailure
            logger.exception("signaling bus: call %s failed", body.get("m"))
            reply["err"], reply["msg"] = InternalFailure.code, "Internal error."
        with contextlib.suppress(RedisError, OSError):
            await self._require().publish(self._to(str(body.get("from"))), json.dumps(reply))


def _error(code: str, message: str) -> ServiceError:
    for cls in _service_errors():
        if getattr(cls, "code", None) == code:
            try:
                return cls(message)
            except TypeError:
                break
    return InternalFailure(message or code)


def _service_errors() -> list[type[ServiceError]]:
    out: list[type[ServiceError]] = []
    stack: list[type[ServiceError]] = [errors.ServiceError]
    while stack:
        cls = stack.pop()
        out.append(cls)
        stack.extend(cls.__subclasses__())
    return out


__all__ = ["RedisBus", "field"]
