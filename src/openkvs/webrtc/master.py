"""One JoinStorageSession: the storage peer offers to the channel's master and records its media.

Video is received recvonly and stored as received (H.264, never decoded); audio is sendrecv
(Opus in, decoded and re-encoded to AAC for the recording, mixed with the viewers' audio; the
viewers' mixed audio out).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import av
from aiortc import RTCCertificate

from ..config import Settings
from ..records import Channel, Stream
from . import tap
from .audio import MASTER, ChannelAudio
from .opus_in import OpusIn, PoolStage
from .peer import Send, h264_preferences, opus_preferences
from .recorder import Recorder
from .seams import FragmentSink
from .session import StorageSession

VideoListener = Callable[[bytes, int], None]


class MasterSession(StorageSession):
    role = "master"

    def __init__(
        self,
        *,
        channel: Channel,
        stream: Stream,
        settings: Settings,
        send: Send,
        fragments: FragmentSink,
        pool: ThreadPoolExecutor,
        ice_servers: list[Any],
        on_end: Callable[[Any, str], Awaitable[None]],
        number: int,
        is_current: Callable[[], bool] | None = None,
        audio: ChannelAudio | None = None,
        certificate: RTCCertificate | None = None,
    ) -> None:
        super().__init__(
            channel=channel,
            settings=settings,
            send=send,
            ice_servers=ice_servers,
            on_end=on_end,
            number=number,
            label="master",
            is_current=is_current,
            certificate=certificate,
        )
        self.stream = stream
        self.audio_mix = audio or ChannelAudio()
        self.video = self.pc.addTransceiver("video", direction="recvonly")
        self.audio = self.pc.addTransceiver(self.audio_mix.track_for(MASTER), "sendrecv")
        self.video.setCodecPreferences(h264_preferences())
        self.audio.setCodecPreferences(opus_preferences())
        self.recorder = Recorder(
            stream,
            fragments,
            pool,
            target_ms=int(settings.storage_fragment_duration * 1000),
            request_keyframe=self.request_keyframe,
            log_prefix=self.prefix,
            on_disk_full=self._disk_full,
        )
        tap.tap_video(self.video.receiver, self._on_video)
        self.feedback = tap.count_feedback(self.video.receiver)
        self.opus_in = OpusIn(
            pool,
            self._on_audio_frames,
            live=lambda: self.audio_mix.viewers > 0,
            stage=self._audio_stage,
        )
        tap.tap_audio(self.audio.receiver, self._on_opus)
        tap.observe_sender_reports(
            self.video.receiver,
            lambda r: self.recorder.on_sender_report("video", r.ntp_seconds, r.rtp_timestamp),
        )
        tap.observe_sender_reports(
            self.audio.receiver,
            lambda r: self.recorder.on_sender_report("audio", r.ntp_seconds, r.rtp_timestamp),
        )
        self.video_listeners: list[VideoListener] = []

    async def start(self) -> None:
        self.recorder.start()
        await super().start()

    async def finish(self, reason: str) -> None:
        await self.opus_in.close()  # what arrived before the end goes into the recording
        self.audio_mix.remove(MASTER)
        await self.recorder.close()

    def _disk_full(self, exc: BaseException) -> None:
        self.stop(f"the disk is full: {exc}")

    def on_connected(self) -> None:
        assert self.connected_at is not None
        self.recorder.stats.last_media_at = self.connected_at

    def check(self, now: float) -> str | None:
        s = self.settings
        if now - self.recorder.stats.last_media_at > s.storage_media_timeout:
            return f"no media for {s.storage_media_timeout:g} s"
        limit = s.storage_max_session_duration
        if limit and self.connected_at is not None and now - self.connected_at > limit:
            return f"maximum session duration of {limit:g} s reached"
        return None

    def _on_video(self, annexb: bytes, rtp_ts: int) -> None:
        self.recorder.on_video(annexb, rtp_ts)
        for listener in self.video_listeners:
            listener(annexb, rtp_ts)

    def _on_opus(self, data: bytes, rtp_ts: int) -> None:
        self.recorder.audio_arrived(rtp_ts)
        self.opus_in.add(data, rtp_ts)

    def _audio_stage(self) -> PoolStage | None:
        """While nobody else takes the master's audio, it is AAC-encoded in its decoding job."""
        return self.recorder.audio_stage() if self.audio_mix.idle else None

    def _on_audio_frames(self, frames: list[av.AudioFrame]) -> None:
        for frame in frames:
            self.audio_mix.push(MASTER, frame, to_recording=False)
        self.recorder.on_audio([self.audio_mix.recording_mix(frame) for frame in frames])

    def request_keyframe(self) -> bool:
        return tap.request_keyframe(self.video.receiver)

    def stats(self) -> dict[str, Any]:
        return {
            **self.base_stats(),
            "stream": self.stream.name,
            "viewers": self.audio_mix.viewers,
            "opus_packets": self.opus_in.packets,
            "opus_empty_packets": self.opus_in.empty,
            "opus_dropped_packets": self.opus_in.dropped,
            "opus_decode_errors": self.opus_in.decode_errors,
            **self.recorder.stats.as_dict(),
            "audio_clock_steps": self.recorder.clock.drift.steps,
            "audio_clock_correction_ms": round(self.recorder.clock.drift.correction, 1),
            **self._frame_stats(),
        }

    def _frame_stats(self) -> dict[str, int]:
        assembler = tap.video_assembler(self.video.receiver)
        if assembler is None:
            return {}
        a = assembler.stats
        return {
            "frames_lost": a.dropped_frames + self.recorder.stats.dropped_video,
            "frames_recovered": a.recovered_frames,
            "late_packets": a.late_packets,
            "rtp_packets": a.packets,
            **self.feedback.as_dict(),
        }
