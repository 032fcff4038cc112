"""A camera for tests: an aiortc peer that answers the storage session's offer and sends
pre-encoded H.264 (+ Opus) at real-time pace, recording exactly what it sent."""

from __future__ import annotations

import asyncio
import base64
import json
import time
from collections.abc import Sequence
from typing import Any

from aiortc import MediaStreamTrack, RTCConfiguration, RTCPeerConnection, RTCSessionDescription
from aiortc.mediastreams import MediaStreamError
from aiortc.sdp import candidate_from_sdp

from openkvs.testpattern import encoded_packet
from openkvs.webrtc import tap

from ..mediagen import EncodedFrame


class PacketTrack(MediaStreamTrack):
    """Sends pre-encoded packets at their timestamps (real-time pace), optionally looping."""

    def __init__(self, kind: str, frames: Sequence[EncodedFrame], *, loops: int = 1) -> None:
        super().__init__()
        self.kind = kind
        self._frames = list(frames)
        self._loops = loops
        self._i = 0
        self._start: float | None = None
        self.sent: list[tuple[bytes, float]] = []  # (data, pts_ms)
        self._period = (self._frames[-1].pts_ms - self._frames[0].pts_ms) + (
            self._frames[1].pts_ms - self._frames[0].pts_ms
        )

    async def recv(self) -> Any:
        if self.readyState != "live":
            raise MediaStreamError
        n = len(self._frames)
        if self._i >= n * self._loops:
            # Done: stay silent (a real camera would keep going).
            await asyncio.sleep(3600)
            raise MediaStreamError
        loop_no, idx = divmod(self._i, n)
        frame = self._frames[idx]
        self._i += 1
        pts_ms = frame.pts_ms + loop_no * self._period
        if self._start is None:
            self._start = time.monotonic() - pts_ms / 1000
        delay = self._start + pts_ms / 1000 - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
        self.sent.append((frame.data, pts_ms))
        return encoded_packet(self.kind, frame.data, pts_ms)

    def capture_time(self, timestamp: int) -> float | None:
        """Wall-clock time (Unix seconds) at which the frame with this 90 kHz timestamp was
        due, i.e. captured by this camera; None before the first frame."""
        if self._start is None:
            return None
        return time.time() - time.monotonic() + self._start + timestamp / 90000

    @property
    def done(self) -> bool:
        """Every frame has been sent (not merely taken: the last one waits for its time)."""
        return len(self.sent) >= len(self._frames) * self._loops


class FakeMaster:
    def __init__(
        self,
        video: Sequence[EncodedFrame] | None,
        audio: Sequence[EncodedFrame] | None = None,
        *,
        loops: int = 1,
        configuration: RTCConfiguration | None = None,
        clock_offset: float | None = None,
        on_video_report: tap.ReportCallback | None = None,
    ) -> None:
        """``clock_offset``: the video's RTCP sender reports give capture times this many
        seconds off the real ones (a camera whose clock is off; changeable while it runs).
        ``on_video_report``: called with each sender report the received video comes with."""
        self.pc = RTCPeerConnection(configuration)
        self.clock_offset = clock_offset
        self._on_video_report = on_video_report
        self.offer_sdp: str | None = None
        self.video_track = PacketTrack("video", video, loops=loops) if video else None
        self.audio_track = PacketTrack("audio", audio, loops=loops) if audio else None
        self.received_audio: list[Any] = []
        self.received_video: list[Any] = []
        self.pc.on("track", self._on_track)
        self._tasks: set[asyncio.Task[Any]] = set()

    def _on_track(self, track: MediaStreamTrack) -> None:
        sink = self.received_audio if track.kind == "audio" else self.received_video
        t = asyncio.ensure_future(self._drain(track, sink))
        self._tasks.add(t)

    async def _drain(self, track: MediaStreamTrack, sink: list[Any]) -> None:
        try:
            while True:
                sink.append(await track.recv())
        except MediaStreamError:
            pass

    async def answer(self, offer_sdp: str) -> str:
        self.offer_sdp = offer_sdp
        await self.pc.setRemoteDescription(RTCSessionDescription(offer_sdp, "offer"))
        for t in self.pc.getTransceivers():
            if t.kind == "video" and self._on_video_report is not None:
                tap.observe_sender_reports(t.receiver, self._on_video_report)
            if t.kind == "video" and self.video_track is not None:
                t.sender.replaceTrack(self.video_track)
                t.direction = "sendonly"
                if self.clock_offset is not None:
                    tap.map_sender_reports(t.sender, self._shifted_capture_time)
            elif t.kind == "audio" and self.audio_track is not None:
                t.sender.replaceTrack(self.audio_track)
                t.direction = "sendrecv"
        answer = await self.pc.createAnswer()
        await self.pc.setLocalDescription(answer)
        return str(self.pc.localDescription.sdp)

    async def handle(self, message_type: str, payload: str | None) -> tuple[str, str] | None:
        """Handle a storage-session message; return (message_type, payload) to send back."""
        assert payload is not None
        data = json.loads(base64.b64decode(payload))
        if message_type == "SDP_OFFER":
            sdp = await self.answer(data["sdp"])
            return "SDP_ANSWER", base64.b64encode(
                json.dumps({"type": "answer", "sdp": sdp}).encode()
            ).decode()
        if message_type == "ICE_CANDIDATE":
            text = data["candidate"]
            if text.startswith("candidate:"):
                cand = candidate_from_sdp(text[len("candidate:") :])
                cand.sdpMid = data.get("sdpMid")
                cand.sdpMLineIndex = data.get("sdpMLineIndex")
                try:
                    await self.pc.addIceCandidate(cand)
                except Exception:  # noqa: BLE001 - candidates before the offer are harmless to drop
                    pass
        return None

    def _shifted_capture_time(self, timestamp: int) -> float | None:
        assert self.video_track is not None
        captured = self.video_track.capture_time(timestamp)
        return None if captured is None else captured + (self.clock_offset or 0.0)

    async def wait_sent(self, limit: float = 60) -> None:
        async with asyncio.timeout(limit):
            while not all(t is None or t.done for t in (self.video_track, self.audio_track)):
                await asyncio.sleep(0.1)

    async def close(self) -> None:
        for t in self._tasks:
            t.cancel()
        await self.pc.close()
