"""Matroska fragments: the stored unit of every stream.

A fragment is a self-contained MKV file: EBML header, then a Segment of unknown size holding Info,
Tracks, optional Tags and exactly one Cluster whose Timecode is the fragment's start in
milliseconds. Blocks are SimpleBlocks with timecodes relative to the cluster (int16, so a
fragment spans at most 32.767 s). Because the Segment size is unknown, elements such as GetMedia's
trailing Tags can be appended to a stored fragment without rewriting it.

This module is the one home of Matroska element IDs and of Matroska reading, shared by
``read_fragment`` here, the PutMedia parser (``mkvstream``) and playback (``playback/mkv.py``) so
that every reader agrees on what a fragment holds: ``read_block_element`` (SimpleBlocks,
BlockGroups, lacing), ``read_track`` (TrackEntry), ``frame_times`` (timing of laced frames) and
``scan_fragment`` (a whole buffer, including unknown-size Segments and Clusters). EBML itself
(vints, element headers) is ``ebml``.
"""

from __future__ import annotations

import dataclasses
import sys
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import NamedTuple

from . import ebml
from .ebml import float64, master, string, uint

EBML_HEADER = 0x1A45DFA3
EBML_VERSION = 0x4286
EBML_READ_VERSION = 0x42F7
EBML_MAX_ID_LENGTH = 0x42F2
EBML_MAX_SIZE_LENGTH = 0x42F3
DOC_TYPE = 0x4282
DOC_TYPE_VERSION = 0x4287
DOC_TYPE_READ_VERSION = 0x4285
SEGMENT = 0x18538067
SEEK_HEAD = 0x114D9B74
INFO = 0x1549A966
TIMECODE_SCALE = 0x2AD7B1
DURATION = 0x4489
MUXING_APP = 0x4D80
WRITING_APP = 0x5741
TRACKS = 0x1654AE6B
TRACK_ENTRY = 0xAE
TRACK_NUMBER = 0xD7
TRACK_UID = 0x73C5
TRACK_TYPE = 0x83
FLAG_LACING = 0x9C
CODEC_ID = 0x86
CODEC_PRIVATE = 0x63A2
CODEC_NAME = 0x258688
TRACK_NAME = 0x536E
DEFAULT_DURATION = 0x23E383
CODEC_DELAY = 0x56AA
SEEK_PRE_ROLL = 0x56BB
VIDEO = 0xE0
PIXEL_WIDTH = 0xB0
PIXEL_HEIGHT = 0xBA
AUDIO = 0xE1
SAMPLING_FREQUENCY = 0xB5
CHANNELS = 0x9F
CLUSTER = 0x1F43B675
TIMECODE = 0xE7
SIMPLE_BLOCK = 0xA3
BLOCK_GROUP = 0xA0
BLOCK = 0xA1
REFERENCE_BLOCK = 0xFB
BLOCK_DURATION = 0x9B
TAGS = 0x1254C367
TAG = 0x7373
TARGETS = 0x63C0
SIMPLE_TAG = 0x67C8
TAG_NAME = 0x45A3
TAG_STRING = 0x4487
CUES = 0x1C53BB6B
CHAPTERS = 0x1043A770
ATTACHMENTS = 0x1941A469
VOID = 0xEC

LEVEL1 = {SEEK_HEAD, INFO, TRACKS, CLUSTER, TAGS, CUES, CHAPTERS, ATTACHMENTS}
# An unknown-size Cluster ends where one of these starts.
END_OF_CLUSTER = LEVEL1 | {EBML_HEADER, SEGMENT}

TRACK_TYPE_VIDEO = 1
TRACK_TYPE_AUDIO = 2
# Matroska's codec ID for H.264 is V_MPEG4/ISO/AVC (what the KVS producer SDKs write and FFmpeg
# reads); some KVS documentation spells it V_MPEG/ISO/AVC, which readers here accept too.
CODEC_H264 = "V_MPEG4/ISO/AVC"
H264_CODEC_IDS = (CODEC_H264, "V_MPEG/ISO/AVC")
CODEC_AAC = "A_AAC"
CODEC_OPUS = "A_OPUS"


