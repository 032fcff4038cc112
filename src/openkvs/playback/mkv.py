"""Read one stored fragment (a self-contained MKV file) into tracks and samples.

Only what playback needs is kept: each track's number, type, codec id, codec private data and
geometry or sample rate, and for every frame its bytes, its keyframe flag and its presentation
time in nanoseconds *relative to the start of the fragment* (the earliest video frame, or the
earliest frame when there is no video). Absolute cluster timecodes are never trusted: producers
may send them relative to anything; the fragment's place on the timeline comes from its metadata.

Pure bytes in, dataclasses out; malformed input raises ``ValueError`` with a precise message.
The Matroska reading itself (EBML, tracks, clusters, blocks and lacing) is
``openkvs.media.mkv.scan_fragment``, shared with every other reader of stored fragments; this
module keeps what only playback needs: nanosecond timing relative to the fragment start, Matroska
CodecDelay, and a lace step for audio tracks without DefaultDuration (an Opus packet's own
duration).
"""

from __future__ import annotations

import dataclasses

from ..media import mkv as media_mkv
from ..media import opus

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


def _track(t: media_mkv.Track) -> Track:
    return Track(
        number=t.number,
        kind=t.track_type,
        codec_id=t.codec_id,
        codec_private=t.codec_private,
        width=t.width,
        height=t.height,
        sample_rate=int(round(t.sample_rate)),
        channels=t.channels,
        default_duration_ns=t.default_duration_ns,
        codec_delay_ns=t.codec_delay_ns,
    )


def parse_fragment(data: bytes) -> ParsedFragment:
    """Parse one MKV fragment. Raises ValueError when it is not a usable fragment."""
    buf = memoryview(data).tobytes() if not isinstance(data, bytes) else data
    layout = media_mkv.scan_fragment(buf, max_blocks=MAX_FRAMES)
    tracks = {t.number: _track(t) for t in layout.tracks}
    if not tracks:
        raise ValueError("fragment has no Tracks")
    return _assemble(buf, tracks, layout.blocks, layout.timecode_scale)


def _lace_step_ns(track: Track) -> int:
    if track.default_duration_ns:
        return track.default_duration_ns
    if track.is_audio and track.sample_rate:
        return 1024 * 1_000_000_000 // track.sample_rate
    return 0


def _opus_ns(packet: bytes) -> int:
    """A laced Opus packet lasts what its TOC says."""
    try:
        return opus.packet_samples(packet) * 1_000_000_000 // opus.RATE
    except ValueError:
        return 20_000_000


def _assemble(
    buf: bytes, tracks: dict[int, Track], raw: list[media_mkv.RawBlock], scale: int
) -> ParsedFragment:
    frames: dict[int, list[Frame]] = {n: [] for n in tracks}
    delay = {n: t.codec_delay_ns for n, t in tracks.items()}
    video = [tc * scale - delay[n] for n, tc, _, _, _ in raw if n in tracks and tracks[n].is_video]
    times = video or [tc * scale - delay[n] for n, tc, _, _, _ in raw if n in tracks]
    base = min(times) if times else 0
    # A frame is a keyframe when its block says so; audio frames always are.
    always_key = {n: not t.is_video for n, t in tracks.items()}
    for track, tc, key, spans, _ in raw:
        out = frames.get(track)
        if out is None:
            continue
        t0 = tc * scale - delay[track] - base
        key = key or always_key[track]
        if len(spans) == 1:
            s, e = spans[0]
            out.append(Frame(t0, buf[s:e], key))
            continue
        info = tracks[track]
        step = _lace_step_ns(info)
        t = t0
        for s, e in spans:
            out.append(Frame(t, buf[s:e], key))
            t += _opus_ns(buf[s:e]) if info.codec_id == opus.CODEC_ID else step
    return ParsedFragment(tracks, frames)
