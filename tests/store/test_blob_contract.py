"""Every blob store keeps the same contract: the filesystem one and the S3 one (on SeaweedFS),
both opened from settings through the factory."""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import pytest

from openkvs.config import Settings
from openkvs.store.base import BlobNotFound, BlobStore
from openkvs.store.factory import blob_store

from ..seaweed import Seaweed

MakeStore = Callable[[str], Awaitable[BlobStore]]


@pytest.fixture(params=["fs", "s3"])
async def make_store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[MakeStore]:
    """Opens (and starts) a store of the parametrized kind whose media lives under ``prefix``."""
    stores: list[BlobStore] = []
    if request.param == "s3":
        seaweed: Seaweed = request.getfixturevalue("seaweed")
        bucket: str = request.getfixturevalue("s3_env")

        def settings(prefix: str) -> Settings:
            return Settings.load(
                {}, None, {"data_dir": tmp_path, **seaweed.settings(bucket, prefix)}
            )
    else:

        def settings(prefix: str) -> Settings:
            return Settings.load(
                {}, None, {"data_dir": tmp_path, "media_url": f"file://{tmp_path / prefix}"}
            )

    async def make(prefix: str) -> BlobStore:
        store = blob_store(settings(prefix))
        await store.start()
        stores.append(store)
        return store

    yield make
    for store in stores:
        await store.stop()


async def test_put_get_overwrite_and_missing(make_store: MakeStore) -> None:
    store = await make_store("media")
    assert await store.keys() == set()
    await store.put("s1/0/1.mkv", b"first")
    assert await store.get("s1/0/1.mkv") == b"first"
    await store.put("s1/0/1.mkv", b"second, longer")
    assert await store.get("s1/0/1.mkv") == b"second, longer"
    with pytest.raises(BlobNotFound):
        await store.get("s1/0/2.mkv")
    await store.put("s1/0/empty.mkv", b"")
    assert await store.get("s1/0/empty.mkv") == b""
    assert await store.keys() == {"s1/0/1.mkv", "s1/0/empty.mkv"}
    assert await store.reachable()
    with pytest.raises(ValueError, match="invalid blob key"):
        await store.put("../escape", b"x")


async def test_large_blob_round_trips(make_store: MakeStore) -> None:
    store = await make_store("media")
    data = os.urandom(5 * 1024 * 1024 + 17)
    await store.put("s2/0/big.mkv", data)
    assert await store.get("s2/0/big.mkv") == data


async def test_more_than_a_page_is_listed_and_deleted(make_store: MakeStore) -> None:
    store = await make_store("deep/media")
    keys = [f"s3/{i % 3}/{i}.mkv" for i in range(1205)]
    sem = asyncio.Semaphore(32)

    async def put(key: str) -> None:
        async with sem:
            await store.put(key, key.encode())

    await asyncio.gather(*(put(k) for k in keys))
    assert await store.keys() == set(keys)
    assert await store.get(keys[1100]) == keys[1100].encode()
    # More than one DeleteObjects batch, with a key that is not there.
    await store.delete([*keys[:1100], "s3/9/missing.mkv"])
    assert await store.keys() == set(keys[1100:])
    await store.delete(keys[1100:])
    assert await store.keys() == set()
    await store.delete([])


async def test_stores_on_different_prefixes_do_not_see_each_other(
    make_store: MakeStore,
) -> None:
    a = await make_store("node-a")
    b = await make_store("node-b")
    await a.put("s1/0/1.mkv", b"a")
    await b.put("s1/0/1.mkv", b"b")
    await b.put("s1/0/2.mkv", b"b2")
    assert await a.keys() == {"s1/0/1.mkv"}
    assert await b.keys() == {"s1/0/1.mkv", "s1/0/2.mkv"}
    assert await a.get("s1/0/1.mkv") == b"a"
    with pytest.raises(BlobNotFound):
        await a.get("s1/0/2.mkv")
    await a.delete(["s1/0/1.mkv", "s1/0/2.mkv"])
    assert await a.keys() == set()
    assert await b.get("s1/0/2.mkv") == b"b2"
