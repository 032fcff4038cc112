"""The MetadataStore contract, for every backend (SQLite, PostgreSQL), plus what a shared store
owes the nodes of a cluster: two stores on one database see each other's writes (on ``sync`` and
by notification), refuse writes made from stale records, keep names unique and limits whole, hand
out disjoint fragment numbers and agree on secrets and duties."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from openkvs.config import ConfigError, Settings
from openkvs.control import resources
from openkvs.control.resources import ControlPlane
from openkvs.errors import (
    AccountChannelLimitExceededException,
    ResourceInUseException,
    ResourceNotFoundException,
    VersionMismatchException,
)
from openkvs.records import Channel, Fragment, Stream
from openkvs.store.base import LimitReached, MetadataStore, StaleRecord
from openkvs.store.factory import metadata_store, open_backends
from openkvs.store.postgres import MIGRATIONS, NOTIFY_CHANNEL

Factory = Callable[[], Awaitable[MetadataStore]]


def channel(name: str, **changes: Any) -> Channel:
    c = Channel(
        id=0,
        arn=f"arn:aws:kinesisvideo:us-east-1:000000000000:channel/{name}/1",
        name=name,
        channel_type="SINGLE_MASTER",
        status="ACTIVE",
        created=1.5,
        version="v1",
        message_ttl=60,
        tags={"k": "v"},
    )
    return c.replace(**changes)


def stream(name: str, **changes: Any) -> Stream:
    s = Stream(
        id=0,
        arn=f"arn:aws:kinesisvideo:us-east-1:000000000000:stream/{name}/1",
        name=name,
        device_name="cam",
        media_type="video/h264",
        kms_key_id="aws/kinesisvideo",
        version="v1",
        status="ACTIVE",
        created=2.5,
        retention_hours=24,
        tags={},
    )
    return s.replace(**changes)


def fragment(stream_id: int, number: int, producer: int, server: int) -> Fragment:
    return Fragment(stream_id, number, producer, server, 1000, 10, f"s{stream_id}/0/{number}.mkv")


@pytest.fixture(params=["sqlite", "postgres"])
async def make_store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Factory]:
    """Starts stores on one database of the backend (as many nodes would)."""
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'openkvs.db'}"
    else:
        url = request.getfixturevalue("postgres_url")
    settings = Settings(data_dir=tmp_path / "data", database_url=url)
    started: list[MetadataStore] = []

    async def make() -> MetadataStore:
        store = metadata_store(settings)
        await store.start()
        started.append(store)
        return store

    yield make
    for store in started:
        await store.stop()


@pytest.fixture
async def store(make_store: Factory) -> MetadataStore:
    return await make_store()


@pytest.fixture
async def pg_nodes(postgres_url: str, tmp_path: Path) -> AsyncIterator[list[MetadataStore]]:
    """Two PostgreSQL stores on one database: two nodes' views."""
    settings = Settings(data_dir=tmp_path / "data", database_url=postgres_url)
    nodes = [metadata_store(settings), metadata_store(settings)]
    for node in nodes:
        await node.start()
    yield nodes
    for node in nodes:
        await node.stop()


async def deaf(node: MetadataStore) -> None:
    """Stop a PostgreSQL store hearing change notifications: it learns of other nodes' writes
    only when it syncs (so a test can hold it stale)."""
    await node._listener.remove_listener(NOTIFY_CHANNEL, node._notified)  # type: ignore[attr-defined]


async def eventually(check: Callable[[], bool], within: float = 5.0) -> None:
    deadline = time.monotonic() + within
    while not check():
        assert time.monotonic() < deadline, "not within the time"
        await asyncio.sleep(0.02)


# -- every backend ------


async def test_channels_insert_read_save_delete(make_store: Factory) -> None:
    store = await make_store()
    a = await store.insert_channel(channel("b-chan"))
    b = await store.insert_channel(channel("a-chan", arn="arn:a", tags={}))
    assert a.id > 0 and b.id > 0 and a.id != b.id
    assert store.channel_by_arn(a.arn) == a and store.channel_by_name("b-chan") == a
    assert [c.name for c in store.channels()] == ["a-chan", "b-chan"]
    updated = a.replace(version="v2", message_ttl=120, tags={"x": "y"})
    recorded = await store.insert_stream(stream("recorded"))
    updated = updated.replace(storage_status="ENABLED", storage_stream_arn=recorded.arn)
    await store.save_channel(updated)
    assert store.channel_by_arn(a.arn) == updated
    await store.delete_channel(b)
    assert store.channel_by_arn("arn:a") is None and store.channel_by_name("a-chan") is None
    again = await make_store()  # what was committed, read back from the database
    assert again.channels() == [updated]


