"""Cut a session's media into keyframe-aligned fragments (pure: timestamps are passed in).

Video access units arrive as Annex B bytes with media-clock milliseconds; audio frames (AAC, or
Opus packets as received) arrive with theirs. A fragment opens at a keyframe and closes at the
first keyframe at least ``target_ms`` later (or at once when the SPS changes, i.e. a resolution
change, so the next fragment gets new codec private data). A closed fragment waits for audio to
catch up with its end (AAC encoding runs behind) for at most ``audio_grace_ms`` of video, then is
emitted. Frames before the first keyframe, and audio older than the open fragment, are dropped
and counted.
"""

from __future__ import annotations

import dataclasses

from . import h264, mkv, opus


@dataclasses.dataclass
class FragmentData:
    tracks: tuple[mkv.Track, ...]
    blocks: list[mkv.Block]
    start_ms: int
    end_ms: int
    video_frames: int
    audio_frames: int
    serial: int = 0  # which fragment of the session (counted from 1 as they open)

    @property
    def duration_ms(self) -> int:
        return max(0, self.end_ms - self.start_ms)

    def to_mkv(self) -> bytes:
        blocks = sorted(self.blocks, key=lambda b: (b.timecode, b.track))
        return mkv.write_fragment(
            self.tracks, blocks, timecode=self.start_ms, duration_ms=float(self.duration_ms)
        )


@dataclasses.dataclass
class _Open:
    video_track: mkv.Track
    start_ms: int
    blocks: list[mkv.Block] = dataclasses.field(default_factory=list)
    last_video_ms: int = 0
    video_frames: int = 0
    audio_frames: int = 0
    end_ms: int | None = None  # set when closed
    serial: int = 0


@dataclasses.dataclass
class FragmenterStats:
    video_frames: int = 0
    audio_frames: int = 0
    dropped_video: int = 0
    dropped_audio: int = 0
    keyframes: int = 0
    fragments: int = 0


