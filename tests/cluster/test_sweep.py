"""The start sweep in a cluster spares orphaned blobs young enough to be another node's
fragment between its blob and its row."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from openkvs import clock
from openkvs.control.fragments import CLUSTER_ORPHAN_MIN_AGE, FragmentStore, blob_key, written_ms
from openkvs.store.fs import FsBlobStore
from openkvs.store.sqlite import SqliteMetadataStore


@pytest.fixture
async def stores(tmp_path: Path) -> AsyncIterator[tuple[SqliteMetadataStore, FsBlobStore]]:
    meta = SqliteMetadataStore(tmp_path / "db.sqlite")
    blobs = FsBlobStore(tmp_path / "media")
    await meta.start()
    await blobs.start()
    yield meta, blobs
    await blobs.stop()
    await meta.stop()


def key_written(seconds_ago: float) -> str:
    written = clock.now_ms() - int(seconds_ago * 1000)
    return blob_key(1, written, written << 16 | 7)


async def test_cluster_sweep_spares_young_orphans(
    stores: tuple[SqliteMetadataStore, FsBlobStore],
) -> None:
    meta, blobs = stores
    old, young = key_written(CLUSTER_ORPHAN_MIN_AGE + 60), key_written(5)
    foreign = "s1/0/not-a-fragment.mkv"
    for key in (old, young, foreign):
        await blobs.put(key, b"x")
    assert written_ms(foreign) is None and written_ms(young) is not None
    clustered = FragmentStore(meta, blobs, orphan_min_age=CLUSTER_ORPHAN_MIN_AGE)
    assert await clustered.sweep_orphans() == 1
    assert await blobs.keys() == {young, foreign}
    # A node alone owns every blob: all orphans go, as before.
    alone = FragmentStore(meta, blobs)
    assert await alone.sweep_orphans() == 2
    assert await blobs.keys() == set()
