"""A recorder's side of the live edge: the fragment being recorded as LL-HLS parts.

After each video frame the recorder hands over its fragmenter: once the open fragment's video
frames since the last cut span ``PART_CUT_MS`` (``liveedge.cut_index``, the rule PutMedia's
parts follow), the fragment as it stands up to that frame is serialised the way the stored one
will be (``FragmentData.to_mkv``), read back as playback reads a stored fragment, and its new
frames form the next part (``livecut.PartCutter``): the video frames, and the AAC frames already
encoded for that span. Audio is encoded behind video, so a frame that comes later for that span
goes into a later part; the stored fragment holds each track's frames in order, so the parts are
still exactly its first frames. When the fragment closes (the next keyframe) its remaining
frames are published as its last parts, and once it is stored its frames are read back once
more: unless the parts are exactly its first frames, they are withdrawn; a fragment that is
dropped or fails to be stored has them withdrawn too.

The work runs in order on one task, off the media path: serialising and reading back in the
recorder's thread pool. At most ``MAX_EVENTS`` steps wait for a cut to be queued, else it is
skipped (its frames go into the next part); past ``MAX_QUEUED`` waiting steps (the work is
stuck), they are dropped and the parts withdrawn. Only fragments of streams someone follows
live are cut (the sink says so when a fragment opens).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import dataclasses
import logging
from concurrent.futures import ThreadPoolExecutor

from ..media.fragmenter import FragmentData, Fragmenter
from ..playback.livecut import PartCutter, PartSink
from ..playback.liveedge import MAX_PARTS, cut_index
from ..playback.mkv import ParsedFragment, parse_fragment

logger = logging.getLogger(__name__)

MAX_EVENTS = 16  # waiting steps beyond which a due part is skipped (merged into the next)
MAX_QUEUED = 64  # waiting steps beyond which they are all dropped (the work is stuck)
MAX_CUTTERS = 8  # fragments with parts at once: the open one, closed ones waiting for audio
DRAIN_S = 5.0  # how long a closing recording waits for its last parts


def _read(frag: FragmentData) -> ParsedFragment:
    return parse_fragment(frag.to_mkv())


@dataclasses.dataclass
class _Open:
    serial: int
    start_ms: int
    number: asyncio.Future[int]


@dataclasses.dataclass
class _Part:
    serial: int
    snapshot: FragmentData
    end_ns: int


@dataclasses.dataclass
class _Close:
    serial: int
    snapshot: FragmentData


@dataclasses.dataclass
class _Stored:
    serial: int
    data: bytes | None  # None: not stored


class _Reset:
    """The steps waiting were dropped: every fragment's parts are withdrawn."""

    serial = -1


_Event = _Open | _Part | _Close | _Stored | _Reset


