"""ISO BMFF writing: fragmented MP4 (init + media segments, one track each, for HLS and DASH)
and a progressive MP4 (moov before mdat, all tracks, for GetClip).

Samples are remuxed, never re-encoded. Decode times come from the session timeline, so segment N
ends exactly where segment N+1 starts (``tfdt``) whenever the fragments are contiguous. Video
decode times are the sorted presentation times (composition offsets may be negative, so
``trun``/``ctts`` version 1 are used); audio frames (AAC, or Opus in an ``Opus`` sample entry
with its ``dOps`` box, timescale 48000) keep their stored times.
"""

from __future__ import annotations

import dataclasses
import struct
from collections.abc import Callable, Iterable, Sequence

from ..media import opus
from .codecs import AAC_CODEC_ID, H264_CODEC_IDS, AacConfig, AvcConfig, parse_asc, parse_avcc
from .codecs import with_parameter_sets as _with_ps
from .mkv import Frame, Track

VIDEO_TIMESCALE = 90_000
_MATRIX = struct.pack(">9I", 0x00010000, 0, 0, 0, 0x00010000, 0, 0, 0, 0x40000000)
_FLAGS_SYNC = 0x02000000
_FLAGS_NON_SYNC = 0x01010000


class UnsupportedCodec(ValueError):
    """The track's codec cannot be served (only H.264 video, AAC and Opus audio are)."""


class MissingCodecPrivate(ValueError):
    """The track has no codec private data."""


class InvalidCodecPrivate(ValueError):
    """The track's codec private data cannot be parsed."""


@dataclasses.dataclass(frozen=True)
class TrackSpec:
    """One output track: its sample entry and timescale, derived from a fragment's Track."""

    track_id: int
    is_video: bool
    timescale: int
    codec: str  # RFC 6381 codec string
    width: int
    height: int
    channels: int
    avc: AvcConfig | None
    aac: AacConfig | None
    codec_private: bytes
    opus: opus.OpusHead | None = None

    @property
    def frame_length(self) -> int:
        """Samples of a typical audio frame (an Opus packet's are its own: ``frame_ticks``)."""
        if self.opus is not None:
            return 960
        return self.aac.frame_length if self.aac else 1024

    def frame_ticks(self, data: bytes) -> int:
        """The duration of one audio frame in the track's timescale."""
        if self.opus is not None:
            try:
                return opus.packet_samples(data)
            except ValueError:
                return self.frame_length
        return self.frame_length


@dataclasses.dataclass
class Samples:
    """A run of samples in decode order, times in the track's timescale."""

    dts: list[int]
    durations: list[int]
    ctos: list[int]
    keys: list[bool]
    data: list[bytes]

    @property
    def sizes(self) -> list[int]:
        return [len(d) for d in self.data]

    def __len__(self) -> int:
        return len(self.dts)


def track_spec(track: Track, track_id: int | None = None) -> TrackSpec:
    tid = track.number if track_id is None else track_id
    if track.is_video:
        if track.codec_id not in H264_CODEC_IDS:
            raise UnsupportedCodec(f"video codec {track.codec_id} is not supported (H.264 only)")
        if not track.codec_private:
            raise MissingCodecPrivate(f"track {track.number} has no codec private data")
        try:
            avc = parse_avcc(track.codec_private)
        except ValueError as exc:
            raise InvalidCodecPrivate(f"track {track.number}: {exc}") from exc
        return TrackSpec(
            tid,
            True,
            VIDEO_TIMESCALE,
            avc.codec_string,
            track.width,
            track.height,
            0,
            avc,
            None,
            track.codec_private,
        )
    if track.is_audio and track.codec_id == opus.CODEC_ID:
        if not track.codec_private:
            raise MissingCodecPrivate(f"track {track.number} has no codec private data")
        try:
            head = opus.parse_opus_head(track.codec_private)
        except ValueError as exc:
            raise InvalidCodecPrivate(f"track {track.number}: {exc}") from exc
        return TrackSpec(
            tid,
            False,
            opus.RATE,
            "opus",
            0,
            0,
            head.channels,
            None,
            None,
            track.codec_private,
            head,
        )
    if track.is_audio:
        if track.codec_id != AAC_CODEC_ID:
            raise UnsupportedCodec(
                f"audio codec {track.codec_id} is not supported (AAC and Opus only)"
            )
        if not track.codec_private:
            raise MissingCodecPrivate(f"track {track.number} has no codec private data")
        try:
            aac = parse_asc(track.codec_private)
        except ValueError as exc:
            raise InvalidCodecPrivate(f"track {track.number}: {exc}") from exc
        return TrackSpec(
            tid,
            False,
            aac.sample_rate,
            aac.codec_string,
            0,
            0,
            aac.channels or track.channels or 2,
            None,
            aac,
            track.codec_private,
        )
    raise UnsupportedCodec(f"track {track.number} is neither video nor audio")