async def test_streams_insert_read_save_delete(make_store: Factory) -> None:
    store = await make_store()
    s = await store.insert_stream(stream("cam1"))
    assert (
        store.stream_by_id(s.id) == s == store.stream_by_name("cam1") == store.stream_by_arn(s.arn)
    )
    configured = s.replace(
        version="v2",
        storage_tier="WARM",
        image_generation={"Status": "ENABLED", "Format": "JPEG"},
        notification={"Status": "ENABLED", "DestinationConfig": {"Uri": "u"}},
    )
    await store.save_stream(configured)
    assert store.stream_by_id(s.id) == configured
    await store.add_fragment(fragment(s.id, 10, 1000, 2000))
    await store.add_fragment(fragment(s.id, 11, 2000, 3000))
    again = await make_store()
    assert again.streams() == [configured]
    cleared = configured.replace(image_generation=None)
    await store.save_stream(cleared)
    assert (await make_store()).stream_by_id(s.id) == cleared
    keys = await store.delete_stream(cleared)
    assert sorted(keys) == [f"s{s.id}/0/10.mkv", f"s{s.id}/0/11.mkv"]
    assert store.stream_by_id(s.id) is None and store.streams() == []
    assert await store.list_fragments(s.id) == [] and await store.all_blob_keys() == set()


async def test_names_are_unique_and_limits_hold(store: MetadataStore) -> None:
    await store.insert_channel(channel("dup"))
    with pytest.raises(ResourceInUseException, match="dup already exists"):
        await store.insert_channel(channel("dup", arn="arn:other"))
    await store.insert_stream(stream("dup"))
    with pytest.raises(ResourceInUseException, match="dup already exists"):
        await store.insert_stream(stream("dup", arn="arn:other"))
    await store.insert_channel(channel("two", arn="arn:two"), limit=2)
    with pytest.raises(LimitReached):
        await store.insert_channel(channel("three", arn="arn:three"), limit=2)
    with pytest.raises(LimitReached):
        await store.insert_stream(stream("s2", arn="arn:s2"), limit=1)
    assert [c.name for c in store.channels()] == ["dup", "two"] and len(store.streams()) == 1


async def test_fragments_by_number_and_by_timestamps(store: MetadataStore) -> None:
    s = await store.insert_stream(stream("frags"))
    other = await store.insert_stream(stream("other", arn="arn:other"))
    # Producer timestamps run backwards to the numbers; server timestamps forwards.
    frags = [fragment(s.id, n, 10_000 - n * 100, 1_000 + n * 100) for n in range(1, 11)]
    for f in frags:
        await store.add_fragment(f)
    await store.add_fragment(fragment(other.id, 99, 0, 0))
    assert await store.max_fragment_number() == 99
    assert await store.list_fragments(s.id) == frags
    page = await store.list_fragments(s.id, limit=4)
    assert page == frags[:4]
    assert await store.list_fragments(s.id, after_number=page[-1].number, limit=4) == frags[4:8]
    by_server = await store.list_fragments(
        s.id, timestamp_type="SERVER_TIMESTAMP", start_ms=1_300, end_ms=1_600
    )
    assert [f.number for f in by_server] == [3, 4, 5, 6]
    by_producer = await store.list_fragments(
        s.id, timestamp_type="PRODUCER_TIMESTAMP", start_ms=9_300, end_ms=9_600
    )
    assert [f.number for f in by_producer] == [7, 6, 5, 4]  # in producer-timestamp order
    assert await store.get_fragments(s.id, [5, 404, 2, 99]) == [frags[4], frags[1]]
    assert await store.last_fragments(s.id, 3) == frags[7:]
    assert await store.all_blob_keys() == {f.blob_key for f in frags} | {f"s{other.id}/0/99.mkv"}
    expired = await store.expire_fragments(s.id, 1_400)
    assert sorted(expired) == sorted(f.blob_key for f in frags[:3])
    assert await store.list_fragments(s.id) == frags[3:]
    assert await store.expire_fragments(s.id, 1_400) == []
    assert [f.number for f in await store.list_fragments(other.id)] == [99]


