"""Run N synthetic cameras (aiortc, pre-encoded H.264 + Opus) against an openkvs server through
real signaling and JoinStorageSession. Used by the ingest benchmarks as a separate process.

    python -m bench.camera --port P --http-port H --data-dir D --channels a,b,c --seconds 20
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from pathlib import Path

from tests.mediagen import h264_clip, opus_packets
from tests.webrtc.harness import Camera
from tests.webrtc.procserver import ProcessServer


def clip_720p() -> tuple:  # type: ignore[type-arg]
    # ≈2 Mb/s 1280x720 30 fps main profile, 1 s GOP.
    return h264_clip(
        width=1280, height=720, seconds=4.0, profile="main", noise=2, crf=29, motion=True
    )


async def run(args: argparse.Namespace) -> dict[str, object]:
    srv = ProcessServer(Path(args.data_dir))
    srv.port, srv.http_port = args.port, args.http_port
    video = clip_720p()
    audio = opus_packets(4.0)
    loops = max(1, int(args.seconds / 4.0) + 2)
    cams = [Camera(srv, arn, video, audio, loops=loops) for arn in args.channels.split(",")]  # type: ignore[arg-type]
    for c in cams:
        await c.connect()
    await asyncio.gather(*(asyncio.to_thread(c.join) for c in cams))
    t0 = time.monotonic()
    print(json.dumps({"event": "joined", "t": t0}), flush=True)
    await asyncio.sleep(args.seconds)
    sent = [len(c.master.video_track.sent) for c in cams if c.master.video_track]
    for c in cams:
        await c.close()
    srv.stop()
    return {"event": "done", "video_frames_sent": sent, "seconds": time.monotonic() - t0}


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--http-port", type=int, required=True)
    p.add_argument("--data-dir", required=True)
    p.add_argument("--channels", required=True)
    p.add_argument("--seconds", type=float, default=20.0)
    args = p.parse_args()
    print(json.dumps(asyncio.run(run(args))), flush=True)


if __name__ == "__main__":
    sys.exit(main())