# -- sample timing -----------------------------------------------------------------------------


def _ticks(ns: int, timescale: int) -> int:
    return (ns * timescale + 500_000_000) // 1_000_000_000


def video_samples(spec: TrackSpec, frames: Sequence[Frame], start: int, end: int) -> Samples:
    """Samples of one fragment placed at ``start`` (ticks), its timeline slot ending at ``end``."""
    ts = spec.timescale
    pts = [_ticks(f.pts_ns, ts) for f in frames]
    dts: list[int] = []
    for value in sorted(pts):
        dts.append(value if not dts or value > dts[-1] else dts[-1] + 1)
    dts = [start + d for d in dts]
    pts = [start + p for p in pts]
    durations = [b - a for a, b in zip(dts, dts[1:], strict=False)]
    if dts:
        typical = durations[-1] if durations else ts // 30
        durations.append(end - dts[-1] if end > dts[-1] else max(1, typical))
    data = list(f.data for f in frames)
    if spec.avc is not None and frames and frames[0].key:
        data[0] = _with_ps(data[0], spec.avc)
    return Samples(
        dts,
        durations,
        [p - d for p, d in zip(pts, dts, strict=True)],
        [f.key for f in frames],
        data,
    )


def audio_samples(spec: TrackSpec, frames: Sequence[Frame], start_ms: int) -> Samples:
    """Audio frames of a fragment placed at ``start_ms`` on the timeline.

    Each frame's time depends only on the fragment's place and its own timestamp, so a frame
    that appears in two segments (see ``service.lead_in``) gets the same time in both; each
    lasts until the next one (the last one its own length). A gap between Opus packets
    (discontinuous transmission) is taken by the packet before it.
    """
    base = start_ms * 1_000_000
    dts: list[int] = []
    for f in frames:
        t = _ticks(base + f.pts_ns, spec.timescale)
        dts.append(t if not dts or t > dts[-1] else dts[-1] + 1)
    durations = [b - a for a, b in zip(dts, dts[1:], strict=False)]
    if dts:
        durations.append(spec.frame_ticks(frames[-1].data))
    return Samples(
        dts, durations, [0] * len(dts), [True] * len(dts), [bytes(f.data) for f in frames]
    )


def drop_before(samples: Samples, floor: int, slack: int = 0) -> Samples:
    """Remove leading samples that would start before ``floor`` (the timeline's origin, or the
    video's start in a muxed segment).

    A first sample less than ``slack`` ticks early (millisecond timecodes round) is moved onto
    ``floor`` with the rest of the run instead of being dropped.
    """
    if len(samples) and floor - slack < samples.dts[0] < floor:
        shift = floor - samples.dts[0]
        samples = dataclasses.replace(samples, dts=[d + shift for d in samples.dts])
    i = 0
    while i < len(samples) and samples.dts[i] < floor:
        i += 1
    if not i:
        return samples
    return Samples(
        samples.dts[i:],
        samples.durations[i:],
        samples.ctos[i:],
        samples.keys[i:],
        samples.data[i:],
    )


