"""The seam between the JoinStorageSession API and whatever runs storage sessions.

``StorageSessions`` is implemented by the WebRTC storage-session manager; ``RecordingSessions``
only records accepted joins (used when media is disabled, and by API tests).
"""

from __future__ import annotations

import dataclasses
from typing import Protocol

from .. import clock
from ..records import Channel, Stream


class StorageSessions(Protocol):
    async def start(self) -> None: ...
    async def stop(self) -> None: ...

    async def join_master(self, channel: Channel, stream: Stream) -> None:
        """Accept a JoinStorageSession call: offer to the channel's master (asynchronously)."""
        ...

    async def join_viewer(self, channel: Channel, stream: Stream, client_id: str) -> None:
        """Accept a JoinStorageSessionAsViewer call; raise ClientLimitExceeded when full."""
        ...

    async def channel_closed(self, channel: Channel) -> None:
        """The channel was deleted or its media storage disabled: end its session."""
        ...


@dataclasses.dataclass(frozen=True)
class JoinRecord:
    channel_arn: str
    stream_arn: str
    client_id: str | None  # None for the master
    at: float


class RecordingSessions:
    """A StorageSessions that records what it was asked to do."""

    def __init__(self, limit: int = 1000) -> None:
        self.joins: list[JoinRecord] = []
        self.closed: list[str] = []
        self._limit = limit

    async def start(self) -> None:
        return None

    async def stop(self) -> None:
        return None

    def _record(self, rec: JoinRecord) -> None:
        self.joins.append(rec)
        del self.joins[: -self._limit]

    async def join_master(self, channel: Channel, stream: Stream) -> None:
        self._record(JoinRecord(channel.arn, stream.arn, None, clock.now()))

    async def join_viewer(self, channel: Channel, stream: Stream, client_id: str) -> None:
        self._record(JoinRecord(channel.arn, stream.arn, client_id, clock.now()))

    async def channel_closed(self, channel: Channel) -> None:
        self.closed.append(channel.arn)
