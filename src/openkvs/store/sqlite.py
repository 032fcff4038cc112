"""SQLite metadata store (WAL), the embedded default.

One writer thread owns the write connection; a small pool of reader threads has a connection
each (WAL lets them read while the writer writes). Channels and streams are also kept in memory,
loaded at start and updated after each committed write, so control-plane reads never leave the
event loop.

One process owns the store: ``sync`` has nothing to do, fragment numbers are handed out by the
process itself, and secrets are files (mode 0600) in the data directory.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import sqlite3
import threading
import time
from collections.abc import AsyncIterator, Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

from ..errors import ResourceInUseException
from ..privatefile import read_or_create
from ..records import Channel, Fragment, Stream
from .base import LimitReached
from .cache import RecordCache

logger = logging.getLogger(__name__)
T = TypeVar("T")

SCHEMA = """
CREATE TABLE IF NOT EXISTS channels (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    arn TEXT NOT NULL UNIQUE,
    name TEXT NOT NULL UNIQUE,
    channel_type TEXT NOT NULL,
    status TEXT NOT NULL,
    created REAL NOT NULL,
    version TEXT NOT NULL,
    message_ttl INTEGER NOT NULL,
    tags TEXT NOT NULL,
    storage_status TEXT NOT NULL,
    storage_stream_arn TEXT
);
CREATE TABLE IF NOT EXISTS streams (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    arn TEXT NOT NULL UNIQUE,
    name TEXT NOT NULL UNIQUE,
    device_name TEXT,
    media_type TEXT,
    kms_key_id TEXT NOT NULL,
    version TEXT NOT NULL,
    status TEXT NOT NULL,
    created REAL NOT NULL,
    retention_hours INTEGER NOT NULL,
    tags TEXT NOT NULL,
    storage_tier TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS stream_configs (
    stream_id INTEGER NOT NULL,
    kind TEXT NOT NULL,
    config TEXT NOT NULL,
    PRIMARY KEY (stream_id, kind)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS fragments (
    stream_id INTEGER NOT NULL,
    number INTEGER NOT NULL,
    producer_ts INTEGER NOT NULL,
    server_ts INTEGER NOT NULL,
    duration_ms INTEGER NOT NULL,
    size INTEGER NOT NULL,
    blob_key TEXT NOT NULL,
    PRIMARY KEY (stream_id, number)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS fragments_by_server_ts ON fragments (stream_id, server_ts);
CREATE INDEX IF NOT EXISTS fragments_by_producer_ts ON fragments (stream_id, producer_ts);
"""

_STREAM_CONFIGS = ("image_generation", "notification")  # Stream fields kept in stream_configs
_FRAGMENT_COLUMNS = "stream_id, number, producer_ts, server_ts, duration_ms, size, blob_key"


def _connect(path: Path) -> sqlite3.Connection:
    conn = sqlite3.connect(str(path), check_same_thread=False, isolation_level=None)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=FULL")
    conn.execute("PRAGMA busy_timeout=5000")
    return conn


def _channel(row: sqlite3.Row | tuple[Any, ...]) -> Channel:
    return Channel(
        id=row[0],
        arn=row[1],
        name=row[2],
        channel_type=row[3],
        status=row[4],
        created=row[5],
        version=row[6],
        message_ttl=row[7],
        tags=json.loads(row[8]),
        storage_status=row[9],
        storage_stream_arn=row[10],
    )


def _stream(row: sqlite3.Row | tuple[Any, ...]) -> Stream:
    return Stream(
        id=row[0],
        arn=row[1],
        name=row[2],
        device_name=row[3],
        media_type=row[4],
        kms_key_id=row[5],
        version=row[6],
        status=row[7],
        created=row[8],
        retention_hours=row[9],
        tags=json.loads(row[10]),
        storage_tier=row[11],
    )


def _fragment(row: tuple[Any, ...]) -> Fragment:
    return Fragment(*row)


def _check_limit(conn: sqlite3.Connection, table: str, limit: int | None) -> None:
    if limit is not None:
        (count,) = conn.execute(f"SELECT COUNT(*) FROM {table}").fetchone()
        if count >= limit:
            raise LimitReached(table)


class SqliteMetadataStore(RecordCache):
    shared = False

    def __init__(self, path: Path, readers: int = 2, secrets_dir: Path | None = None) -> None:
        super().__init__()
        self._path = path
        self._secrets_dir = secrets_dir if secrets_dir is not None else path.parent
        self._duties: dict[str, asyncio.Lock] = {}
        self._duty_ran: dict[str, float] = {}
        self._next_number = 0
        self._writer = ThreadPoolExecutor(1, thread_name_prefix="openkvs-sqlite-w")
        self._readers = ThreadPoolExecutor(readers, thread_name_prefix="openkvs-sqlite-r")
        self._local = threading.local()
        self._reader_conns: list[sqlite3.Connection] = []
        self._reader_lock = threading.Lock()
        self._wconn: sqlite3.Connection | None = None

    # -- lifecycle ------

    async def start(self) -> None:
        self._path.parent.mkdir(parents=True, exist_ok=True)

        def init() -> tuple[list[Channel], list[Stream]]:
            self._wconn = _connect(self._path)
            self._wconn.executescript(SCHEMA)
            channels = [_channel(r) for r in self._wconn.execute("SELECT * FROM channels")]
            streams = [_stream(r) for r in self._wconn.execute("SELECT * FROM streams")]
            configs: dict[int, dict[str, Any]] = {}
            for stream_id, kind, config in self._wconn.execute(
                "SELECT stream_id, kind, config FROM stream_configs"
            ):
                configs.setdefault(stream_id, {})[kind] = json.loads(config)
            streams = [s.replace(**configs[s.id]) if s.id in configs else s for s in streams]
            return channels, streams

        channels, streams = await self._write(init)
        for c in channels:
            self._cache_channel(c)
        for s in streams:
            self._cache_stream(s)

    async def stop(self) -> None:
        def close() -> None:
            if self._wconn is not None:
                self._wconn.close()
                self._wconn = None

        await self._write(close)
        self._writer.shutdown(wait=True)
        self._readers.shutdown(wait=True)
        with self._reader_lock:
            for conn in self._reader_conns:
                conn.close()
            self._reader_conns.clear()

    async def sync(self) -> None:
        return None

    # -- thread plumbing ------

    async def _write(self, fn: Callable[[], T]) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._writer, fn)

    def _wc(self) -> sqlite3.Connection:
        assert self._wconn is not None, "store not started"
        return self._wconn

    async def _read(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        def run() -> T:
            conn = getattr(self._local, "conn", None)
            if conn is None:
                conn = _connect(self._path)
                self._local.conn = conn
                with self._reader_lock:
                    self._reader_conns.append(conn)
            return fn(conn)

        return await asyncio.get_running_loop().run_in_executor(self._readers, run)

    # -- channels ------

    async def insert_channel(self, channel: Channel, *, limit: int | None = None) -> Channel:
        def run() -> int:
            _check_limit(self._wc(), "channels", limit)
            try:
                cur = self._wc().execute(
                    "INSERT INTO channels (arn, name, channel_type, status, created, version,"
                    " message_ttl, tags, storage_status, storage_stream_arn)"
                    " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    (
                        channel.arn,
                        channel.name,
                        channel.channel_type,
                        channel.status,
                        channel.created,
                        channel.version,
                        channel.message_ttl,
                        json.dumps(dict(channel.tags)),
                        channel.storage_status,
                        channel.storage_stream_arn,
                    ),
                )
            except sqlite3.IntegrityError as exc:
                raise ResourceInUseException(
                    f"The signaling channel {channel.name} already exists."
                ) from exc
            assert cur.lastrowid is not None
            return cur.lastrowid

        stored = channel.replace(id=await self._write(run))
        self._cache_channel(stored)
        return stored

    async def save_channel(self, channel: Channel) -> None:
        def run() -> None:
            self._wc().execute(
                "UPDATE channels SET status=?, version=?, message_ttl=?, tags=?, storage_status=?,"
                " storage_stream_arn=? WHERE id=?",
                (
                    channel.status,
                    channel.version,
                    channel.message_ttl,
                    json.dumps(dict(channel.tags)),
                    channel.storage_status,
                    channel.storage_stream_arn,
                    channel.id,
                ),
            )

        await self._write(run)
        self._cache_channel(channel)

    async def delete_channel(self, channel: Channel) -> None:
        await self._write(
            lambda: self._wc().execute("DELETE FROM channels WHERE id=?", (channel.id,))
        )
        self._uncache_channel(channel.id)

    # -- streams ------

    async def insert_stream(self, stream: Stream, *, limit: int | None = None) -> Stream:
        def run() -> int:
            _check_limit(self._wc(), "streams", limit)
            try:
                cur = self._wc().execute(
                    "INSERT INTO streams (arn, name, device_name, media_type, kms_key_id, version,"
                    " status, created, retention_hours, tags, storage_tier)"
                    " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    (
                        stream.arn,
                        stream.name,
                        stream.device_name,
                        stream.media_type,
                        stream.kms_key_id,
                        stream.version,
                        stream.status,
                        stream.created,
                        stream.retention_hours,
                        json.dumps(dict(stream.tags)),
                        stream.storage_tier,
                    ),
                )
            except sqlite3.IntegrityError as exc:
                raise ResourceInUseException(f"The stream {stream.name} already exists.") from exc
            assert cur.lastrowid is not None
            return cur.lastrowid

        stored = stream.replace(id=await self._write(run))
        self._cache_stream(stored)
        return stored

    async def save_stream(self, stream: Stream) -> None:
        def run() -> None:
            conn = self._wc()
            conn.execute("BEGIN")
            try:
                conn.execute(
                    "UPDATE streams SET device_name=?, media_type=?, version=?, status=?,"
                    " retention_hours=?, tags=?, storage_tier=? WHERE id=?",
                    (
                        stream.device_name,
                        stream.media_type,
                        stream.version,
                        stream.status,
                        stream.retention_hours,
                        json.dumps(dict(stream.tags)),
                        stream.storage_tier,
                        stream.id,
                    ),
                )
                for kind in _STREAM_CONFIGS:
                    config = getattr(stream, kind)
                    if config is None:
                        conn.execute(
                            "DELETE FROM stream_configs WHERE stream_id=? AND kind=?",
                            (stream.id, kind),
                        )
                    else:
                        conn.execute(
                            "INSERT OR REPLACE INTO stream_configs (stream_id, kind, config)"
                            " VALUES (?, ?, ?)",
                            (stream.id, kind, json.dumps(config)),
                        )
            except BaseException:
                conn.execute("ROLLBACK")
                raise
            conn.execute("COMMIT")

        await self._write(run)
        self._cache_stream(stream)

    async def delete_stream(self, stream: Stream) -> list[str]:
        def run() -> list[str]:
            conn = self._wc()
            keys = [
                r[0]
                for r in conn.execute(
                    "SELECT blob_key FROM fragments WHERE stream_id=?", (stream.id,)
                )
            ]
            conn.execute("BEGIN")
            conn.execute("DELETE FROM fragments WHERE stream_id=?", (stream.id,))
            conn.execute("DELETE FROM streams WHERE id=?", (stream.id,))
            conn.execute("DELETE FROM stream_configs WHERE stream_id=?", (stream.id,))
            conn.execute("COMMIT")
            return keys

        keys = await self._write(run)
        self._uncache_stream(stream.id)
        return keys

    # -- fragments ------

    async def add_fragment(self, fragment: Fragment) -> None:
        def run() -> None:
            self._wc().execute(
                f"INSERT INTO fragments ({_FRAGMENT_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?)",
                (
                    fragment.stream_id,
                    fragment.number,
                    fragment.producer_ts,
                    fragment.server_ts,
                    fragment.duration_ms,
                    fragment.size,
                    fragment.blob_key,
                ),
            )

        await self._write(run)

    async def max_fragment_number(self) -> int:
        def run(conn: sqlite3.Connection) -> int:
            row = conn.execute("SELECT MAX(number) FROM fragments").fetchone()
            return int(row[0] or 0)

        return await self._read(run)

    async def list_fragments(
        self,
        stream_id: int,
        *,
        timestamp_type: str | None = None,
        start_ms: int | None = None,
        end_ms: int | None = None,
        after_number: int | None = None,
        limit: int = 1000,
    ) -> list[Fragment]:
        where = ["stream_id = ?"]
        args: list[Any] = [stream_id]
        order = "number"
        if timestamp_type is not None:
            col = {"SERVER_TIMESTAMP": "server_ts", "PRODUCER_TIMESTAMP": "producer_ts"}[
                timestamp_type
            ]
            order = f"{col}, number"
            if start_ms is not None:
                where.append(f"{col} >= ?")
                args.append(start_ms)
            if end_ms is not None:
                where.append(f"{col} <= ?")
                args.append(end_ms)
        if after_number is not None:
            where.append("number > ?")
            args.append(after_number)
        sql = (
            f"SELECT {_FRAGMENT_COLUMNS} FROM fragments WHERE {' AND '.join(where)}"
            f" ORDER BY {order} LIMIT ?"
        )
        args.append(limit)
        return await self._read(lambda conn: [_fragment(r) for r in conn.execute(sql, args)])

    async def get_fragments(self, stream_id: int, numbers: Sequence[int]) -> list[Fragment]:
        wanted = list(numbers)

        def run(conn: sqlite3.Connection) -> list[Fragment]:
            found: dict[int, Fragment] = {}
            for i in range(0, len(wanted), 500):
                chunk = wanted[i : i + 500]
                marks = ",".join("?" * len(chunk))
                for r in conn.execute(
                    f"SELECT {_FRAGMENT_COLUMNS} FROM fragments"
                    f" WHERE stream_id=? AND number IN ({marks})",
                    [stream_id, *chunk],
                ):
                    found[r[1]] = _fragment(r)
            return [found[n] for n in wanted if n in found]

        return await self._read(run)

    async def last_fragments(self, stream_id: int, count: int) -> list[Fragment]:
        def run(conn: sqlite3.Connection) -> list[Fragment]:
            rows = conn.execute(
                f"SELECT {_FRAGMENT_COLUMNS} FROM fragments WHERE stream_id=?"
                " ORDER BY number DESC LIMIT ?",
                (stream_id, count),
            ).fetchall()
            return [_fragment(r) for r in reversed(rows)]

        return await self._read(run)

    async def expire_fragments(self, stream_id: int, before_server_ms: int) -> list[str]:
        def run() -> list[str]:
            conn = self._wc()
            keys = [
                r[0]
                for r in conn.execute(
                    "SELECT blob_key FROM fragments WHERE stream_id=? AND server_ts < ?",
                    (stream_id, before_server_ms),
                )
            ]
            if keys:
                conn.execute(
                    "DELETE FROM fragments WHERE stream_id=? AND server_ts < ?",
                    (stream_id, before_server_ms),
                )
            return keys

        return await self._write(run)

    async def all_blob_keys(self) -> set[str]:
        return await self._read(
            lambda conn: {r[0] for r in conn.execute("SELECT blob_key FROM fragments")}
        )

    async def reserve_fragment_numbers(self, floor: int, count: int) -> int:
        if not self._next_number:
            self._next_number = await self.max_fragment_number() + 1
        first = max(self._next_number, floor + 1)
        self._next_number = first + count
        return first

    # -- secrets and duties ------

    async def secret(self, name: str, candidate: str) -> str:
        """Kept in ``<data-dir>/<name>`` (0600), where earlier versions kept them."""
        if not name or "/" in name or name.startswith("."):
            raise ValueError(f"invalid secret name {name!r}")
        return await asyncio.to_thread(read_or_create, self._secrets_dir / name, candidate)

    @contextlib.asynccontextmanager
    async def exclusive(self, name: str, every: float = 0.0) -> AsyncIterator[bool]:
        lock = self._duties.setdefault(name, asyncio.Lock())
        now = time.monotonic()
        if lock.locked() or (every > 0 and now - self._duty_ran.get(name, -every) < every):
            yield False
            return
        async with lock:
            if every > 0:
                self._duty_ran[name] = now
            yield True
