"""The baseline receiver: what a Python developer would write to record a WebRTC camera —
an aiortc RTCPeerConnection with aiortc's ``MediaRecorder`` (decode, then re-encode to H.264 + AAC
in an MP4). It offers over plain HTTP on loopback (``GET /offer``, ``POST /answer``) so the same
camera (bench.camera --offer-url) can answer it.

    python -m bench.baseline --out /tmp/x.mp4   (prints {"event": "ready", "url": ...}; send
                                                  "stop" on stdin to finish the recording)
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
from typing import Any

from aiohttp import web
from aiortc import MediaStreamTrack, RTCPeerConnection, RTCRtpReceiver, RTCSessionDescription
from aiortc.contrib.media import MediaRecorder


class Counting(MediaStreamTrack):
    """Passes a track's frames through, counting them."""

    def __init__(self, source: MediaStreamTrack) -> None:
        super().__init__()
        self.kind = source.kind
        self._source = source
        self.frames = 0

    async def recv(self) -> Any:
        frame = await self._source.recv()
        self.frames += 1
        return frame


def _size(path: str) -> int:
    return os.path.getsize(path) if os.path.exists(path) else 0


async def run(out: str) -> None:
    pc = RTCPeerConnection()
    video = pc.addTransceiver("video", direction="recvonly")
    pc.addTransceiver("audio", direction="recvonly")
    caps = RTCRtpReceiver.getCapabilities("video")
    video.setCodecPreferences([c for c in caps.codecs if c.mimeType.lower() == "video/h264"])
    recorder = MediaRecorder(out)
    counted: list[Counting] = []
    answered = asyncio.Event()

    @pc.on("track")
    def on_track(track: MediaStreamTrack) -> None:
        c = Counting(track)
        counted.append(c)
        recorder.addTrack(c)

    await pc.setLocalDescription(await pc.createOffer())

    async def offer(_: web.Request) -> web.Response:
        return web.Response(text=pc.localDescription.sdp)

    async def answer(request: web.Request) -> web.Response:
        sdp = await request.text()
        await pc.setRemoteDescription(RTCSessionDescription(sdp, "answer"))
        await recorder.start()
        answered.set()
        return web.Response(text="ok")

    app = web.Application()
    app.router.add_get("/offer", offer)
    app.router.add_post("/answer", answer)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    print(json.dumps({"event": "ready", "url": f"http://127.0.0.1:{port}"}), flush=True)
    loop = asyncio.get_running_loop()
    while True:
        line = (await loop.run_in_executor(None, sys.stdin.readline)).strip()
        if line == "count":
            counts = {c.kind: c.frames for c in counted}
            print(
                json.dumps({"event": "count", "video_frames": counts.get("video", 0)}), flush=True
            )
            continue
        break
    await recorder.stop()
    await pc.close()
    await runner.cleanup()
    frames = {c.kind: c.frames for c in counted}
    size = await asyncio.to_thread(_size, out)
    print(
        json.dumps(
            {
                "event": "done",
                "video_frames": frames.get("video", 0),
                "audio_frames": frames.get("audio", 0),
                "out_bytes": size,
            }
        ),
        flush=True,
    )


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--out", required=True)
    args = p.parse_args()
    asyncio.run(run(args.out))


if __name__ == "__main__":
    sys.exit(main())
