"""Helpers shared by the benchmark modules: processes, /proc sampling, statistics, the store."""

from __future__ import annotations

import bisect
import contextlib
import json
import math
import os
import shutil
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

from tests.webrtc.procserver import ProcessServer

from openkvs.media import mkv

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "bench" / "out"
TICKS = os.sysconf("SC_CLK_TCK")
PY = sys.executable

# Settings every benchmark server runs with: request-rate limits off (they exist to protect a
# shared server, not to shape a benchmark), logs at warning.
BENCH_ENV = {
    "log_level": "warning",
    "rate_limit_account": "0",
    "rate_limit_resource": "0",
    "rate_limit_join_per_channel": "0",
}


def log(msg: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def cpu_seconds(pid: int) -> float:
    """User + system CPU of a process and all its threads."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS


def descendants(pid: int) -> list[int]:
    """The live child processes of ``pid``, recursively (the storage worker processes)."""
    out: list[int] = []
    try:
        tasks = list(Path(f"/proc/{pid}/task").iterdir())
    except FileNotFoundError:
        return out
    for task in tasks:
        try:
            children = (task / "children").read_text().split()
        except (FileNotFoundError, ProcessLookupError):
            continue
        for child in map(int, children):
            out += [child, *descendants(child)]
    return out


def _tree_sum(pid: int, of: Callable[[int], float]) -> float:
    total = of(pid)
    for child in descendants(pid):
        try:
            total += of(child)
        except FileNotFoundError:
            pass  # ended meanwhile
    return total


def tree_cpu_seconds(pid: int) -> float:
    """CPU of a process, its threads and its live descendants (worker processes)."""
    return _tree_sum(pid, cpu_seconds)


def tree_rss_mb(pid: int) -> float:
    """RSS of a process plus its live descendants'."""
    return _tree_sum(pid, rss_mb)


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def pct(samples: Sequence[float], q: float) -> float:
    """The q-th percentile (0..100) by nearest rank; NaN for no samples."""
    if not samples:
        return float("nan")
    s = sorted(samples)
    k = max(0, min(len(s) - 1, math.ceil(q / 100 * len(s)) - 1))
    return s[k]


def summary_ms(samples_s: Sequence[float]) -> dict[str, Any]:
    ms = [x * 1000 for x in samples_s]
    return {
        "n": len(ms),
        "p50_ms": round(pct(ms, 50), 1) if ms else None,
        "p99_ms": round(pct(ms, 99), 1) if ms else None,
        "max_ms": round(max(ms), 1) if ms else None,
        "mean_ms": round(statistics.fmean(ms), 1) if ms else None,
    }


def read_event(stream: Any, name: str, proc: subprocess.Popen[str] | None = None) -> dict[str, Any]:
    """Read JSON lines from a child's stdout until one with event == name."""
    for line in iter(stream.readline, ""):
        try:
            event: dict[str, Any] = json.loads(line)
        except ValueError:
            continue
        if event.get("event") == name:
            return event
        if event.get("event") == "error":
            raise RuntimeError(f"child failed before {name!r}: {event}")
    raise RuntimeError(f"the child process ended before {name!r}")


@contextlib.contextmanager
def tmpdir(prefix: str) -> Iterator[Path]:
    OUT.mkdir(parents=True, exist_ok=True)
    d = Path(tempfile.mkdtemp(prefix=prefix, dir=OUT))
    try:
        yield d
    finally:
        shutil.rmtree(d, ignore_errors=True)


@contextlib.contextmanager
def server(data_dir: Path, **settings: str) -> Iterator[ProcessServer]:
    """The real openkvs server as a separate process with the benchmark settings."""
    srv = ProcessServer(data_dir, **{**BENCH_ENV, **settings})
    srv.start()
    try:
        yield srv
    finally:
        srv.stop()


def provision(srv: ProcessServer, n: int, prefix: str = "bench", retention: int = 1) -> list[str]:
    """n channels, each with its own stream and media storage ENABLED; returns channel ARNs."""
    kv = srv.client("kinesisvideo")
    arns = []
    for i in range(n):
        ch = kv.create_signaling_channel(ChannelName=f"{prefix}-{i}")["ChannelARN"]
        st = kv.create_stream(StreamName=f"{prefix}-{i}", DataRetentionInHours=retention)[
            "StreamARN"
        ]
        kv.update_media_storage_configuration(
            ChannelARN=ch, MediaStorageConfiguration={"StreamARN": st, "Status": "ENABLED"}
        )
        arns.append(ch)
    return arns


def start_cameras(
    srv: ProcessServer,
    arns: Sequence[str],
    *,
    send_seconds: float,
    linger: float = 1.5,
    extra: Sequence[str] = (),
) -> subprocess.Popen[str]:
    """The camera process (bench.camera) for these channels, sending for ``send_seconds``."""
    return subprocess.Popen(
        [
            PY,
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
            "--send-seconds",
            str(send_seconds),
            "--linger",
            str(linger),
            *extra,
        ],
        stdout=subprocess.PIPE,
        text=True,
        cwd=ROOT,
    )


def wait_sessions_ended(srv: ProcessServer, names: Sequence[str], limit: float = 30.0) -> None:
    """Wait until the store has stopped growing for these streams (sessions flushed)."""
    deadline = time.monotonic() + limit
    last = -1
    stable_since = time.monotonic()
    while time.monotonic() < deadline:
        n = sum(len(r) for r in fragment_rows(srv.data_dir, names).values())
        if n != last:
            last, stable_since = n, time.monotonic()
        elif time.monotonic() - stable_since > 1.0:
            return
        time.sleep(0.25)


def fragment_rows(data_dir: Path, names: Sequence[str]) -> dict[str, list[dict[str, Any]]]:
    """The fragment rows of each named stream, in fragment-number order (read-only)."""
    db = data_dir / "openkvs.db"
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=30)
    try:
        out: dict[str, list[dict[str, Any]]] = {}
        for name in names:
            row = conn.execute("SELECT id FROM streams WHERE name = ?", (name,)).fetchone()
            if row is None:
                out[name] = []
                continue
            rows = conn.execute(
                "SELECT number, producer_ts, server_ts, duration_ms, size, blob_key "
                "FROM fragments WHERE stream_id = ? ORDER BY number",
                (row[0],),
            ).fetchall()
            out[name] = [
                dict(
                    zip(
                        ("number", "producer_ts", "server_ts", "duration_ms", "size", "key"),
                        r,
                        strict=True,
                    )
                )
                for r in rows
            ]
        return out
    finally:
        conn.close()