@dataclasses.dataclass(frozen=True)
class Track:
    number: int
    codec_id: str
    codec_private: bytes = b""
    track_type: int = TRACK_TYPE_VIDEO
    width: int = 0
    height: int = 0
    sample_rate: float = 0.0
    channels: int = 0
    name: str = ""
    uid: int = 0
    default_duration_ns: int = 0
    codec_delay_ns: int = 0  # Matroska CodecDelay: to subtract from every block timestamp
    seek_pre_roll_ns: int = 0  # Matroska SeekPreRoll: decoding to do before a seek target

    @property
    def is_video(self) -> bool:
        return self.track_type == TRACK_TYPE_VIDEO


@dataclasses.dataclass(frozen=True)
class Block:
    track: int
    timecode: int  # absolute, in milliseconds (cluster timecode + relative timecode)
    data: bytes
    keyframe: bool


@dataclasses.dataclass(frozen=True)
class Fragment:
    """A parsed MKV fragment."""

    tracks: tuple[Track, ...]
    blocks: tuple[Block, ...]
    cluster_timecode: int
    timecode_scale: int = 1_000_000
    tags: Mapping[str, str] = dataclasses.field(default_factory=dict)

    def track(self, number: int) -> Track | None:
        return next((t for t in self.tracks if t.number == number), None)

    @property
    def video(self) -> Track | None:
        return next((t for t in self.tracks if t.is_video), None)


def ebml_header() -> bytes:
    return master(
        EBML_HEADER,
        uint(EBML_VERSION, 1),
        uint(EBML_READ_VERSION, 1),
        uint(EBML_MAX_ID_LENGTH, 4),
        uint(EBML_MAX_SIZE_LENGTH, 8),
        string(DOC_TYPE, "matroska"),
        uint(DOC_TYPE_VERSION, 4),
        uint(DOC_TYPE_READ_VERSION, 2),
    )


def info(duration_ms: float | None = None, app: str = "openkvs") -> bytes:
    children = [uint(TIMECODE_SCALE, 1_000_000), string(MUXING_APP, app), string(WRITING_APP, app)]
    if duration_ms is not None:
        children.append(float64(DURATION, float(duration_ms)))
    return master(INFO, *children)


def track_entry(t: Track) -> bytes:
    children = [
        uint(TRACK_NUMBER, t.number),
        uint(TRACK_UID, t.uid or t.number),
        uint(TRACK_TYPE, t.track_type),
        uint(FLAG_LACING, 0),
        string(CODEC_ID, t.codec_id),
    ]
    if t.name:
        children.append(string(TRACK_NAME, t.name))
    if t.codec_private:
        children.append(ebml.element(CODEC_PRIVATE, t.codec_private))
    if t.default_duration_ns:
        children.append(uint(DEFAULT_DURATION, t.default_duration_ns))
    if t.codec_delay_ns:
        children.append(uint(CODEC_DELAY, t.codec_delay_ns))
    if t.seek_pre_roll_ns:
        children.append(uint(SEEK_PRE_ROLL, t.seek_pre_roll_ns))
    if t.track_type == TRACK_TYPE_VIDEO:
        children.append(master(VIDEO, uint(PIXEL_WIDTH, t.width), uint(PIXEL_HEIGHT, t.height)))
    elif t.track_type == TRACK_TYPE_AUDIO:
        children.append(
            master(AUDIO, float64(SAMPLING_FREQUENCY, t.sample_rate), uint(CHANNELS, t.channels))
        )
    return master(TRACK_ENTRY, *children)


def tracks(ts: Iterable[Track]) -> bytes:
    return master(TRACKS, *(track_entry(t) for t in ts))


