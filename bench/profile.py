"""Where the server's time goes during ingest: py-spy (sampling, --nonblocking) on the server
process while N cameras stream, summarised from py-spy's raw (collapsed-stack) output."""

from __future__ import annotations

import collections
import re
from pathlib import Path
from typing import Any

from . import common, ingest
from .common import log

_FRAME = re.compile(r"^(?P<func>.*?) \((?P<file>[^:()]*)(?::(?P<line>\d+))?\)$")
# Module areas, matched against the file of the innermost frame that falls into one of them.
AREAS = (
    ("SRTP (pylibsrtp)", "pylibsrtp/"),
    ("DTLS (aiortc)", "aiortc/rtcdtlstransport.py"),
    ("ICE (aioice)", "aioice/"),
    ("RTP parse/serialise (aiortc.rtp)", "aiortc/rtp.py"),
    ("RTCP / stats (aiortc)", "aiortc/stats.py"),
    ("RTP receiver (aiortc)", "aiortc/rtcrtpreceiver.py"),
    ("RTP sender (aiortc)", "aiortc/rtcrtpsender.py"),
    ("codecs (aiortc: depayload, Opus)", "aiortc/codecs/"),
    ("jitter/NACK/RATE (aiortc)", "aiortc/jitterbuffer.py"),
    ("openkvs reassembly + tap", "openkvs/webrtc/"),
    ("openkvs media (fragmenter, MKV, AAC)", "openkvs/media/"),
    ("openkvs store", "openkvs/store/"),
    ("openkvs other", "openkvs/"),
    ("asyncio event loop", "asyncio/"),
    ("threading / queues", "threading.py"),
)


# Threads blocked in these are waiting, not working (py-spy --nonblocking cannot always tell).
IDLE_LEAVES = {
    ("Condition.wait", "threading.py"),
    ("Event.wait", "threading.py"),
    ("EpollSelector.select", "selectors.py"),
    ("select", "selectors.py"),
    ("_worker", "concurrent/futures/thread.py"),
    ("Thread._wait_for_tstate_lock", "threading.py"),
}


# Frames every stack of a thread passes through: left out of the inclusive ranking.
ROOT_FRAMES = (
    "<module>",
    "_run_module_as_main ",
    "_run_code ",
    "main (openkvs/cli.py)",
    "cmd_serve ",
    "run (asyncio/runners.py)",
    "Runner.run ",
    "Thread._bootstrap",
    "Thread.run ",
    "_worker (concurrent",
    "_WorkItem.run ",
    "BaseEventLoop.run_forever",
    "BaseEventLoop._run_once",
    "Handle._run",
)


def parse(path: Path) -> list[tuple[list[tuple[str, str]], int]]:
    stacks = []
    for line in path.read_text(errors="replace").splitlines():
        if not line.strip():
            continue
        stack, _, count = line.rpartition(" ")
        try:
            n = int(count)
        except ValueError:
            continue
        frames = []
        for raw in stack.split(";"):
            m = _FRAME.match(raw.strip())
            if m:
                frames.append((m["func"], m["file"]))
            else:
                frames.append((raw.strip(), ""))
        stacks.append((frames, n))
    return stacks


def _short(file: str) -> str:
    for marker in ("site-packages/", "src/", "lib/python3"):
        if marker in file:
            file = file.split(marker, 1)[1]
    return file


def summarise(path: Path, top: int = 15) -> dict[str, Any]:
    stacks = parse(path)
    total = sum(n for _, n in stacks)
    if not total:
        return {"samples": 0}
    idle = 0
    self_time: collections.Counter[str] = collections.Counter()
    inclusive: collections.Counter[str] = collections.Counter()
    areas: collections.Counter[str] = collections.Counter()
    threads: collections.Counter[str] = collections.Counter()
    for frames, n in stacks:
        body = [f for f in frames if f[1]]  # drop the "thread (0x...)" / "process" frames
        if not body:
            continue
        if (body[-1][0], _short(body[-1][1])) in IDLE_LEAVES:
            idle += n
            continue
        head = frames[0][0] if frames and not frames[0][1] else ""
        tname = head.split(": ", 1)[1] if ": " in head else "?"
        tname = re.sub(r"[_-]?\d+$", "", tname)
        if tname == "MainThread":
            tname = "MainThread (event loop)"
        threads[tname] += n
        leaf = body[-1]
        self_time[f"{leaf[0]} ({_short(leaf[1])})"] += n
        seen = set()
        for func, file in body:
            key = f"{func} ({_short(file)})"
            if key not in seen:
                seen.add(key)
                inclusive[key] += n
        area = "other (C extensions, stdlib)"
        for _func, file in reversed(body):
            hit = next((name for name, marker in AREAS if marker in file), None)
            if hit:
                area = hit
                break
        areas[area] += n

    total -= idle
    if not total:
        return {"samples": 0}

    def pct(c: collections.Counter[str], k: int) -> list[dict[str, Any]]:
        return [{"name": name, "pct": round(100 * v / total, 1)} for name, v in c.most_common(k)]

    interesting = collections.Counter(
        {k: v for k, v in inclusive.items() if not k.startswith(ROOT_FRAMES)}
    )
    return {
        "samples": total,
        "idle_samples_dropped": idle,
        "threads": pct(threads, 8),
        "areas": pct(areas, 20),
        "self": pct(self_time, top),
        "inclusive": pct(interesting, top + 10),
    }


def run(quick: bool) -> dict[str, Any]:
    n = 2 if quick else 6
    seconds = 5.0 if quick else 12.0
    log(f"profile: py-spy on the server, {n} sessions, {seconds:g} s")
    common.OUT.mkdir(parents=True, exist_ok=True)
    out = common.OUT / "pyspy-ingest.txt"
    out.unlink(missing_ok=True)
    gil = out.with_suffix(".gil.txt")
    gil.unlink(missing_ok=True)
    t = ingest.trial(n, window=seconds, profile_out=out)
    if not out.exists():
        return {"sessions": n, "error": "py-spy produced no profile (not installed or no ptrace)"}
    return {
        "sessions": n,
        "seconds": seconds,
        "server_cpu_percent": t["server_cpu_percent_of_core"],
        "raw": str(out.relative_to(common.ROOT)),
        **summarise(out),
        "gil": summarise(gil) if gil.exists() else {"samples": 0},
    }
