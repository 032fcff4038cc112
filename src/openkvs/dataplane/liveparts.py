"""PutMedia's side of the live edge: cut the fragment being received into LL-HLS parts.

After each chunk of the request body, the blocks of the cluster received so far are looked at;
once the video frames since the last cut span ``PART_CUT_MS``, the cluster is assembled as if it
ended there (``MkvStreamParser.snapshot``, the same rewrite as the stored fragment) and read back
as playback reads a stored fragment, and the new frames form the next part. When the fragment
is stored, its frames are read back once more: the parts must be exactly its first frames (else
they are withdrawn) and the remaining frames form its last part.
"""

from __future__ import annotations

import asyncio
import logging

from .. import clock
from ..media import mkvstream
from ..playback.liveedge import MAX_PARTS, LiveEdge, Part, cut_index
from ..playback.mkv import Frame, ParsedFragment, parse_fragment

logger = logging.getLogger(__name__)
VIDEO = 1


def _read(ready: mkvstream.FragmentReady) -> ParsedFragment:
    return parse_fragment(mkvstream.assemble(ready))


class LiveCutter:
    def __init__(self, edge: LiveEdge, stream_id: int) -> None:
        self.edge = edge
        self.stream_id = stream_id
        self.number: int | None = None
        self.index = -1
        self._blocks = 0  # blocks of the cluster already in published parts
        self._counts: dict[int, int] = {}  # frames per track already in published parts
        self._sent: dict[int, list[Frame]] = {}
        self._parts = 0
        self._start_ns = 0

    async def begin(self, index: int, number: int, server_ts: int, producer_ts: int) -> None:
        if not self.edge.watched(self.stream_id):
            self.number = None
            return
        self.number, self.index = number, index
        self._blocks, self._counts, self._sent, self._parts, self._start_ns = 0, {}, {}, 0, 0
        await self.edge.begin(self.stream_id, number, server_ts=server_ts, producer_ts=producer_ts)

    async def abandon(self) -> None:
        if self.number is not None:
            await self.edge.abandon(self.stream_id, self.number)
        self.number = None

    async def progress(self, parser: mkvstream.MkvStreamParser) -> None:
        """Publish every part the cluster being received completes by now."""
        current = parser.in_progress()
        header = parser.header
        if current is None or self.number is None or header is None or current[0] != self.index:
            return
        video = {t.number for t in header.tracks if t.track_type == VIDEO}
        while self._parts < MAX_PARTS - 1:
            blocks = current[2]
            times = [(i, b.ms) for i, b in enumerate(blocks) if b.track in video]
            times = [(i, ms) for i, ms in times if i >= self._blocks]
            k = cut_index([ms for _, ms in times], 0)
            if k is None:
                return
            cut = times[k][0]
            ready = parser.snapshot(cut)
            if ready is None:
                return
            number = self.number
            try:
                parsed = await asyncio.to_thread(_read, ready)
            except ValueError as exc:
                logger.debug("live parts of fragment %d stop: %s", number, exc)
                await self.abandon()
                return
            if self.number != number:
                return
            first = min(b.ms for b in blocks[:cut] if b.track in video)
            end_ns = (blocks[cut].ms - first) * 1_000_000
            vt = parsed.video()
            await self._publish(vt.number if vt else None, self._take(parsed), end_ns, last=False)
            self._blocks = cut

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
            index=self._parts,
            frames=new,
            start_ns=start,
            end_ns=max(end_ns, start),
            independent=bool(lead) and lead[0].key,
            published_ms=clock.now_ms(),
        )
        self._parts += 1
        self._start_ns = part.end_ns
        await self.edge.publish(self.stream_id, self.number, part, last=last)

    async def complete(self, data: bytes, duration_ms: int) -> None:
        """The fragment will be stored as ``data``: publish its last parts (cut by the same
        rule, when the fragment arrived faster than its parts were due), or withdraw the parts
        if they are not exactly its first frames. ``stored`` or ``abandon`` follows."""
        number = self.number
        if number is None:
            return
        try:
            parsed = await asyncio.to_thread(parse_fragment, data)
        except ValueError:
            await self.abandon()
            return
        for track, sent in self._sent.items():
            if parsed.frames.get(track, [])[: len(sent)] != sent:
                logger.warning("live parts of fragment %d differ from it, withdrawn", number)
                await self.abandon()
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

    async def stored(self) -> None:
        """The fragment is stored: its parts are final."""
        if self.number is not None:
            await self.edge.finish(self.stream_id, self.number)
        self.number = None