def tags(values: Mapping[str, str] | Sequence[tuple[str, str]]) -> bytes:
    """A Tags element with one Tag holding a SimpleTag per (name, value)."""
    items = values.items() if isinstance(values, Mapping) else values
    simple = [master(SIMPLE_TAG, string(TAG_NAME, k), string(TAG_STRING, v)) for k, v in items]
    return master(TAGS, master(TAG, master(TARGETS), *simple))


def simple_block(track: int, relative: int, data: bytes, keyframe: bool) -> bytes:
    if not -32768 <= relative <= 32767:
        raise ValueError(f"block timecode {relative} ms is outside the cluster's int16 range")
    header = bytes([0x80 | track]) + relative.to_bytes(2, "big", signed=True)
    header += bytes([0x80 if keyframe else 0x00])
    return ebml.element(SIMPLE_BLOCK, header + data)


def cluster(timecode: int, blocks: Iterable[Block]) -> bytes:
    body = [uint(TIMECODE, timecode)]
    body += [simple_block(b.track, b.timecode - timecode, b.data, b.keyframe) for b in blocks]
    return master(CLUSTER, *body)


def write_fragment(
    track_list: Sequence[Track],
    blocks: Iterable[Block],
    *,
    timecode: int,
    duration_ms: float | None = None,
    leading_tags: Mapping[str, str] | None = None,
) -> bytes:
    """Serialise one fragment. ``blocks`` must be in timecode order (per track)."""
    for t in track_list:
        if not 0 < t.number < 127:
            raise ValueError("track numbers must be 1..126")
    parts = [
        ebml_header(),
        ebml.unknown_size_header(SEGMENT),
        info(duration_ms),
        tracks(track_list),
    ]
    if leading_tags:
        parts.append(tags(leading_tags))
    parts.append(cluster(timecode, blocks))
    return b"".join(parts)


# -- reading -----------------------------------------------------------------------------------

LACING_NONE, LACING_XIPH, LACING_FIXED, LACING_EBML = 0, 1, 2, 3

Span = tuple[int, int]  # [start, end) of one frame in the buffer it was read from
# A SimpleBlock or BlockGroup as read: (track, timecode relative to its cluster, keyframe, laced,
# frame spans, BlockDuration or None), times in the Segment's timecode units.
BlockData = tuple[int, int, bool, bool, tuple[Span, ...], int | None]
# A block of ``scan_fragment``: (track, absolute timecode, keyframe, frame spans, BlockDuration
# or None), times in the Segment's timecode units.
RawBlock = tuple[int, int, bool, tuple[Span, ...], int | None]


def to_ms(units: int, scale: int) -> int:
    """Timecode units of ``scale`` nanoseconds → milliseconds, rounded half up."""
    if scale == 1_000_000:
        return units
    return (units * scale + 500_000) // 1_000_000


def lace_sizes(data: ebml.Buffer, pos: int, end: int, lacing: int) -> tuple[list[int], int]:
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
    elif lacing == LACING_EBML and count > 1:  # one frame: no sizes, it fills the block
        first, n = ebml.read_vint(data, pos, end=end, unknown=False)
        pos += n
        sizes.append(first)
        for _ in range(count - 2):
            delta, n = ebml.read_signed_vint(data, pos, end)
            pos += n
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


def read_block(data: ebml.Buffer, start: int, end: int) -> tuple[int, int, int, tuple[Span, ...]]:
    """The (Simple)Block payload ``data[start:end]`` → (track, relative timecode, flags, frame
    spans). A laced block (``flags & 0x06``) gives one span per frame."""
    track, n = ebml.read_vint(data, start, end=end, unknown=False)
    pos = start + n
    if pos + 3 > end:
        raise ValueError("block is truncated")
    relative = int.from_bytes(data[pos : pos + 2], "big", signed=True)
    flags = data[pos + 2]
    pos += 3
    lacing = (flags >> 1) & 3
    if lacing == LACING_NONE:
        return track, relative, flags, ((pos, end),)
    sizes, pos = lace_sizes(data, pos, end, lacing)
    frames = []
    for size in sizes:
        frames.append((pos, pos + size))
        pos += size
    return track, relative, flags, tuple(frames)


