"""Ingest cost: openkvs vs the baseline (aiortc MediaRecorder) vs the floor, in one run.

openkvs: the server as a process, N cameras in another process (bench.camera) through real
signaling and JoinStorageSession; server CPU from /proc over a window while every camera sends.
A trial also reads the store back (frames stored vs sent, durability, stored bytes), so the
capacity search and the storage-overhead figures use the same function.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import time
from pathlib import Path
from typing import Any

from . import common
from .common import PY, ROOT, cpu_seconds, log, read_event, rss_mb, tree_cpu_seconds, tree_rss_mb
from .media import FPS, LOOP_SECONDS

DURABLE_LIMIT_S = 2.0  # capacity: every fragment durable within this long of its end
LAST_TRIALS: list[dict[str, Any]] = []  # this run's ingest trials (quick capacity reuses them)


def send_seconds_for(warmup: float, window: float) -> float:
    return math.ceil((warmup + window + 1.0) / LOOP_SECONDS) * LOOP_SECONDS


def trial(
    n: int,
    *,
    window: float,
    warmup: float = 3.0,
    settings: dict[str, str] | None = None,
    profile_out: Path | None = None,
    linger: float = 3.0,
    storage_audio: str | None = None,
) -> dict[str, Any]:
    """N concurrent storage sessions; CPU and RSS over ``window`` s; then the store read back.
    ``storage_audio``: the server's setting ("aac", its default, or "opus")."""
    settings = dict(settings or {})
    if storage_audio is not None:
        settings["storage_audio"] = storage_audio
    with common.tmpdir("ingest-") as tmp, common.server(tmp / "data", **settings) as srv:
        assert srv.proc is not None
        pid = srv.proc.pid
        arns = common.provision(srv, n)
        names = common.stream_names(arns)
        rss_idle = tree_rss_mb(pid)
        send_s = send_seconds_for(warmup, window)
        t_start = time.monotonic()
        cam = common.start_cameras(srv, arns, send_seconds=send_s, linger=linger)
        assert cam.stdout is not None
        try:
            read_event(cam.stdout, "joined")
            joined_s = time.monotonic() - t_start
            time.sleep(warmup)
            spies = []
            if profile_out is not None:
                # Two samplers on the same window: every busy thread, and the GIL holder only.
                spies = [
                    _start_pyspy(pid, window, profile_out),
                    _start_pyspy(pid, window, profile_out.with_suffix(".gil.txt"), gil=True),
                ]
            # The server's CPU and memory include its storage worker processes, if any.
            c0, t0, cc0 = tree_cpu_seconds(pid), time.monotonic(), cpu_seconds(cam.pid)
            w0 = time.time()
            time.sleep(window)
            c1, t1, cc1 = tree_cpu_seconds(pid), time.monotonic(), cpu_seconds(cam.pid)
            w1 = time.time()
            rss_busy = tree_rss_mb(pid)
            for spy in spies:
                if spy is not None:
                    spy.wait(window + 60)
            sent = read_event(cam.stdout, "sent")["cameras"]
            read_event(cam.stdout, "done")
            cam.wait(60)
        finally:
            if cam.poll() is None:
                cam.kill()
                cam.wait()
            cam.stdout.close()
        common.wait_sessions_ended(srv, names)
        srv.stop()  # flushes whatever is still open
        store = common.read_back(srv.data_dir, names, [c.get("send_walls") for c in sent])
    elapsed = t1 - t0
    cpu = c1 - c0
    per_stream = []
    lost = 0
    durable: list[float] = []
    durable_media: list[float] = []
    stored_bytes = received_bytes = payload = 0
    for name, s in zip(names, sent, strict=True):
        st = store[name]
        lost += max(0, s["video_frames"] - st["video_frames"])
        durable += st["durable_after_s"]
        durable_media += st["durable_after_media_clock_s"]
        stored_bytes += st["stored_bytes"]
        received_bytes += s["video_bytes"] + s["audio_bytes"]
        payload += st["video_payload_bytes"] + st["audio_payload_bytes"]
        per_stream.append(
            {
                "sent_video_frames": s["video_frames"],
                "stored_video_frames": st["video_frames"],
                "fragments": st["fragments"],
            }
        )
    # Video frames the cameras actually sent in the window (on a loaded machine the camera
    # process may fall behind, and the server then has less to do).
    in_window = sum(
        sum(1 for _, wall in (s.get("send_walls") or []) if w0 <= wall < w1) for s in sent
    )
    frames_equal = all(p["sent_video_frames"] == p["stored_video_frames"] for p in per_stream)
    return {
        "sessions": n,
        "webrtc_workers": int(settings.get("webrtc_workers", 0)),
        "storage_audio": settings.get("storage_audio", "aac"),
        "window_s": round(elapsed, 2),
        "join_all_s": round(joined_s, 2),
        "server_cpu_s": round(cpu, 3),
        "cpu_per_stream_second": round(cpu / (elapsed * n), 4),
        "window_video_frames": in_window,
        "cpu_per_sent_stream_second": round(cpu * FPS / in_window, 4) if in_window else None,
        "server_cpu_percent_of_core": round(100 * cpu / elapsed, 1),
        "camera_cpu_percent_of_core": round(100 * (cc1 - cc0) / elapsed, 1),
        "rss_idle_mb": round(rss_idle, 1),
        "rss_busy_mb": round(rss_busy, 1),
        "rss_per_session_mb": round((rss_busy - rss_idle) / n, 2),
        "frames_sent": sum(p["sent_video_frames"] for p in per_stream),
        "frames_stored": sum(p["stored_video_frames"] for p in per_stream),
        "frames_lost": lost,
        "frames_equal": frames_equal,
        "fragments": sum(p["fragments"] for p in per_stream),
        "durable_after": common.summary_ms(durable),
        "durable_within_limit": bool(durable) and max(durable) <= DURABLE_LIMIT_S,
        "durable_after_media_clock": common.summary_ms(durable_media),
        "camera_max_send_lag_ms": max((c.get("max_send_lag_ms") or 0.0) for c in sent),
        "loadavg_end": round(os.getloadavg()[0], 2),
        "stored_bytes": stored_bytes,
        "received_media_bytes": received_bytes,
        "stored_payload_bytes": payload,
        "per_stream": per_stream if n <= 4 else None,
    }


