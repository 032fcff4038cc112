"""The data plane's long-lived state: who is writing to which stream, and the shutdown signal.

One PutMedia writer per stream: in this process a writer slot per stream; in a cluster also a
lease ``putmedia:<stream id>`` on the bus, held (and renewed) while the upload runs, so a
second producer connecting to another node waits for the handover or is refused just the same.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
from collections.abc import AsyncIterator

from .. import clock
from ..cluster.base import Lease, Leases, keep_renewed
from ..config import Settings
from ..control.fragments import FragmentStore
from ..control.resources import ControlPlane
from ..errors import ConnectionLimitExceededException
from ..playback.liveedge import LiveEdge
from ..records import Stream
from .events import FragmentEvents

logger = logging.getLogger(__name__)


@dataclasses.dataclass
class WriterSlot:
    """A stream's writer slot, held by one PutMedia session."""

    last_data: float  # clock.monotonic() of the last body data the holder received
    taken_over: asyncio.Event = dataclasses.field(default_factory=asyncio.Event)
    lease: Lease | None = None  # the cluster lease, when the data plane has cluster leases
    lease_lost: bool = False  # ... could not be renewed: another node may be writing now

    def lose_lease(self) -> None:
        self.lease_lost = True
        self.taken_over.set()


# The cluster writer lease lives this long without renewal (a dead node's lease frees itself);
# the holder renews it every third of that.
WRITER_LEASE_TTL = 6.0
# How often a connection waiting for another node's writer asks it again to give way.
YIELD_ASK_INTERVAL = 1.0


class DataPlane:
    """Shared by every PutMedia/GetMedia connection; ``start``/``stop`` follow the app lifecycle.

    ``shutdown`` (called before aiohttp waits for handlers) tells open connections to finish, so
    a live GetMedia or an idle PutMedia never holds the server open.
    """

    def __init__(
        self,
        settings: Settings,
        control: ControlPlane,
        fragments: FragmentStore,
        leases: Leases | None = None,
    ) -> None:
        self.settings = settings
        # Cluster leases (None: this process is the only writer anywhere)
        self.leases = leases
        if leases is not None:
            leases.on_yield(self._yield_asked)
        self.control = control
        self.fragments = fragments
        self._writers: dict[int, WriterSlot] = {}
        self._freed: dict[int, asyncio.Event] = {}  # set when a stream's writer slot is released
        self.events = FragmentEvents()
        self.live = LiveEdge()  # parts of the fragments being received, for LL-HLS
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
        slot = WriterSlot(clock.monotonic())
        self._writers[stream.id] = slot
        keeper: asyncio.Task[None] | None = None
        try:
            if self.leases is not None:
                slot.lease, asked = await self._cluster_writer(stream, deadline, self.leases)
                waited = waited or asked
                keeper = asyncio.create_task(
                    keep_renewed(self.leases, slot.lease, slot.lose_lease),
                    name=f"putmedia-lease {stream.name}",
                )
            if waited:
                logger.info("PutMedia to %s took over from the previous connection", stream.name)
            slot.last_data = clock.monotonic()
            yield slot
        finally:
            try:
                if keeper is not None:
                    keeper.cancel()
                    await asyncio.gather(keeper, return_exceptions=True)
                if slot.lease is not None and self.leases is not None:
                    await self._release(self.leases, slot.lease)
            finally:
                self._writers.pop(stream.id, None)
                if stream.id in self._freed:
                    self._freed.pop(stream.id).set()

    async def _cluster_writer(
        self, stream: Stream, deadline: float, leases: Leases
    ) -> tuple[Lease, bool]:
        """The stream's cluster writer lease, waited for like the local slot (its holder,
        whichever node has it, is asked to give way when idle); and whether it was waited for."""
        name = f"putmedia:{stream.id}"
        asked: float | None = None
        while True:
            lease = await leases.acquire(name, WRITER_LEASE_TTL)
            if lease is not None:
                return lease, asked is not None
            now = clock.monotonic()
            if now >= deadline or self.closing.is_set():
                raise ConnectionLimitExceededException(
                    f"Another PutMedia connection is already writing to the stream {stream.name}; "
                    "only one writer per stream is allowed at a time."
                )
            if asked is None or now - asked >= YIELD_ASK_INTERVAL:
                asked = now
                await leases.ask_to_yield(name)
            await asyncio.sleep(min(deadline - now, 0.1))

    def _yield_asked(self, name: str) -> None:
        """Another node waits for the writer lease ``name``: a holder here gives way when it
        has received no data for ``putmedia_handover_idle`` seconds."""
        kind, _, sid = name.partition(":")
        slot = self._writers.get(int(sid)) if kind == "putmedia" and sid.isdigit() else None
        if slot is None or slot.lease is None or slot.lease.name != name:
            return
        idle = clock.monotonic() - slot.last_data
        if idle >= self.settings.putmedia_handover_idle and not slot.taken_over.is_set():
            logger.info(
                "PutMedia writer of stream %s without data for %.0f s gives way to another node",
                sid,
                idle,
            )
            slot.taken_over.set()

    @staticmethod
    async def _release(leases: Leases, lease: Lease) -> None:
        try:
            await leases.release(lease)
        except Exception as exc:  # noqa: BLE001 - it expires by itself
            logger.warning("releasing %s failed: %s", lease.name, exc or type(exc).__name__)