class RecorderParts:
    def __init__(
        self, sink: PartSink, stream_id: int, pool: ThreadPoolExecutor, *, log_prefix: str = ""
    ) -> None:
        self._sink = sink
        self._stream_id = stream_id
        self._cutters: dict[int, PartCutter] = {}  # by serial: the open fragment, closed ones
        self._pool = pool
        self._prefix = log_prefix
        self._events: collections.deque[_Event] = collections.deque()
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._serial: int | None = None  # the open fragment followed
        self._cut = 0  # its video frames already cut into parts
        self._cuts = 0
        self._skip: set[int] = set()  # serials not cut (nobody follows the stream live)
        self.skipped = 0
        self._idle = asyncio.Event()  # no step waiting or running
        self._idle.set()

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="live parts")

    # -- from the recorder (event loop, synchronous) ---------------------------------------

    def opened(self, serial: int, start_ms: int, number: asyncio.Future[int]) -> None:
        self._serial, self._cut, self._cuts = serial, 0, 0
        self._push(_Open(serial, start_ms, number))

    def video(self, fragmenter: Fragmenter, ready: list[FragmentData]) -> None:
        """After a video frame: close the followed fragment if it closed, cut parts of the open
        one that are due."""
        serial = self._serial
        if serial is None:
            return
        if fragmenter.open_serial != serial:
            self.closed(fragmenter, ready)
            return
        if serial in self._skip:
            return
        times = fragmenter.video_times(serial)
        while self._cuts < MAX_PARTS - 1 and (k := cut_index(times, self._cut)) is not None:
            self._cut = k
            if len(self._events) >= MAX_EVENTS:
                self.skipped += 1  # its frames go into the next part
                continue
            snapshot = fragmenter.snapshot(serial, video_frames=k)
            if snapshot is None:
                return
            self._cuts += 1
            self._push(_Part(serial, snapshot, (times[k] - times[0]) * 1_000_000))

    def closed(self, fragmenter: Fragmenter, ready: list[FragmentData]) -> None:
        """The followed fragment closed (its video is final): its last parts."""
        serial, self._serial = self._serial, None
        if serial is None or serial in self._skip:
            return
        snapshot = next((f for f in ready if f.serial == serial), None)
        if snapshot is not None:  # emitted at once: a copy, the writer has the original
            snapshot = dataclasses.replace(snapshot, blocks=list(snapshot.blocks))
        else:
            snapshot = fragmenter.snapshot(serial)
        if snapshot is not None:
            self._push(_Close(serial, snapshot))

    def stored(self, serial: int, data: bytes | None) -> None:
        """The fragment ``serial`` is stored as ``data`` (None: it was not stored)."""
        if serial in self._skip:
            self._skip.discard(serial)
            return
        self._push(_Stored(serial, data))

    def _push(self, event: _Event) -> None:
        if len(self._events) >= MAX_QUEUED:
            logger.warning("%slive parts fall behind; withdrawn", self._prefix)
            self.skipped += len(self._events)
            self._events.clear()
            self._events.append(_Reset())
            if not isinstance(event, _Open):
                return
        self._events.append(event)
        self._idle.clear()
        self._wake.set()

    # -- the work (one task) -----------------------------------------------------------------

    async def _run(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            while self._events:
                event = self._events.popleft()
                try:
                    await self._step(event)
                except Exception as exc:  # noqa: BLE001 - parts are best effort, never the recording
                    logger.debug("%slive parts stop: %s", self._prefix, exc)
                    failed = self._cutters.pop(event.serial, None)
                    if failed is not None:
                        with contextlib.suppress(Exception):
                            await failed.abandon()
            self._idle.set()

    async def _read(self, frag: FragmentData) -> ParsedFragment:
        return await asyncio.get_running_loop().run_in_executor(self._pool, _read, frag)

    async def _step(self, event: _Event) -> None:
        if isinstance(event, _Reset):
            dropped = list(self._cutters.values())
            self._cutters.clear()
            for each in dropped:
                await each.abandon()
            return
        if isinstance(event, _Open):
            try:
                number: int | None = await event.number
            except Exception:  # noqa: BLE001 - no number, no parts (the writer logs it)
                number = None
            new = PartCutter(self._sink, self._stream_id)
            if number is not None and await new.begin(
                number, server_ts=event.start_ms, producer_ts=event.start_ms
            ):
                self._cutters[event.serial] = new
                while len(self._cutters) > MAX_CUTTERS:  # never stored: withdrawn
                    await self._cutters.pop(next(iter(self._cutters))).abandon()
            else:
                self._skip.add(event.serial)
                self._skip.difference_update(sorted(self._skip)[:-4])  # bounded: recent ones
            return
        cutter = self._cutters.get(event.serial)
        if cutter is None:
            return
        if isinstance(event, _Part):
            if cutter.room:
                await cutter.advance(await self._read(event.snapshot), event.end_ns)
        elif isinstance(event, _Close):
            parsed = await self._read(event.snapshot)
            if not cutter.matches(parsed):
                logger.warning("%slive parts differ from the fragment, withdrawn", self._prefix)
                del self._cutters[event.serial]
                await cutter.abandon()
                return
            await cutter.close(parsed, event.snapshot.duration_ms)
        else:
            del self._cutters[event.serial]
            if event.data is None:
                await cutter.abandon()
                return
            data = event.data
            parsed = await asyncio.get_running_loop().run_in_executor(
                self._pool, parse_fragment, data
            )
            await cutter.verify(parsed)

    async def close(self) -> None:
        """Finish the steps waiting (bounded), then stop; parts left unfinished are withdrawn."""
        task, self._task = self._task, None
        if task is None:
            return
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(DRAIN_S):
                await self._idle.wait()
        task.cancel()
        with contextlib.suppress(BaseException):
            await task
        for cutter in self._cutters.values():
            with contextlib.suppress(Exception):
                await cutter.abandon()
        self._cutters.clear()
