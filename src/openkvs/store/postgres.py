"""PostgreSQL metadata store: several nodes share one database.

Channels and streams are served from memory on every node, as with SQLite, and kept coherent
across nodes: every write to them takes the next number of one cluster-wide change counter (a
row whose lock also orders those writes, so change numbers commit in order), stamps it on the
row it wrote (or on a tombstone for a deletion) and NOTIFYs. Each node LISTENs and reloads what
changed; ``sync`` does the same on demand with one query when nothing changed, so a request
served after ``sync`` sees every write committed before it, whichever node made it.

Saves and deletes are conditional on the change number the node last saw (``StaleRecord``
otherwise), so a version check made from memory holds across nodes. Names are unique by
constraint, and the account limits and the media-storage rules that span records (a stream
records one channel, keeps its retention and is not deleted while it does) are checked under
the change counter's lock; a write that would break one is refused as stale too, and the node
catches up and finds the reason itself.

The schema is migrated at start-up under an advisory lock (``openkvs_schema_version`` says how
far), so nodes may start together. A database that cannot be reached fails start-up with a
ConfigError within ``CONNECT_TIMEOUT`` seconds.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import json
import logging
import time
import zlib
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from typing import Any, TypeVar
from urllib.parse import urlsplit

import asyncpg

from ..config import ConfigError
from ..errors import ResourceInUseException, ResourceNotFoundException
from ..records import Channel, Fragment, Stream
from .base import LimitReached, StaleRecord
from .cache import RecordCache

logger = logging.getLogger(__name__)
T = TypeVar("T")

CONNECT_TIMEOUT = 5.0
COMMAND_TIMEOUT = 30.0
POOL_SIZE = 10
NOTIFY_CHANNEL = "openkvs_changes"
LOCK_NAMESPACE = 0x6F6B7673  # advisory locks: (namespace, 0) is the schema, (namespace, n) duties
TOMBSTONE_DAYS = 1  # deletions are remembered this long
FULL_RELOAD_AFTER = 6 * 3600.0  # a node that has not synced for this long reloads everything
RECONNECT_MAX = 5.0
DEAD_KEEP = 600.0
SYNC_WARN_EVERY = 10.0  # seconds between warnings while the database is unreachable

MIGRATIONS: tuple[str, ...] = (
    """
    CREATE TABLE openkvs_change (
        id integer PRIMARY KEY CHECK (id = 1),
        seq bigint NOT NULL
    );
    INSERT INTO openkvs_change VALUES (1, 0);
    CREATE TABLE openkvs_channels (
        id bigserial PRIMARY KEY,
        arn text NOT NULL UNIQUE,
        name text NOT NULL UNIQUE,
        channel_type text NOT NULL,
        status text NOT NULL,
        created double precision NOT NULL,
        version text NOT NULL,
        message_ttl integer NOT NULL,
        tags text NOT NULL,
        storage_status text NOT NULL,
        storage_stream_arn text,
        change bigint NOT NULL
    );
    CREATE INDEX openkvs_channels_by_change ON openkvs_channels (change);
    -- A stream records one channel at most (UpdateMediaStorageConfiguration).
    CREATE UNIQUE INDEX openkvs_channels_by_storage_stream ON openkvs_channels (storage_stream_arn)
        WHERE storage_status = 'ENABLED';
    CREATE TABLE openkvs_streams (
        id bigserial PRIMARY KEY,
        arn text NOT NULL UNIQUE,
        name text NOT NULL UNIQUE,
        device_name text,
        media_type text,
        kms_key_id text NOT NULL,
        version text NOT NULL,
        status text NOT NULL,
        created double precision NOT NULL,
        retention_hours integer NOT NULL,
        tags text NOT NULL,
        storage_tier text NOT NULL,
        image_generation text,
        notification text,
        change bigint NOT NULL
    );
    CREATE INDEX openkvs_streams_by_change ON openkvs_streams (change);
    CREATE TABLE openkvs_tombstones (
        change bigint PRIMARY KEY,
        kind text NOT NULL,
        id bigint NOT NULL,
        at timestamptz NOT NULL DEFAULT now()
    );
    CREATE TABLE openkvs_fragments (
        stream_id bigint NOT NULL REFERENCES openkvs_streams (id) ON DELETE CASCADE,
        number bigint NOT NULL,
        producer_ts bigint NOT NULL,
        server_ts bigint NOT NULL,
        duration_ms bigint NOT NULL,
        size bigint NOT NULL,
        blob_key text NOT NULL,
        PRIMARY KEY (stream_id, number)
    );
    CREATE INDEX openkvs_fragments_by_server_ts ON openkvs_fragments (stream_id, server_ts);
    CREATE INDEX openkvs_fragments_by_producer_ts ON openkvs_fragments (stream_id, producer_ts);
    CREATE TABLE openkvs_fragment_numbers (
        id integer PRIMARY KEY CHECK (id = 1),
        next bigint NOT NULL
    );
    INSERT INTO openkvs_fragment_numbers VALUES (1, 1);
    CREATE TABLE openkvs_secrets (
        name text PRIMARY KEY,
        value text NOT NULL
    );
    CREATE TABLE openkvs_duties (
        name text PRIMARY KEY,
        ran timestamptz NOT NULL
    );
    """,
)

_CHANNEL_COLUMNS = (
    "id, arn, name, channel_type, status, created, version, message_ttl, tags, storage_status,"
    " storage_stream_arn, change"
)
_STREAM_COLUMNS = (
    "id, arn, name, device_name, media_type, kms_key_id, version, status, created,"
    " retention_hours, tags, storage_tier, image_generation, notification, change"
)
_FRAGMENT_COLUMNS = "stream_id, number, producer_ts, server_ts, duration_ms, size, blob_key"
_UNREACHABLE = (OSError, asyncio.TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError)


def describe_url(url: str) -> str:
    """``host:port/database`` of a database URL: never its password."""
    parts = urlsplit(url)
    host = parts.hostname or "localhost"
    try:
        port = parts.port or 5432
    except ValueError:
        port = 5432
    return f"{host}:{port}{parts.path or '/'}"


def _channel(row: Any) -> Channel:
    return Channel(
        id=row["id"],
        arn=row["arn"],
        name=row["name"],
        channel_type=row["channel_type"],
        status=row["status"],
        created=row["created"],
        version=row["version"],
        message_ttl=row["message_ttl"],
        tags=json.loads(row["tags"]),
        storage_status=row["storage_status"],
        storage_stream_arn=row["storage_stream_arn"],
    )


def _json_or_none(text: str | None) -> Any:
    return None if text is None else json.loads(text)


def _dumps_or_none(value: Any) -> str | None:
    return None if value is None else json.dumps(value)


def _stream(row: Any) -> Stream:
    return Stream(
        id=row["id"],
        arn=row["arn"],
        name=row["name"],
        device_name=row["device_name"],
        media_type=row["media_type"],
        kms_key_id=row["kms_key_id"],
        version=row["version"],
        status=row["status"],
        created=row["created"],
        retention_hours=row["retention_hours"],
        tags=json.loads(row["tags"]),
        storage_tier=row["storage_tier"],
        image_generation=_json_or_none(row["image_generation"]),
        notification=_json_or_none(row["notification"]),
    )


def _fragment(row: Any) -> Fragment:
    return Fragment(*row)


def _duty_key(name: str) -> int:
    """A duty's advisory-lock key (int4, never 0: that one is the schema's)."""
    return (zlib.crc32(name.encode()) & 0x7FFFFFFF) or 1


async def migrate(conn: Any) -> int:
    """Bring the schema up to date (one node at a time); return its version."""
    async with conn.transaction():
        await conn.execute("SELECT pg_advisory_xact_lock($1, 0)", LOCK_NAMESPACE)
        await conn.execute(
            "CREATE TABLE IF NOT EXISTS openkvs_schema_version (version integer NOT NULL)"
        )
        current = await conn.fetchval("SELECT max(version) FROM openkvs_schema_version") or 0
        if current > len(MIGRATIONS):
            raise ConfigError(
                f"the database's openkvs schema (version {current}) is newer than this openkvs "
                f"understands (version {len(MIGRATIONS)}); upgrade openkvs"
            )
        for version in range(current + 1, len(MIGRATIONS) + 1):
            await conn.execute(MIGRATIONS[version - 1])
            await conn.execute("INSERT INTO openkvs_schema_version VALUES ($1)", version)
            logger.info("database schema migrated to version %d", version)
        return len(MIGRATIONS)


class PostgresMetadataStore(RecordCache):
    shared = True

    def __init__(self, url: str, *, pool_size: int = POOL_SIZE) -> None:
        super().__init__()
        self._url = url
        self._where = describe_url(url)
        self._pool_size = pool_size
        # Server pids of the pooled connections that may hold a duty's advisory lock (see
        # ``exclusive``): only these need the lock-releasing reset when they go back to the pool.
        self._locking: set[int] = set()
        self._pool: Any = None
        self._listener: Any = None
        self._listen_task: asyncio.Task[None] | None = None
        self._notify_task: asyncio.Task[None] | None = None
        self._notify_again = False
        self._stopping = False
        self._sync_lock = asyncio.Lock()
        self._seen = 0  # the change number the cache reflects
        self._synced_at = 0.0
        self._sync_started = 0.0
        self._sync_warned = -SYNC_WARN_EVERY
        # (kind, id) -> the change number of the row (or tombstone) cached; "c" / "s"
        self._rev: dict[tuple[str, int], int] = {}
        # Deleted records, oldest first: their tombstones leave ``_rev`` after DEAD_KEEP seconds
        # (long enough that no load begun before the deletion is still under way).
        self._dead: collections.deque[tuple[float, tuple[str, int]]] = collections.deque()

    # -- lifecycle ------

    async def _connect(self) -> Any:
        return await asyncpg.connect(
            self._url,
            timeout=CONNECT_TIMEOUT,
            command_timeout=COMMAND_TIMEOUT,
            server_settings={"application_name": "openkvs"},
        )

    async def start(self) -> None:
        self._stopping = False
        try:
            conn = await self._connect()
            try:
                await migrate(conn)
            finally:
                await conn.close()
            self._pool = await asyncpg.create_pool(
                self._url,
                min_size=1,
                max_size=self._pool_size,
                timeout=CONNECT_TIMEOUT,
                command_timeout=COMMAND_TIMEOUT,
                server_settings={"application_name": "openkvs"},
                reset=self._reset,
            )
            await self._listen()
            async with self._sync_lock:  # notifications may already be arriving
                await self._reload(full=True)
        except _UNREACHABLE as exc:
            await self.stop()
            reason = str(exc).strip() or type(exc).__name__
            raise ConfigError(
                f"database_url: cannot use PostgreSQL at {self._where}: {reason}"
            ) from None
        except BaseException:
            await self.stop()
            raise

    async def stop(self) -> None:
        self._stopping = True
        for task in (self._listen_task, self._notify_task):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task
        self._listen_task = self._notify_task = None
        if self._listener is not None:
            with contextlib.suppress(*_UNREACHABLE):
                await self._listener.close(timeout=CONNECT_TIMEOUT)
            self._listener = None
        if self._pool is not None:
            with contextlib.suppress(*_UNREACHABLE):
                await asyncio.wait_for(self._pool.close(), CONNECT_TIMEOUT)
            self._pool = None

    async def _reset(self, conn: Any) -> None:
        """What a connection needs before it goes back to the pool, beyond the rollback of an
        open transaction that the pool always does: no session settings, cursors or LISTENs are
        used on pooled connections, so only a duty lock that ``exclusive`` could not release
        (cancelled) is let go. asyncpg's default reset would run one more statement per
        checkout (a third of the statements of a fragment commit)."""
        pid = conn.get_server_pid()
        if pid in self._locking:
            self._locking.discard(pid)
            await conn.execute("SELECT pg_advisory_unlock_all()")

    def _p(self) -> Any:
        if self._pool is None:
            raise RuntimeError("store not started")
        return self._pool

    # -- change notifications ------

    async def _listen(self) -> None:
        conn = await self._connect()
        await conn.add_listener(NOTIFY_CHANNEL, self._notified)
        conn.add_termination_listener(self._listener_lost)
        self._listener = conn

    def _notified(self, conn: Any, pid: int, channel: str, payload: str) -> None:
        if self._notify_task is not None and not self._notify_task.done():
            self._notify_again = True
            return
        self._notify_task = asyncio.get_running_loop().create_task(self._sync_on_notify())

    async def _sync_on_notify(self) -> None:
        while True:
            self._notify_again = False
            try:
                await self.sync()
            except _UNREACHABLE as exc:
                logger.warning("could not reload changes from PostgreSQL: %s", exc)
            if not self._notify_again:
                return

    def _listener_lost(self, conn: Any) -> None:
        if self._stopping or conn is not self._listener:
            return
        logger.warning("lost the PostgreSQL change listener; reconnecting")
        self._listener = None
        self._listen_task = asyncio.get_running_loop().create_task(self._relisten())

    async def _relisten(self) -> None:
        delay = 0.2
        while not self._stopping:
            try:
                await self._listen()
                await self.sync()
                logger.info("PostgreSQL change listener reconnected")
                return
            except _UNREACHABLE as exc:
                logger.warning("PostgreSQL change listener: %s (retrying)", exc)
                await asyncio.sleep(delay)
                delay = min(RECONNECT_MAX, delay * 2)

    # -- cache ------

    async def sync(self) -> None:
        """Catch up. Concurrent callers share the work: a check that started after a caller
        arrived (and has finished, since they hold the lock in turn) covers that caller too.
        While the database cannot be reached, the cache serves as it is (writes fail)."""
        arrived = time.monotonic()
        async with self._sync_lock:
            if self._sync_started > arrived:
                return
            self._sync_started = time.monotonic()
            try:
                if self._sync_started - self._synced_at > FULL_RELOAD_AFTER:
                    await self._reload(full=True)
                    return
                seq = await self._p().fetchval("SELECT seq FROM openkvs_change WHERE id = 1")
                if seq > self._seen:
                    await self._reload(full=False)
                else:
                    self._synced_at = time.monotonic()
            except _UNREACHABLE as exc:
                if self._sync_started - self._sync_warned > SYNC_WARN_EVERY:
                    self._sync_warned = self._sync_started
                    logger.warning("cannot reach PostgreSQL to catch up (serving memory): %s", exc)

    async def _reload(self, *, full: bool) -> None:
        since = 0 if full else self._seen
        async with self._p().acquire() as conn:
            async with conn.transaction(isolation="repeatable_read", readonly=True):
                seq = await conn.fetchval("SELECT seq FROM openkvs_change WHERE id = 1")
                channels = await conn.fetch(
                    f"SELECT {_CHANNEL_COLUMNS} FROM openkvs_channels WHERE change > $1", since
                )
                streams = await conn.fetch(
                    f"SELECT {_STREAM_COLUMNS} FROM openkvs_streams WHERE change > $1", since
                )
                tombs = (
                    []
                    if full
                    else await conn.fetch(
                        "SELECT kind, id, change FROM openkvs_tombstones WHERE change > $1", since
                    )
                )
        if full:
            self._rev.clear()
            self._dead.clear()
            self._clear_cache()
        for row in channels:
            self._apply_channel(_channel(row), row["change"])
        for row in streams:
            self._apply_stream(_stream(row), row["change"])
        for row in tombs:
            self._drop(row["kind"], row["id"], row["change"])
        self._seen = max(self._seen, seq) if not full else seq
        self._synced_at = time.monotonic()

    def _newer(self, kind: str, rid: int, change: int) -> bool:
        if self._rev.get((kind, rid), -1) >= change:
            return False
        self._rev[(kind, rid)] = change
        return True

    def _apply_channel(self, c: Channel, change: int) -> None:
        if self._newer("c", c.id, change):
            self._cache_channel(c)

    def _apply_stream(self, s: Stream, change: int) -> None:
        if self._newer("s", s.id, change):
            self._cache_stream(s)

    def _drop(self, kind: str, rid: int, change: int) -> None:
        if not self._newer(kind, rid, change):
            return
        now = time.monotonic()
        self._dead.append((now, (kind, rid)))
        while self._dead and self._dead[0][0] < now - DEAD_KEEP:
            self._rev.pop(self._dead.popleft()[1], None)
        if kind == "c":
            self._uncache_channel(rid)
        else:
            self._uncache_stream(rid)

    async def _change(self, fn: Callable[[Any, int], Awaitable[T]]) -> tuple[T, int]:
        """Run ``fn(conn, change)`` in a transaction holding the next change number (and the
        counter's row lock, which orders every channel and stream write in the cluster)."""
        async with self._p().acquire() as conn:
            async with conn.transaction():
                change = await conn.fetchval(
                    "UPDATE openkvs_change SET seq = seq + 1 WHERE id = 1 RETURNING seq"
                )
                result = await fn(conn, change)
                await conn.execute("SELECT pg_notify($1, $2)", NOTIFY_CHANNEL, str(change))
        return result, change

    def _expected(self, kind: str, rid: int) -> int:
        rev = self._rev.get((kind, rid))
        if rev is None:
            raise StaleRecord(f"{kind}{rid}")
        return rev

    async def _bury(self, conn: Any, kind: str, rid: int, change: int) -> None:
        await conn.execute(
            "INSERT INTO openkvs_tombstones (change, kind, id) VALUES ($1, $2, $3)",
            change,
            kind,
            rid,
        )
        await conn.execute(
            "DELETE FROM openkvs_tombstones WHERE at < now() - make_interval(days => $1)",
            TOMBSTONE_DAYS,
        )

    async def _recorded(self, conn: Any, stream: Stream) -> bool:
        """Whether a channel records into the stream (which then needs retention and stays)."""
        return bool(
            await conn.fetchval(
                "SELECT 1 FROM openkvs_channels WHERE storage_stream_arn=$1"
                " AND storage_status='ENABLED'",
                stream.arn,
            )
        )

    # -- channels ------

    async def insert_channel(self, channel: Channel, *, limit: int | None = None) -> Channel:
        async def run(conn: Any, change: int) -> int:
            if limit is not None:
                if await conn.fetchval("SELECT count(*) FROM openkvs_channels") >= limit:
                    raise LimitReached("channels")
            try:
                rid: int = await conn.fetchval(
                    "INSERT INTO openkvs_channels (arn, name, channel_type, status, created,"
                    " version, message_ttl, tags, storage_status, storage_stream_arn, change)"
                    " VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11) RETURNING id",
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
                    change,
                )
            except asyncpg.UniqueViolationError as exc:
                raise ResourceInUseException(
                    f"The signaling channel {channel.name} already exists."
                ) from exc
            return rid

        rid, change = await self._change(run)
        stored = channel.replace(id=rid)
        self._apply_channel(stored, change)
        return stored

    async def save_channel(self, channel: Channel) -> None:
        expected = self._expected("c", channel.id)

        async def run(conn: Any, change: int) -> None:
            if channel.storage_status == "ENABLED" and not await conn.fetchval(
                "SELECT 1 FROM openkvs_streams WHERE arn=$1 AND retention_hours > 0",
                channel.storage_stream_arn,
            ):
                raise StaleRecord(channel.arn)  # the stream went, or lost its retention
            try:
                status = await conn.execute(
                    "UPDATE openkvs_channels SET status=$1, version=$2, message_ttl=$3,"
                    " tags=$4, storage_status=$5, storage_stream_arn=$6, change=$7"
                    " WHERE id=$8 AND change=$9",
                    channel.status,
                    channel.version,
                    channel.message_ttl,
                    json.dumps(dict(channel.tags)),
                    channel.storage_status,
                    channel.storage_stream_arn,
                    change,
                    channel.id,
                    expected,
                )
            except asyncpg.UniqueViolationError as exc:
                # Another node mapped the stream to its channel first: catching up shows it.
                raise StaleRecord(channel.arn) from exc
            if status != "UPDATE 1":
                raise StaleRecord(channel.arn)

        _, change = await self._change(run)
        self._apply_channel(channel, change)

    async def delete_channel(self, channel: Channel) -> None:
        expected = self._expected("c", channel.id)

        async def run(conn: Any, change: int) -> None:
            status = await conn.execute(
                "DELETE FROM openkvs_channels WHERE id=$1 AND change=$2", channel.id, expected
            )
            if status != "DELETE 1":
                raise StaleRecord(channel.arn)
            await self._bury(conn, "c", channel.id, change)

        _, change = await self._change(run)
        self._drop("c", channel.id, change)

    # -- streams ------

    async def insert_stream(self, stream: Stream, *, limit: int | None = None) -> Stream:
        async def run(conn: Any, change: int) -> int:
            if limit is not None:
                if await conn.fetchval("SELECT count(*) FROM openkvs_streams") >= limit:
                    raise LimitReached("streams")
            try:
                rid: int = await conn.fetchval(
                    "INSERT INTO openkvs_streams (arn, name, device_name, media_type, kms_key_id,"
                    " version, status, created, retention_hours, tags, storage_tier,"
                    " image_generation, notification, change)"
                    " VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14)"
                    " RETURNING id",
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
                    _dumps_or_none(stream.image_generation),
                    _dumps_or_none(stream.notification),
                    change,
                )
            except asyncpg.UniqueViolationError as exc:
                raise ResourceInUseException(f"The stream {stream.name} already exists.") from exc
            return rid

        rid, change = await self._change(run)
        stored = stream.replace(id=rid)
        self._apply_stream(stored, change)
        return stored

    async def save_stream(self, stream: Stream) -> None:
        expected = self._expected("s", stream.id)

        async def run(conn: Any, change: int) -> None:
            if stream.retention_hours <= 0 and await self._recorded(conn, stream):
                raise StaleRecord(stream.arn)
            status = await conn.execute(
                "UPDATE openkvs_streams SET device_name=$1, media_type=$2, version=$3, status=$4,"
                " retention_hours=$5, tags=$6, storage_tier=$7, image_generation=$8,"
                " notification=$9, change=$10 WHERE id=$11 AND change=$12",
                stream.device_name,
                stream.media_type,
                stream.version,
                stream.status,
                stream.retention_hours,
                json.dumps(dict(stream.tags)),
                stream.storage_tier,
                _dumps_or_none(stream.image_generation),
                _dumps_or_none(stream.notification),
                change,
                stream.id,
                expected,
            )
            if status != "UPDATE 1":
                raise StaleRecord(stream.arn)

        _, change = await self._change(run)
        self._apply_stream(stream, change)

    async def delete_stream(self, stream: Stream) -> list[str]:
        expected = self._expected("s", stream.id)

        async def run(conn: Any, change: int) -> list[str]:
            # The row lock first: fragments being added wait, then fail on the foreign key.
            found = await conn.fetchval(
                "SELECT 1 FROM openkvs_streams WHERE id=$1 AND change=$2 FOR UPDATE",
                stream.id,
                expected,
            )
            if found is None or await self._recorded(conn, stream):
                raise StaleRecord(stream.arn)
            rows = await conn.fetch(
                "DELETE FROM openkvs_fragments WHERE stream_id=$1 RETURNING blob_key", stream.id
            )
            await conn.execute("DELETE FROM openkvs_streams WHERE id=$1", stream.id)
            await self._bury(conn, "s", stream.id, change)
            return [r[0] for r in rows]

        keys, change = await self._change(run)
        self._drop("s", stream.id, change)
        return keys

    # -- fragments ------

    async def add_fragment(self, fragment: Fragment) -> None:
        try:
            await self._p().execute(
                f"INSERT INTO openkvs_fragments ({_FRAGMENT_COLUMNS})"
                " VALUES ($1, $2, $3, $4, $5, $6, $7)",
                fragment.stream_id,
                fragment.number,
                fragment.producer_ts,
                fragment.server_ts,
                fragment.duration_ms,
                fragment.size,
                fragment.blob_key,
            )
        except asyncpg.ForeignKeyViolationError as exc:
            raise ResourceNotFoundException("The stream was deleted.") from exc

    async def max_fragment_number(self) -> int:
        return int(await self._p().fetchval("SELECT max(number) FROM openkvs_fragments") or 0)

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
        where = ["stream_id = $1"]
        args: list[Any] = [stream_id]
        order = "number"

        def arg(value: Any) -> str:
            args.append(value)
            return f"${len(args)}"

        if timestamp_type is not None:
            col = {"SERVER_TIMESTAMP": "server_ts", "PRODUCER_TIMESTAMP": "producer_ts"}[
                timestamp_type
            ]
            order = f"{col}, number"
            if start_ms is not None:
                where.append(f"{col} >= {arg(start_ms)}")
            if end_ms is not None:
                where.append(f"{col} <= {arg(end_ms)}")
        if after_number is not None:
            where.append(f"number > {arg(after_number)}")
        sql = (
            f"SELECT {_FRAGMENT_COLUMNS} FROM openkvs_fragments WHERE {' AND '.join(where)}"
            f" ORDER BY {order} LIMIT {arg(limit)}"
        )
        return [_fragment(r) for r in await self._p().fetch(sql, *args)]

    async def get_fragments(self, stream_id: int, numbers: Sequence[int]) -> list[Fragment]:
        wanted = list(numbers)
        rows = await self._p().fetch(
            f"SELECT {_FRAGMENT_COLUMNS} FROM openkvs_fragments"
            " WHERE stream_id=$1 AND number = ANY($2::bigint[])",
            stream_id,
            wanted,
        )
        found = {r["number"]: _fragment(r) for r in rows}
        return [found[n] for n in wanted if n in found]

    async def last_fragments(self, stream_id: int, count: int) -> list[Fragment]:
        rows = await self._p().fetch(
            f"SELECT {_FRAGMENT_COLUMNS} FROM openkvs_fragments WHERE stream_id=$1"
            " ORDER BY number DESC LIMIT $2",
            stream_id,
            count,
        )
        return [_fragment(r) for r in reversed(rows)]

    async def expire_fragments(self, stream_id: int, before_server_ms: int) -> list[str]:
        # DELETE ... RETURNING: of two nodes expiring at once, each key goes to one of them.
        rows = await self._p().fetch(
            "DELETE FROM openkvs_fragments WHERE stream_id=$1 AND server_ts < $2"
            " RETURNING blob_key",
            stream_id,
            before_server_ms,
        )
        return [r[0] for r in rows]

    async def all_blob_keys(self) -> set[str]:
        return {r[0] for r in await self._p().fetch("SELECT blob_key FROM openkvs_fragments")}

    async def reserve_fragment_numbers(self, floor: int, count: int) -> int:
        if count < 1:
            raise ValueError("count must be positive")
        first: int = await self._p().fetchval(
            "UPDATE openkvs_fragment_numbers SET next = GREATEST(next, $1::bigint + 1) + $2"
            " WHERE id = 1 RETURNING next - $2",
            floor,
            count,
        )
        return first

    # -- secrets and duties ------

    async def secret(self, name: str, candidate: str) -> str:
        pool = self._p()
        await pool.execute(
            "INSERT INTO openkvs_secrets (name, value) VALUES ($1, $2) ON CONFLICT DO NOTHING",
            name,
            candidate,
        )
        value: str = await pool.fetchval("SELECT value FROM openkvs_secrets WHERE name=$1", name)
        return value

    @contextlib.asynccontextmanager
    async def exclusive(self, name: str, every: float = 0.0) -> AsyncIterator[bool]:
        key = _duty_key(name)
        async with self._p().acquire() as conn:
            locked = await conn.fetchval("SELECT pg_try_advisory_lock($1, $2)", LOCK_NAMESPACE, key)
            if not locked:
                yield False
                return
            self._locking.add(conn.get_server_pid())
            try:
                due = True
                if every > 0:
                    due = (
                        await conn.fetchval(
                            "INSERT INTO openkvs_duties (name, ran) VALUES ($1, now())"
                            " ON CONFLICT (name) DO UPDATE SET ran = now()"
                            " WHERE openkvs_duties.ran <= now() - make_interval(secs => $2)"
                            " RETURNING ran",
                            name,
                            float(every),
                        )
                        is not None
                    )
                yield due
            finally:
                with contextlib.suppress(*_UNREACHABLE):
                    await conn.fetchval("SELECT pg_advisory_unlock($1, $2)", LOCK_NAMESPACE, key)
                    self._locking.discard(conn.get_server_pid())
