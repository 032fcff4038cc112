"""The fragment store: where every writer (WebRTC storage sessions, PutMedia) puts fragments and
every reader (GetMedia, ListFragments, HLS/DASH, clips, images) finds them.

A fragment is one self-contained MKV file (EBML header, Segment with Info, Tracks and one Cluster)
kept in the blob store, plus a metadata row. ``append`` makes a fragment visible only after its
blob is durable (fsync + atomic rename) *and* its row is committed, so a crash at any moment
leaves no torn fragment listed; an orphaned blob is swept at the next start.

Readers waiting for a stream's next fragment are woken through the cluster's fragment notifier:
in this process only by default, on every node of a cluster. When several nodes share the
metadata store, fragment numbers come from blocks the store reserves cluster-wide (so no two
nodes hand out the same number), each above the stream's newest (its writer may have moved from
a node whose block is newer than this one's), and the start sweep spares orphans younger than
``ORPHAN_AGE_MS`` (or ``orphan_min_age``): another node may be between writing one and
committing its row.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
from collections.abc import Awaitable, Callable, Sequence

from .. import clock, ids
from ..cluster.base import FragmentNotifier
from ..cluster.local import LocalNotifier
from ..errors import ResourceNotFoundException
from ..records import Fragment, Stream
from ..store.base import BlobNotFound, BlobStore, BlobStoreError, MetadataStore

logger = logging.getLogger(__name__)

FRAGMENT_MAX_BYTES = 50 * 1024 * 1024
# In a cluster, orphaned blobs are removed only once this old (their fragment number tells when
# they were written): a blob another node is writing has no row yet for a few seconds.
CLUSTER_ORPHAN_MIN_AGE = 3600.0

# With a shared metadata store, orphans younger than this are spared.
ORPHAN_AGE_MS = 15 * 60 * 1000


class BlockNumbers:
    """Fragment numbers from blocks reserved in a shared store: increasing, unique across the
    nodes, and (like ``ids.FragmentNumbers``) near epoch milliseconds shifted left 16 bits, since
    every block starts at or above the reserving node's clock. ``next`` never waits: a new block
    is reserved in the background when the current one runs low or gets old. ``above(floor)``
    waits for a new block only when the current one is not above ``floor``."""

    BLOCK = 1 << 16
    REFRESH_SECONDS = 1.0

    def __init__(self, reserve: Callable[[int, int], Awaitable[int]]) -> None:
        self._reserve = reserve
        self._next = 0
        self._end = 0
        self._at = 0.0
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        await self._refill()

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._task
            self._task = None

    async def _refill(self, floor: int = 0) -> None:
        first = await self._reserve(max(clock.now_ms() << 16, floor), self.BLOCK)
        # A newer block starts above every number handed out before (the store's counter only
        # grows), so switching blocks keeps the numbers increasing. Of two reservations that
        # overlapped (the background one and ``above``'s), the newer block is kept.
        if first >= self._end:
            self._next, self._end = first, first + self.BLOCK
            self._at = clock.monotonic()

    async def _refill_logged(self) -> None:
        try:
            await self._refill()
        except Exception:  # noqa: BLE001 - the current block serves on; the next call retries
            logger.exception("could not reserve fragment numbers")

    def next(self) -> int:
        left = self._end - self._next
        stale = clock.monotonic() - self._at > self.REFRESH_SECONDS
        if (left < self.BLOCK // 4 or stale) and (self._task is None or self._task.done()):
            self._task = asyncio.get_running_loop().create_task(self._refill_logged())
        if left <= 0:
            raise RuntimeError("no fragment numbers reserved (the metadata store is unreachable)")
        number = self._next
        self._next += 1
        return number

    async def above(self, floor: int) -> int:
        """The next number if it is above ``floor``, else one from a block reserved now (above
        every number any node has handed out, ``floor`` among them)."""
        number = self.next()
        if number > floor:
            return number
        await self._refill(floor)
        return self.next()


class FragmentMissing(Exception):
    """A listed fragment's media is no longer in the blob store."""


def is_disk_full(exc: BaseException) -> bool:
    """A write failed for want of space: a blob's ENOSPC/EDQUOT, the index's "database or disk
    is full", or either of them reported by a storage worker process. A remote blob store's
    failure (S3) is never one: it loses the fragment at hand only."""
    if isinstance(exc, BlobStoreError):
        return False
    if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return True
    text = str(exc).lower()
    return "disk is full" in text or "no space left" in text


def blob_key(stream_id: int, server_ts_ms: int, number: int) -> str:
    """Where a fragment's MKV lives in the blob store (one folder per stream and hour)."""
    return f"s{stream_id}/{server_ts_ms // 3_600_000}/{number}.mkv"


def written_ms(key: str) -> int | None:
    """When the blob ``key`` was written, from its fragment number (None: not a fragment's)."""
    name = key.rpartition("/")[2]
    if not name.endswith(".mkv") or not name[:-4].isdigit():
        return None
    return int(name[:-4]) >> 16


