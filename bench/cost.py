"""Server CPU per stream-second at a fixed number of sessions, trees compared side by side.

The capacity search is meaningless on a machine shared with other work; the CPU the server (and
its storage worker processes) spends per second of media, at a fixed N, is not. Each round runs
one capacity-style trial (``webrtc_workers`` = one per core, fresh server and camera process)
per source tree, the trees alternating, and prints one JSON line per trial::

    python -m bench.cost --sessions 16 --rounds 3 [--src DIR ...] [--window 10]

``--src DIR`` (repeatable) runs the server from ``DIR/src`` (first on its PYTHONPATH); ``.``
is this tree. The camera process is this tree's in every trial.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
from pathlib import Path
from typing import Any

from . import ingest
from .capacity import WORKERS
from .common import ROOT, log
from .media import FPS


def _trial(src: Path, n: int, window: float) -> dict[str, Any]:
    old = os.environ.get("PYTHONPATH")
    os.environ["PYTHONPATH"] = str(src.resolve() / "src")
    try:
        load0 = os.getloadavg()[0]
        t = ingest.trial(n, window=window, warmup=3.0, settings={"webrtc_workers": str(WORKERS)})
    finally:
        if old is None:
            os.environ.pop("PYTHONPATH", None)
        else:
            os.environ["PYTHONPATH"] = old
    return {
        "src": str(src),
        "sessions": n,
        "cpu_per_stream_second": t["cpu_per_stream_second"],
        # per second of video the cameras actually sent in the window
        "cpu_per_sent_stream_second": t["cpu_per_sent_stream_second"],
        "sent_share": round(t["window_video_frames"] / (t["window_s"] * n * FPS), 3),
        "server_cpu_percent_of_core": t["server_cpu_percent_of_core"],
        "camera_cpu_percent_of_core": t["camera_cpu_percent_of_core"],
        "frames_lost": t["frames_lost"],
        "durable_max_ms": t["durable_after"]["max_ms"],
        "loadavg_start": round(load0, 2),
        "loadavg_end": t["loadavg_end"],
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sessions", type=int, default=16)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--window", type=float, default=10.0)
    ap.add_argument("--src", type=Path, action="append", default=None)
    args = ap.parse_args()
    trees = args.src or [ROOT]
    results: dict[str, list[float]] = {str(t): [] for t in trees}
    for r in range(args.rounds):
        order = trees if r % 2 == 0 else list(reversed(trees))
        for tree in order:
            log(f"cost: round {r + 1}, {tree}, {args.sessions} sessions")
            t = _trial(tree, args.sessions, args.window)
            results[str(tree)].append(t["cpu_per_sent_stream_second"] or 0.0)
            print(json.dumps(t), flush=True)
    for tree, xs in results.items():
        print(
            json.dumps(
                {"src": tree, "median_cpu_per_sent_stream_second": statistics.median(xs), "all": xs}
            ),
            flush=True,
        )


if __name__ == "__main__":
    main()
