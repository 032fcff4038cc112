"""Who is connected where, delivery, and TTL buffering of signaling messages.

The :class:`Bus` is the routing core's seam: :class:`LocalBus` keeps everything in this process;
``RedisBus`` (``redisbus.py``) serves several nodes with presence in a shared map, delivery over
pub/sub to the node that holds the socket, and pending messages in TTL'd lists. Calls between
nodes (``call``/``serve``) carry the storage-session traffic to the node that runs a channel's
sessions (which node that is, the cluster's ``SessionRegistry`` knows).
"""

from __future__ import annotations

import asyncio
import collections
import dataclasses
import enum
from collections.abc import Awaitable, Callable
from typing import Any, Protocol

from .. import clock
from ..errors import ClientLimitExceededException

# (channel ARN, ClientId); ClientId None is the channel's master.
ParticipantKey = tuple[str, str | None]

# Pending (not yet deliverable) messages: at most this many per participant (oldest dropped
# first) and this many bytes in all (further messages are refused with ClientLimitExceeded).
MAX_PENDING_PER_PARTICIPANT = 64
MAX_PENDING_BYTES = 16 * 1024 * 1024
PENDING_FULL_MESSAGE = "Too many undelivered signaling messages are waiting; try again later."


def channel_label(arn: str) -> str:
    parts = arn.split("/")
    return parts[1] if len(parts) > 2 else arn


class Peer(Protocol):
    """One participant's signaling connection, as the hub sees it."""

    @property
    def channel_arn(self) -> str: ...
    @property
    def client_id(self) -> str | None: ...
    @property
    def connection_id(self) -> str: ...

    def deliver(self, text: str) -> bool:
        """Queue an event for sending; False if the connection cannot take it (closing, or its
        bounded send queue is full, in which case the connection is dropped)."""
        ...

    def go_away(self, grace: float | None = None) -> None:
        """Send GO_AWAY, then close after ``grace`` seconds (default: the configured grace)."""
        ...

    def close(self) -> None:
        """Close now."""
        ...


class Delivery(enum.Enum):
    DELIVERED = "delivered"
    BUFFERED = "buffered"
    DROPPED = "dropped"


class ViewerLimitReached(Exception):
    """``attach`` refused a new viewer: the channel has ``max_viewers`` already."""


@dataclasses.dataclass(frozen=True)
class Location:
    """Where a participant's connection is: the node holding its socket, and its id there."""

    node: str
    connection_id: str


@dataclasses.dataclass(frozen=True)
class Attached:
    # The connection this one replaced (it has been told to go away), if any.
    replaced: Location | None
    # How many kept messages were handed to the new connection.
    flushed: int


# A call from another node: handler(args) -> JSON-able result; ServiceErrors travel back.
Handler = Callable[[dict[str, Any]], Awaitable[Any]]


