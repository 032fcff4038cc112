"""GetClip: the fragments of a timestamp range remuxed into one progressive MP4.

At most the first ``MAX_FRAGMENTS`` fragments and ``MAX_BYTES`` of stored media go into a clip
(the documented limits); the rest of the range is left out. The sample entries come from the
first fragment; later fragments keep their own SPS/PPS in band, so a change of codec private data
inside the clip still decodes.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

from ..errors import (
    InvalidMediaFrameException,
    ResourceNotFoundException,
    UnsupportedStreamMediaTypeException,
)
from ..records import Fragment, Stream
from .fmp4 import (
    Samples,
    TrackSpec,
    audio_samples,
    drop_before,
    progressive_mp4,
    track_spec,
    video_samples,
)
from .mkv import ParsedFragment, parse_fragment
from .timeline import select, slot_ms, ts_of

if TYPE_CHECKING:
    from .service import PlaybackService

MAX_FRAGMENTS = 200
MAX_BYTES = 100 * 1024 * 1024
_READ_CONCURRENCY = 4


def build_clip(items: list[tuple[bytes, int, int]]) -> bytes:
    """Worker-pool job: ``items`` are (fragment MKV, start ms, slot ms) on the clip timeline."""
    from .service import stream_tracks

    parsed: list[ParsedFragment] = []
    for data, _, _ in items:
        try:
            parsed.append(parse_fragment(data))
        except ValueError as exc:
            raise InvalidMediaFrameException(f"A fragment of the clip is not valid: {exc}") from exc
    video, audio = stream_tracks(parsed[0], audio_only_ok=False)
    assert video is not None
    specs: list[TrackSpec] = [video] + ([audio] if audio is not None else [])
    chunks: list[list[Samples]] = []
    for p, (_, start, slot) in zip(parsed, items, strict=True):
        row: list[Samples] = []
        vtrack = p.tracks.get(video.track_id)
        if vtrack is None or not vtrack.is_video:
            raise UnsupportedStreamMediaTypeException("A fragment of the clip has no video track.")
        try:
            own = track_spec(vtrack)
        except ValueError as exc:
            raise InvalidMediaFrameException(str(exc)) from exc
        row.append(video_samples(own, p.frames[video.track_id], start * 90, (start + slot) * 90))
        if audio is not None:
            frames = p.frames.get(audio.track_id, [])
            row.append(drop_before(audio_samples(audio, frames, start), 0, audio.timescale // 1000))
        chunks.append(row)
    return progressive_mp4(specs, chunks)


async def get_clip(
    svc: PlaybackService, stream: Stream, selector: str, start_ms: int, end_ms: int
) -> bytes:
    fragments = await select(svc.fragments, stream, selector, start_ms, end_ms, MAX_FRAGMENTS)
    if not fragments:
        raise ResourceNotFoundException(
            "No fragments found in the stream for the requested timestamp range."
        )
    kept: list[Fragment] = []
    total = 0
    for f in fragments:
        if kept and total + f.size > MAX_BYTES:
            break
        kept.append(f)
        total += f.size
    gate = asyncio.Semaphore(_READ_CONCURRENCY)

    async def read(f: Fragment) -> bytes:
        async with gate:
            return await svc.read(f)

    blobs = await asyncio.gather(*(read(f) for f in kept))
    origin = ts_of(kept[0], selector)
    items = []
    for i, (f, data) in enumerate(zip(kept, blobs, strict=True)):
        ts = ts_of(f, selector)
        nxt = ts_of(kept[i + 1], selector) if i + 1 < len(kept) else None
        items.append((data, ts - origin, slot_ms(ts, f.duration_ms, nxt)))
    return await svc.run(build_clip, items)
