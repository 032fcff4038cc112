"""ListFragments on a long stream: a 24-hour stream of 2 s fragments (43,200 rows).

Starts a real openkvs server on loopback (TLS, random port) with a fresh data directory, creates
a stream, writes the fragment rows straight into its SQLite database (no media is needed to
list), then times ListFragments pages through boto3 (the whole HTTPS path) and through the
fragment store alone, for both timestamp types, at the start, middle and end of the day, plus a
full NextToken walk. Prints the query plans so the index use is visible.

    .venv/bin/python bench/list_fragments.py [--fragments 43200] [--repeat 20] [--json]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import socket
import sqlite3
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any, TypeVar

import boto3
import requests
from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.config import Config
from botocore.credentials import Credentials

from openkvs.app import SERVICES_KEY
from openkvs.auth.credentials import default_principal
from openkvs.config import Settings
from openkvs.server import Server
from openkvs.services import Services
from openkvs.store.sqlite import _FRAGMENT_COLUMNS

T = TypeVar("T")
DAY_START_MS = 1_700_000_000_000
FRAGMENT_MS = 2000


class Running:
    """The server on its own loop in a thread."""

    def __init__(self, data_dir: Path) -> None:
        self.settings = Settings.load(
            {},
            None,
            {"data_dir": data_dir, "storage_retention_interval": 0.0, "log_level": "error"},
        )
        self.loop = asyncio.new_event_loop()
        threading.Thread(target=self.loop.run_forever, daemon=True).start()
        tls, http = _bound(), _bound()
        self.server = Server(self.settings, tls_sock=tls, http_sock=http)
        self.call(self.server.start())
        self.endpoint = f"https://127.0.0.1:{tls.getsockname()[1]}"

    def call(self, coro: Coroutine[Any, Any, T]) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(120)

    @property
    def services(self) -> Services:
        return self.server.app[SERVICES_KEY]

    def client(self, service: str) -> Any:
        p = default_principal(self.settings.data_dir)
        return boto3.client(
            service,
            endpoint_url=self.endpoint,
            region_name=self.settings.region,
            aws_access_key_id=p.access_key_id,
            aws_secret_access_key=p.secret_access_key,
            verify=str(self.settings.data_dir / "tls" / "ca.pem"),
            config=Config(retries={"max_attempts": 1}),
        )

    def raw_post(self, path: str, body: dict[str, Any], session: requests.Session) -> Any:
        """A signed POST without botocore's response parsing: the server and HTTPS alone."""
        p = default_principal(self.settings.data_dir)
        data = json.dumps(body).encode()
        req = AWSRequest(
            "POST", self.endpoint + path, data=data, headers={"Content-Type": "application/json"}
        )
        creds = Credentials(p.access_key_id, p.secret_access_key)
        SigV4Auth(creds, "kinesisvideo", self.settings.region).add_auth(req)
        resp = session.post(
            self.endpoint + path,
            data=data,
            headers=dict(req.headers),
            verify=str(self.settings.data_dir / "tls" / "ca.pem"),
        )
        resp.raise_for_status()
        return resp.json()

    def stop(self) -> None:
        self.call(self.server.stop())
        self.loop.call_soon_threadsafe(self.loop.stop)


def _bound() -> socket.socket:
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind(("127.0.0.1", 0))
    return s


def seed(db: Path, stream_id: int, count: int) -> None:
    """``count`` fragments of 2 s: server time steady, producer time a little earlier, jittered."""
    rnd = random.Random(42)
    number0 = DAY_START_MS << 16
    rows = []
    for i in range(count):
        server_ts = DAY_START_MS + FRAGMENT_MS * i + rnd.randint(0, 40)
        producer_ts = server_ts - 150 - rnd.randint(0, 60)
        rows.append(
            (
                stream_id,
                number0 + i,
                producer_ts,
                server_ts,
                FRAGMENT_MS,
                rnd.randint(200_000, 900_000),
                f"s{stream_id}/{server_ts // 3_600_000}/{number0 + i}.mkv",
            )
        )
    conn = sqlite3.connect(str(db), timeout=30)
    with conn:
        conn.executemany(
            f"INSERT INTO fragments ({_FRAGMENT_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?)", rows
        )
    conn.close()


def query_plans(db: Path, stream_id: int) -> dict[str, list[str]]:
    conn = sqlite3.connect(str(db))
    plans = {}
    for name, col in (("SERVER_TIMESTAMP", "server_ts"), ("PRODUCER_TIMESTAMP", "producer_ts")):
        sql = (
            f"EXPLAIN QUERY PLAN SELECT {_FRAGMENT_COLUMNS} FROM fragments WHERE stream_id = ? "
            f"AND {col} >= ? AND {col} <= ? ORDER BY {col}, number LIMIT ?"
        )
        plans[name] = [r[3] for r in conn.execute(sql, (stream_id, 0, 1, 1000))]
    sql = (
        f"EXPLAIN QUERY PLAN SELECT {_FRAGMENT_COLUMNS} FROM fragments WHERE stream_id = ? "
        "AND number > ? ORDER BY number LIMIT ?"
    )
    plans["(no selector)"] = [r[3] for r in conn.execute(sql, (stream_id, 0, 1000))]
    conn.close()
    return plans


