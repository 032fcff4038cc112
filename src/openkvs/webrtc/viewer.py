"""One JoinStorageSessionAsViewer: the storage peer offers to a viewer, forwards the master's live
video (never decoded) and the channel's mixed audio, and takes the viewer's audio into the mix."""

from __future__ import annotations

import contextlib
from collections.abc import Awaitable, Callable
from concurrent.futures import Executor
from typing import Any

import av
from aiortc import RTCCertificate

from .. import clock
from ..config import Settings
from ..records import Channel
from . import tap
from .audio import ChannelAudio
from .master import MasterSession
from .opus_in import OpusIn
from .peer import Send, h264_preferences, opus_preferences
from .session import StorageSession
from .video import VideoRelayTrack


class ViewerSession(StorageSession):
    role = "viewer"

    def __init__(
        self,
        *,
        channel: Channel,
        client_id: str,
        settings: Settings,
        send: Send,
        ice_servers: list[Any],
        on_end: Callable[[Any, str], Awaitable[None]],
        number: int,
        audio: ChannelAudio,
        pool: Executor,
        is_current: Callable[[], bool] | None = None,
        certificate: RTCCertificate | None = None,
    ) -> None:
        super().__init__(
            channel=channel,
            settings=settings,
            send=send,
            ice_servers=ice_servers,
            on_end=on_end,
            number=number,
            label=f"viewer {client_id}",
            is_current=is_current,
            certificate=certificate,
        )
        self.client_id = client_id
        self.audio_mix = audio
        self._listener = f"viewer:{client_id}"
        self.relay = VideoRelayTrack()
        self.video = self.pc.addTransceiver(self.relay, "sendonly")
        # The viewer's sender reports carry the master's capture times (its clock), so the
        # viewer can tell how long ago a frame was captured, not just relayed.
        self.reports = tap.map_sender_reports(self.video.sender, self.relay.capture_time)
        self.audio = self.pc.addTransceiver(audio.track_for(self._listener), "sendrecv")
        self.video.setCodecPreferences(h264_preferences())
        self.audio.setCodecPreferences(opus_preferences())
        self.master: MasterSession | None = None
        self.alone_since: float | None = clock.monotonic()
        # The viewer's Opus packets come off the receiver like the master's (``tap``) and are
        # decoded in the session pool one at a time (somebody always listens to a viewer).
        self.opus_in = OpusIn(pool, self._on_audio_frames, live=lambda: True)
        tap.tap_audio(self.audio.receiver, lambda data, ts: self.opus_in.add(data, ts))

    def attach_master(self, master: MasterSession) -> None:
        if self.master is not None:
            self.detach_master(self.master)
        self.master = master
        self.alone_since = None
        self.relay.restart()
        master.video_listeners.append(self.relay.push)
        master.request_keyframe()

    def detach_master(self, master: MasterSession) -> None:
        if self.master is master:
            with contextlib.suppress(ValueError):
                master.video_listeners.remove(self.relay.push)
            self.master = None
            self.alone_since = clock.monotonic()

    def on_connected(self) -> None:
        if self.master is not None:
            self.master.request_keyframe()

    def check(self, now: float) -> str | None:
        wait = self.settings.storage_viewer_wait
        if self.alone_since is not None and now - self.alone_since > wait:
            return f"no master for {wait:g} s"
        return None

    async def finish(self, reason: str) -> None:
        await self.opus_in.close()
        if self.master is not None:
            self.detach_master(self.master)
        self.audio_mix.remove(self._listener)

    def _on_audio_frames(self, frames: list[av.AudioFrame]) -> None:
        for frame in frames:
            # Viewers are mixed into the recording only while a master is present.
            self.audio_mix.push(self._listener, frame, to_recording=self.master is not None)

    def stats(self) -> dict[str, Any]:
        return {
            **self.base_stats(),
            "client_id": self.client_id,
            "video_frames_forwarded": self.relay.frames_in - self.relay.frames_dropped,
            "video_frames_dropped": self.relay.frames_dropped,
            "sender_reports_with_capture_time": self.reports.mapped,
            "has_master": self.master is not None,
        }
