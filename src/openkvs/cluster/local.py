"""The in-process coordination of a single node (``bus_url = "local:"``).

Everything lives in one :class:`LocalHub`. A server has a hub of its own; tests give two
:class:`LocalCluster` objects one hub to play two nodes.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging

from .. import clock
from .base import (
    NODE_TTL,
    Cluster,
    FragmentNotifier,
    Lease,
    LeaseDutyLock,
    NodeInfo,
    YieldCallback,
    lease_token,
    new_node_id,
)

logger = logging.getLogger(__name__)


@dataclasses.dataclass
class LocalHub:
    """The state that the nodes of one process share."""

    changed: dict[int, asyncio.Event] = dataclasses.field(default_factory=dict)
    leases: dict[str, tuple[str, float]] = dataclasses.field(default_factory=dict)  # token, until
    yield_callbacks: list[YieldCallback] = dataclasses.field(default_factory=list)
    claims: dict[str, str] = dataclasses.field(default_factory=dict)  # channel ARN -> node id
    heartbeats: dict[str, tuple[NodeInfo, float]] = dataclasses.field(default_factory=dict)


class LocalNotifier:
    """Today's wake-up: one asyncio.Event per stream with waiters, set and dropped at the next
    fragment."""

    def __init__(self, hub: LocalHub | None = None) -> None:
        self._changed = (hub or LocalHub()).changed

    def changed(self, stream_id: int) -> asyncio.Event:
        event = self._changed.get(stream_id)
        if event is None:
            event = self._changed[stream_id] = asyncio.Event()
        return event

    def notify(self, stream_id: int, number: int) -> None:
        event = self._changed.pop(stream_id, None)
        if event is not None:
            event.set()

    def wake_all(self) -> None:
        for event in self._changed.values():
            event.set()


class LocalLeases:
    def __init__(self, hub: LocalHub, node_id: str) -> None:
        self._hub = hub
        self._node_id = node_id

    def _current(self, name: str) -> str | None:
        held = self._hub.leases.get(name)
        if held is None:
            return None
        if held[1] <= clock.monotonic():
            del self._hub.leases[name]
            return None
        return held[0]

    async def acquire(self, name: str, ttl: float) -> Lease | None:
        if self._current(name) is not None:
            return None
        lease = Lease(name, lease_token(self._node_id), ttl)
        self._hub.leases[name] = (lease.token, clock.monotonic() + ttl)
        return lease

    async def renew(self, lease: Lease) -> bool:
        if self._current(lease.name) != lease.token:
            return False
        self._hub.leases[lease.name] = (lease.token, clock.monotonic() + lease.ttl)
        return True

    async def release(self, lease: Lease) -> bool:
        if self._current(lease.name) != lease.token:
            return False
        del self._hub.leases[lease.name]
        return True

    async def holder(self, name: str) -> str | None:
        token = self._current(name)
        return None if token is None else token.partition(":")[0]

    async def ask_to_yield(self, name: str) -> None:
        for callback in list(self._hub.yield_callbacks):
            try:
                callback(name)
            except Exception:  # noqa: BLE001 - one node's callback failing is not the asker's
                logger.exception("lease yield callback failed")

    def on_yield(self, callback: YieldCallback) -> None:
        self._hub.yield_callbacks.append(callback)


class LocalSessionRegistry:
    def __init__(self, hub: LocalHub, node_id: str) -> None:
        self._hub = hub
        self._node_id = node_id

    def _alive(self, node_id: str) -> bool:
        if node_id == self._node_id:
            return True
        beat = self._hub.heartbeats.get(node_id)
        return beat is not None and beat[1] > clock.monotonic()

    async def owner(self, channel_arn: str) -> str | None:
        node = self._hub.claims.get(channel_arn)
        return node if node is not None and self._alive(node) else None

    async def claim(self, channel_arn: str, *, instead_of: str | None = None) -> str:
        node = self._hub.claims.get(channel_arn)
        if node is not None and node != instead_of and self._alive(node):
            return node
        self._hub.claims[channel_arn] = self._node_id
        return self._node_id


class LocalNodeRegistry:
    def __init__(self, hub: LocalHub) -> None:
        self._hub = hub

    def beat(self, node: NodeInfo, ttl: float) -> None:
        self._hub.heartbeats[node.node_id] = (node, clock.monotonic() + ttl)

    def forget(self, node_id: str) -> None:
        self._hub.heartbeats.pop(node_id, None)

    async def live_nodes(self) -> list[NodeInfo]:
        now = clock.monotonic()
        return [info for info, until in self._hub.heartbeats.values() if until > now]

    async def is_alive(self, node_id: str) -> bool:
        beat = self._hub.heartbeats.get(node_id)
        return beat is not None and beat[1] > clock.monotonic()


class LocalCluster(Cluster):
    """A node alone (or, in tests, nodes sharing one :class:`LocalHub`)."""

    def __init__(
        self,
        node: NodeInfo | None = None,
        hub: LocalHub | None = None,
        *,
        node_ttl: float = NODE_TTL,
    ) -> None:
        self.hub = hub if hub is not None else LocalHub()
        self.node = node if node is not None else NodeInfo(new_node_id(), started=clock.now())
        self.notifier: FragmentNotifier = LocalNotifier(self.hub)
        self.leases = LocalLeases(self.hub, self.node.node_id)
        self.sessions = LocalSessionRegistry(self.hub, self.node.node_id)
        self._nodes = LocalNodeRegistry(self.hub)
        self.nodes = self._nodes
        self.duties = LeaseDutyLock(self.leases)
        self._node_ttl = node_ttl
        self._heartbeat: asyncio.Task[None] | None = None

    @property
    def distributed(self) -> bool:
        return False

    async def start(self) -> None:
        self._nodes.beat(self.node, self._node_ttl)
        self._heartbeat = asyncio.create_task(self._beat(), name="openkvs-node-heartbeat")

    async def _beat(self) -> None:
        while True:
            await asyncio.sleep(self._node_ttl / 3)
            self._nodes.beat(self.node, self._node_ttl)

    async def stop(self, *, graceful: bool = True) -> None:
        if self._heartbeat is not None:
            self._heartbeat.cancel()
            await asyncio.gather(self._heartbeat, return_exceptions=True)
            self._heartbeat = None
        if graceful:
            self._nodes.forget(self.node.node_id)

    async def reachable(self) -> bool:
        return True