def cover_start(
    spec: TrackSpec, samples: Samples, start_ms: int, silence: Callable[[], bytes | None]
) -> Samples:
    """Let an audio run that begins after ``start_ms`` (the segment's place on the timeline)
    cover that first instant.

    An AAC frame belongs to the fragment it starts in, and a recording's audio can begin after
    its first keyframe, so a segment's audio can start after its video; when the previous
    fragment has no frame to lend (see ``service.straddling``: none at the start of a
    recording, or when the selector timestamps of the two do not line up with their media), a
    player starting at the segment finds a hole at its first instant and has to seek over it.

    Less than a frame late, the first sample moves back onto the start and lasts that much
    longer. Later, silent frames (``silence()``: one encoded frame, or None if there is none for
    this configuration) fill the head from the start, the last of them lasting up to the first
    real frame. Real samples keep their times."""
    start = _ticks(start_ms * 1_000_000, spec.timescale)
    if not len(samples) or samples.dts[0] <= start:
        return samples
    gap = samples.dts[0] - start
    length = spec.frame_length
    if gap < length:
        return dataclasses.replace(
            samples,
            dts=[start, *samples.dts[1:]],
            durations=[samples.durations[0] + gap, *samples.durations[1:]],
        )
    frame = silence()
    if frame is None:
        return samples
    count = gap // length
    durations = [length] * count
    durations[-1] += gap - count * length
    return Samples(
        [start + i * length for i in range(count)] + samples.dts,
        durations + samples.durations,
        [0] * count + samples.ctos,
        [True] * count + samples.keys,
        [frame] * count + samples.data,
    )


def meet(spec: TrackSpec, samples: Samples, seam: int) -> Samples:
    """Let an audio run begin exactly at ``seam`` (ticks): where the previous segment's audio
    ends, when the two segments abut.

    Timestamps that jitter (server timestamps) place a fragment's audio up to a few
    milliseconds away from where its predecessor's stopped. Samples that end by the seam were
    played by the previous segment and are dropped; then the first sample starts on the seam,
    shorter or longer by the difference (its end stays). A run beginning a frame or more after
    the seam (a real gap in the recording) is left as it is. Only the head moves, so the end of
    a run never depends on the segment before it."""
    i = 0
    while i < len(samples) and samples.dts[i] + samples.durations[i] <= seam:
        i += 1
    if i:
        samples = Samples(
            samples.dts[i:],
            samples.durations[i:],
            samples.ctos[i:],
            samples.keys[i:],
            samples.data[i:],
        )
    if not len(samples):
        return samples
    shift = samples.dts[0] - seam
    if not shift or shift >= spec.frame_length:
        return samples
    return dataclasses.replace(
        samples,
        dts=[seam, *samples.dts[1:]],
        durations=[samples.durations[0] + shift, *samples.durations[1:]],
    )


# -- boxes ---------------------------------------------------------------------------------------


def box(kind: bytes, *parts: bytes) -> bytes:
    payload = b"".join(parts)
    size = 8 + len(payload)
    if size >= 1 << 32:
        return struct.pack(">I4sQ", 1, kind, size + 8) + payload
    return struct.pack(">I4s", size, kind) + payload


def full_box(kind: bytes, version: int, flags: int, *parts: bytes) -> bytes:
    return box(kind, struct.pack(">I", (version << 24) | flags), *parts)


def _descriptor(tag: int, payload: bytes) -> bytes:
    n = len(payload)
    size = bytearray([n & 0x7F])
    n >>= 7
    while n:
        size.insert(0, 0x80 | (n & 0x7F))
        n >>= 7
    return bytes([tag]) + bytes(size) + payload


