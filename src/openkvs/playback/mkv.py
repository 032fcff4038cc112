"""Read one stored fragment (a self-contained MKV file) into tracks and samples.

Only what playback needs is kept: each track's number, type, codec id, codec private data and
geometry or sample rate, and for every frame its bytes, its keyframe flag and its presentation
time in nanoseconds *relative to the start of the fragment* (the earliest video frame, or the
earliest frame when there is no video). Absolute cluster timecodes are never trusted: producers
may send them relative to anything; the fragment's place on the timeline comes from its metadata.

Pure bytes in, dataclasses out; malformed input raises ``ValueError`` with a precise message.
"""

from __future__ import annotations

import dataclasses
import struct

EBML = 0x1A45DFA3
SEGMENT = 0x18538067
INFO = 0x1549A966
TIMECODE_SCALE = 0x2AD7B1
TRACKS = 0x1654AE6B
TRACK_ENTRY = 0xAE
TRACK_NUMBER = 0xD7
TRACK_TYPE = 0x83
CODEC_ID = 0x86
CODEC_PRIVATE = 0x63A2
DEFAULT_DURATION = 0x23E383
CODEC_DELAY = 0x56AA
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

# Level-1 elements: an unknown-sized Cluster ends where one of these (or another Cluster) starts.
_LEVEL1 = {
    0x114D9B74,  # SeekHead
    INFO,
    TRACKS,
    CLUSTER,
    0x1C53BB6B,  # Cues
    0x1941A469,  # Attachments
    0x1043A770,  # Chapters
    0x1254C367,  # Tags
}
_UNKNOWN = -1
MAX_FRAMES = 100_000

VIDEO_TRACK = 1
AUDIO_TRACK = 2


@dataclasses.dataclass(frozen=True)
class Track:
    number: int
    kind: int  # 1 video, 2 audio (Matroska TrackType)
    codec_id: str
    codec_private: bytes
    width: int = 0
    height: int = 0
    sample_rate: int = 0
    channels: int = 0
    default_duration_ns: int = 0
    codec_delay_ns: int = 0  # subtracted from every block timestamp (Matroska CodecDelay)

    @property
    def is_video(self) -> bool:
        return self.kind == VIDEO_TRACK

    @property
    def is_audio(self) -> bool:
        return self.kind == AUDIO_TRACK


@dataclasses.dataclass(frozen=True)
class Frame:
    pts_ns: int  # presentation time relative to the fragment start
    data: bytes
    key: bool


@dataclasses.dataclass(frozen=True)
class ParsedFragment:
    tracks: dict[int, Track]
    frames: dict[int, list[Frame]]  # by track number, in stored (decode) order

    @property
    def size(self) -> int:
        return sum(len(f.data) for fs in self.frames.values() for f in fs) + 512

    def video(self) -> Track | None:
        return next((t for t in self.tracks.values() if t.is_video), None)

    def audio(self) -> Track | None:
        return next((t for t in self.tracks.values() if t.is_audio), None)


def _vint(buf: bytes, pos: int, end: int, *, keep_marker: bool) -> tuple[int, int]:
    if pos >= end:
        raise ValueError(f"truncated EBML at offset {pos}")
    first = buf[pos]
    if first == 0:
        raise ValueError(f"invalid EBML length marker at offset {pos}")
    length = 1
    mask = 0x80
    while not first & mask:
        mask >>= 1
        length += 1
    if pos + length > end:
        raise ValueError(f"truncated EBML at offset {pos}")
    value = first if keep_marker else first & (mask - 1)
    for b in buf[pos + 1 : pos + length]:
        value = (value << 8) | b
    if not keep_marker and value == (1 << (7 * length)) - 1:
        value = _UNKNOWN
    return value, pos + length


def _elements(buf: bytes, pos: int, end: int) -> list[tuple[int, int, int]]:
    """(id, payload start, payload end) of the elements in ``buf[pos:end]``."""
    out: list[tuple[int, int, int]] = []
    while pos < end:
        eid, pos = _vint(buf, pos, end, keep_marker=True)
        size, pos = _vint(buf, pos, end, keep_marker=False)
        if size == _UNKNOWN:
            out.append((eid, pos, _UNKNOWN))
            return out
        if pos + size > end:
            raise ValueError(f"element 0x{eid:X} at offset {pos} overruns its parent")
        out.append((eid, pos, pos + size))
        pos += size
    return out


