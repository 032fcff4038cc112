"""Cut a fragment being written into LL-HLS parts: the part of the rule shared by every writer.

A writer (PutMedia's ``dataplane.liveparts``, a WebRTC recorder's ``webrtc.liveparts``) decides
where a part ends (``liveedge.cut_index``: at the first video frame at least ``PART_CUT_MS``
after the part's first one) and reads the fragment back as it will be stored, up to that frame;
:class:`PartCutter` turns each such read-back into the next part (the frames not in a part yet),
checks that the parts are exactly the first frames of the stored fragment, and publishes them to
a :class:`PartSink` (``liveedge.LiveEdge`` in the server process, a proxy to it in a worker
process).
"""

from __future__ import annotations

import logging
from typing import Protocol

from .. import clock
from .liveedge import MAX_PARTS, Part, cut_index
from .mkv import Frame, ParsedFragment

logger = logging.getLogger(__name__)


class PartSink(Protocol):
    async def open(self, stream_id: int, number: int, *, server_ts: int, producer_ts: int) -> bool:
        """Begin the fragment's parts, if the stream is followed live (else False)."""
        ...

    async def publish(self, stream_id: int, number: int, part: Part, *, last: bool) -> None: ...

    async def finish(self, stream_id: int, number: int) -> None: ...

    async def abandon(self, stream_id: int, number: int) -> None: ...


class PartCutter:
    """The parts of one stream's fragment in progress (one fragment at a time)."""

    def __init__(self, sink: PartSink, stream_id: int) -> None:
        self.sink = sink
        self.stream_id = stream_id
        self.number: int | None = None  # the fragment being cut, None when none is
        self.parts = 0
        self._counts: dict[int, int] = {}  # frames per track already in published parts
        self._sent: dict[int, list[Frame]] = {}
        self._start_ns = 0

    async def begin(self, number: int, *, server_ts: int, producer_ts: int) -> bool:
        """Start cutting fragment ``number``; False (and nothing to cut) when nobody follows
        the stream live."""
        self.number = None
        self.parts, self._counts, self._sent, self._start_ns = 0, {}, {}, 0
        if await self.sink.open(
            self.stream_id, number, server_ts=server_ts, producer_ts=producer_ts
        ):
            self.number = number
        return self.number is not None

    async def abandon(self) -> None:
        """The parts are withdrawn (the fragment will not be stored as they show it)."""
        number, self.number = self.number, None
        if number is not None:
            await self.sink.abandon(self.stream_id, number)

    @property
    def room(self) -> bool:
        """Whether another part (not the last) may be published."""
        return self.number is not None and self.parts < MAX_PARTS - 1

    async def advance(self, parsed: ParsedFragment, end_ns: int) -> None:
        """``parsed`` is the fragment read back as stored, cut just before the frame that
        starts at ``end_ns``: its frames not in a part yet are the next part."""
        if not self.room:
            return
        vt = parsed.video()
        await self._publish(vt.number if vt else None, self._take(parsed), end_ns, last=False)

    def matches(self, parsed: ParsedFragment) -> bool:
        """Whether the published parts are exactly the first frames of ``parsed``, per track."""
        return all(parsed.frames.get(t, [])[: len(sent)] == sent for t, sent in self._sent.items())

    async def close(self, parsed: ParsedFragment, duration_ms: int) -> None:
        """``parsed`` is the whole fragment (its video final): publish its frames not in a part
        yet as its last parts, cut by the same rule (when they came faster than parts were
        due). The caller has checked :meth:`matches`."""
        if self.number is None:
            return
        vt = parsed.video()
        video = vt.number if vt is not None else None
        rest = self._take(parsed)
        frames = rest.get(video, ()) if video is not None else ()
        if video is not None and not frames:
            return
        times = [f.pts_ns // 1_000_000 for f in frames]
        bounds = [0]
        while len(bounds) < MAX_PARTS and (k := cut_index(times, bounds[-1])) is not None:
            bounds.append(k)
        bounds.append(len(frames))
        others = {t: list(fs) for t, fs in rest.items() if t != video}
        for a, b in zip(bounds, bounds[1:], strict=False):
            last = b == len(frames)
            end = duration_ms * 1_000_000 if last else frames[b].pts_ns
            new: dict[int, tuple[Frame, ...]] = {} if video is None else {video: frames[a:b]}
            for track, fs in others.items():
                take = len(fs) if last else sum(1 for f in fs if f.pts_ns < end)
                new[track], others[track] = tuple(fs[:take]), fs[take:]
            await self._publish(video, new, end, last=last)

    async def verify(self, parsed: ParsedFragment) -> bool:
        """The fragment is stored as ``parsed``: its parts are final if they are its first
        frames, else withdrawn. Returns whether they were kept."""
        if self.number is None:
            return False
        if not self.matches(parsed):
            logger.warning("live parts of fragment %d differ from it, withdrawn", self.number)
            await self.abandon()
            return False
        await self.stored()
        return True

    async def stored(self) -> None:
        """The fragment is stored: its parts are final."""
        number, self.number = self.number, None
        if number is not None:
            await self.sink.finish(self.stream_id, number)

    def _take(self, parsed: ParsedFragment) -> dict[int, tuple[Frame, ...]]:
        """The frames of ``parsed`` not in a published part yet, by track."""
        new: dict[int, tuple[Frame, ...]] = {}
        for track, frames in parsed.frames.items():
            done = self._counts.get(track, 0)
            new[track] = tuple(frames[done:])
            self._counts[track] = len(frames)
            self._sent.setdefault(track, []).extend(frames[done:])
        return new

    async def _publish(
        self, video: int | None, new: dict[int, tuple[Frame, ...]], end_ns: int, *, last: bool
    ) -> None:
        assert self.number is not None
        lead = new.get(video, ()) if video is not None else ()
        if video is None:
            lead = next((fs for fs in new.values() if fs), ())
        start = lead[0].pts_ns if lead else self._start_ns
        part = Part(
            index=self.parts,
            frames=new,
            start_ns=start,
            end_ns=max(end_ns, start),
            independent=bool(lead) and lead[0].key,
            published_ms=clock.now_ms(),
        )
        self.parts += 1
        self._start_ns = part.end_ns
        await self.sink.publish(self.stream_id, self.number, part, last=last)
