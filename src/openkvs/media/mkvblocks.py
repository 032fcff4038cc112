"""Blocks of a buffered Matroska Cluster: its duration, and the rewrite of a producer's Cluster
into the stored fragment format of ``mkv.py``.

Used by ``mkvstream`` (the PutMedia parser). Clusters made only of unlaced SimpleBlocks in
milliseconds are kept byte for byte; laced blocks, BlockGroups and other timecode scales are
rewritten as one SimpleBlock per frame, so every stored fragment reads the same way. Block and
lace parsing and the timing of laced frames are ``mkv.read_block_element`` and
``mkv.frame_times``, shared with every other Matroska reader.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

from . import ebml, mkv
from .mkv import BlockRef


@dataclasses.dataclass(frozen=True)
class TrackInfo:
    number: int
    codec_id: str
    track_type: int
    default_duration_ns: int = 0


@dataclasses.dataclass(frozen=True)
class StreamHeader:
    tracks: tuple[TrackInfo, ...]
    tracks_element: bytes  # the producer's Tracks element, byte for byte
    timecode_scale: int  # nanoseconds per timecode unit

    def track(self, number: int) -> TrackInfo | None:
        return next((t for t in self.tracks if t.number == number), None)


def fragment_duration(header: StreamHeader, blocks: Sequence[BlockRef], cluster_ms: int) -> int:
    """Cluster duration: the end of its last frame (estimated per track) minus its start."""
    end = cluster_ms
    by_track: dict[int, list[BlockRef]] = {}
    for b in blocks:
        by_track.setdefault(b.track, []).append(b)
    for number, tb in by_track.items():
        tb.sort(key=lambda b: b.ms)
        last = tb[-1]
        track = header.track(number)
        if last.duration_ms is not None:
            est = last.duration_ms
        elif track is not None and track.default_duration_ns:
            est = round(track.default_duration_ns / 1_000_000 * len(last.frames))
        elif len(tb) > 1:
            est = last.ms - tb[-2].ms
        else:
            est = 0
        end = max(end, last.ms + max(est, 0))
    return max(0, end - cluster_ms)


def frame_times(header: StreamHeader, blocks: Sequence[BlockRef]) -> list[list[int]]:
    """Presentation times of every frame; laced frames are spread over their block's span."""
    return mkv.frame_times(blocks, {t.number: t.default_duration_ns for t in header.tracks})


def rewrap(
    header: StreamHeader,
    body: bytearray,
    blocks: Sequence[BlockRef],
    *,
    timecode_ms: int,
    duration_ms: int,
    tags: bytes,
    rebuild: bool,
) -> bytes:
    """A stored fragment: EBML header, unknown-size Segment, Info, the producer's Tracks and
    Tags, one known-size Cluster. ``body`` holds the Cluster's block elements as received; with
    ``rebuild`` they are rewritten as one SimpleBlock per frame, in milliseconds."""
    timecode = ebml.uint(mkv.TIMECODE, timecode_ms)
    if rebuild:
        out = bytearray()
        times = frame_times(header, blocks)
        with memoryview(body) as mv:
            for b, ts in zip(blocks, times, strict=True):
                for (start, end), ms in zip(b.frames, ts, strict=True):
                    out += mkv.simple_block(
                        b.track, ms - timecode_ms, bytes(mv[start:end]), b.keyframe
                    )
        body = out
    cluster_head = ebml.encode_id(mkv.CLUSTER) + ebml.encode_size(len(timecode) + len(body))
    return b"".join(
        (
            mkv.ebml_header(),
            ebml.unknown_size_header(mkv.SEGMENT),
            mkv.info(float(duration_ms)),
            header.tracks_element,
            tags,
            cluster_head,
            timecode,
            body,
        )
    )
