"""Matroska fragments: the stored unit of every stream.

A fragment is a self-contained MKV file: EBML header, then a Segment of unknown size holding Info,
Tracks, optional Tags and exactly one Cluster whose Timecode is the fragment's start in
milliseconds. Blocks are SimpleBlocks with timecodes relative to the cluster (int16, so a
fragment spans at most 32.767 s). Because the Segment size is unknown, elements such as GetMedia's
trailing Tags can be appended to a stored fragment without rewriting it.

``read_fragment`` parses whole MKV buffers (ours or a producer's), including unknown-size
Segments and Clusters, into tracks and blocks.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping, Sequence

from . import ebml
from .ebml import float64, master, string, uint

EBML_HEADER = 0x1A45DFA3
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

TRACK_TYPE_VIDEO = 1
TRACK_TYPE_AUDIO = 2
# Matroska's codec ID for H.264 is V_MPEG4/ISO/AVC (what the KVS producer SDKs write and FFmpeg
# reads); some KVS documentation spells it V_MPEG/ISO/AVC, which readers here accept too.
CODEC_H264 = "V_MPEG4/ISO/AVC"
H264_CODEC_IDS = (CODEC_H264, "V_MPEG/ISO/AVC")
CODEC_AAC = "A_AAC"


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
        uint(0x4286, 1),  # EBMLVersion
        uint(0x42F7, 1),  # EBMLReadVersion
        uint(0x42F2, 4),  # EBMLMaxIDLength
        uint(0x42F3, 8),  # EBMLMaxSizeLength
        string(0x4282, "matroska"),  # DocType
        uint(0x4287, 4),  # DocTypeVersion
        uint(0x4285, 2),  # DocTypeReadVersion
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


def _read_track(data: bytes, el: ebml.Element) -> Track:
    fields: dict[str, object] = {}
    for c in ebml.iter_elements(data, el.data_start, el.end):
        if c.id == TRACK_NUMBER:
            fields["number"] = ebml.read_uint(data, c)
        elif c.id == TRACK_UID:
            fields["uid"] = ebml.read_uint(data, c)
        elif c.id == TRACK_TYPE:
            fields["track_type"] = ebml.read_uint(data, c)
        elif c.id == CODEC_ID:
            fields["codec_id"] = ebml.read_string(data, c)
        elif c.id == CODEC_PRIVATE:
            fields["codec_private"] = ebml.read_bytes(data, c)
        elif c.id == TRACK_NAME:
            fields["name"] = ebml.read_string(data, c)
        elif c.id == VIDEO:
            for v in ebml.iter_elements(data, c.data_start, c.end):
                if v.id == PIXEL_WIDTH:
                    fields["width"] = ebml.read_uint(data, v)
                elif v.id == PIXEL_HEIGHT:
                    fields["height"] = ebml.read_uint(data, v)
        elif c.id == AUDIO:
            for a in ebml.iter_elements(data, c.data_start, c.end):
                if a.id == SAMPLING_FREQUENCY:
                    fields["sample_rate"] = ebml.read_float(data, a)
                elif a.id == CHANNELS:
                    fields["channels"] = ebml.read_uint(data, a)
    if "number" not in fields or "codec_id" not in fields:
        raise ValueError("TrackEntry lacks TrackNumber or CodecID")
    return Track(**fields)  # type: ignore[arg-type]


def parse_block(payload: bytes) -> tuple[int, int, bool, bytes]:
    """Parse a (Simple)Block payload → (track, relative timecode, keyframe flag, frame data)."""
    track, n = ebml.read_vint(payload, 0)
    if len(payload) < n + 3:
        raise ValueError("block is truncated")
    relative = int.from_bytes(payload[n : n + 2], "big", signed=True)
    flags = payload[n + 2]
    if flags & 0x06:
        raise ValueError("laced blocks are not supported")
    return track, relative, bool(flags & 0x80), payload[n + 3 :]


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


def read_fragment(data: bytes) -> Fragment:
    """Parse a whole MKV buffer: tracks, every block of every cluster, and tags."""
    pos = 0
    head = ebml.read_header(data, 0)
    if head.id != EBML_HEADER:
        raise ValueError("not an MKV file (no EBML header)")
    pos = head.end
    seg = ebml.read_header(data, pos)
    if seg.id != SEGMENT:
        raise ValueError("no Segment after the EBML header")
    seg_end = len(data) if seg.size == ebml.UNKNOWN_SIZE else min(seg.end, len(data))
    pos = seg.data_start
    scale = 1_000_000
    track_list: list[Track] = []
    blocks: list[Block] = []
    found_tags: dict[str, str] = {}
    first_cluster: int | None = None
    while pos < seg_end:
        el = ebml.read_header(data, pos)
        if el.id == EBML_HEADER:
            break  # a following chunk (GetMedia streams concatenate fragments)
        if el.id == CLUSTER:
            end = seg_end if el.size == ebml.UNKNOWN_SIZE else el.end
            cpos = el.data_start
            tc = 0
            while cpos < end:
                c = ebml.read_header(data, cpos)
                if el.size == ebml.UNKNOWN_SIZE and (c.id in LEVEL1 or c.id == EBML_HEADER):
                    break
                if c.size == ebml.UNKNOWN_SIZE or c.end > len(data):
                    raise ValueError("cluster child is truncated")
                if c.id == TIMECODE:
                    tc = ebml.read_uint(data, c)
                    if first_cluster is None:
                        first_cluster = tc
                elif c.id == SIMPLE_BLOCK:
                    track, rel, key, frame = parse_block(data[c.data_start : c.end])
                    blocks.append(Block(track, tc + rel, frame, key))
                elif c.id == BLOCK_GROUP:
                    ref = False
                    payload = None
                    for g in ebml.iter_elements(data, c.data_start, c.end):
                        if g.id == BLOCK:
                            payload = data[g.data_start : g.end]
                        elif g.id == REFERENCE_BLOCK:
                            ref = True
                    if payload is not None:
                        track, rel, _, frame = parse_block(payload)
                        blocks.append(Block(track, tc + rel, frame, not ref))
                cpos = c.end
            pos = cpos
            continue
        if el.size == ebml.UNKNOWN_SIZE:
            raise ValueError(f"unknown-size element 0x{el.id:X} is not supported here")
        if el.end > len(data):
            raise ValueError("MKV data is truncated")
        if el.id == INFO:
            for c in ebml.iter_elements(data, el.data_start, el.end):
                if c.id == TIMECODE_SCALE:
                    scale = ebml.read_uint(data, c)
        elif el.id == TRACKS:
            for c in ebml.iter_elements(data, el.data_start, el.end):
                if c.id == TRACK_ENTRY:
                    track_list.append(_read_track(data, c))
        elif el.id == TAGS:
            _read_tags(data, el, found_tags)
        pos = el.end
    if scale != 1_000_000:
        factor = scale / 1_000_000
        blocks = [dataclasses.replace(b, timecode=round(b.timecode * factor)) for b in blocks]
        if first_cluster is not None:
            first_cluster = round(first_cluster * factor)
    return Fragment(
        tracks=tuple(track_list),
        blocks=tuple(blocks),
        cluster_timecode=first_cluster or 0,
        timecode_scale=scale,
        tags=found_tags,
    )