class Bus(Protocol):
    """Presence, delivery and TTL buffering for one signaling deployment (one node or many).

    Presence is shared: ``attach``/``detach``/``locate`` see every node's connections, and the
    viewer cap is checked in the same atomic step as the attach. The connections this node holds
    are also kept locally (``peers``, ``is_current``), so that routing a frame from a local
    socket needs no round trip.
    """

    @property
    def node_id(self) -> str: ...

    async def start(self) -> None: ...
    async def stop(self) -> None: ...

    async def attach(self, peer: Peer, *, max_viewers: int = 0) -> Attached:
        """Make ``peer`` (held by this node) the current connection of its participant.

        The connection it replaces, on whichever node, gets GO_AWAY. A new viewer is refused
        with :class:`ViewerLimitReached` when ``max_viewers`` (> 0) viewers are connected; a
        viewer replacing its own previous connection is not. The messages kept for the
        participant are handed to ``peer`` before anything newer."""
        ...

    async def detach(self, peer: Peer) -> bool:
        """Forget ``peer`` if it is still current; True if it was."""
        ...

    def is_current(self, peer: Peer) -> bool:
        """Whether ``peer`` (held by this node) is still its participant's current connection,
        as far as this node knows (a replacement on another node is learnt shortly after)."""
        ...

    async def locate(self, key: ParticipantKey) -> Location | None:
        """Where the participant is connected, on any node; None if it is not."""
        ...

    async def viewer_count(self, channel_arn: str) -> int: ...

    def peers(self, channel_arn: str | None = None) -> list[Peer]:
        """The connections held by this node (of one channel, or all)."""
        ...

    async def deliver(
        self, key: ParticipantKey, text: str, *, ttl: float, origin: str, is_offer: bool
    ) -> Delivery:
        """Send ``text`` to the participant, or keep it for ``ttl`` seconds until it connects
        (on any node). Keeping a newer offer (``is_offer``) drops what the same ``origin`` had
        pending for the participant. Raises ClientLimitExceededException when the budget for
        kept messages is spent."""
        ...

    async def close_channel(self, channel_arn: str) -> None:
        """GO_AWAY to the channel's connections on every node; forget its kept messages."""
        ...

    async def hold(self, key: ParticipantKey, stand_in: Peer, *, ttl: float) -> None:
        """Until ``release`` (or ``ttl`` seconds), messages for the participant that find no
        connection of it go to ``stand_in`` on this node instead of being kept: an HTTPS caller
        waiting for its answer (SendAlexaOfferToMaster) while the master is on another node."""
        ...

    async def release(self, key: ParticipantKey, stand_in: Peer) -> None: ...

    async def prune(self) -> None:
        """Forget expired kept messages."""
        ...

    # -- calls between nodes ------

    def serve(self, method: str, handler: Handler) -> None:
        """Answer ``call(self.node_id, method, ...)`` from any node with ``handler``."""
        ...

    async def call(self, node: str, method: str, args: dict[str, Any], *, limit: float) -> Any:
        """Run ``method`` on ``node`` and return its result; a ServiceError it raises is raised
        here. :class:`NodeUnreachable` if that node is gone, InternalFailure on timeout."""
        ...


class NodeUnreachable(Exception):
    """A call went to a node that is not listening (stopped or dead)."""


@dataclasses.dataclass
class _Pending:
    expires: float  # clock.monotonic()
    origin: str
    text: str