def _uint(buf: bytes, start: int, end: int) -> int:
    if end - start > 8:
        raise ValueError("unsigned integer element longer than 8 bytes")
    return int.from_bytes(buf[start:end], "big") if end > start else 0


def _float(buf: bytes, start: int, end: int) -> float:
    n = end - start
    if n == 4:
        return float(struct.unpack(">f", buf[start:end])[0])
    if n == 8:
        return float(struct.unpack(">d", buf[start:end])[0])
    if n == 0:
        return 0.0
    raise ValueError(f"float element of {n} bytes")


def _track(buf: bytes, start: int, end: int) -> Track:
    fields: dict[str, object] = {}
    for eid, s, e in _elements(buf, start, end):
        if e == _UNKNOWN:
            raise ValueError("unknown-sized element inside TrackEntry")
        if eid == TRACK_NUMBER:
            fields["number"] = _uint(buf, s, e)
        elif eid == TRACK_TYPE:
            fields["kind"] = _uint(buf, s, e)
        elif eid == CODEC_ID:
            fields["codec_id"] = buf[s:e].rstrip(b"\0").decode("ascii", "replace")
        elif eid == CODEC_PRIVATE:
            fields["codec_private"] = bytes(buf[s:e])
        elif eid == DEFAULT_DURATION:
            fields["default_duration_ns"] = _uint(buf, s, e)
        elif eid == CODEC_DELAY:
            fields["codec_delay_ns"] = _uint(buf, s, e)
        elif eid == VIDEO:
            for vid, vs, ve in _elements(buf, s, e):
                if vid == PIXEL_WIDTH:
                    fields["width"] = _uint(buf, vs, ve)
                elif vid == PIXEL_HEIGHT:
                    fields["height"] = _uint(buf, vs, ve)
        elif eid == AUDIO:
            for aid, as_, ae in _elements(buf, s, e):
                if aid == SAMPLING_FREQUENCY:
                    fields["sample_rate"] = int(round(_float(buf, as_, ae)))
                elif aid == CHANNELS:
                    fields["channels"] = _uint(buf, as_, ae)
    if "number" not in fields or "codec_id" not in fields:
        raise ValueError("TrackEntry without TrackNumber or CodecID")
    fields.setdefault("kind", 0)
    fields.setdefault("codec_private", b"")
    return Track(**fields)  # type: ignore[arg-type]


