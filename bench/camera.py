"""Run N synthetic cameras (aiortc, pre-encoded H.264 + Opus) against an openkvs server through
real signaling and JoinStorageSession. Used by the ingest benchmarks as a separate process.

    python -m bench.camera --port P --http-port H --data-dir D --channels a,b --send-seconds 12
    python -m bench.camera --offer-url http://127.0.0.1:PORT --send-seconds 12   (baseline peer)

Each camera sends exactly ``--send-seconds`` of media (whole 4 s loops), stays connected for
``--linger`` seconds, prints a ``sent`` event with what it sent, then closes. Events are JSON
lines on stdout; a ``first_frame`` event says when each camera's first video frame was due.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from pathlib import Path
from typing import Any

from tests.webrtc.fake_master import FakeMaster, PacketTrack
from tests.webrtc.harness import Camera
from tests.webrtc.procserver import ProcessServer

from bench.media import LOOP_SECONDS, camera_media


class TimedTrack(PacketTrack):
    """A PacketTrack that also notes when each frame actually left (wall clock) and how late."""

    def __init__(self, kind: str, frames: Any, *, loops: int = 1) -> None:
        super().__init__(kind, frames, loops=loops)
        self.walls: list[tuple[float, float]] = []  # (pts_ms, wall time it was handed over)
        self.max_lag = 0.0

    async def recv(self) -> Any:
        packet = await super().recv()
        pts_ms = self.sent[-1][1]
        start = getattr(self, "_start", None)
        if start is not None:
            self.max_lag = max(self.max_lag, time.monotonic() - (start + pts_ms / 1000))
        self.walls.append((round(pts_ms, 2), round(time.time(), 4)))
        return packet


def timed(master: FakeMaster, video: Any, loops: int) -> None:
    """Swap the camera's video track for a TimedTrack (before the offer is answered)."""
    master.video_track = TimedTrack("video", video, loops=loops)


def emit(event: dict[str, Any]) -> None:
    print(json.dumps(event), flush=True)


def _first_frame_wall(track: PacketTrack | None) -> float | None:
    start = getattr(track, "_start", None) if track is not None else None
    if start is None:
        return None
    return time.time() - (time.monotonic() - start)


def sent_stats(master: FakeMaster) -> dict[str, Any]:
    v, a = master.video_track, master.audio_track
    return {
        "video_frames": len(v.sent) if v else 0,
        "video_bytes": sum(len(d) for d, _ in v.sent) if v else 0,
        "audio_frames": len(a.sent) if a else 0,
        "audio_bytes": sum(len(d) for d, _ in a.sent) if a else 0,
        "first_video_wall": _first_frame_wall(v),
        "max_send_lag_ms": round(v.max_lag * 1000, 1) if isinstance(v, TimedTrack) else None,
        "send_walls": v.walls if isinstance(v, TimedTrack) else None,
    }


async def run(args: argparse.Namespace) -> dict[str, object]:
    srv = ProcessServer(Path(args.data_dir))
    srv.port, srv.http_port = args.port, args.http_port
    video, audio = camera_media()
    loops = max(1, round(args.send_seconds / LOOP_SECONDS))
    cams = [Camera(srv, arn, video, audio, loops=loops) for arn in args.channels.split(",")]  # type: ignore[arg-type]
    for c in cams:
        timed(c.master, video, loops)
    for i, c in enumerate(cams):

        def report(i: int = i, c: Camera = c) -> None:
            print(
                json.dumps(
                    {
                        "event": "state",
                        "camera": i,
                        "state": c.master.pc.connectionState,
                        "ice": c.master.pc.iceConnectionState,
                        "t": time.monotonic(),
                    }
                ),
                file=sys.stderr,
                flush=True,
            )

        c.master.pc.on("connectionstatechange", report)
        await c.connect()
    await asyncio.gather(*(asyncio.to_thread(c.join) for c in cams))
    t0 = time.monotonic()
    emit({"event": "joined", "t": t0, "wall": time.time()})

    async def first_frames() -> None:
        """When each camera's first video frame was due (wall clock), once all are out."""
        walls = [_first_frame_wall(c.master.video_track) for c in cams]
        while None in walls:
            await asyncio.sleep(0.01)
            walls = [_first_frame_wall(c.master.video_track) for c in cams]
        emit({"event": "first_frame", "walls": walls})

    started = asyncio.create_task(first_frames())
    limit = loops * LOOP_SECONDS + 60
    await asyncio.gather(*(c.master.wait_sent(limit) for c in cams), return_exceptions=True)
    started.cancel()
    await asyncio.sleep(args.linger)
    emit({"event": "sent", "cameras": [sent_stats(c.master) for c in cams]})
    for c in cams:
        await c.close()
    srv.stop()
    return {"event": "done"}


async def run_direct(args: argparse.Namespace) -> dict[str, object]:
    """One camera answering an offer fetched over plain HTTP (the baseline receiver's)."""
    import aiohttp

    video, audio = camera_media()
    loops = max(1, round(args.send_seconds / LOOP_SECONDS))
    master = FakeMaster(video, audio, loops=loops)
    timed(master, video, loops)
    async with aiohttp.ClientSession() as http:
        async with http.get(args.offer_url + "/offer") as r:
            offer = await r.text()
        answer = await master.answer(offer)
        async with http.post(args.offer_url + "/answer", data=answer) as r:
            r.raise_for_status()
    emit({"event": "joined", "t": time.monotonic(), "wall": time.time()})
    await master.wait_sent(loops * LOOP_SECONDS + 60)
    await asyncio.sleep(args.linger)
    emit({"event": "sent", "cameras": [sent_stats(master)]})
    await master.close()
    return {"event": "done"}


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--port", type=int)
    p.add_argument("--http-port", type=int)
    p.add_argument("--data-dir")
    p.add_argument("--channels")
    p.add_argument("--send-seconds", type=float, required=True)
    p.add_argument("--linger", type=float, default=1.5)
    p.add_argument("--offer-url")
    args = p.parse_args()
    try:
        if args.offer_url:
            result = asyncio.run(run_direct(args))
        else:
            result = asyncio.run(run(args))
    except Exception as exc:  # noqa: BLE001 - reported to the parent as an event
        emit({"event": "error", "error": repr(exc)})
        raise
    emit(result)


if __name__ == "__main__":
    sys.exit(main())