def _avc1(spec: TrackSpec) -> bytes:
    return box(
        b"avc1",
        b"\0" * 6,
        struct.pack(">H", 1),
        b"\0" * 16,
        struct.pack(">HH", spec.width & 0xFFFF, spec.height & 0xFFFF),
        struct.pack(">III", 0x00480000, 0x00480000, 0),
        struct.pack(">H", 1),
        b"\0" * 32,
        struct.pack(">Hh", 0x18, -1),
        box(b"avcC", spec.codec_private),
    )


def _mp4a(spec: TrackSpec, avg_bitrate: int = 0) -> bytes:
    dsi = _descriptor(0x05, spec.codec_private)
    dcd = _descriptor(
        0x04, bytes([0x40, 0x15]) + b"\0\0\0" + struct.pack(">II", 0, avg_bitrate) + dsi
    )
    esd = _descriptor(0x03, struct.pack(">HB", 0, 0) + dcd + _descriptor(0x06, b"\x02"))
    rate = spec.timescale if spec.timescale < 1 << 16 else 0
    return box(
        b"mp4a",
        b"\0" * 6,
        struct.pack(">H", 1),
        b"\0" * 8,
        struct.pack(">HHHH", spec.channels, 16, 0, 0),
        struct.pack(">I", rate << 16),
        full_box(b"esds", 0, 0, esd),
    )


def _opus(spec: TrackSpec) -> bytes:
    """Opus in ISO BMFF §4.3: an ``Opus`` AudioSampleEntry (16-bit, 48 kHz) with ``dOps``."""
    assert spec.opus is not None
    return box(
        b"Opus",
        b"\0" * 6,
        struct.pack(">H", 1),
        b"\0" * 8,
        struct.pack(">HHHH", spec.channels, 16, 0, 0),
        struct.pack(">I", opus.RATE << 16),
        box(b"dOps", spec.opus.dops()),
    )


def _sample_entry(spec: TrackSpec) -> bytes:
    if spec.is_video:
        return _avc1(spec)
    return _opus(spec) if spec.opus is not None else _mp4a(spec)


def _mvhd(duration_ms: int, next_track: int) -> bytes:
    return full_box(
        b"mvhd",
        0,
        0,
        struct.pack(">IIII", 0, 0, 1000, min(duration_ms, 0xFFFFFFFF)),
        struct.pack(">IH", 0x00010000, 0x0100),
        b"\0" * 10,
        _MATRIX,
        b"\0" * 24,
        struct.pack(">I", next_track),
    )


def _tkhd(spec: TrackSpec, duration_ms: int) -> bytes:
    return full_box(
        b"tkhd",
        0,
        3,
        struct.pack(">IIII", 0, 0, spec.track_id, 0),
        struct.pack(">I", min(duration_ms, 0xFFFFFFFF)),
        b"\0" * 8,
        struct.pack(">hhhH", 0, 0, 0 if spec.is_video else 0x0100, 0),
        _MATRIX,
        struct.pack(">II", spec.width << 16, spec.height << 16),
    )


def _mdia(spec: TrackSpec, duration: int, stbl: bytes) -> bytes:
    handler = b"vide" if spec.is_video else b"soun"
    name = b"VideoHandler\0" if spec.is_video else b"SoundHandler\0"
    header = (
        full_box(b"vmhd", 0, 1, b"\0" * 8) if spec.is_video else full_box(b"smhd", 0, 0, b"\0" * 4)
    )
    dinf = box(b"dinf", full_box(b"dref", 0, 0, struct.pack(">I", 1), full_box(b"url ", 0, 1)))
    return box(
        b"mdia",
        full_box(
            b"mdhd",
            0,
            0,
            struct.pack(">IIII", 0, 0, spec.timescale, min(duration, 0xFFFFFFFF)),
            struct.pack(">HH", 0x55C4, 0),
        ),
        full_box(b"hdlr", 0, 0, b"\0" * 4, handler, b"\0" * 12, name),
        box(b"minf", header, dinf, stbl),
    )


def _stsd(spec: TrackSpec) -> bytes:
    return full_box(b"stsd", 0, 0, struct.pack(">I", 1), _sample_entry(spec))