def _lace_sizes(buf: bytes, pos: int, end: int, lacing: int) -> tuple[list[int], int]:
    """Frame sizes of a laced block whose lace header starts at ``pos``."""
    if pos >= end:
        raise ValueError("truncated lace header")
    count = buf[pos] + 1
    pos += 1
    sizes: list[int] = []
    if lacing == 1:  # Xiph
        for _ in range(count - 1):
            size = 0
            while True:
                if pos >= end:
                    raise ValueError("truncated Xiph lace")
                b = buf[pos]
                pos += 1
                size += b
                if b != 255:
                    break
            sizes.append(size)
    elif lacing == 3:  # EBML
        first, pos = _vint(buf, pos, end, keep_marker=False)
        sizes.append(first)
        for _ in range(count - 2):
            start = pos
            raw, pos = _vint(buf, pos, end, keep_marker=False)
            length = pos - start
            bias = (1 << (7 * length - 1)) - 1
            sizes.append(sizes[-1] + raw - bias)
    elif lacing == 2:  # fixed
        total = end - pos
        if total % count:
            raise ValueError("fixed-size lace does not divide the block")
        return [total // count] * count, pos
    remaining = end - pos - sum(sizes)
    sizes.append(remaining)
    if any(s < 0 for s in sizes):
        raise ValueError("negative lace size")
    return sizes, pos


def _block(
    buf: bytes, start: int, end: int, cluster_tc: int, key_hint: bool | None
) -> tuple[int, int, list[bytes], bool]:
    """(track, absolute timecode, frames, keyframe) of a SimpleBlock or Block."""
    track, pos = _vint(buf, start, end, keep_marker=False)
    if pos + 3 > end:
        raise ValueError("truncated block header")
    rel = struct.unpack(">h", buf[pos : pos + 2])[0]
    flags = buf[pos + 2]
    pos += 3
    key = bool(flags & 0x80) if key_hint is None else key_hint
    lacing = (flags >> 1) & 3
    if lacing == 0:
        return track, cluster_tc + rel, [bytes(buf[pos:end])], key
    sizes, pos = _lace_sizes(buf, pos, end, lacing)
    frames = []
    for size in sizes:
        frames.append(bytes(buf[pos : pos + size]))
        pos += size
    if pos != end:
        raise ValueError("lace sizes do not match the block size")
    return track, cluster_tc + rel, frames, key


def parse_fragment(data: bytes) -> ParsedFragment:
    """Parse one MKV fragment. Raises ValueError when it is not a usable fragment."""
    buf = memoryview(data).tobytes() if not isinstance(data, bytes) else data
    end = len(buf)
    top = _elements(buf, 0, end)
    if not top or top[0][0] != EBML:
        raise ValueError("not an EBML document")
    segment = next((t for t in top if t[0] == SEGMENT), None)
    if segment is None:
        raise ValueError("no Segment element")
    seg_start, seg_end = segment[1], segment[2] if segment[2] != _UNKNOWN else end
    scale = 1_000_000
    tracks: dict[int, Track] = {}
    raw: list[tuple[int, int, list[bytes], bool]] = []
    pos = seg_start
    while pos < seg_end:
        eid, pos2 = _vint(buf, pos, seg_end, keep_marker=True)
        size, body = _vint(buf, pos2, seg_end, keep_marker=False)
        if size == _UNKNOWN:
            if eid != CLUSTER:
                raise ValueError(f"unknown-sized element 0x{eid:X} in Segment")
            pos = _cluster(buf, body, seg_end, raw, unknown=True)
            continue
        stop = body + size
        if stop > seg_end:
            raise ValueError(f"element 0x{eid:X} overruns the Segment")
        if eid == INFO:
            for iid, s, e in _elements(buf, body, stop):
                if iid == TIMECODE_SCALE:
                    scale = _uint(buf, s, e) or 1_000_000
        elif eid == TRACKS:
            for tid, s, e in _elements(buf, body, stop):
                if tid == TRACK_ENTRY and e != _UNKNOWN:
                    track = _track(buf, s, e)
                    tracks[track.number] = track
        elif eid == CLUSTER:
            _cluster(buf, body, stop, raw, unknown=False)
        pos = stop
    if not tracks:
        raise ValueError("fragment has no Tracks")
    return _assemble(tracks, raw, scale)


def _cluster(
    buf: bytes, pos: int, end: int, out: list[tuple[int, int, list[bytes], bool]], *, unknown: bool
) -> int:
    """Collect a Cluster's blocks; return where it ends."""
    tc = 0
    while pos < end:
        eid, pos2 = _vint(buf, pos, end, keep_marker=True)
        if unknown and eid in _LEVEL1:
            return pos
        size, body = _vint(buf, pos2, end, keep_marker=False)
        if size == _UNKNOWN or body + size > end:
            raise ValueError(f"bad size for element 0x{eid:X} in Cluster")
        stop = body + size
        if eid == TIMECODE:
            tc = _uint(buf, body, stop)
        elif eid == SIMPLE_BLOCK:
            out.append(_block(buf, body, stop, tc, None))
        elif eid == BLOCK_GROUP:
            block = None
            referenced = False
            for gid, s, e in _elements(buf, body, stop):
                if gid == BLOCK:
                    block = (s, e)
                elif gid == REFERENCE_BLOCK:
                    referenced = True
            if block is not None:
                out.append(_block(buf, block[0], block[1], tc, not referenced))
        if len(out) > MAX_FRAMES:
            raise ValueError("fragment has too many blocks")
        pos = stop
    return pos


def _lace_step_ns(track: Track) -> int:
    if track.default_duration_ns:
        return track.default_duration_ns
    if track.is_audio and track.sample_rate:
        return 1024 * 1_000_000_000 // track.sample_rate
    return 0


def _assemble(
    tracks: dict[int, Track], raw: list[tuple[int, int, list[bytes], bool]], scale: int
) -> ParsedFragment:
    frames: dict[int, list[Frame]] = {n: [] for n in tracks}

    def when(track: int, tc: int) -> int:
        return tc * scale - tracks[track].codec_delay_ns

    known = [(track, tc) for track, tc, _, _ in raw if track in tracks]
    video = [when(n, tc) for n, tc in known if tracks[n].is_video]
    times = video or [when(n, tc) for n, tc in known]
    base = min(times) if times else 0
    for track, tc, datas, key in raw:
        info = tracks.get(track)
        if info is None:
            continue
        step = _lace_step_ns(info)
        t0 = when(track, tc) - base
        for i, payload in enumerate(datas):
            frames[track].append(Frame(t0 + i * step, payload, key or not info.is_video))
    return ParsedFragment(tracks, frames)