async def test_reserved_fragment_numbers_grow_above_the_floor(store: MetadataStore) -> None:
    first = await store.reserve_fragment_numbers(1_000, 10)
    assert first > 1_000
    second = await store.reserve_fragment_numbers(0, 10)
    assert second >= first + 10
    third = await store.reserve_fragment_numbers(5_000_000, 1)
    assert third > 5_000_000 and await store.reserve_fragment_numbers(0, 1) > third


async def test_a_secret_is_created_once(make_store: Factory) -> None:
    store = await make_store()
    assert await store.secret("credentials.json", "first") == "first"
    assert await store.secret("credentials.json", "second") == "first"
    assert await store.secret("turn-secret.key", "other") == "other"
    assert await (await make_store()).secret("credentials.json", "third") == "first"


async def test_a_duty_runs_on_one_holder_and_once_per_interval(store: MetadataStore) -> None:
    async with store.exclusive("retention") as mine:
        assert mine
        async with store.exclusive("retention") as again:
            assert not again
        async with store.exclusive("sweep") as other:
            assert other
    async with store.exclusive("retention") as mine:
        assert mine  # released
    async with store.exclusive("every", every=60) as mine:
        assert mine
    async with store.exclusive("every", every=60) as mine:
        assert not mine  # ran less than a minute ago


async def test_stale_writes_are_refused(store: MetadataStore) -> None:
    # A record this store never saw (or saw go) cannot be saved or deleted.
    c = await store.insert_channel(channel("gone"))
    await store.delete_channel(c)
    if store.shared:
        with pytest.raises(StaleRecord):
            await store.save_channel(c.replace(version="v9"))
        with pytest.raises(StaleRecord):
            await store.delete_channel(c)
    await store.sync()  # nothing to catch up with
    assert store.channels() == []


# -- a store shared by several nodes ------


async def test_two_nodes_see_each_others_writes_after_sync(pg_nodes: list[MetadataStore]) -> None:
    a, b = pg_nodes
    c = await a.insert_channel(channel("chan"))
    s = await a.insert_stream(stream("cam"))
    await b.sync()
    assert b.channel_by_name("chan") == c and b.stream_by_id(s.id) == s
    configured = s.replace(version="v2", notification={"Status": "ENABLED"})
    await b.save_stream(configured)
    await b.delete_channel(c)
    await a.sync()
    assert a.stream_by_arn(s.arn) == configured and a.channel_by_arn(c.arn) is None
    assert await a.delete_stream(configured) == []
    await b.sync()
    assert b.streams() == [] and b.channels() == []


async def test_a_node_hears_of_changes_without_asking(pg_nodes: list[MetadataStore]) -> None:
    a, b = pg_nodes
    c = await a.insert_channel(channel("heard"))
    await eventually(lambda: b.channel_by_arn(c.arn) == c)
    await a.save_channel(c.replace(message_ttl=300))
    await eventually(lambda: (b.channel_by_arn(c.arn) or c).message_ttl == 300)
    await a.delete_channel(c.replace(message_ttl=300))
    await eventually(lambda: b.channel_by_arn(c.arn) is None)


async def test_a_node_listens_again_after_losing_its_connection(
    pg_nodes: list[MetadataStore],
) -> None:
    a, b = pg_nodes
    listener = b._listener  # type: ignore[attr-defined]
    conn = await asyncpg.connect(a._url)  # type: ignore[attr-defined]
    try:
        assert await conn.fetchval("SELECT pg_terminate_backend($1)", listener.get_server_pid())
    finally:
        await conn.close()
    await eventually(lambda: b._listener not in (None, listener))  # type: ignore[attr-defined]
    c = await a.insert_channel(channel("after-reconnect"))
    await eventually(lambda: b.channel_by_arn(c.arn) == c)


async def test_many_concurrent_syncs_share_their_queries(pg_nodes: list[MetadataStore]) -> None:
    a, b = pg_nodes
    c = await a.insert_channel(channel("burst"))
    checks = 0
    pool = b._p()  # type: ignore[attr-defined]

    class Counting:
        async def fetchval(self, *args: Any) -> Any:
            nonlocal checks
            checks += 1
            return await pool.fetchval(*args)

        def __getattr__(self, name: str) -> Any:
            return getattr(pool, name)

    b._p = Counting  # type: ignore[attr-defined]
    await asyncio.gather(*(b.sync() for _ in range(50)))
    assert b.channel_by_arn(c.arn) == c
    # The first caller checks; the 49 that arrived while it did share one more check.
    assert 1 <= checks <= 2, checks


