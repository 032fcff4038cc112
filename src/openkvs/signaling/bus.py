"""Who is connected where, delivery, and TTL buffering of signaling messages.

The :class:`Bus` is the routing core's seam: :class:`LocalBus` keeps everything in this process;
a bus for several nodes (Redis or PostgreSQL) implements the same calls with presence in a shared
map, delivery over pub/sub to the node that holds the socket, and pending messages in TTL'd
lists (keeping a local cache so that ``current`` stays synchronous).
"""

from __future__ import annotations

import collections
import dataclasses
import enum
from typing import Protocol

from .. import clock
from ..errors import ClientLimitExceededException

# (channel ARN, ClientId); ClientId None is the channel's master.
ParticipantKey = tuple[str, str | None]

# Pending (not yet deliverable) messages: at most this many per participant (oldest dropped
# first) and this many bytes in all (further messages are refused with ClientLimitExceeded).
MAX_PENDING_PER_PARTICIPANT = 64
MAX_PENDING_BYTES = 16 * 1024 * 1024


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


class Bus(Protocol):
    """Presence, delivery and TTL buffering for one signaling deployment."""

    async def start(self) -> None: ...
    async def stop(self) -> None: ...

    def attach(self, peer: Peer) -> Peer | None:
        """Make ``peer`` the current connection of its participant; return the one it replaces."""
        ...

    def detach(self, peer: Peer) -> bool:
        """Forget ``peer`` if it is still current; True if it was."""
        ...

    def current(self, key: ParticipantKey) -> Peer | None: ...
    def viewer_count(self, channel_arn: str) -> int: ...
    def peers(self, channel_arn: str | None = None) -> list[Peer]: ...

    async def deliver(
        self, key: ParticipantKey, text: str, *, ttl: float, origin: str, is_offer: bool
    ) -> Delivery:
        """Send ``text`` to the participant, or keep it for ``ttl`` seconds until it connects."""
        ...

    def flush(self, peer: Peer) -> int:
        """Deliver the messages kept for ``peer``'s participant; return how many went out."""
        ...

    def drop_channel(self, channel_arn: str) -> None: ...
    def prune(self) -> None: ...


@dataclasses.dataclass
class _Pending:
    expires: float  # clock.monotonic()
    origin: str
    text: str


class LocalBus:
    """The in-process :class:`Bus`."""

    def __init__(
        self,
        *,
        max_per_participant: int = MAX_PENDING_PER_PARTICIPANT,
        max_bytes: int = MAX_PENDING_BYTES,
    ) -> None:
        self._channels: dict[str, dict[str | None, Peer]] = {}
        self._pending: dict[ParticipantKey, collections.deque[_Pending]] = {}
        self._pending_bytes = 0
        self._max_per_participant = max_per_participant
        self._max_bytes = max_bytes

    async def start(self) -> None:
        return None

    async def stop(self) -> None:
        self._pending.clear()
        self._pending_bytes = 0

    def attach(self, peer: Peer) -> Peer | None:
        members = self._channels.setdefault(peer.channel_arn, {})
        old = members.get(peer.client_id)
        members[peer.client_id] = peer
        return old

    def detach(self, peer: Peer) -> bool:
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

    def viewer_count(self, channel_arn: str) -> int:
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
            self.prune()
            if self._pending_bytes + len(text) > self._max_bytes:
                raise ClientLimitExceededException(
                    "Too many undelivered signaling messages are waiting; try again later."
                )
        if queue is None:
            queue = self._pending[key] = collections.deque()
        queue.append(_Pending(clock.monotonic() + ttl, origin, text))
        self._pending_bytes += len(text)
        while len(queue) > self._max_per_participant:
            self._pending_bytes -= len(queue.popleft().text)
        return Delivery.BUFFERED

    def flush(self, peer: Peer) -> int:
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

    def drop_channel(self, channel_arn: str) -> None:
        for key in [k for k in self._pending if k[0] == channel_arn]:
            self._pending_bytes -= sum(len(p.text) for p in self._pending.pop(key))

    def prune(self) -> None:
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


__all__ = [
    "MAX_PENDING_BYTES",
    "MAX_PENDING_PER_PARTICIPANT",
    "Bus",
    "Delivery",
    "LocalBus",
    "ParticipantKey",
    "Peer",
    "channel_label",
]
