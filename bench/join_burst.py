"""Join burst: 200 JoinStorageSession calls on 20 channels at once (ten per master, round robin,
as cameras that retry), every master connected over signaling. Times each master's first
SDP_OFFER from the burst's start (and from its channel's last join) and the server's CPU for it.

Each round runs on a fresh server, as ``tests/faults/test_load.py`` does: the burst is the
server's first WebRTC work, so whatever a first session sets up is inside the figures.

    python -m bench.join_burst [--rounds 3] [--profile bench/out/burst.txt] [--src DIR]

``--src`` runs the server from another source tree (``DIR/src`` first on its PYTHONPATH), for
old-versus-new runs alternated on the same machine; ``--profile`` records the server with
py-spy (raw, every busy thread) for the burst's first two seconds.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import aiohttp
from tests.faults.common import signed_request
from tests.signaling.kvs import Client
from tests.webrtc.procserver import ProcessServer

from . import common
from .common import cpu_seconds, log, pct

CHANNELS = 20
JOINS_PER_CHANNEL = 10


class _Master:
    def __init__(self, client: Client) -> None:
        self.client = client
        self.offers: list[float] = []
        self.task = asyncio.ensure_future(self._read())

    async def _read(self) -> None:
        try:
            while True:
                msg = await self.client.recv(timeout=3600)
                if msg.get("messageType") == "SDP_OFFER":
                    self.offers.append(time.perf_counter())
        except (ConnectionError, asyncio.CancelledError):
            pass

    async def close(self) -> None:
        self.task.cancel()
        await self.client.close()


def _provision(srv: ProcessServer, n: int) -> list[str]:
    kv = srv.client("kinesisvideo")
    arns = []
    for i in range(n):
        ch = kv.create_signaling_channel(ChannelName=f"load{i}")["ChannelARN"]
        st = kv.create_stream(StreamName=f"load{i}-stream", DataRetentionInHours=1)["StreamARN"]
        kv.update_media_storage_configuration(
            ChannelARN=ch, MediaStorageConfiguration={"StreamARN": st, "Status": "ENABLED"}
        )
        arns.append(ch)
    return arns


async def _round(
    srv: ProcessServer, arns: list[str], settle: float, profile: Path | None
) -> dict[str, Any]:
    assert srv.proc is not None
    pid = srv.proc.pid
    masters = [_Master(await Client.connect(srv, arn)) for arn in arns]  # type: ignore[arg-type]
    spy = None
    if profile is not None:
        spy = _pyspy(pid, 2, profile)
        await asyncio.sleep(0.7)  # py-spy attaches
    order = [arn for _ in range(JOINS_PER_CHANNEL) for arn in arns]
    requests = [signed_request(srv, "/joinStorageSession", {"channelArn": a}) for a in order]
    last_join: dict[str, float] = {}
    try:
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=100)) as http:

            async def one(arn: str, req: tuple[str, dict[str, str], bytes]) -> int:
                async with http.post(req[0], headers=req[1], data=req[2]) as r:
                    await r.read()
                    last_join[arn] = max(last_join.get(arn, 0.0), time.perf_counter())
                    return r.status

            c0 = cpu_seconds(pid)
            t0 = time.perf_counter()
            statuses = await asyncio.gather(
                *(one(a, r) for a, r in zip(order, requests, strict=True))
            )
            t_done = time.perf_counter()
        # The server's CPU until every master has its offer, then over the whole settle window.
        deadline = time.perf_counter() + 10
        while not all(m.offers for m in masters) and time.perf_counter() < deadline:
            await asyncio.sleep(0.005)
        c_offers = cpu_seconds(pid) - c0
        await asyncio.sleep(max(0.0, t0 + settle - time.perf_counter()))
        c_settle = cpu_seconds(pid) - c0
    finally:
        for m in masters:
            await m.close()
        if spy is not None:
            await asyncio.to_thread(spy.wait, 30)
    firsts = sorted(m.offers[0] - t0 for m in masters if m.offers)
    after_last = sorted(
        m.offers[0] - last_join[arn] for m, arn in zip(masters, arns, strict=True) if m.offers
    )
    created = sum("[load" in line and " ended (" in line for line in srv.log) + len(arns)
    return {
        "statuses_ok": sum(s == 200 for s in statuses),
        "answered_ms": round((t_done - t0) * 1000, 1),
        "first_offer_p50_ms": round(statistics.median(firsts) * 1000, 1) if firsts else None,
        "first_offer_p99_ms": round(pct(firsts, 99) * 1000, 1) if firsts else None,
        "first_offer_min_ms": round(firsts[0] * 1000, 1) if firsts else None,
        "after_last_join_p50_ms": round(statistics.median(after_last) * 1000, 1)
        if after_last
        else None,
        "offers_per_master": sorted({len(m.offers) for m in masters}),
        "sessions_created": created,
        "server_cpu_until_offers_s": round(c_offers, 3),
        "server_cpu_settle_s": round(c_settle, 3),
        "load_avg": round(os.getloadavg()[0], 2),
    }


def _pyspy(pid: int, seconds: float, out: Path) -> subprocess.Popen[bytes] | None:
    exe = Path(sys.executable).parent / "py-spy"
    if not exe.exists():
        log("py-spy is not installed in this venv: no profile")
        return None
    return subprocess.Popen(
        [
            str(exe),
            "record",
            "--pid",
            str(pid),
            "--duration",
            str(int(seconds)),
            "--rate",
            "500",
            "--format",
            "raw",
            "--nonblocking",
            "--output",
            str(out),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


def trial(profile: Path | None = None, settle: float = 3.0, **env: str) -> dict[str, Any]:
    """One burst on a fresh server (the test's settings: in-process sessions, default limits)."""
    with common.tmpdir("joinburst-") as tmp:
        srv = ProcessServer(tmp / "data", webrtc_workers="0", **env)
        srv.start()
        try:
            arns = _provision(srv, CHANNELS)
            return asyncio.run(_round(srv, arns, settle, profile))
        finally:
            srv.stop()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--profile", type=Path, default=None)
    ap.add_argument("--src", type=Path, default=None, help="run the server from DIR/src")
    ap.add_argument("--label", default="")
    args = ap.parse_args()
    if args.src is not None:
        os.environ["PYTHONPATH"] = str(args.src.resolve() / "src")
    for i in range(args.rounds):
        profile = None
        if args.profile is not None:
            profile = args.profile.with_name(f"{args.profile.stem}-{i}{args.profile.suffix}")
        r = trial(profile)
        r["label"] = args.label
        print(json.dumps(r), flush=True)


if __name__ == "__main__":
    main()
