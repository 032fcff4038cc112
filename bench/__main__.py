"""The openkvs benchmark suite: ``python -m bench [--quick] [--only a,b] [--skip a,b]``.

Runs every area side by side in one run and writes ``bench/results.json`` and ``BENCHMARKS.md``
(``make bench``; ``make bench-quick`` for the smoke-sized run). Scratch data lives in
``bench/out/`` (git-ignored).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

from . import api, capacity, cluster, ingest, latency, playback, profile, report
from .common import ROOT, log

SECTIONS: dict[str, Callable[[bool], dict[str, Any]]] = {
    "ingest": ingest.run,
    "capacity": capacity.run,
    "latency": latency.run,
    "api": api.run,
    "playback": playback.run,
    "profile": profile.run,
    "cluster": cluster.run,
}
QUICK_SKIP = {"profile", "cluster"}  # cluster: `--quick --only cluster` (needs the engines)


def machine() -> dict[str, Any]:
    model = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    git = "?"
    try:
        head = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=ROOT
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--", "src"], capture_output=True, text=True, cwd=ROOT
        ).stdout.splitlines()
        git = f"{head}" + (f" + {len(dirty)} uncommitted change(s) under src/" if dirty else "")
    except OSError:
        pass
    return {
        "git": git,
        "cpus": os.cpu_count(),
        "cpu_model": model,
        "python": platform.python_version(),
        "kernel": platform.release(),
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench", description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="smallest sizes (under 2 minutes)")
    p.add_argument("--only", default="", help=f"comma-separated subset of {','.join(SECTIONS)}")
    p.add_argument("--skip", default="", help="comma-separated sections to leave out")
    p.add_argument("--json", default=str(ROOT / "bench" / "results.json"))
    p.add_argument("--markdown", default=str(ROOT / "BENCHMARKS.md"))
    args = p.parse_args(argv)
    only = [s for s in args.only.split(",") if s]
    skip = {s for s in args.skip.split(",") if s}
    for name in [*only, *skip]:
        if name not in SECTIONS:
            p.error(f"unknown section {name!r}; choose from {', '.join(SECTIONS)}")
    chosen = only or [s for s in SECTIONS if not (args.quick and s in QUICK_SKIP)]
    chosen = [s for s in chosen if s not in skip]
    os.chdir(ROOT)
    t0 = time.monotonic()
    results: dict[str, Any] = {
        "mode": "quick" if args.quick else "full",
        "started": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()),
        "machine": machine(),
        "sections": {},
        "total_seconds": 0.0,
    }
    previous = Path(args.json)
    if only and previous.exists():
        # A partial run keeps the other sections of the last run (each says when it ran).
        try:
            old = json.loads(previous.read_text())
            results["sections"].update(
                {k: v for k, v in old.get("sections", {}).items() if k not in chosen}
            )
        except ValueError:
            pass
    failed = []
    for name in chosen:
        s0 = time.monotonic()
        load = os.getloadavg()[0]
        try:
            data = SECTIONS[name](args.quick)
        except Exception as exc:  # noqa: BLE001 - one broken area must not hide the others
            traceback.print_exc()
            data = {"error": f"{type(exc).__name__}: {exc}"}
            failed.append(name)
        data["_seconds"] = round(time.monotonic() - s0, 1)
        data["_loadavg_before"] = round(load, 2)
        data["_ran"] = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
        data["_mode"] = results["mode"]
        results["sections"][name] = data
        log(f"{name} done in {data['_seconds']} s")
        results["total_seconds"] = round(time.monotonic() - t0, 1)
        _write(results, args)
    log(f"all done in {results['total_seconds']} s: {args.json}, {args.markdown}")
    return 1 if failed else 0


def _write(results: dict[str, Any], args: argparse.Namespace) -> None:
    path = Path(args.json)
    path.write_text(json.dumps(results, indent=2, default=str) + "\n")
    Path(args.markdown).write_text(report.render(results))


if __name__ == "__main__":
    sys.exit(main())
