"""The storage session's audio path alone: the camera's Opus packets decoded by ``OpusIn`` in
batches of five and the frames AAC-encoded by ``AacEncoder`` (channels chosen as the recorder
chooses them), in one thread, without network or event loop. CPU (process time) per second of
audio, best of ``--repeat``; source trees alternated in subprocesses::

    python -m bench.audio_path [--seconds 20] [--rounds 5] [--src DIR ...]

With ``--sessions N`` the path runs as the storage sessions run it instead: N sessions' packets
arrive on an event loop in real time (one per session every 20 ms), each session's ``OpusIn``
hands its batches to a ``Recorder`` (fragments discarded) through the media pool, as a master
session wires them while nobody listens live; CPU of the whole process per session-second.

``--src DIR`` runs ``DIR/src``'s openkvs (``.`` is this tree).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from .common import ROOT


def measure(seconds: float, repeat: int) -> dict[str, float]:
    from openkvs.media.aac import AacEncoder, is_dual_mono
    from openkvs.webrtc.opus_in import BATCH, OpusIn

    from .media import LOOP_SECONDS, camera_media

    _video, audio = camera_media()
    loops = max(1, round(seconds / LOOP_SECONDS))
    packets = [
        (bytes(a.data), int(round((k * LOOP_SECONDS * 1000 + a.pts_ms) * 48)))
        for k in range(loops)
        for a in audio
    ]
    audio_s = len(packets) * 0.02
    best = float("inf")
    pool = ThreadPoolExecutor(1)
    for _ in range(repeat):
        opus = OpusIn(pool, lambda frames: None)
        aac: AacEncoder | None = None
        t0 = time.process_time()
        for i in range(0, len(packets), BATCH):
            frames, _silent = opus._decode_sync(packets[i : i + BATCH])
            if aac is None:
                aac = AacEncoder(1 if is_dual_mono(frames) else 2)
            aac.encode(frames)
        best = min(best, time.process_time() - t0)
    pool.shutdown()
    return {"ms_per_audio_second": round(1000 * best / audio_s, 3), "audio_s": audio_s}


class _Discard:
    async def append(self, stream: object, data: bytes, **kw: object) -> object:
        raise RuntimeError("no fragments expected")


def measure_live(sessions: int, seconds: float) -> dict[str, float]:
    import asyncio
    import inspect

    from openkvs.records import Stream
    from openkvs.webrtc.opus_in import OpusIn
    from openkvs.webrtc.recorder import Recorder

    from .media import LOOP_SECONDS, camera_media

    _video, audio = camera_media()
    packets = [
        (bytes(a.data), int(round((k * LOOP_SECONDS * 1000 + a.pts_ms) * 48)))
        for k in range(int(seconds // LOOP_SECONDS) + 2)
        for a in audio
    ]
    staged = "stage" in inspect.signature(OpusIn).parameters

    async def run() -> dict[str, float]:
        pool = ThreadPoolExecutor(max(2, os.cpu_count() or 2))
        pairs = []
        for i in range(sessions):
            stream = Stream(i, f"arn:{i}", f"s{i}", None, None, "", "1", "ACTIVE", 0.0, 1, {})
            rec = Recorder(stream, _Discard(), pool, target_ms=2000, request_keyframe=lambda: False)
            rec.start()
            kw = {"stage": rec.audio_stage} if staged else {}
            pairs.append((rec, OpusIn(pool, rec.on_audio, **kw)))
        loop = asyncio.get_running_loop()
        start = loop.time()
        n = int(seconds / 0.02)
        c0 = time.process_time()
        for k in range(n):
            await asyncio.sleep(max(0.0, start + k * 0.02 - loop.time()))
            data, ts = packets[k]
            for rec, opus in pairs:
                rec.audio_arrived(ts)
                opus.add(data, ts)
        c1 = time.process_time()
        for rec, opus in pairs:
            await opus.close()
            await rec.close()
        pool.shutdown()
        return {
            "cpu_per_session_second": round((c1 - c0) / (n * 0.02 * sessions), 5),
            "aac_frames": sum(r.stats.aac_frames for r, _ in pairs),
            "staged": staged,
        }

    return asyncio.run(run())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seconds", type=float, default=20.0)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--src", type=Path, action="append", default=None)
    ap.add_argument("--sessions", type=int, default=0)
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        if args.sessions:
            print(json.dumps(measure_live(args.sessions, args.seconds)), flush=True)
        else:
            print(json.dumps(measure(args.seconds, args.repeat)), flush=True)
        return
    key = "cpu_per_session_second" if args.sessions else "ms_per_audio_second"
    trees = args.src or [ROOT]
    results: dict[str, list[float]] = {str(t): [] for t in trees}
    for r in range(args.rounds):
        for tree in trees if r % 2 == 0 else list(reversed(trees)):
            env = {**os.environ, "PYTHONPATH": f"{tree.resolve() / 'src'}{os.pathsep}{ROOT}"}
            out = subprocess.run(
                [sys.executable, "-m", "bench.audio_path", "--child"]
                + ["--seconds", str(args.seconds), "--repeat", str(args.repeat)]
                + ["--sessions", str(args.sessions)],
                capture_output=True,
                text=True,
                env=env,
                cwd=ROOT,
                check=True,
            ).stdout
            got = json.loads(out.strip().splitlines()[-1])
            results[str(tree)].append(got[key])
            print(json.dumps({"src": str(tree), "round": r + 1, **got}), flush=True)
    for tree, xs in results.items():
        print(json.dumps({"src": tree, f"median_{key}": statistics.median(xs), "all": xs}))


if __name__ == "__main__":
    main()