_FTYP_FRAGMENTED = box(b"ftyp", b"iso6", struct.pack(">I", 0), b"iso6iso5cmfcmp41dash")


def init_segment(spec: TrackSpec) -> bytes:
    empty = struct.pack(">I", 0)
    stbl = box(
        b"stbl",
        _stsd(spec),
        full_box(b"stts", 0, 0, empty),
        full_box(b"stsc", 0, 0, empty),
        full_box(b"stsz", 0, 0, empty, empty),
        full_box(b"stco", 0, 0, empty),
    )
    trak = box(b"trak", _tkhd(spec, 0), _mdia(spec, 0, stbl))
    mvex = box(b"mvex", full_box(b"trex", 0, 0, struct.pack(">IIIII", spec.track_id, 1, 0, 0, 0)))
    return _FTYP_FRAGMENTED + box(b"moov", _mvhd(0, spec.track_id + 1), trak, mvex)


def media_segment(spec: TrackSpec, samples: Samples, sequence: int) -> bytes:
    """``moof`` + ``mdat`` for one track. ``sequence`` starts at 1."""
    base = samples.dts[0] if len(samples) else 0
    entries = bytearray()
    for i in range(len(samples)):
        flags = _FLAGS_SYNC if samples.keys[i] else _FLAGS_NON_SYNC
        entries += struct.pack(
            ">IIIi", samples.durations[i], len(samples.data[i]), flags, samples.ctos[i]
        )

    def moof(offset: int) -> bytes:
        return box(
            b"moof",
            full_box(b"mfhd", 0, 0, struct.pack(">I", sequence & 0xFFFFFFFF)),
            box(
                b"traf",
                full_box(b"tfhd", 0, 0x020000, struct.pack(">I", spec.track_id)),
                full_box(b"tfdt", 1, 0, struct.pack(">Q", max(0, base))),
                full_box(
                    b"trun", 1, 0x000F01, struct.pack(">Ii", len(samples), offset), bytes(entries)
                ),
            ),
        )

    size = len(moof(0))
    return moof(size + 8) + box(b"mdat", *samples.data)


# -- progressive MP4 (GetClip) ---------------------------------------------------------------


def _rle(values: Iterable[int]) -> list[tuple[int, int]]:
    runs: list[tuple[int, int]] = []
    for v in values:
        if runs and runs[-1][1] == v:
            runs[-1] = (runs[-1][0] + 1, v)
        else:
            runs.append((1, v))
    return runs


def _stbl(spec: TrackSpec, chunks: Sequence[Samples], offsets: Sequence[int]) -> bytes:
    durations = [d for c in chunks for d in c.durations]
    ctos = [o for c in chunks for o in c.ctos]
    keys = [k for c in chunks for k in c.keys]
    sizes = [s for c in chunks for s in c.sizes]
    stts = _rle(durations)
    parts = [
        _stsd(spec),
        full_box(
            b"stts",
            0,
            0,
            struct.pack(">I", len(stts)),
            b"".join(struct.pack(">II", n, v) for n, v in stts),
        ),
    ]
    if any(ctos):
        ctts = _rle(ctos)
        parts.append(
            full_box(
                b"ctts",
                1,
                0,
                struct.pack(">I", len(ctts)),
                b"".join(struct.pack(">Ii", n, v) for n, v in ctts),
            )
        )
    if not all(keys):
        sync = [i + 1 for i, k in enumerate(keys) if k]
        parts.append(
            full_box(
                b"stss", 0, 0, struct.pack(">I", len(sync)), struct.pack(f">{len(sync)}I", *sync)
            )
        )
    stsc: list[tuple[int, int]] = []
    for i, c in enumerate(chunks):
        if not stsc or stsc[-1][1] != len(c):
            stsc.append((i + 1, len(c)))
    parts.append(
        full_box(
            b"stsc",
            0,
            0,
            struct.pack(">I", len(stsc)),
            b"".join(struct.pack(">III", first, n, 1) for first, n in stsc),
        )
    )
    parts.append(
        full_box(
            b"stsz", 0, 0, struct.pack(">II", 0, len(sizes)), struct.pack(f">{len(sizes)}I", *sizes)
        )
    )
    parts.append(
        full_box(
            b"co64",
            0,
            0,
            struct.pack(">I", len(offsets)),
            struct.pack(f">{len(offsets)}Q", *offsets),
        )
    )
    return box(b"stbl", *parts)


