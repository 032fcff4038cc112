"""PutMedia's side of the live edge: cut the fragment being received into LL-HLS parts.

After each chunk of the request body, the blocks of the cluster received so far are looked at;
once the video frames since the last cut span ``PART_CUT_MS``, the cluster is assembled as if it
ended there (``MkvStreamParser.snapshot``, the same rewrite as the stored fragment) and read back
as playback reads a stored fragment, and the new frames form the next part. When the fragment
is stored, its frames are read back once more: the parts must be exactly its first frames (else
they are withdrawn) and the remaining frames form its last part. The parts themselves are made
by ``playback.livecut.PartCutter``, as for WebRTC recordings.
"""

from __future__ import annotations

import asyncio
import logging

from ..media import mkvstream
from ..playback.livecut import PartCutter
from ..playback.liveedge import LiveEdge, cut_index
from ..playback.mkv import ParsedFragment, parse_fragment

logger = logging.getLogger(__name__)
VIDEO = 1


def _read(ready: mkvstream.FragmentReady) -> ParsedFragment:
    return parse_fragment(mkvstream.assemble(ready))


class LiveCutter:
    def __init__(self, edge: LiveEdge, stream_id: int) -> None:
        self.edge = edge
        self.stream_id = stream_id
        self.core = PartCutter(edge, stream_id)
        self.index = -1
        self._blocks = 0  # blocks of the cluster already in published parts

    @property
    def number(self) -> int | None:
        return self.core.number

    async def begin(self, index: int, number: int, server_ts: int, producer_ts: int) -> None:
        self.index, self._blocks = index, 0
        await self.core.begin(number, server_ts=server_ts, producer_ts=producer_ts)

    async def abandon(self) -> None:
        await self.core.abandon()

    async def progress(self, parser: mkvstream.MkvStreamParser) -> None:
        """Publish every part the cluster being received completes by now."""
        current = parser.in_progress()
        header = parser.header
        if current is None or self.number is None or header is None or current[0] != self.index:
            return
        video = {t.number for t in header.tracks if t.track_type == VIDEO}
        while self.core.room:
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
            await self.core.advance(parsed, (blocks[cut].ms - first) * 1_000_000)
            self._blocks = cut

    async def complete(self, data: bytes, duration_ms: int) -> None:
        """The fragment will be stored as ``data``: publish its last parts (cut by the same
        rule, when the fragment arrived faster than its parts were due), or withdraw the parts
        if they are not exactly its first frames. ``stored`` or ``abandon`` follows."""
        if self.number is None:
            return
        try:
            parsed = await asyncio.to_thread(parse_fragment, data)
        except ValueError:
            await self.abandon()
            return
        if not self.core.matches(parsed):
            logger.warning("live parts of fragment %d differ from it, withdrawn", self.number)
            await self.abandon()
            return
        await self.core.close(parsed, duration_ms)

    async def stored(self) -> None:
        """The fragment is stored: its parts are final."""
        await self.core.stored()