class LocalBus:
    """The in-process :class:`Bus`: one node, everything in memory."""

    def __init__(
        self,
        *,
        node_id: str = "local",
        max_per_participant: int = MAX_PENDING_PER_PARTICIPANT,
        max_bytes: int = MAX_PENDING_BYTES,
    ) -> None:
        self.node_id = node_id
        self._channels: dict[str, dict[str | None, Peer]] = {}
        self._pending: dict[ParticipantKey, collections.deque[_Pending]] = {}
        self._pending_bytes = 0
        self._max_per_participant = max_per_participant
        self._max_bytes = max_bytes
        self._handlers: dict[str, Handler] = {}

    async def start(self) -> None:
        return None

    async def stop(self) -> None:
        self._pending.clear()
        self._pending_bytes = 0

    async def attach(self, peer: Peer, *, max_viewers: int = 0) -> Attached:
        members = self._channels.setdefault(peer.channel_arn, {})
        old = members.get(peer.client_id)
        if old is None and peer.client_id is not None and max_viewers > 0:
            if sum(1 for c in members if c is not None) >= max_viewers:
                if not members:
                    del self._channels[peer.channel_arn]
                raise ViewerLimitReached(peer.channel_arn)
        members[peer.client_id] = peer
        replaced = None
        if old is not None and old is not peer:
            old.go_away()
            replaced = Location(self.node_id, old.connection_id)
        return Attached(replaced, self._flush(peer))

    async def detach(self, peer: Peer) -> bool:
        members = self._channels.get(peer.channel_arn)
        if members is None or members.get(peer.client_id) is not peer:
            return False
        del members[peer.client_id]
        if not members:
            del self._channels[peer.channel_arn]
        return True

    def current(self, key: ParticipantKey) -> Peer | None:
        members = self._channels.get(key[0])
        return None if members is None else members.get(key[1])

    def is_current(self, peer: Peer) -> bool:
        return self.current((peer.channel_arn, peer.client_id)) is peer

    async def locate(self, key: ParticipantKey) -> Location | None:
        peer = self.current(key)
        return None if peer is None else Location(self.node_id, peer.connection_id)

    async def viewer_count(self, channel_arn: str) -> int:
        members = self._channels.get(channel_arn, {})
        return sum(1 for client_id in members if client_id is not None)

    def peers(self, channel_arn: str | None = None) -> list[Peer]:
        if channel_arn is not None:
            return list(self._channels.get(channel_arn, {}).values())
        return [p for members in self._channels.values() for p in members.values()]

    @property
    def pending_bytes(self) -> int:
        return self._pending_bytes

    def pending_count(self, key: ParticipantKey) -> int:
        return len(self._pending.get(key, ()))

    async def deliver(
        self, key: ParticipantKey, text: str, *, ttl: float, origin: str, is_offer: bool
    ) -> Delivery:
        peer = self.current(key)
        if peer is not None and peer.deliver(text):
            return Delivery.DELIVERED
        # Not connected, or its connection was just dropped for not reading: keep the message
        # for the participant's next connection.
        if ttl <= 0:
            return Delivery.DROPPED
        queue = self._pending.get(key)
        if is_offer and queue:
            # A newer offer supersedes what this sender had pending for the participant.
            kept = collections.deque(p for p in queue if p.origin != origin)
            self._pending_bytes -= sum(len(p.text) for p in queue) - sum(len(p.text) for p in kept)
            queue = self._pending[key] = kept
        if self._pending_bytes + len(text) > self._max_bytes:
            self._prune()
            if self._pending_bytes + len(text) > self._max_bytes:
                raise ClientLimitExceededException(PENDING_FULL_MESSAGE)
        if queue is None:
            queue = self._pending[key] = collections.deque()
        queue.append(_Pending(clock.monotonic() + ttl, origin, text))
        self._pending_bytes += len(text)
        while len(queue) > self._max_per_participant:
            self._pending_bytes -= len(queue.popleft().text)
        return Delivery.BUFFERED

    def _flush(self, peer: Peer) -> int:
        queue = self._pending.pop((peer.channel_arn, peer.client_id), None)
        if not queue:
            return 0
        now = clock.monotonic()
        sent = 0
        for item in queue:
            self._pending_bytes -= len(item.text)
            if item.expires > now and peer.deliver(item.text):
                sent += 1
        return sent

    async def close_channel(self, channel_arn: str) -> None:
        for peer in self.peers(channel_arn):
            peer.go_away()
        for key in [k for k in self._pending if k[0] == channel_arn]:
            self._pending_bytes -= sum(len(p.text) for p in self._pending.pop(key))

    async def prune(self) -> None:
        self._prune()

    async def hold(self, key: ParticipantKey, stand_in: Peer, *, ttl: float) -> None:
        # One node: the hub hands such messages to its waiter before they reach the bus.
        return None

    async def release(self, key: ParticipantKey, stand_in: Peer) -> None:
        return None

    def _prune(self) -> None:
        now = clock.monotonic()
        for key in list(self._pending):
            queue = self._pending[key]
            while queue and queue[0].expires <= now:
                self._pending_bytes -= len(queue.popleft().text)
            # Entries behind a live one may have expired too (TTLs differ per channel update).
            if any(p.expires <= now for p in queue):
                kept = collections.deque(p for p in queue if p.expires > now)
                self._pending_bytes -= sum(len(p.text) for p in queue if p.expires <= now)
                self._pending[key] = queue = kept
            if not queue:
                del self._pending[key]

    def serve(self, method: str, handler: Handler) -> None:
        self._handlers[method] = handler

    async def call(self, node: str, method: str, args: dict[str, Any], *, limit: float) -> Any:
        handler = self._handlers.get(method)
        if node != self.node_id or handler is None:
            raise NodeUnreachable(node)
        return await asyncio.wait_for(handler(args), limit)


__all__ = [
    "MAX_PENDING_BYTES",
    "MAX_PENDING_PER_PARTICIPANT",
    "Attached",
    "Bus",
    "Delivery",
    "Handler",
    "LocalBus",
    "Location",
    "NodeUnreachable",
    "ParticipantKey",
    "Peer",
    "ViewerLimitReached",
    "channel_label",
]
