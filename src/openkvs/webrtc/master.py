"""One JoinStorageSession: the storage peer offers to the channel's master and records its media.

Video is received recvonly and stored as received (H.264, never decoded); audio is sendrecv
(Opus in, decoded and re-encoded to AAC for the recording, mixed with the viewers' audio; the
viewers' mixed audio out). With ``storage_audio = "opus"`` the master's Opus packets are stored
as received, and decoded only while viewers listen to the master live.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import av
from aiortc import RTCCertificate
from aiortc.sdp import SessionDescription

from ..config import Settings
from ..playback.livecut import PartSink
from ..records import Channel, Stream
from . import tap
from .audio import MASTER, ChannelAudio
from .opus_in import OpusIn, PoolStage
from .peer import Send, h264_preferences, opus_preferences
from .recorder import Recorder
from .seams import FragmentSink
from .session import StorageSession

# (Annex B access unit, its unwrapped RTP timestamp, its capture time in the master's clock as
# Unix seconds or None before the master's first sender report)
VideoListener = Callable[[bytes, int, float | None], None]
VIDEO_CLOCK_RATE = 90000


def opus_channels(sdp: str) -> int:
    """The channel count of the Opus the answer's sender sends: two (RFC 7587's opus/48000/2,
    which is how FFmpeg reads such an SDP), or one when its fmtp says ``sprop-stereo=0`` (it
    sends mono). An Opus decoder opened for two channels plays mono packets on both."""
    for media in SessionDescription.parse(sdp).media:
        if media.kind != "audio":
            continue
        for codec in media.rtp.codecs:
            if codec.mimeType.lower() == "audio/opus":
                return 1 if str(codec.parameters.get("sprop-stereo", "")) == "0" else 2
    return 2


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
        live: PartSink | None = None,
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
        self.opus_passthrough = settings.storage_audio == "opus"
        self.recorder = Recorder(
            stream,
            fragments,
            pool,
            target_ms=int(settings.storage_fragment_duration * 1000),
            request_keyframe=self.request_keyframe,
            log_prefix=self.prefix,
            on_disk_full=self._disk_full,
            live=live,
            opus_channels=2 if self.opus_passthrough else None,
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
        self.video_report: tap.SenderReport | None = None
        tap.observe_sender_reports(self.video.receiver, self._on_video_report)
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

    async def on_message(self, message_type: str, payload: str) -> None:
        await super().on_message(message_type, payload)
        remote = self.pc.remoteDescription
        if message_type == "SDP_ANSWER" and self.opus_passthrough and remote is not None:
            self.recorder.set_opus_channels(opus_channels(remote.sdp))

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

    def _on_video_report(self, report: tap.SenderReport) -> None:
        self.video_report = report
        self.recorder.on_sender_report("video", report.ntp_seconds, report.rtp_timestamp)

    def capture_time(self, rtp_ts: int) -> float | None:
        """When the master captured the video frame with this RTP timestamp (Unix seconds in
        its own clock, from its latest sender report), or None before its first report."""
        report = self.video_report
        return None if report is None else report.time_of(rtp_ts, VIDEO_CLOCK_RATE)

    def _on_video(self, annexb: bytes, rtp_ts: int) -> None:
        self.recorder.on_video(annexb, rtp_ts)
        if self.video_listeners:
            captured = self.capture_time(rtp_ts)
            for listener in self.video_listeners:
                listener(annexb, rtp_ts, captured)

    def _on_opus(self, data: bytes, rtp_ts: int) -> None:
        self.recorder.audio_arrived(rtp_ts)
        if self.opus_passthrough:
            self.recorder.on_opus(data, rtp_ts)
            if not self.audio_mix.viewers:
                return  # nobody hears the master live: nothing to decode
        self.opus_in.add(data, rtp_ts)

    def _audio_stage(self) -> PoolStage | None:
        """While nobody else takes the master's audio, it is AAC-encoded in its decoding job."""
        return self.recorder.audio_stage() if self.audio_mix.idle else None

    def _on_audio_frames(self, frames: list[av.AudioFrame]) -> None:
        for frame in frames:
            self.audio_mix.push(MASTER, frame, to_recording=False)
        if not self.opus_passthrough:
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
