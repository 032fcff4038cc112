"""Signaling across nodes: the bus of this node's cluster (``bus_url``), and where
storage-session joins run.

A channel's storage sessions (its master session and the viewer sessions attached to it) run on
one node. JoinStorageSession / JoinStorageSessionAsViewer called on any node are carried there
(:class:`JoinRouter`): to the node that already runs the channel's sessions if it is alive, else
to the node holding the master's signaling socket (its answers and candidates then stay on that
node), else to the node that took the call. That node claims the channel (the cluster's
:class:`~openkvs.cluster.base.SessionRegistry`: a dead node's claim counts as none) and creates
the session; the offer reaches the master through the bus wherever its socket is. With one node
(``bus_url = local:``) all of this is a direct call. A channel that is deleted or stops storing
media ends its sessions on the node that runs them, wherever the API call came in.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable
from typing import Any

from ..cluster.base import Cluster, SessionRegistry
from ..control.resources import ControlPlane
from ..control.sessions import StorageSessions
from ..errors import InternalFailure, InvalidArgumentException, ResourceNotFoundException
from ..records import Channel, Stream
from .bus import Bus, LocalBus, NodeUnreachable

logger = logging.getLogger(__name__)

JOIN_TIMEOUT = 10.0
# A join handed from node to node (the channel's owner changing meanwhile) gives up after this.
MAX_HOPS = 3
JOIN_MASTER = "storage.join_master"
JOIN_VIEWER = "storage.join_viewer"
CHANNEL_CLOSED = "storage.channel_closed"


def make_bus(cluster: Cluster) -> Bus:
    """The signaling bus of this node's cluster (``bus_url``): on a Redis cluster it shares the
    cluster's node id, Redis client and heartbeat (keys under ``<prefix>:sig:``)."""
    if cluster.distributed:
        from ..cluster.redisbus import RedisCluster
        from .redisbus import RedisBus

        if not isinstance(cluster, RedisCluster):
            raise TypeError(f"no signaling bus for {type(cluster).__name__}")
        return RedisBus(cluster)
    return LocalBus(node_id=cluster.node.node_id)


class JoinRouter:
    """Runs each storage-session join on the node that runs (or will run) the channel's
    sessions."""

    def __init__(
        self,
        bus: Bus,
        registry: SessionRegistry,
        control: ControlPlane,
        sessions: Callable[[], StorageSessions],
    ) -> None:
        self.bus = bus
        self.registry = registry
        self.control = control
        self._sessions = sessions
        bus.serve(JOIN_MASTER, self._serve_master)
        bus.serve(JOIN_VIEWER, self._serve_viewer)
        bus.serve(CHANNEL_CLOSED, self._serve_closed)

    async def target(self, channel_arn: str) -> str:
        node = await self.registry.owner(channel_arn)
        if node is not None:
            return node
        where = await self.bus.locate((channel_arn, None))
        return where.node if where is not None else self.bus.node_id

    async def join_master(self, channel: Channel, stream: Stream) -> None:
        await self._join(channel, stream, None)

    async def join_viewer(self, channel: Channel, stream: Stream, client_id: str) -> None:
        await self._join(channel, stream, client_id)

    async def _join(self, channel: Channel, stream: Stream, client_id: str | None) -> None:
        await self._run(channel, stream, client_id, await self.target(channel.arn), 0)

    async def _run(
        self, channel: Channel, stream: Stream, client_id: str | None, node: str, hops: int
    ) -> None:
        """Run the join on ``node``; on this one only after claiming the channel (two nodes
        joining at once: one claims, the other hands its join over)."""
        me = self.bus.node_id
        gone: str | None = None
        while True:
            if node == me:
                node = await self.registry.claim(channel.arn, instead_of=gone)
                if node == me:
                    sessions = self._sessions()
                    if client_id is None:
                        await sessions.join_master(channel, stream)
                    else:
                        await sessions.join_viewer(channel, stream, client_id)
                    return
            if hops >= MAX_HOPS:
                raise InternalFailure(
                    f"Could not reach the node running the storage sessions of channel "
                    f"{channel.name}; try again."
                )
            hops += 1
            args: dict[str, Any] = {"channel_arn": channel.arn, "client_id": client_id}
            args["hops"] = hops
            try:
                await self.bus.call(
                    node,
                    JOIN_MASTER if client_id is None else JOIN_VIEWER,
                    args,
                    limit=JOIN_TIMEOUT,
                )
                return
            except NodeUnreachable:
                logger.info("[%s] node %s is gone: the join runs here", channel.name, node)
                node, gone = me, node

    async def _serve_master(self, args: dict[str, Any]) -> None:
        channel, stream = self._resolve(str(args["channel_arn"]))
        await self._run(channel, stream, None, self.bus.node_id, int(args.get("hops") or 0))

    async def _serve_viewer(self, args: dict[str, Any]) -> None:
        channel, stream = self._resolve(str(args["channel_arn"]))
        hops = int(args.get("hops") or 0)
        await self._run(channel, stream, str(args["client_id"]), self.bus.node_id, hops)

    async def channel_closed(self, channel: Channel) -> None:
        """The channel was deleted or its media storage disabled: its sessions end, here and on
        the node that runs them."""
        await self._sessions().channel_closed(channel)
        node = await self.registry.owner(channel.arn)
        if node is not None and node != self.bus.node_id:
            try:
                await self.bus.call(
                    node, CHANNEL_CLOSED, {"channel": _plain(channel)}, limit=JOIN_TIMEOUT
                )
            except NodeUnreachable:
                pass

    async def _serve_closed(self, args: dict[str, Any]) -> None:
        channel = dict(args["channel"])
        channel["tags"] = dict(channel.get("tags") or {})
        await self._sessions().channel_closed(Channel(**channel))

    def _resolve(self, channel_arn: str) -> tuple[Channel, Stream]:
        # The calling node checked the request; the channel may have changed since.
        channel = self.control.channel_by_arn(channel_arn)
        if channel is None:
            raise ResourceNotFoundException(f"The channel {channel_arn} does not exist.")
        stream = self.control.storage_stream(channel)
        if channel.storage_status != "ENABLED" or stream is None:
            raise InvalidArgumentException(
                f"Media storage is not ENABLED for channel {channel.name}."
            )
        return channel, stream


def _plain(channel: Channel) -> dict[str, Any]:
    out = dataclasses.asdict(channel)
    out["tags"] = dict(channel.tags)
    return out


__all__ = ["JoinRouter", "make_bus"]
