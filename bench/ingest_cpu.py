"""Server CPU per stream-second for N concurrent storage sessions (720p30 ≈2 Mb/s + Opus each).

python -m bench.ingest_cpu --sessions 1 8 --seconds 20
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from tests.webrtc.procserver import ProcessServer

TICKS = os.sysconf("SC_CLK_TCK")
WORKERS = int(os.environ.get("BENCH_WEBRTC_WORKERS", "0"))


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS


def tree_cpu_seconds(pid: int) -> float:
    """CPU of a process and its live children (storage worker processes)."""
    total = cpu_seconds(pid)
    for task in Path(f"/proc/{pid}/task").iterdir():
        for child in (task / "children").read_text().split():
            try:
                total += tree_cpu_seconds(int(child))
            except FileNotFoundError:
                pass
    return total


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def read_event(stream: Any, name: str) -> dict[str, Any]:
    for line in iter(stream.readline, ""):
        try:
            event: dict[str, Any] = json.loads(line)
        except ValueError:
            continue
        if event.get("event") == name:
            return event
    raise RuntimeError(f"the camera process ended before {name!r}")


def measure(n: int, seconds: float, warmup: float = 4.0) -> dict[str, object]:
    with tempfile.TemporaryDirectory() as tmp:
        srv = ProcessServer(Path(tmp) / "data", log_level="warning", webrtc_workers=str(WORKERS))
        srv.start()
        try:
            return _measure(srv, n, seconds, warmup)
        finally:
            srv.stop()


def _measure(srv: ProcessServer, n: int, seconds: float, warmup: float) -> dict[str, object]:
    if True:
        assert srv.proc is not None
        kv = srv.client("kinesisvideo")
        arns = []
        for i in range(n):
            ch = kv.create_signaling_channel(ChannelName=f"bench-{i}")["ChannelARN"]
            st = kv.create_stream(StreamName=f"bench-{i}", DataRetentionInHours=1)["StreamARN"]
            kv.update_media_storage_configuration(
                ChannelARN=ch, MediaStorageConfiguration={"StreamARN": st, "Status": "ENABLED"}
            )
            arns.append(ch)
        cam = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "bench.camera",
                "--port",
                str(srv.port),
                "--http-port",
                str(srv.http_port),
                "--data-dir",
                str(srv.data_dir),
                "--channels",
                ",".join(arns),
                "--seconds",
                str(seconds + warmup),
            ],
            stdout=subprocess.PIPE,
            text=True,
        )
        assert cam.stdout is not None
        read_event(cam.stdout, "joined")
        time.sleep(warmup)
        c0, t0, r0 = tree_cpu_seconds(srv.proc.pid), time.monotonic(), rss_mb(srv.proc.pid)
        time.sleep(seconds)
        c1, t1, r1 = tree_cpu_seconds(srv.proc.pid), time.monotonic(), rss_mb(srv.proc.pid)
        done = read_event(cam.stdout, "done")
        cam.wait(60)
        cpu = c1 - c0
        return {
            "sessions": n,
            "window_s": round(t1 - t0, 2),
            "server_cpu_s": round(cpu, 3),
            "cpu_per_stream_second": round(cpu / ((t1 - t0) * n), 4),
            "server_cpu_percent_of_core": round(100 * cpu / (t1 - t0), 1),
            "rss_mb": round(r1, 1),
            "rss_growth_mb_in_window": round(r1 - r0, 1),
            "frames_sent": done["video_frames_sent"],
        }


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--sessions", type=int, nargs="+", default=[1, 8])
    p.add_argument("--seconds", type=float, default=15.0)
    args = p.parse_args()
    for n in args.sessions:
        print(json.dumps(measure(n, args.seconds)), flush=True)


if __name__ == "__main__":
    main()