def _start_pyspy(
    pid: int, seconds: float, out: Path, gil: bool = False
) -> subprocess.Popen[bytes] | None:
    exe = _pyspy()
    if exe is None:
        return None
    return subprocess.Popen(
        [
            *(["sudo", "-n"] if os.geteuid() != 0 else []),
            str(exe),
            "record",
            "--pid",
            str(pid),
            "--duration",
            str(int(seconds)),
            "--rate",
            "200",
            "--nonblocking",
            "--threads",
            *(["--gil"] if gil else []),
            "--format",
            "raw",
            "--output",
            str(out),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


def _pyspy() -> Path | None:
    local = Path(PY).parent / "py-spy"
    if local.exists():
        return local
    return common.ensure_tool("py-spy", "py-spy")


def baseline(*, window: float, warmup: float = 3.0) -> dict[str, Any]:
    """aiortc's MediaRecorder (decode + libx264/AAC re-encode to MP4) recording one camera."""
    with common.tmpdir("baseline-") as tmp:
        rec = subprocess.Popen(
            [PY, "-m", "bench.baseline", "--out", str(tmp / "out.mp4")],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            cwd=ROOT,
        )
        assert rec.stdout is not None and rec.stdin is not None
        cam: subprocess.Popen[str] | None = None
        try:
            url = read_event(rec.stdout, "ready")["url"]
            send_s = send_seconds_for(warmup, window)
            cam = subprocess.Popen(
                [PY, "-m", "bench.camera", "--offer-url", url, "--send-seconds", str(send_s)],
                stdout=subprocess.PIPE,
                text=True,
                cwd=ROOT,
            )
            assert cam.stdout is not None
            read_event(cam.stdout, "joined")
            time.sleep(warmup)

            def frames_so_far() -> int:
                assert rec.stdin is not None and rec.stdout is not None
                rec.stdin.write("count\n")
                rec.stdin.flush()
                return int(read_event(rec.stdout, "count")["video_frames"])

            f0 = frames_so_far()
            c0, t0 = cpu_seconds(rec.pid), time.monotonic()
            time.sleep(window)
            c1, t1 = cpu_seconds(rec.pid), time.monotonic()
            f1 = frames_so_far()
            rss = rss_mb(rec.pid)
            sent = read_event(cam.stdout, "sent")["cameras"][0]
            rec.stdin.write("stop\n")
            rec.stdin.flush()
            done = read_event(rec.stdout, "done")
            read_event(cam.stdout, "done")
        finally:
            for p in (cam, rec):
                if p is not None and p.poll() is None:
                    p.kill()
                    p.wait()
    return {
        "window_s": round(t1 - t0, 2),
        "cpu_s": round(c1 - c0, 3),
        "cpu_per_stream_second": round((c1 - c0) / (t1 - t0), 4),
        "cpu_percent_of_core": round(100 * (c1 - c0) / (t1 - t0), 1),
        "rss_mb": round(rss, 1),
        "frames_sent": sent["video_frames"],
        "frames_recorded": done["video_frames"],
        "frames_recorded_in_window": f1 - f0,
        "cpu_per_recorded_stream_second": round((c1 - c0) / max(1e-9, (f1 - f0) / FPS), 4)
        if f1 > f0
        else None,
        "out_bytes": done["out_bytes"],
    }


def floor(seconds: float, module: str = "bench.floor") -> dict[str, Any]:
    out = subprocess.run(
        [PY, "-m", module, "--seconds", str(seconds)],
        capture_output=True,
        text=True,
        cwd=ROOT,
        check=True,
    )
    import json

    for line in out.stdout.splitlines():
        if line.startswith("{"):
            data: dict[str, Any] = json.loads(line)
            return data
    raise RuntimeError(out.stderr[-2000:])


def run(quick: bool) -> dict[str, Any]:
    window = 4.0 if quick else 15.0
    warmup = 2.0 if quick else 3.0
    log(f"ingest: openkvs, 1 session, {window:g} s window")
    okvs = trial(1, window=window, warmup=warmup, linger=2.0 if quick else 3.0)
    LAST_TRIALS.append(okvs)
    log(f"ingest: openkvs {okvs['cpu_per_stream_second']} CPU-s/stream-s; baseline next")
    base = baseline(window=window, warmup=warmup)
    log(f"ingest: baseline {base['cpu_per_stream_second']} CPU-s/stream-s; floor next")
    fl = floor(4.0 if quick else 20.0)
    log("ingest: audio codec options next")
    audio = floor(2.0 if quick else 10.0, "bench.audio")
    cost = okvs["cpu_per_stream_second"]
    floor_total = fl["video_and_audio"]["cpu_per_stream_second"]
    floor_video = fl["video_only"]["cpu_per_stream_second"]
    return {
        "openkvs": okvs,
        "baseline": base,
        "floor": fl,
        "audio": audio,
        "ratio_to_baseline": round(cost / base["cpu_per_stream_second"], 4),
        "ratio_to_floor": round(cost / floor_total, 2),
        "ratio_to_video_only_floor": round(cost / floor_video, 1),
        "cpus": os.cpu_count(),
    }


def compare_storage_audio(
    n: int, *, rounds: int, window: float, warmup: float = 3.0
) -> dict[str, Any]:
    """Server CPU per stream-second with ``storage_audio`` aac (decode + AAC encode) and opus
    (packets stored as received), ``rounds`` trials of ``n`` sessions each, alternated so that
    the machine's other load falls on both alike."""
    runs: dict[str, list[dict[str, Any]]] = {"aac": [], "opus": []}
    for r in range(rounds):
        order = ("aac", "opus") if r % 2 == 0 else ("opus", "aac")
        for mode in order:
            load = round(os.getloadavg()[0], 2)
            res = trial(n, window=window, warmup=warmup, storage_audio=mode)
            res["loadavg_start"] = load
            runs[mode].append(res)
            log(
                f"storage_audio={mode}: {res['cpu_per_stream_second']} CPU-s/stream-s "
                f"({n} sessions, load {load} → {res['loadavg_end']}, "
                f"frames lost {res['frames_lost']})"
            )
    out: dict[str, Any] = {"sessions": n, "window_s": window, "rounds": rounds}
    for mode, trials in runs.items():
        costs = sorted(t["cpu_per_stream_second"] for t in trials)
        out[mode] = {
            "cpu_per_stream_second": costs,
            "median": costs[len(costs) // 2],
            "loadavg": [[t["loadavg_start"], t["loadavg_end"]] for t in trials],
            "frames_lost": sum(t["frames_lost"] for t in trials),
            "rss_per_session_mb": [t["rss_per_session_mb"] for t in trials],
        }
    out["opus_to_aac"] = round(out["opus"]["median"] / out["aac"]["median"], 3)
    return out


def main(argv: list[str] | None = None) -> int:
    """``python -m bench.ingest --compare-storage-audio [--sessions 8] [--rounds 3]``."""
    p = argparse.ArgumentParser(prog="python -m bench.ingest")
    p.add_argument("--compare-storage-audio", action="store_true", required=True)
    p.add_argument("--sessions", type=int, default=8)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--window", type=float, default=15.0)
    args = p.parse_args(argv)
    result = compare_storage_audio(args.sessions, rounds=args.rounds, window=args.window)
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