class FragmentStore:
    def __init__(
        self,
        meta: MetadataStore,
        blobs: BlobStore,
        notifier: FragmentNotifier | None = None,
        *,
        orphan_min_age: float | None = None,
    ) -> None:
        self.meta = meta
        self.blobs = blobs
        self.notifier: FragmentNotifier = notifier if notifier is not None else LocalNotifier()
        # None: every orphan goes at start (one node owns the blobs); else only older ones
        self.orphan_min_age = orphan_min_age
        self._numbers = ids.FragmentNumbers()
        self._blocks: BlockNumbers | None = None
        self._latest: dict[int, Fragment] = {}
        # Called with every fragment made visible (metrics, events); never fails a commit.
        self.on_commit: list[Callable[[Fragment], None]] = []

    async def start(self) -> None:
        if self.meta.shared:
            self._blocks = BlockNumbers(self.meta.reserve_fragment_numbers)
            await self._blocks.start()
        else:
            self._numbers.bump(await self.meta.max_fragment_number())
        await self.sweep_orphans()

    async def stop(self) -> None:
        if self._blocks is not None:
            await self._blocks.stop()
        self.notifier.wake_all()

    async def sweep_orphans(self) -> int:
        """Delete blobs that no fragment row names (left by a crash between put and commit);
        in a cluster only one node at a time, and only those older than ``orphan_min_age``
        seconds (or ``ORPHAN_AGE_MS`` with a shared metadata store)."""
        async with self.meta.exclusive("sweep-orphans") as mine:
            if not mine:
                return 0
            return await self._sweep()

    async def _sweep(self) -> int:
        listed = await self.meta.all_blob_keys()
        orphans = sorted((await self.blobs.keys()) - listed)
        min_age_ms: int | None = None
        if self.orphan_min_age is not None:
            min_age_ms = int(self.orphan_min_age * 1000)
        if self.meta.shared:
            min_age_ms = max(min_age_ms or 0, ORPHAN_AGE_MS)
        if min_age_ms is not None:
            # Another node may be between the put and the commit of a young fragment; a key
            # that names no fragment is left alone.
            cutoff = clock.now_ms() - min_age_ms
            orphans = [k for k in orphans if (written_ms(k) or cutoff) < cutoff]
        if orphans:
            logger.info("removing %d orphaned fragment blobs", len(orphans))
            await self.blobs.delete(orphans)
        return len(orphans)

    async def next_number(self, stream_id: int) -> int:
        """A new fragment number for the stream, above every number it has: with a shared
        metadata store the stream's newest fragments may have come from another node, whose
        block of numbers is newer than this node's (so the store is asked for the newest)."""
        if self._blocks is None:
            return self._numbers.next()
        newest = await self.meta.last_fragments(stream_id, 1)
        return await self._blocks.above(newest[-1].number if newest else 0)

    async def append(
        self,
        stream: Stream,
        data: bytes,
        *,
        producer_ts_ms: int,
        server_ts_ms: int | None = None,
        duration_ms: int,
        number: int | None = None,
    ) -> Fragment:
        """Store one MKV fragment durably and make it visible; return its metadata."""
        if self.meta.stream_by_id(stream.id) is None:
            raise ResourceNotFoundException(f"The stream {stream.name} was deleted.")
        if len(data) > FRAGMENT_MAX_BYTES:
            raise ValueError(f"fragment of {len(data)} bytes exceeds {FRAGMENT_MAX_BYTES}")
        server_ts = clock.now_ms() if server_ts_ms is None else server_ts_ms
        number = await self.next_number(stream.id) if number is None else number
        key = blob_key(stream.id, server_ts, number)
        await self.blobs.put(key, data)
        fragment = Fragment(
            stream_id=stream.id,
            number=number,
            producer_ts=producer_ts_ms,
            server_ts=server_ts,
            duration_ms=max(0, duration_ms),
            size=len(data),
            blob_key=key,
        )
        await self.commit(fragment)
        return fragment

    async def commit(self, fragment: Fragment) -> None:
        """Make a fragment whose blob is already durable visible (its metadata row, then the
        live-tail wake-up). Used by ``append`` and by storage-session worker processes, which
        write their blobs themselves. On failure the blob is removed."""
        try:
            if self.meta.stream_by_id(fragment.stream_id) is None:
                raise ResourceNotFoundException("The stream was deleted.")
            await self.meta.add_fragment(fragment)
        except BaseException:
            await self.blobs.delete([fragment.blob_key])
            raise
        self._latest[fragment.stream_id] = fragment
        self.notifier.notify(fragment.stream_id, fragment.number)
        for hook in self.on_commit:
            try:
                hook(fragment)
            except Exception:  # noqa: BLE001 - an observer's failure is not the writer's
                logger.exception("fragment commit hook failed")

    async def read(self, fragment: Fragment) -> bytes:
        """The fragment's MKV; :class:`FragmentMissing` if its media is gone (expired or deleted
        since it was listed)."""
        try:
            return await self.blobs.get(fragment.blob_key)
        except BlobNotFound as exc:
            raise FragmentMissing(fragment.number) from exc

    def changed(self, stream_id: int) -> asyncio.Event:
        """An event set at the next append to ``stream_id`` on any node (take a new one after
        each wake-up)."""
        return self.notifier.changed(stream_id)

    def latest(self, stream_id: int) -> Fragment | None:
        """The newest fragment appended by this process (None before the first one)."""
        return self._latest.get(stream_id)

    async def list_fragments(
        self,
        stream: Stream,
        *,
        timestamp_type: str | None = None,
        start_ms: int | None = None,
        end_ms: int | None = None,
        after_number: int | None = None,
        limit: int = 1000,
    ) -> list[Fragment]:
        return await self.meta.list_fragments(
            stream.id,
            timestamp_type=timestamp_type,
            start_ms=start_ms,
            end_ms=end_ms,
            after_number=after_number,
            limit=limit,
        )

    async def get(self, stream: Stream, numbers: Sequence[int]) -> list[Fragment]:
        return await self.meta.get_fragments(stream.id, numbers)

    async def last(self, stream: Stream, count: int) -> list[Fragment]:
        return await self.meta.last_fragments(stream.id, count)
