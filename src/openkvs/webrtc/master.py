"""One JoinStorageSession: the storage peer offers to the channel's master and records its media.

Video is received recvonly and stored as received (H.264, never decoded); audio is sendrecv
(Opus in, decoded and re-encoded to AAC for the recording; viewers' mixed audio out).
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import logging
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from aiortc import MediaStreamTrack, RTCPeerConnection
from aiortc.mediastreams import MediaStreamError
from aiortc.sdp import SessionDescription

from .. import clock
from ..config import Settings
from ..control.fragments import FragmentStore
from ..errors import InvalidArgumentException
from ..store.base import Channel, Stream
from . import net, tap
from .peer import OfferingPeer, Send, h264_preferences, opus_preferences
from .recorder import Recorder

logger = logging.getLogger(__name__)


class State(enum.Enum):
    NEW = "new"
    OFFERED = "offered"
    CONNECTED = "connected"
    ENDED = "ended"


class MasterPeer(OfferingPeer):
    def check_answer(self, sdp: str) -> None:
        parsed = SessionDescription.parse(sdp)
        for media in parsed.media:
            names = {c.mimeType.lower() for c in media.rtp.codecs}
            if media.kind == "video" and media.port != 0 and "video/h264" not in names:
                raise InvalidArgumentException(
                    "The SDP answer's video has no H.264 codec; the storage session only "
                    "accepts H.264 video."
                )
            if media.kind == "audio" and media.port != 0 and "audio/opus" not in names:
                raise InvalidArgumentException(
                    "The SDP answer's audio has no Opus codec; the storage session only "
                    "accepts Opus audio."
                )


class MasterSession:
    def __init__(
        self,
        *,
        channel: Channel,
        stream: Stream,
        settings: Settings,
        send: Send,
        fragments: FragmentStore,
        pool: ThreadPoolExecutor,
        ice_servers: list[Any],
        on_end: Callable[[MasterSession, str], Awaitable[None]],
        number: int,
    ) -> None:
        self.channel = channel
        self.stream = stream
        self.settings = settings
        self.number = number
        self.prefix = f"[{channel.name} master #{number}] "
        self.state = State.NEW
        self.started_at = clock.monotonic()
        self.connected_at: float | None = None
        self.end_reason: str | None = None
        self._on_end = on_end
        self._tasks: set[asyncio.Task[Any]] = set()
        self._stopping: asyncio.Task[None] | None = None

        self.pc = RTCPeerConnection(net.configuration(ice_servers))
        self.peer = MasterPeer(self.pc, send, settings.webrtc_advertised_hosts, self.prefix)
        self.video = self.pc.addTransceiver("video", direction="recvonly")
        self.audio = self.pc.addTransceiver("audio", direction="sendrecv")
        self.video.setCodecPreferences(h264_preferences())
        self.audio.setCodecPreferences(opus_preferences())
        self.recorder = Recorder(
            stream,
            fragments,
            pool,
            target_ms=int(settings.storage_fragment_duration * 1000),
            request_keyframe=lambda: tap.request_keyframe(self.video.receiver),
            log_prefix=self.prefix,
        )
        tap.tap_video(self.video.receiver, self._on_video)
        tap.tap_audio(self.audio.receiver)
        tap.observe_sender_reports(
            self.video.receiver,
            lambda r: self.recorder.on_sender_report("video", r.ntp_seconds, r.rtp_timestamp),
        )
        tap.observe_sender_reports(
            self.audio.receiver,
            lambda r: self.recorder.on_sender_report("audio", r.ntp_seconds, r.rtp_timestamp),
        )
        self.video_listeners: list[Callable[[bytes, int], None]] = []
        self.pc.on("track", self._on_track)
        self.pc.on("connectionstatechange", self._on_state)

    # -- lifecycle ---------------------------------------------------------------------------------

    def _spawn(self, coro: Awaitable[Any], name: str) -> None:
        task = asyncio.ensure_future(coro)
        task.set_name(name)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def start(self) -> None:
        self.recorder.start()
        self._spawn(self._watchdog(), "storage watchdog")
        try:
            await self.peer.offer()
        except Exception as exc:  # noqa: BLE001
            logger.warning("%scould not send the offer: %s", self.prefix, exc)
            self.stop(f"offer failed: {exc}")
            return
        if self.state is State.NEW:
            self.state = State.OFFERED
        logger.info("%soffer sent", self.prefix)

    def stop(self, reason: str) -> asyncio.Task[None]:
        """End the session (idempotent); returns the task that finishes it."""
        if self._stopping is None:
            self.end_reason = reason
            self._stopping = asyncio.create_task(self._stop(reason))
        return self._stopping

    async def _stop(self, reason: str) -> None:
        self.state = State.ENDED
        current = asyncio.current_task()
        for task in list(self._tasks):
            if task is not current:
                task.cancel()
        await self.peer.close()
        await self.recorder.close()
        s = self.recorder.stats
        logger.info(
            "%sended (%s): %d video frames, %d keyframes, %d AAC frames, %d fragments, "
            "%d bytes stored",
            self.prefix,
            reason,
            s.video_frames,
            s.keyframes,
            s.aac_frames,
            s.fragments,
            s.fragment_bytes,
        )
        await self._on_end(self, reason)

    async def _watchdog(self) -> None:
        s = self.settings
        while self.state is not State.ENDED:
            await asyncio.sleep(0.5)
            now = clock.monotonic()
            if self.state is not State.CONNECTED:
                wait = max(s.storage_connect_timeout, self.channel.message_ttl + 10.0)
                if now - self.started_at > wait:
                    self.stop("the master did not connect")
                    return
                continue
            if now - self.recorder.stats.last_media_at > s.storage_media_timeout:
                self.stop(f"no media for {s.storage_media_timeout:g} s")
                return
            limit = s.storage_max_session_duration
            if limit and self.connected_at is not None and now - self.connected_at > limit:
                self.stop(f"maximum session duration of {limit:g} s reached")
                return

    async def _on_state(self) -> None:
        state = self.pc.connectionState
        if state == "connected" and self.state is not State.ENDED:
            self.state = State.CONNECTED
            self.connected_at = clock.monotonic()
            self.recorder.stats.last_media_at = self.connected_at
            logger.info("%sconnected", self.prefix)
        elif state in ("failed", "closed") and self.state is not State.ENDED:
            self.stop(f"peer connection {state}")

    # -- media -------------------------------------------------------------------------------------

    def _on_video(self, annexb: bytes, rtp_ts: int) -> None:
        self.recorder.on_video(annexb, rtp_ts)
        for listener in self.video_listeners:
            listener(annexb, rtp_ts)

    def _on_track(self, track: MediaStreamTrack) -> None:
        if track.kind == "audio":
            self._spawn(self._read_audio(track), "storage audio")

    async def _read_audio(self, track: MediaStreamTrack) -> None:
        with contextlib.suppress(MediaStreamError, asyncio.CancelledError):
            while True:
                frame = await track.recv()
                self.recorder.on_audio(frame)  # type: ignore[arg-type]

    def request_keyframe(self) -> bool:
        return tap.request_keyframe(self.video.receiver)

    # -- signaling ---------------------------------------------------------------------------------

    async def on_message(self, message_type: str, payload: str) -> None:
        if self.state is State.ENDED:
            raise InvalidArgumentException("This storage session has ended; join again.")
        if message_type == "SDP_ANSWER":
            try:
                await self.peer.on_answer(payload)
            except InvalidArgumentException as exc:
                self.stop(f"unusable answer: {exc.message}")
                raise
        elif message_type == "ICE_CANDIDATE":
            await self.peer.on_candidate(payload)
        else:
            raise InvalidArgumentException(
                f"The storage session does not accept {message_type[:40]} messages."
            )

    def stats(self) -> dict[str, Any]:
        return {
            "channel": self.channel.name,
            "stream": self.stream.name,
            "role": "master",
            "session": self.number,
            "state": self.state.value,
            "connected_seconds": (clock.monotonic() - self.connected_at)
            if self.connected_at
            else 0.0,
            **self.recorder.stats.as_dict(),
        }