def read_block_element(data: ebml.Buffer, eid: int, start: int, end: int) -> BlockData | None:
    """A SimpleBlock or BlockGroup whose payload is ``data[start:end]``; None for a BlockGroup
    without a Block. A Block in a BlockGroup is a keyframe when no ReferenceBlock is there."""
    if eid == SIMPLE_BLOCK:
        track, relative, flags, frames = read_block(data, start, end)
        return track, relative, bool(flags & 0x80), bool(flags & 0x06), frames, None
    block: Span | None = None
    referenced = False
    duration: int | None = None
    for c in ebml.iter_elements(data, start, end):
        if c.id == BLOCK:
            block = (c.data_start, c.end)
        elif c.id == REFERENCE_BLOCK:
            referenced = True
        elif c.id == BLOCK_DURATION:
            duration = ebml.read_uint(data, c)
    if block is None:
        return None
    track, relative, flags, frames = read_block(data, block[0], block[1])
    return track, relative, not referenced, bool(flags & 0x06), frames, duration


def parse_block(payload: bytes) -> tuple[int, int, bool, bytes]:
    """Parse an unlaced (Simple)Block payload → (track, relative timecode, keyframe flag, frame
    data). Raises ``ValueError`` for a laced block (``read_block`` reads those)."""
    track, relative, flags, frames = read_block(payload, 0, len(payload))
    if flags & 0x06:
        raise ValueError("laced blocks are not supported")
    return track, relative, bool(flags & 0x80), payload[frames[0][0] :]


# What a TrackEntry's children, and those of its Video and Audio elements, set: (Track field,
# reader).
_Field = tuple[str, Callable[[ebml.Buffer, ebml.Element], object]]
_TRACK_FIELDS: dict[int, _Field] = {
    TRACK_NUMBER: ("number", ebml.read_uint),
    TRACK_UID: ("uid", ebml.read_uint),
    TRACK_TYPE: ("track_type", ebml.read_uint),
    CODEC_ID: ("codec_id", ebml.read_string),
    CODEC_PRIVATE: ("codec_private", ebml.read_bytes),
    TRACK_NAME: ("name", ebml.read_string),
    DEFAULT_DURATION: ("default_duration_ns", ebml.read_uint),
    CODEC_DELAY: ("codec_delay_ns", ebml.read_uint),
    SEEK_PRE_ROLL: ("seek_pre_roll_ns", ebml.read_uint),
}
_TRACK_SETTINGS: dict[int, _Field] = {
    PIXEL_WIDTH: ("width", ebml.read_uint),
    PIXEL_HEIGHT: ("height", ebml.read_uint),
    SAMPLING_FREQUENCY: ("sample_rate", ebml.read_float),
    CHANNELS: ("channels", ebml.read_uint),
}


def read_track(data: ebml.Buffer, el: ebml.Element) -> Track:
    """A TrackEntry. A missing TrackType reads as 0 (neither video nor audio)."""
    fields: dict[str, object] = {"track_type": 0}
    for c in ebml.iter_elements(data, el.data_start, el.end):
        if c.id == VIDEO or c.id == AUDIO:
            for v in ebml.iter_elements(data, c.data_start, c.end):
                _set_field(data, v, _TRACK_SETTINGS, fields)
        else:
            _set_field(data, c, _TRACK_FIELDS, fields)
    if "number" not in fields or "codec_id" not in fields:
        raise ValueError("TrackEntry lacks TrackNumber or CodecID")
    return Track(**fields)  # type: ignore[arg-type]


def _set_field(
    data: ebml.Buffer, el: ebml.Element, table: Mapping[int, _Field], fields: dict[str, object]
) -> None:
    field = table.get(el.id)
    if field is not None:
        name, read = field
        fields[name] = read(data, el)


