"""Drive a storage session the way a camera does: signaling WebSocket, JoinStorageSession, answer."""

from __future__ import annotations

import asyncio
import base64
import json
import subprocess
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from aiortc import RTCConfiguration

from openkvs.media import h264, mkv
from openkvs.records import Fragment
from openkvs.webrtc import tap

from ..mediagen import EncodedFrame
from ..signaling.kvs import Client, enable_storage, setup_channel, unb64json
from ..support import ServerThread
from .fake_master import FakeMaster


class Camera:
    """A FakeMaster connected through openkvs's real signaling."""

    def __init__(
        self,
        server: ServerThread,
        channel_arn: str,
        video: Sequence[EncodedFrame] | None,
        audio: Sequence[EncodedFrame] | None = None,
        *,
        loops: int = 1,
        client_id: str | None = None,
        configuration: RTCConfiguration | None = None,
        clock_offset: float | None = None,
        on_video_report: tap.ReportCallback | None = None,
    ) -> None:
        self.client_id = client_id
        self.server = server
        self.channel_arn = channel_arn
        self.master = FakeMaster(
            video,
            audio,
            loops=loops,
            configuration=configuration,
            clock_offset=clock_offset,
            on_video_report=on_video_report,
        )
        # (perf_counter, messageType, decoded payload) of every storage-session message
        self.messages: list[tuple[float, str, Any]] = []
        self.client: Client | None = None
        self.offers = 0
        self.offer_at: float | None = None
        self.status: list[dict[str, Any]] = []
        self._pump: asyncio.Task[None] | None = None

    async def connect(self) -> None:
        self.client = await Client.connect(self.server, self.channel_arn, self.client_id)
        self._pump = asyncio.ensure_future(self._run())

    async def _run(self) -> None:
        assert self.client is not None
        try:
            while True:
                msg = await self.client.recv(timeout=3600)
                kind = msg.get("messageType")
                if kind == "STATUS_RESPONSE":
                    self.status.append(msg)
                    continue
                assert "senderClientId" not in msg, msg  # storage-session messages carry none
                payload = msg.get("messagePayload")
                if payload:
                    self.messages.append((time.perf_counter(), kind, unb64json(payload)))
                if kind == "SDP_OFFER":
                    self.offers += 1
                    self.offer_at = time.perf_counter()
                reply = await self.master.handle(kind, msg.get("messagePayload"))
                if reply is not None:
                    await self.client.send(reply[0], reply[1], correlation_id=f"c{self.offers}")
        except (ConnectionError, asyncio.CancelledError):
            pass

    def join(self) -> float:
        """Call JoinStorageSession(AsViewer) with boto3; return when it was sent (perf_counter)."""
        kv = self.server.client("kinesisvideo")
        role = "MASTER" if self.client_id is None else "VIEWER"
        eps = kv.get_signaling_channel_endpoint(
            ChannelARN=self.channel_arn,
            SingleMasterChannelEndpointConfiguration={"Protocols": ["WEBRTC"], "Role": role},
        )["ResourceEndpointList"]
        storage = self.server.client(
            "kinesis-video-webrtc-storage", endpoint=eps[0]["ResourceEndpoint"]
        )
        t0 = time.perf_counter()
        if self.client_id is None:
            storage.join_storage_session(channelArn=self.channel_arn)
        else:
            storage.join_storage_session_as_viewer(
                channelArn=self.channel_arn, clientId=self.client_id
            )
        return t0

    async def close(self) -> None:
        if self.client is not None:
            await self.client.close()
        if self._pump is not None:
            self._pump.cancel()
        await self.master.close()


def storage_channel(server: ServerThread, name: str) -> tuple[str, str]:
    ch = setup_channel(server, name)
    return ch, enable_storage(server, ch, f"{name}-stream")


def fragments_of(server: ServerThread, stream_name: str) -> list[Fragment]:
    services = server.services
    stream = services.control.get_stream(name=stream_name)
    return server.call(services.fragments.list_fragments(stream, limit=10000))


def fragment_bytes(server: ServerThread, fragment: Fragment) -> bytes:
    return server.call(server.services.fragments.read(fragment))


async def wait_for(predicate: Any, limit: float = 30.0, step: float = 0.1) -> None:
    async with asyncio.timeout(limit):
        while not predicate():
            await asyncio.sleep(step)


def sessions(server: ServerThread) -> Any:
    return server.services.sessions


def stored_video(
    server: ServerThread, frags: list[Fragment]
) -> tuple[list[bytes], int, list[mkv.Fragment]]:
    video: list[bytes] = []
    audio = 0
    parsed_all = []
    for f in frags:
        parsed = mkv.read_fragment(fragment_bytes(server, f))
        parsed_all.append(parsed)
        for b in parsed.blocks:
            if b.track == 1:
                video.append(b.data)
            else:
                audio += 1
    return video, audio, parsed_all


def sent_video(camera: Camera) -> list[bytes]:
    track = camera.master.video_track
    assert track is not None
    return [h264.to_avcc(h264.split_annexb(data)) for data, _ in track.sent]


def ffprobe_fragment(path: Path) -> dict[str, Any]:
    out = subprocess.run(
        ["ffprobe", "-v", "error", "-show_streams", "-count_frames", "-of", "json", str(path)],
        capture_output=True,
        text=True,
        check=True,
    )
    data: dict[str, Any] = json.loads(out.stdout)
    return data


def ffmpeg_decode_errors(path: Path) -> str:
    res = subprocess.run(
        ["ffmpeg", "-v", "error", "-i", str(path), "-f", "null", "-"],
        capture_output=True,
        text=True,
    )
    return res.stderr if res.returncode == 0 else f"exit {res.returncode}: {res.stderr}"


def offer_tag(sdp: str) -> str:
    """The session tag on an offer's mids (``a=mid:<tag>-<mid>``)."""
    mid = next(line for line in sdp.splitlines() if line.startswith("a=mid:"))
    return mid[len("a=mid:") :].partition("-")[0]


def offer_session(payload: str) -> int:
    """The number of the session that sent an SDP_OFFER (its tag is ``s`` + base 36)."""
    sdp = json.loads(base64.b64decode(payload))["sdp"]
    return int(offer_tag(sdp)[1:], 36)
