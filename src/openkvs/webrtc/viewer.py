"""One JoinStorageSessionAsViewer: the storage peer offers to a viewer, forwards the master's live
video (never decoded) and the channel's mixed audio, and takes the viewer's audio into the mix."""

from __future__ import annotations

import contextlib
from collections.abc import Awaitable, Callable
from typing import Any

from aiortc import MediaStreamTrack
from aiortc.mediastreams import MediaStreamError

from .. import clock
from ..config import Settings
from ..store.base import Channel
from .audio import ChannelAudio
from .master import MasterSession
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
    ) -> None:
        super().__init__(
            channel=channel,
            settings=settings,
            send=send,
            ice_servers=ice_servers,
            on_end=on_end,
            number=number,
            label=f"viewer {client_id}",
        )
        self.client_id = client_id
        self.audio_mix = audio
        self._listener = f"viewer:{client_id}"
        self.relay = VideoRelayTrack()
        self.video = self.pc.addTransceiver(self.relay, "sendonly")
        self.audio = self.pc.addTransceiver(audio.track_for(self._listener), "sendrecv")
        self.video.setCodecPreferences(h264_preferences())
        self.audio.setCodecPreferences(opus_preferences())
        self.master: MasterSession | None = None
        self.alone_since: float | None = clock.monotonic()
        self.pc.on("track", self._on_track)

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
        if self.master is not None:
            self.detach_master(self.master)
        self.audio_mix.remove(self._listener)

    def _on_track(self, track: MediaStreamTrack) -> None:
        if track.kind == "audio":
            self.spawn(self._read_audio(track), "viewer audio")

    async def _read_audio(self, track: MediaStreamTrack) -> None:
        with contextlib.suppress(MediaStreamError):
            while True:
                frame: Any = await track.recv()
                # Viewers are mixed into the recording only while a master is present.
                self.audio_mix.push(self._listener, frame, to_recording=self.master is not None)

    def stats(self) -> dict[str, Any]:
        return {
            **self.base_stats(),
            "client_id": self.client_id,
            "video_frames_forwarded": self.relay.frames_in - self.relay.frames_dropped,
            "video_frames_dropped": self.relay.frames_dropped,
            "has_master": self.master is not None,
        }