def timed(fn: Callable[[], Any], repeat: int) -> dict[str, float]:
    fn()  # warm up
    samples = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        samples.append((time.perf_counter() - t) * 1000)
    samples.sort()
    return {
        "p50_ms": round(statistics.median(samples), 2),
        "p95_ms": round(samples[min(len(samples) - 1, int(len(samples) * 0.95))], 2),
        "max_ms": round(samples[-1], 2),
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--fragments", type=int, default=43_200)
    ap.add_argument("--repeat", type=int, default=20)
    ap.add_argument("--json", action="store_true", help="print the results as JSON")
    args = ap.parse_args(argv)

    with tempfile.TemporaryDirectory(prefix="openkvs-bench-") as tmp:
        srv = Running(Path(tmp))
        try:
            kv = srv.client("kinesisvideo")
            kv.create_stream(StreamName="day", DataRetentionInHours=24)
            stream = srv.services.control.get_stream(name="day")
            db = srv.settings.data_dir / "openkvs.db"
            t = time.perf_counter()
            seed(db, stream.id, args.fragments)
            seed_s = time.perf_counter() - t
            am = srv.client("kinesis-video-archived-media")
            fragments = srv.services.fragments
            span_ms = args.fragments * FRAGMENT_MS
            session = requests.Session()
            results: dict[str, Any] = {
                "fragments": args.fragments,
                "seed_seconds": round(seed_s, 2),
            }
            cases: dict[str, dict[str, float]] = {}

            for kind in ("SERVER_TIMESTAMP", "PRODUCER_TIMESTAMP"):
                for where, offset in (
                    ("start", 0),
                    ("middle", span_ms // 2),
                    ("end", span_ms - 1100 * FRAGMENT_MS),
                ):
                    lo = DAY_START_MS + offset
                    selector = {
                        "FragmentSelectorType": kind,
                        "TimestampRange": {
                            "StartTimestamp": lo / 1000,
                            "EndTimestamp": (DAY_START_MS + span_ms) / 1000,
                        },
                    }

                    def page(selector: dict[str, Any] = selector) -> None:
                        n = len(
                            am.list_fragments(
                                StreamName="day", FragmentSelector=selector, MaxResults=1000
                            )["Fragments"]
                        )
                        assert n == 1000, n

                    def store_page(kind: str = kind, lo: int = lo) -> None:
                        rows = srv.call(
                            fragments.list_fragments(
                                stream,
                                timestamp_type=kind,
                                start_ms=lo,
                                end_ms=DAY_START_MS + span_ms,
                                limit=1000,
                            )
                        )
                        assert len(rows) == 1000

                    def raw_page(selector: dict[str, Any] = selector) -> None:
                        body = {
                            "StreamName": "day",
                            "FragmentSelector": selector,
                            "MaxResults": 1000,
                        }
                        assert (
                            len(srv.raw_post("/listFragments", body, session)["Fragments"]) == 1000
                        )

                    cases[f"boto3 {kind} page of 1000 at {where}"] = timed(page, args.repeat)
                    cases[f"https {kind} page of 1000 at {where}"] = timed(raw_page, args.repeat)
                    cases[f"store {kind} 1000 rows at {where}"] = timed(store_page, args.repeat)
                minute = {
                    "FragmentSelectorType": kind,
                    "TimestampRange": {
                        "StartTimestamp": (DAY_START_MS + span_ms // 2) / 1000,
                        "EndTimestamp": (DAY_START_MS + span_ms // 2 + 60_000) / 1000,
                    },
                }
                cases[f"boto3 {kind} one minute (30 fragments)"] = timed(
                    lambda minute=minute: am.list_fragments(
                        StreamName="day", FragmentSelector=minute
                    ),
                    args.repeat,
                )

            def walk(kind: str | None) -> int:
                kw: dict[str, Any] = {"MaxResults": 1000}
                if kind:
                    kw["FragmentSelector"] = {
                        "FragmentSelectorType": kind,
                        "TimestampRange": {
                            "StartTimestamp": DAY_START_MS / 1000 - 3600,
                            "EndTimestamp": (DAY_START_MS + span_ms) / 1000 + 3600,
                        },
                    }
                seen = pages = 0
                while True:
                    resp = am.list_fragments(StreamName="day", **kw)
                    pages += 1
                    seen += len(resp["Fragments"])
                    token = resp.get("NextToken")
                    if not token:
                        break
                    kw = {"MaxResults": 1000, "NextToken": token}
                assert seen == args.fragments, seen
                return pages

            walks = {}
            for kind in ("SERVER_TIMESTAMP", "PRODUCER_TIMESTAMP", None):
                t = time.perf_counter()
                pages = walk(kind)
                total = (time.perf_counter() - t) * 1000
                walks[kind or "(no selector)"] = {
                    "pages": pages,
                    "total_ms": round(total, 1),
                    "per_page_ms": round(total / pages, 2),
                }
            results["cases"] = cases
            results["full_walks"] = walks
            results["query_plans"] = query_plans(db, stream.id)
        finally:
            srv.stop()

    if args.json:
        print(json.dumps(results, indent=2))
        return 0
    print(
        f"ListFragments on {results['fragments']} fragments of 2 s (seeded in {results['seed_seconds']} s)"
    )
    print(f"{'case':58} {'p50 ms':>8} {'p95 ms':>8} {'max ms':>8}")
    for name, r in results["cases"].items():
        print(f"{name:58} {r['p50_ms']:8.2f} {r['p95_ms']:8.2f} {r['max_ms']:8.2f}")
    print("full NextToken walk, 1000 per page:")
    for name, w in results["full_walks"].items():
        print(
            f"  {name:20} {w['pages']:3d} pages  {w['total_ms']:8.1f} ms total  {w['per_page_ms']:6.2f} ms/page"
        )
    print("query plans:")
    for name, plan in results["query_plans"].items():
        print(f"  {name}: {'; '.join(plan)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