async def test_a_write_from_a_stale_record_is_refused(pg_nodes: list[MetadataStore]) -> None:
    a, b = pg_nodes
    await deaf(b)
    c = await a.insert_channel(channel("race"))
    await b.sync()
    await a.save_channel(c.replace(version="v2"))
    # b has not caught up: its save and its delete are both refused.
    with pytest.raises(StaleRecord):
        await b.save_channel(c.replace(version="v3"))
    with pytest.raises(StaleRecord):
        await b.delete_channel(c)
    await b.sync()
    assert b.channel_by_arn(c.arn) == c.replace(version="v2")
    await b.save_channel(c.replace(version="v3"))
    await a.sync()
    assert a.channel_by_arn(c.arn) == c.replace(version="v3")


async def test_names_and_limits_hold_across_nodes(pg_nodes: list[MetadataStore]) -> None:
    a, b = pg_nodes
    await a.insert_stream(stream("one"))
    with pytest.raises(ResourceInUseException):
        await b.insert_stream(stream("one", arn="arn:elsewhere"))  # b has not synced
    await b.insert_stream(stream("two", arn="arn:two"), limit=2)
    with pytest.raises(LimitReached):
        await a.insert_stream(stream("three", arn="arn:three"), limit=2)
    # Many inserts at once from both nodes: the limit holds exactly.
    inserts = [
        node.insert_channel(channel(f"c{i}", arn=f"arn:c{i}"), limit=5)
        for i, node in enumerate([a, b] * 6)
    ]
    results = await asyncio.gather(*inserts, return_exceptions=True)
    assert sum(isinstance(r, Channel) for r in results) == 5
    assert all(isinstance(r, (Channel, LimitReached)) for r in results)
    await b.sync()
    assert len(b.channels()) == 5


async def test_fragment_numbers_and_secrets_agree_across_nodes(
    pg_nodes: list[MetadataStore],
) -> None:
    a, b = pg_nodes
    blocks = await asyncio.gather(
        *[node.reserve_fragment_numbers(1_000, 100) for node in [a, b] * 10]
    )
    ranges = sorted((first, first + 100) for first in blocks)
    assert all(prev[1] <= nxt[0] for prev, nxt in zip(ranges, ranges[1:], strict=False))
    values = await asyncio.gather(
        *[node.secret("key", f"candidate{i}") for i, node in enumerate([a, b] * 5)]
    )
    assert len(set(values)) == 1


async def test_a_duty_is_held_by_one_node(pg_nodes: list[MetadataStore]) -> None:
    a, b = pg_nodes
    async with a.exclusive("retention") as mine:
        assert mine
        async with b.exclusive("retention") as theirs:
            assert not theirs
    async with b.exclusive("retention", every=60) as theirs:
        assert theirs
    async with a.exclusive("retention", every=60) as mine:
        assert not mine  # b ran it less than a minute ago


async def test_a_duty_abandoned_by_a_cancelled_holder_is_free_again(
    pg_nodes: list[MetadataStore],
) -> None:
    """A cancelled holder's lock is let go on its way out; and should its own unlock not run
    (cancelled again while unlocking), the pool's reset lets go of it when the connection goes
    back to the pool."""
    a, b = pg_nodes
    holding = asyncio.Event()

    async def hold() -> None:
        async with a.exclusive("sweep") as mine:
            assert mine
            holding.set()
            await asyncio.sleep(60)

    task = asyncio.create_task(hold())
    await holding.wait()
    async with b.exclusive("sweep") as theirs:
        assert not theirs
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
    for _ in range(3):  # whichever pooled connection a takes next, the lock is gone
        async with a.exclusive("sweep") as mine:
            assert mine
    async with b.exclusive("sweep") as theirs:
        assert theirs
    # The unlock skipped: the connection goes back to the pool holding the lock it took.
    pool = a._p()  # type: ignore[attr-defined]
    async with pool.acquire() as conn:
        assert await conn.fetchval("SELECT pg_try_advisory_lock(1, 2)")
        a._locking.add(conn.get_server_pid())  # type: ignore[attr-defined]
    async with b._p().acquire() as other:  # type: ignore[attr-defined]
        assert await other.fetchval("SELECT pg_try_advisory_lock(1, 2)")
        await other.fetchval("SELECT pg_advisory_unlock(1, 2)")