def _read_tags(data: bytes, el: ebml.Element, out: dict[str, str]) -> None:
    for tag in ebml.iter_elements(data, el.data_start, el.end):
        if tag.id != TAG:
            continue
        for st in ebml.iter_elements(data, tag.data_start, tag.end):
            if st.id != SIMPLE_TAG:
                continue
            name = value = None
            for f in ebml.iter_elements(data, st.data_start, st.end):
                if f.id == TAG_NAME:
                    name = ebml.read_string(data, f)
                elif f.id == TAG_STRING:
                    value = ebml.read_string(data, f)
            if name is not None and value is not None:
                out[name] = value


class ClusterSpan(NamedTuple):
    timecode: int | None  # the Cluster's Timecode, None when it has none
    first: int  # its blocks are ``Layout.blocks[first:last]``
    last: int


@dataclasses.dataclass(frozen=True)
class Layout:
    """What ``scan_fragment`` found: parsed header elements and every block, unconverted."""

    timecode_scale: int
    tracks: tuple[Track, ...]
    blocks: list[RawBlock]
    clusters: tuple[ClusterSpan, ...]
    tags: tuple[ebml.Element, ...]  # Tags elements, unparsed


def scan_fragment(data: bytes, *, max_blocks: int | None = None) -> Layout:
    """Walk a whole MKV buffer: the EBML header, then the first Segment's Info, Tracks, Tags and
    Clusters (known or unknown size) up to its end or to the next EBML header (GetMedia streams
    concatenate fragments). A known-size Segment longer than ``data`` is read up to its end.

    Raises ``ValueError`` on malformed data, or when there are more than ``max_blocks`` blocks.
    """
    size = len(data)
    if not size:
        raise ValueError("not an EBML document (no data)")
    eid, length, pos = ebml.header_at(data, 0)
    if eid != EBML_HEADER:
        raise ValueError("not an EBML document (no EBML header)")
    while eid != SEGMENT:
        if length == ebml.UNKNOWN_SIZE or pos + length > size:
            raise ValueError(f"element 0x{eid:X} overruns its parent")
        pos += length
        if pos >= size:
            raise ValueError("no Segment element")
        eid, length, pos = ebml.header_at(data, pos)
    seg_end = size if length == ebml.UNKNOWN_SIZE else min(pos + length, size)
    limit = sys.maxsize if max_blocks is None else max_blocks
    scale = 1_000_000
    tracks: list[Track] = []
    blocks: list[RawBlock] = []
    clusters: list[ClusterSpan] = []
    tags: list[ebml.Element] = []
    while pos < seg_end:
        start = pos
        eid, length, pos = ebml.header_at(data, pos, seg_end)
        if eid == EBML_HEADER:
            break
        if eid == CLUSTER:
            first = len(blocks)
            if length == ebml.UNKNOWN_SIZE:
                timecode, pos = _read_cluster(data, pos, seg_end, True, blocks, limit)
            elif pos + length > seg_end:
                raise ValueError("a Cluster overruns the Segment")
            else:
                timecode, pos = _read_cluster(data, pos, pos + length, False, blocks, limit)
            clusters.append(ClusterSpan(timecode, first, len(blocks)))
            continue
        if length == ebml.UNKNOWN_SIZE:
            raise ValueError(f"unknown-size element 0x{eid:X} is not supported here")
        el = ebml.Element(eid, start, pos, length)
        if el.end > seg_end:
            raise ValueError(f"element 0x{eid:X} overruns the Segment")
        if eid == INFO:
            for c in ebml.iter_elements(data, el.data_start, el.end):
                if c.id == TIMECODE_SCALE:
                    scale = ebml.read_uint(data, c) or 1_000_000
        elif eid == TRACKS:
            for c in ebml.iter_elements(data, el.data_start, el.end):
                if c.id == TRACK_ENTRY:
                    tracks.append(read_track(data, c))
        elif eid == TAGS:
            tags.append(el)
        pos = el.end
    return Layout(scale, tuple(tracks), blocks, tuple(clusters), tuple(tags))


