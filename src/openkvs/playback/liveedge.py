"""The live edge of a stream: the parts of the fragment being written, for LL-HLS.

A writer (PutMedia, ``dataplane.liveparts``; a WebRTC recorder, ``webrtc.liveparts``, whose
parts reach this process over the worker link when it runs in a worker process; both through
``livecut.PartCutter``) publishes the fragment it is writing while it arrives: each
part is a run of whole frames, cut at a frame boundary once it lasts ``PART_CUT_MS``, with the
identity the stored fragment will have (its number and timestamps) and the frames exactly as the
stored fragment will hold them (the writer reads them back from the fragment assembled so far,
the same way the fragment is assembled for storage). Once the whole fragment is assembled the
writer checks that the parts are a prefix of its frames and publishes its last parts, then stores
it; a fragment that is abandoned, fails to be stored, or whose frames differ, has its parts
withdrawn.

Only streams whose LIVE playlist was asked for in the last ``WATCH_S`` seconds are cut into
parts: from the next fragment on. Memory is bounded: a stream keeps its fragment in progress and
the last ``KEEP_DONE`` stored ones; at most ``MAX_STREAMS`` streams are kept (the least recently
written is dropped), and a fragment holds at most ``MAX_PARTS`` parts (more are not published;
the segment still is).
Waiters (blocking playlist reloads, part requests) wait on a per-stream condition, always with a
bound.
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections import OrderedDict
from collections.abc import Mapping

from .. import clock
from .mkv import Frame

PART_CUT_MS = 250  # a part ends at the first frame boundary at least this long after its start
PART_TARGET_S = (
    0.334  # declared EXT-X-PART-INF PART-TARGET (a part never lasts longer at >= 12 fps)
)
KEEP_DONE = 3
MAX_STREAMS = 256
MAX_PARTS = 64
WATCH_S = (
    60.0  # a stream's fragments are cut into parts while a LIVE playlist was asked this recently
)


@dataclasses.dataclass(frozen=True)
class Part:
    index: int
    frames: Mapping[int, tuple[Frame, ...]]  # by track number, times relative to the fragment
    start_ns: int  # of the part's first video frame (or first frame), relative to the fragment
    end_ns: int  # start of the next part (the end of the fragment's last frame for the last one)
    independent: bool  # starts with a video keyframe
    published_ms: int  # wall clock when it was listed

    @property
    def duration_s(self) -> float:
        return max(0, self.end_ns - self.start_ns) / 1e9


@dataclasses.dataclass
class LiveFragment:
    number: int
    server_ts: int
    producer_ts: int
    parts: list[Part] = dataclasses.field(default_factory=list)
    done: bool = False  # stored: its parts are complete


class StreamEdge:
    def __init__(self) -> None:
        self.fragments: OrderedDict[int, LiveFragment] = OrderedDict()
        self.changed = asyncio.Condition()
        self.version = 0

    def current(self) -> LiveFragment | None:
        """The fragment in progress (not stored yet), if any."""
        for f in reversed(self.fragments.values()):
            return None if f.done else f
        return None


class LiveEdge:
    """Per-stream feed of the parts of the fragments being written in this process."""

    def __init__(self) -> None:
        self._streams: OrderedDict[int, StreamEdge] = OrderedDict()
        self._watched: OrderedDict[int, float] = OrderedDict()
        self.parts_published = 0

    def watch(self, stream_id: int) -> None:
        """A LIVE playlist of the stream was asked for: cut its next fragments into parts."""
        self._watched[stream_id] = clock.monotonic()
        self._watched.move_to_end(stream_id)
        while len(self._watched) > MAX_STREAMS:
            self._watched.popitem(last=False)

    def watched(self, stream_id: int) -> bool:
        """Whether the stream's fragments are worth cutting into parts (the cost of reading
        them back is only paid for streams someone follows live)."""
        seen = self._watched.get(stream_id)
        if seen is not None and clock.monotonic() - seen <= WATCH_S:
            return True
        self._streams.pop(stream_id, None)
        return False

    def edge(self, stream_id: int) -> StreamEdge | None:
        return self._streams.get(stream_id)

    def _edge(self, stream_id: int) -> StreamEdge:
        edge = self._streams.get(stream_id)
        if edge is None:
            edge = self._streams[stream_id] = StreamEdge()
            while len(self._streams) > MAX_STREAMS:
                self._streams.popitem(last=False)
        else:
            self._streams.move_to_end(stream_id)
        return edge

    def fragment(self, stream_id: int, number: int) -> LiveFragment | None:
        edge = self._streams.get(stream_id)
        return None if edge is None else edge.fragments.get(number)

    async def _notify(self, edge: StreamEdge) -> None:
        edge.version += 1
        async with edge.changed:
            edge.changed.notify_all()

    async def open(self, stream_id: int, number: int, *, server_ts: int, producer_ts: int) -> bool:
        """Begin the fragment's parts if the stream is watched (``livecut.PartSink``)."""
        if not self.watched(stream_id):
            return False
        await self.begin(stream_id, number, server_ts=server_ts, producer_ts=producer_ts)
        return True

    async def begin(
        self,
        stream_id: int,
        number: int,
        *,
        server_ts: int,
        producer_ts: int,
    ) -> None:
        edge = self._edge(stream_id)
        for key in [k for k, f in edge.fragments.items() if not f.done]:
            del edge.fragments[key]  # a fragment in progress that never completed
        edge.fragments[number] = LiveFragment(number, server_ts, producer_ts)
        _trim(edge)
        await self._notify(edge)

    async def publish(self, stream_id: int, number: int, part: Part, *, last: bool) -> None:
        edge = self._streams.get(stream_id)
        frag = None if edge is None else edge.fragments.get(number)
        if edge is None or frag is None or frag.done:
            return
        if part.index != len(frag.parts) or len(frag.parts) >= MAX_PARTS:
            return
        frag.parts.append(part)
        self.parts_published += 1
        if last:
            frag.done = True
        await self._notify(edge)

    async def finish(self, stream_id: int, number: int) -> None:
        """The fragment is stored (with or without a last part published)."""
        frag = self.fragment(stream_id, number)
        edge = self._streams.get(stream_id)
        if frag is None or edge is None:
            return
        frag.done = True
        _trim(edge)
        await self._notify(edge)

    async def abandon(self, stream_id: int, number: int) -> None:
        """The fragment will not be stored as published: its parts are withdrawn."""
        edge = self._streams.get(stream_id)
        if edge is None or edge.fragments.pop(number, None) is None:
            return
        await self._notify(edge)

    async def wait(self, stream_id: int, version: int, seconds: float) -> None:
        """Return once the stream's edge changed after ``version``, or after ``seconds``."""
        edge = self._edge(stream_id)
        if edge.version != version:
            return
        try:
            async with edge.changed:
                await asyncio.wait_for(
                    edge.changed.wait_for(lambda: edge.version != version), seconds
                )
        except TimeoutError:
            return

    def version(self, stream_id: int) -> int:
        edge = self._streams.get(stream_id)
        return 0 if edge is None else edge.version


def _trim(edge: StreamEdge) -> None:
    done = [k for k, f in edge.fragments.items() if f.done]
    for key in done[: max(0, len(done) - KEEP_DONE)]:
        del edge.fragments[key]


def cut_index(times_ms: list[int], start: int) -> int | None:
    """Where the part that begins at video frame ``start`` ends: the index of the first video
    frame at least ``PART_CUT_MS`` after it, or None while there is none yet."""
    if start >= len(times_ms):
        return None
    for i in range(start + 1, len(times_ms)):
        if times_ms[i] - times_ms[start] >= PART_CUT_MS:
            return i
    return None


def now_ms() -> int:
    return clock.now_ms()