async def test_fragments_of_a_stream_deleted_elsewhere_are_refused(
    pg_nodes: list[MetadataStore],
) -> None:
    a, b = pg_nodes
    s = await a.insert_stream(stream("gone"))
    await b.sync()
    await a.delete_stream(s)
    with pytest.raises(ResourceNotFoundException):
        await b.add_fragment(fragment(s.id, 1, 0, 0))


async def test_nodes_starting_together_migrate_once(postgres_url: str, tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path, database_url=postgres_url)
    nodes = [metadata_store(settings) for _ in range(6)]
    await asyncio.gather(*(node.start() for node in nodes))
    try:
        await nodes[0].insert_channel(channel("after"))
        await nodes[5].sync()
        assert [c.name for c in nodes[5].channels()] == ["after"]
    finally:
        await asyncio.gather(*(node.stop() for node in nodes))
    conn = await asyncpg.connect(postgres_url)
    try:
        versions = await conn.fetch("SELECT version FROM openkvs_schema_version")
    finally:
        await conn.close()
    assert [r[0] for r in versions] == list(range(1, len(MIGRATIONS) + 1))


async def test_an_unreachable_database_fails_start_up_quickly(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path, database_url="postgresql://u:pw@127.0.0.1:1/x")
    store = metadata_store(settings)
    started = time.monotonic()
    with pytest.raises(ConfigError, match="cannot use PostgreSQL at 127.0.0.1:1/x") as info:
        await store.start()
    assert time.monotonic() - started < 10 and "pw" not in str(info.value)


async def test_control_planes_on_two_nodes_check_versions_together(
    postgres_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = Settings(data_dir=tmp_path, database_url=postgres_url)
    planes = []
    for _ in range(2):
        backends = open_backends(settings)
        plane = ControlPlane(
            backends.meta, backends.blobs, region="us-east-1", account_id="000000000000"
        )
        await plane.start()
        planes.append(plane)
    a, b = planes
    await deaf(b.store)
    try:
        c = await a.create_channel(name="shared")
        await b.sync()
        assert b.get_channel(name="shared") == c
        await a.update_channel(arn=c.arn, current_version=c.version, message_ttl=90)
        # b's memory still has the old version; the store refuses the write, b catches up and
        # answers as if it had known: the version does not match.
        with pytest.raises(VersionMismatchException):
            await b.update_channel(arn=c.arn, current_version=c.version, message_ttl=30)
        await b.tag_resource(c, {"team": "b"})  # tags need no version: redone on fresh data
        await a.sync()
        assert a.get_channel(arn=c.arn).tags == {"team": "b"}
        assert a.get_channel(arn=c.arn).message_ttl == 90
        with pytest.raises(ResourceInUseException):
            await b.create_channel(name="shared")
        # One stream records one channel, though each node maps it from what it knew.
        s = await a.create_stream(name="recorded", retention_hours=1)
        await b.sync()
        await a.update_media_storage(arn=c.arn, status="ENABLED", stream_arn=s.arn)
        other = await b.create_channel(name="other")
        with pytest.raises(ResourceInUseException, match="already mapped to channel shared"):
            await b.update_media_storage(arn=other.arn, status="ENABLED", stream_arn=s.arn)
        other_channel = await b.create_channel(name="third-party")
        await b.delete_channel(arn=other.arn, current_version=None)
        # b still thinks the stream is free: it cannot be deleted nor lose its retention.
        with pytest.raises(ResourceInUseException, match="media storage of channel shared"):
            await b.delete_stream(arn=s.arn, current_version=None)
        await a.update_media_storage(arn=c.arn, status="DISABLED", stream_arn=None)
        await b.sync()
        await a.delete_stream(arn=s.arn, current_version=None)
        with pytest.raises(ResourceNotFoundException):  # b has not heard of the deletion
            await b.update_media_storage(arn=other_channel.arn, status="ENABLED", stream_arn=s.arn)
        monkeypatch.setattr(resources, "MAX_CHANNELS", 3)
        await b.create_channel(name="second")
        with pytest.raises(AccountChannelLimitExceededException):
            await a.create_channel(name="third")  # a has not synced: the store refuses
    finally:
        for p in planes:
            await p.stop()