def _read_cluster(
    data: bytes, pos: int, end: int, unknown: bool, out: list[RawBlock], limit: int
) -> tuple[int | None, int]:
    """Append the blocks of the Cluster body starting at ``pos`` to ``out``; return (its
    Timecode or None, where it ends). An ``unknown``-size Cluster ends at the next level-1
    element or at ``end``."""
    timecode: int | None = None
    base = 0
    while pos < end:
        eid, length, body = ebml.header_at(data, pos, end)
        if unknown and eid in END_OF_CLUSTER:
            return timecode, pos
        stop = body + length
        if length == ebml.UNKNOWN_SIZE or stop > end:
            raise ValueError(f"element 0x{eid:X} does not fit in its Cluster")
        if eid == SIMPLE_BLOCK or eid == BLOCK_GROUP:
            block = read_block_element(data, eid, body, stop)
            if block is not None:
                track, relative, keyframe, _, frames, duration = block
                out.append((track, base + relative, keyframe, frames, duration))
                if len(out) > limit:
                    raise ValueError("fragment has too many blocks")
        elif eid == TIMECODE:
            timecode = base = ebml.uint_at(data, body, stop)
        pos = stop
    return timecode, pos


@dataclasses.dataclass(frozen=True)
class BlockRef:
    """One (Simple)Block of a cluster; ``frames`` are spans of the buffer it was read from."""

    track: int
    ms: int  # absolute presentation time in milliseconds
    keyframe: bool
    frames: tuple[Span, ...]
    duration_ms: int | None = None


def frame_times(blocks: Sequence[BlockRef], default_ns: Mapping[int, int]) -> list[list[int]]:
    """Presentation times of every frame of one cluster's blocks. Laced frames are spread over
    their block's span: the track's DefaultDuration (``default_ns``), else the gap to the
    track's next block, else the BlockDuration, else the track's previous step."""
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
        default = default_ns.get(b.track, 0)
        nxt = nexts[idx]
        if default:
            step = default / 1_000_000
        elif nxt is not None and nxt > b.ms:
            step = (nxt - b.ms) / n
        elif b.duration_ms:
            step = b.duration_ms / n
        else:
            step = last_step.get(b.track, 0.0)
        last_step[b.track] = step
        times.append([b.ms + round(k * step) for k in range(n)])
    return times


def read_fragment(data: bytes) -> Fragment:
    """Parse a whole MKV buffer: tracks, every frame of every cluster, and tags.

    Laced blocks give one ``Block`` per frame, timed as the PutMedia parser stores them
    (``frame_times``), so a producer's file and its stored fragments read the same.
    """
    layout = scan_fragment(data)
    scale = layout.timecode_scale
    blocks: list[Block] = []
    default_ns: dict[int, int] | None = None
    for cluster in layout.clusters:
        raw = layout.blocks[cluster.first : cluster.last]
        if all(len(frames) == 1 for _, _, _, frames, _ in raw):
            for track, timecode, keyframe, ((s, e),), _ in raw:
                blocks.append(Block(track, to_ms(timecode, scale), data[s:e], keyframe))
            continue
        if default_ns is None:
            default_ns = {t.number: t.default_duration_ns for t in layout.tracks}
        refs = [
            BlockRef(t, to_ms(tc, scale), k, f, None if d is None else to_ms(d, scale))
            for t, tc, k, f, d in raw
        ]
        for b, times in zip(refs, frame_times(refs, default_ns), strict=True):
            for (s, e), ms in zip(b.frames, times, strict=True):
                blocks.append(Block(b.track, ms, data[s:e], b.keyframe))
    found_tags: dict[str, str] = {}
    for el in layout.tags:
        _read_tags(data, el, found_tags)
    first = next((c.timecode for c in layout.clusters if c.timecode is not None), None)
    return Fragment(
        tracks=layout.tracks,
        blocks=tuple(blocks),
        cluster_timecode=0 if first is None else to_ms(first, scale),
        timecode_scale=scale,
        tags=found_tags,
    )
