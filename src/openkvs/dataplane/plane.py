"""The data plane's long-lived state: who is writing to which stream, and the shutdown signal."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
from collections.abc import AsyncIterator

from .. import clock
from ..config import Settings
from ..control.fragments import FragmentStore
from ..control.resources import ControlPlane
from ..errors import ConnectionLimitExceededException
from ..records import Stream
from .events import FragmentEvents

logger = logging.getLogger(__name__)


@dataclasses.dataclass
class WriterSlot:
    """A stream's writer slot, held by one PutMedia session."""

    last_data: float  # clock.monotonic() of the last body data the holder received
    taken_over: asyncio.Event = dataclasses.field(default_factory=asyncio.Event)


class DataPlane:
    """Shared by every PutMedia/GetMedia connection; ``start``/``stop`` follow the app lifecycle.

    ``shutdown`` (called before aiohttp waits for handlers) tells open connections to finish, so
    a live GetMedia or an idle PutMedia never holds the server open.
    """

    def __init__(self, settings: Settings, control: ControlPlane, fragments: FragmentStore) -> None:
        self.settings = settings
        self.control = control
        self.fragments = fragments
        self._writers: dict[int, WriterSlot] = {}
        self._freed: dict[int, asyncio.Event] = {}  # set when a stream's writer slot is released
        self.events = FragmentEvents()
        self.ingested_bytes = 0  # PutMedia request-body bytes, for metrics
        self._closing: asyncio.Event | None = None

    @property
    def closing(self) -> asyncio.Event:
        if self._closing is None:
            self._closing = asyncio.Event()
        return self._closing

    async def start(self) -> None:
        self.closing.clear()

    async def shutdown(self) -> None:
        self.closing.set()

    async def stop(self) -> None:
        self.closing.set()

    @contextlib.asynccontextmanager
    async def writer(self, stream: Stream) -> AsyncIterator[WriterSlot]:
        """Hold the single PutMedia writer slot of ``stream``.

        While another connection holds it, wait up to ``putmedia_handover_wait`` seconds for it
        to end (a producer rotating its connection opens the next one before it ends the
        current one), then refuse with ConnectionLimitExceeded. Fragments of the two
        connections never interleave: the new one is read only once the old one is done. A
        holder that has received no data for ``putmedia_handover_idle`` seconds (a producer that
        vanished without closing its connection) is told to end (``taken_over``) and gives way.
        """
        waited = False
        deadline = clock.monotonic() + self.settings.putmedia_handover_wait
        while stream.id in self._writers:
            remaining = deadline - clock.monotonic()
            if remaining <= 0 or self.closing.is_set():
                raise ConnectionLimitExceededException(
                    f"Another PutMedia connection is already writing to the stream {stream.name}; "
                    "only one writer per stream is allowed at a time."
                )
            waited = True
            holder = self._writers[stream.id]
            idle = clock.monotonic() - holder.last_data
            if idle >= self.settings.putmedia_handover_idle and not holder.taken_over.is_set():
                logger.info(
                    "PutMedia to %s: the connection without data for %.0f s gives way",
                    stream.name,
                    idle,
                )
                holder.taken_over.set()
            freed = self._freed.setdefault(stream.id, asyncio.Event())
            try:
                await asyncio.wait_for(freed.wait(), min(remaining, 1.0))
            except TimeoutError:
                pass
        if waited:
            logger.info("PutMedia to %s took over from the previous connection", stream.name)
        slot = WriterSlot(clock.monotonic())
        self._writers[stream.id] = slot
        try:
            yield slot
        finally:
            self._writers.pop(stream.id, None)
            if stream.id in self._freed:
                self._freed.pop(stream.id).set()
