"""Blocks of a buffered Matroska Cluster: lace decoding, frame timing, and the rewrite of a
producer's Cluster into the stored fragment format of ``mkv.py``.

Used by ``mkvstream`` (the PutMedia parser). Clusters made only of unlaced SimpleBlocks in
milliseconds are kept byte for byte; laced blocks, BlockGroups and other timecode scales are
rewritten as one SimpleBlock per frame, so every stored fragment reads the same way.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

from . import ebml, mkv

LACING_NONE, LACING_XIPH, LACING_FIXED, LACING_EBML = 0, 1, 2, 3


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


@dataclasses.dataclass(frozen=True)
class BlockRef:
    """One (Simple)Block of a buffered cluster; ``frames`` are spans of the cluster body."""

    track: int
    ms: int  # absolute presentation time in milliseconds
    keyframe: bool
    frames: tuple[tuple[int, int], ...]
    duration_ms: int | None = None


def vint_at(data: bytes | bytearray | memoryview, pos: int, end: int) -> tuple[int, int]:
    if pos >= end:
        raise ValueError("block is truncated")
    first = data[pos]
    if first == 0:
        raise ValueError("invalid vint in block")
    length = 9 - first.bit_length()
    if pos + length > end:
        raise ValueError("block is truncated")
    value = int.from_bytes(data[pos : pos + length], "big") & ((1 << (7 * length)) - 1)
    return value, length


def lace_sizes(data: bytearray, pos: int, end: int, lacing: int) -> tuple[list[int], int]:
    """Frame sizes of a laced block (lace header at ``pos``); returns (sizes, first frame pos)."""
    if pos >= end:
        raise ValueError("laced block is truncated")
    count = data[pos] + 1
    pos += 1
    sizes: list[int] = []
    if lacing == LACING_XIPH:
        for _ in range(count - 1):
            size = 0
            while True:
                if pos >= end:
                    raise ValueError("Xiph lace header is truncated")
                b = data[pos]
                pos += 1
                size += b
                if b != 255:
                    break
            sizes.append(size)
    elif lacing == LACING_EBML:
        first, n = vint_at(data, pos, end)
        pos += n
        sizes.append(first)
        for _ in range(count - 2):
            raw, n = vint_at(data, pos, end)
            pos += n
            delta = raw - ((1 << (7 * n - 1)) - 1)
            size = sizes[-1] + delta
            if size < 0:
                raise ValueError("EBML lace size is negative")
            sizes.append(size)
    elif lacing == LACING_FIXED:
        total = end - pos
        if total % count:
            raise ValueError("fixed-size lace does not divide evenly")
        return [total // count] * count, pos
    last = end - pos - sum(sizes)
    if last < 0:
        raise ValueError("lace sizes exceed the block")
    sizes.append(last)
    return sizes, pos


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
    next_ms: dict[int, int | None] = {}
    nexts: list[int | None] = [None] * len(blocks)
    for idx in range(len(blocks) - 1, -1, -1):
        b = blocks[idx]
        nexts[idx] = next_ms.get(b.track)
        next_ms[b.track] = b.ms
    times: list[list[int]] = []
    last_step: dict[int, float] = {}
    for idx, b in enumerate(blocks):
        n = len(b.frames)
        if n == 1:
            times.append([b.ms])
            continue
        track = header.track(b.track)
        nxt = nexts[idx]
        if track is not None and track.default_duration_ns:
            step = track.default_duration_ns / 1_000_000
        elif nxt is not None and nxt > b.ms:
            step = (nxt - b.ms) / n
        elif b.duration_ms:
            step = b.duration_ms / n
        else:
            step = last_step.get(b.track, 0.0)
        last_step[b.track] = step
        times.append([b.ms + round(k * step) for k in range(n)])
    return times


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