def read_back(
    data_dir: Path,
    names: Sequence[str],
    send_walls: Sequence[Sequence[Sequence[float]] | None] | None = None,
) -> dict[str, dict[str, Any]]:
    """Per stream: fragments, stored bytes, video/audio blocks and payload bytes, and how long
    after its end each fragment became durable (blob ctime: set by the rename after fsync).

    A fragment's end is when the camera sent the frame that ends it (the next fragment's first
    frame), from the camera's (pts, wall time) log when given, so a camera that falls behind is
    not counted against the server; the server's media-clock end is reported beside it.
    """
    result: dict[str, dict[str, Any]] = {}
    rows_by_name = fragment_rows(data_dir, names)
    for idx, name in enumerate(names):
        rows = rows_by_name[name]
        walls = list(send_walls[idx] or []) if send_walls else []
        pts = [w[0] for w in walls]
        video_frames = audio_frames = video_bytes = audio_bytes = stored = 0
        durable_after: list[float] = []
        durable_media: list[float] = []
        for i, r in enumerate(rows):
            path = data_dir / "media" / r["key"]
            data = path.read_bytes()
            stored += len(data)
            frag = mkv.read_fragment(data)
            for b in frag.blocks:
                if b.track == 1:
                    video_frames += 1
                    video_bytes += len(b.data)
                else:
                    audio_frames += 1
                    audio_bytes += len(b.data)
            if i == len(rows) - 1:
                continue  # the last one is flushed when the session ends
            end_ms = r["producer_ts"] + r["duration_ms"]
            ctime = path.stat().st_ctime
            durable_media.append(ctime - end_ms / 1000)
            if walls:
                # Media time runs from the first fragment's start, which is the first frame sent.
                target = pts[0] + (end_ms - rows[0]["producer_ts"])
                k = bisect.bisect_left(pts, target)
                k = min(
                    (j for j in (k - 1, k) if 0 <= j < len(pts)),
                    key=lambda j: abs(pts[j] - target),
                )
                durable_after.append(ctime - walls[k][1])
            else:
                durable_after.append(ctime - end_ms / 1000)
        result[name] = {
            "fragments": len(rows),
            "stored_bytes": stored,
            "video_frames": video_frames,
            "audio_frames": audio_frames,
            "video_payload_bytes": video_bytes,
            "audio_payload_bytes": audio_bytes,
            "durable_after_s": durable_after,
            "durable_after_media_clock_s": durable_media,
        }
    return result


def stream_names(arns: Sequence[str]) -> list[str]:
    return [a.rsplit("/", 2)[-2] for a in arns]


def tools_venv() -> Path:
    """A venv under bench/out for tools the project does not depend on (moto, py-spy)."""
    venv = OUT / "tools-venv"
    py = venv / "bin" / "python"
    if not py.exists():
        log("creating bench/out/tools-venv (moto[server], py-spy)")
        OUT.mkdir(parents=True, exist_ok=True)
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    return venv


def ensure_tool(package: str, probe: str) -> Path | None:
    """Install ``package`` into the tools venv if ``probe`` (a file in its bin/) is missing."""
    venv = tools_venv()
    exe = venv / "bin" / probe
    if not exe.exists():
        r = subprocess.run(
            [str(venv / "bin" / "python"), "-m", "pip", "install", "-q", package],
            capture_output=True,
            text=True,
        )
        if r.returncode != 0:
            log(f"could not install {package}: {r.stderr.strip()[-400:]}")
            return None
    return exe if exe.exists() else None


def which_wrk() -> str | None:
    path = shutil.which("wrk")
    if path is None and os.geteuid() == 0 and shutil.which("apt-get"):
        log("installing wrk (Debian package)")
        subprocess.run(["apt-get", "install", "-y", "-qq", "wrk"], capture_output=True)
        path = shutil.which("wrk")
    return path