class Fragmenter:
    def __init__(
        self,
        target_ms: int = 2000,
        max_ms: int = 30000,
        audio_grace_ms: int = 700,
    ) -> None:
        self.target_ms = target_ms
        self.max_ms = max_ms
        self.audio_grace_ms = audio_grace_ms
        self.stats = FragmenterStats()
        self._sps: bytes | None = None
        self._video_track: mkv.Track | None = None
        self._audio_track: mkv.Track | None = None
        self._open: _Open | None = None
        self._closed: list[_Open] = []
        self._last_audio_ms: int | None = None
        self._frame_interval = 33
        self._serials = 0

    def set_audio_config(self, asc: bytes, sample_rate: int, channels: int) -> None:
        self._audio_track = mkv.Track(
            2,
            mkv.CODEC_AAC,
            asc,
            mkv.TRACK_TYPE_AUDIO,
            sample_rate=float(sample_rate),
            channels=channels,
            name="audio",
        )

    def set_opus_config(self, channels: int) -> None:
        """Opus packets stored as received: an A_OPUS track whose OpusHead has no pre-skip
        (the packets come from the middle of the sender's stream, its encoder primed long
        before), hence no CodecDelay."""
        self._audio_track = mkv.Track(
            2,
            mkv.CODEC_OPUS,
            opus.opus_head(channels).to_bytes(),
            mkv.TRACK_TYPE_AUDIO,
            sample_rate=float(opus.RATE),
            channels=channels,
            name="audio",
            seek_pre_roll_ns=opus.SEEK_PRE_ROLL_NS,
        )

    @property
    def waiting_for_keyframe(self) -> bool:
        """True when the open fragment has reached its target and needs a keyframe to close."""
        o = self._open
        return o is not None and o.last_video_ms - o.start_ms >= self.target_ms

    @property
    def started(self) -> bool:
        return self._open is not None

    def video(self, ms: float, annexb: bytes) -> list[FragmentData]:
        t = int(round(ms))
        nals = h264.split_annexb(annexb)
        if not nals:
            self.stats.dropped_video += 1
            return []
        key = h264.is_keyframe(nals)
        sps = next((n for n in nals if h264.nal_type(n) == h264.NAL_SPS), None)
        out: list[FragmentData] = []
        if key:
            self.stats.keyframes += 1
            new_config = sps is not None and sps != self._sps
            if new_config:
                pps = [n for n in nals if h264.nal_type(n) == h264.NAL_PPS]
                if pps:
                    try:
                        info = h264.parse_sps(sps)  # type: ignore[arg-type]
                        self._video_track = mkv.Track(
                            1,
                            mkv.CODEC_H264,
                            h264.avc_decoder_configuration([sps], pps),  # type: ignore[list-item]
                            width=info.width,
                            height=info.height,
                            name="video",
                        )
                        self._sps = sps
                    except ValueError:
                        new_config = False
                else:
                    new_config = False
            o = self._open
            if self._video_track is not None and (
                o is None or new_config or t - o.start_ms >= self.target_ms
            ):
                if o is not None:
                    o.end_ms = t
                    self._closed.append(o)
                self._open = self._new(self._video_track, t)
        o = self._open
        if o is None:
            self.stats.dropped_video += 1
            return out
        if o.blocks and t - o.start_ms >= self.max_ms:
            # No keyframe for too long: close anyway, keeping frames (playback resumes at the next
            # keyframe) rather than dropping them.
            o.end_ms = t
            self._closed.append(o)
            self._open = o = self._new(o.video_track, t)
        if o.video_frames:
            self._frame_interval = (
                max(1, min(1000, t - o.last_video_ms))
                if t > o.last_video_ms
                else self._frame_interval
            )
        o.blocks.append(mkv.Block(1, t, h264.to_avcc(nals), key))
        o.last_video_ms = t
        o.video_frames += 1
        self.stats.video_frames += 1
        out += self._emit_ready(video_ms=t)
        return out

    def _new(self, track: mkv.Track, t: int) -> _Open:
        self._serials += 1
        return _Open(track, t, serial=self._serials)

    @property
    def open_serial(self) -> int | None:
        """The serial of the fragment open now (taking video), if any."""
        return None if self._open is None else self._open.serial

    def snapshot(self, serial: int, *, video_frames: int | None = None) -> FragmentData | None:
        """The fragment ``serial`` (open, or closed and waiting for audio) as it stands: its
        first ``video_frames`` video frames (all by default) and the audio before the next
        video frame (all of it when all video is taken). The blocks are a copy."""
        found = next(
            (o for o in [*self._closed, self._open] if o is not None and o.serial == serial), None
        )
        if found is None:
            return None
        video = [b for b in found.blocks if b.track == 1]
        audio = [b for b in found.blocks if b.track != 1]
        end = found.end_ms if found.end_ms is not None else found.last_video_ms
        if video_frames is not None and video_frames < len(video):
            end = video[video_frames].timecode
            video = video[:video_frames]
            audio = [b for b in audio if b.timecode < end]
        tracks: tuple[mkv.Track, ...] = (found.video_track,)
        if self._audio_track is not None:
            tracks += (self._audio_track,)
        return FragmentData(
            tracks, video + audio, found.start_ms, end, len(video), len(audio), found.serial
        )

    def video_times(self, serial: int) -> list[int]:
        """The times (ms) of the open fragment's video frames, if it is ``serial``."""
        o = self._open
        if o is None or o.serial != serial:
            return []
        return [b.timecode for b in o.blocks if b.track == 1]

    def audio(self, ms: float, frame: bytes) -> list[FragmentData]:
        t = int(round(ms))
        self._last_audio_ms = t if self._last_audio_ms is None else max(self._last_audio_ms, t)
        target = None
        for c in self._closed:
            assert c.end_ms is not None
            if c.start_ms <= t < c.end_ms:
                target = c
                break
        if target is None and self._open is not None and t >= self._open.start_ms:
            target = self._open
        if target is None or self._audio_track is None:
            self.stats.dropped_audio += 1
        else:
            target.blocks.append(mkv.Block(2, t, frame, True))
            target.audio_frames += 1
            self.stats.audio_frames += 1
        return self._emit_ready(video_ms=None)

    def _emit_ready(self, video_ms: int | None) -> list[FragmentData]:
        out = []
        while self._closed:
            c = self._closed[0]
            assert c.end_ms is not None
            audio_done = (
                self._audio_track is None
                or (self._last_audio_ms is not None and self._last_audio_ms + 30 >= c.end_ms)
                or (video_ms is not None and video_ms - c.end_ms >= self.audio_grace_ms)
            )
            if not audio_done:
                break
            self._closed.pop(0)
            out.append(self._finish(c))
        return out

    def _finish(self, o: _Open) -> FragmentData:
        assert o.end_ms is not None
        tracks: tuple[mkv.Track, ...] = (o.video_track,)
        if self._audio_track is not None:
            tracks += (self._audio_track,)
        self.stats.fragments += 1
        return FragmentData(
            tracks, o.blocks, o.start_ms, o.end_ms, o.video_frames, o.audio_frames, o.serial
        )

    def flush(self) -> list[FragmentData]:
        """Close everything (session end): the partial last fragment is kept."""
        o = self._open
        if o is not None and o.blocks:
            o.end_ms = o.last_video_ms + self._frame_interval
            self._closed.append(o)
        self._open = None
        out = [self._finish(c) for c in self._closed]
        self._closed = []
        return out