def progressive_mp4(specs: Sequence[TrackSpec], chunks: Sequence[Sequence[Samples]]) -> bytes:
    """One MP4 file: ``chunks[i][t]`` are the samples of track ``t`` in the i-th fragment.

    Chunks are interleaved fragment by fragment. A track whose first sample is not at time 0
    gets an edit list, so every track keeps its place on the common timeline.
    """
    per_track: list[list[Samples]] = [
        [c[t] for c in chunks if len(c[t])] for t in range(len(specs))
    ]
    # A progressive MP4 has no decode times, only durations: make each chunk's last sample last
    # until the next chunk starts, so gaps and small overlaps keep every chunk in its place.
    for runs in per_track:
        for a, b in zip(runs, runs[1:], strict=False):
            a.durations[-1] = max(1, b.dts[0] - a.dts[-1])
    layout: list[tuple[int, int]] = []  # (track, chunk index) in file order
    counters = [0] * len(specs)
    for c in chunks:
        for t in range(len(specs)):
            if len(c[t]):
                layout.append((t, counters[t]))
                counters[t] += 1
    ends_ms: list[int] = []
    for t, spec in enumerate(specs):
        runs = per_track[t]
        if runs:
            last = runs[-1]
            ends_ms.append((last.dts[-1] + last.durations[-1]) * 1000 // spec.timescale)
        else:
            ends_ms.append(0)
    movie_ms = max(ends_ms, default=0)
    ftyp = box(b"ftyp", b"isom", struct.pack(">I", 0x200), b"isomiso2avc1mp41")

    def moov(mdat_data_start: int) -> bytes:
        offsets: list[list[int]] = [[] for _ in specs]
        pos = mdat_data_start
        for t, i in layout:
            offsets[t].append(pos)
            pos += sum(per_track[t][i].sizes)
        traks = []
        for t, spec in enumerate(specs):
            runs = per_track[t]
            if not runs:
                continue
            first = runs[0].dts[0]
            media_duration = runs[-1].dts[-1] + runs[-1].durations[-1] - first
            track_ms = media_duration * 1000 // spec.timescale
            edits = []
            first_ms = first * 1000 // spec.timescale
            if first_ms > 0:
                edits.append(struct.pack(">Iih", first_ms, -1, 1) + b"\0\0")
            edits.append(struct.pack(">Iih", track_ms, 0, 1) + b"\0\0")
            edts = box(b"edts", full_box(b"elst", 0, 0, struct.pack(">I", len(edits)), *edits))
            stbl = _stbl(spec, runs, offsets[t])
            traks.append(
                box(
                    b"trak",
                    _tkhd(spec, track_ms + max(0, first_ms)),
                    edts,
                    _mdia(spec, media_duration, stbl),
                )
            )
        return box(b"moov", _mvhd(movie_ms, max(s.track_id for s in specs) + 1), *traks)

    payload_size = sum(sum(r.sizes) for runs in per_track for r in runs)
    header = 16 if payload_size + 16 >= 1 << 32 else 8
    probe = moov(0)
    start = len(ftyp) + len(probe) + header
    final = moov(start)
    out = bytearray(ftyp + final)
    if header == 16:
        out += struct.pack(">I4sQ", 1, b"mdat", payload_size + 16)
    else:
        out += struct.pack(">I4s", payload_size + 8, b"mdat")
    for t, i in layout:
        for d in per_track[t][i].data:
            out += d
    return bytes(out)
