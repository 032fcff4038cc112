"""What the nodes of a cluster do once between them: retention passes, the orphan sweep and the
fragment numbering (through the control plane and the fragment store, on a real PostgreSQL)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from openkvs import clock
from openkvs.config import Settings
from openkvs.control.fragments import FragmentStore
from openkvs.control.resources import ControlPlane
from openkvs.control.retention import RetentionTask
from openkvs.records import Fragment
from openkvs.store.factory import open_backends

HOUR_MS = 3_600_000


@pytest.fixture(params=["sqlite", "postgres"])
async def planes(
    request: pytest.FixtureRequest, tmp_path: Path
) -> AsyncIterator[list[tuple[ControlPlane, FragmentStore]]]:
    """Two nodes' control planes and fragment stores on one database and media folder (with
    SQLite, one node: the embedded store serves one process)."""
    if request.param == "sqlite":
        url, count = f"sqlite:///{tmp_path / 'openkvs.db'}", 1
    else:
        url, count = request.getfixturevalue("postgres_url"), 2
    settings = Settings(
        data_dir=tmp_path / "data", database_url=url, media_url=f"file://{tmp_path / 'media'}"
    )
    out = []
    for _ in range(count):
        backends = open_backends(settings)
        plane = ControlPlane(
            backends.meta, backends.blobs, region="us-east-1", account_id="000000000000"
        )
        await plane.start()
        fragments = FragmentStore(backends.meta, backends.blobs)
        await fragments.start()
        out.append((plane, fragments))
    yield out
    for plane, fragments in out:
        await fragments.stop()
        await plane.stop()


async def test_retention_removes_each_expired_fragment_once(
    planes: list[tuple[ControlPlane, FragmentStore]],
) -> None:
    plane, fragments = planes[0]
    stream = await plane.create_stream(name="cam", retention_hours=1)
    now = clock.now_ms()
    old = [
        await fragments.append(
            stream, b"old", producer_ts_ms=i, server_ts_ms=now - 3 * HOUR_MS + i, duration_ms=1
        )
        for i in range(5)
    ]
    young = await fragments.append(
        stream, b"new", producer_ts_ms=9, server_ts_ms=now, duration_ms=1
    )
    tasks = [RetentionTask(p, interval=0) for p, _ in planes]
    removed = await asyncio.gather(*(t.run_once() for t in tasks))
    assert sum(removed) == len(old)  # one node's pass took them all, or each took some
    assert [f.number for f in await fragments.list_fragments(stream)] == [young.number]
    assert await plane.blobs.keys() == {young.blob_key}
    # Once per interval between them: a node that ran it just now stops the next one.
    await fragments.append(stream, b"old", producer_ts_ms=1, server_ts_ms=0, duration_ms=1)
    assert await tasks[-1].run_once(every=60) == 1
    await fragments.append(stream, b"old", producer_ts_ms=2, server_ts_ms=0, duration_ms=1)
    assert [await t.run_once(every=60) for t in tasks] == [0] * len(tasks)


async def test_the_sweep_spares_young_orphans_of_a_shared_store(
    planes: list[tuple[ControlPlane, FragmentStore]],
) -> None:
    plane, fragments = planes[0]
    stream = await plane.create_stream(name="cam", retention_hours=1)
    kept = await fragments.append(stream, b"listed", producer_ts_ms=0, duration_ms=1)
    now = clock.now_ms()
    old_orphan = f"s{stream.id}/0/{(now - HOUR_MS) << 16}.mkv"
    young_orphan = f"s{stream.id}/0/{now << 16}.mkv"
    await plane.blobs.put(old_orphan, b"o")
    await plane.blobs.put(young_orphan, b"y")
    await fragments.sweep_orphans()
    left = await plane.blobs.keys()
    if plane.clustered:
        # Another node may be between writing a young blob and listing it.
        assert left == {kept.blob_key, young_orphan}
    else:
        assert left == {kept.blob_key}


async def test_fragment_numbers_are_unique_and_near_the_clock(
    planes: list[tuple[ControlPlane, FragmentStore]],
) -> None:
    numbers: list[list[int]] = []
    for _, fragments in planes:
        numbers.append([await fragments.next_number(0) for _ in range(1000)])
    for got in numbers:
        assert got == sorted(got) and len(set(got)) == len(got)
        assert abs((got[0] >> 16) - clock.now_ms()) < 60_000  # epoch ms, shifted 16 bits
    everything = [n for got in numbers for n in got]
    assert len(set(everything)) == len(everything)
    plane, fragments = planes[-1]
    stream = await plane.create_stream(name="numbered", retention_hours=1)
    f = await fragments.append(stream, b"x", producer_ts_ms=0, duration_ms=1)
    assert isinstance(f, Fragment) and f.number > max(everything)


async def test_a_streams_numbers_increase_as_its_writer_moves_between_nodes(
    planes: list[tuple[ControlPlane, FragmentStore]],
) -> None:
    """Each node hands out numbers from its own block; a writer moving to a node whose block is
    older than the one its previous node used still gets numbers above the stream's newest."""
    plane, _ = planes[0]
    stream = await plane.create_stream(name="moving", retention_hours=1)
    numbers = []
    for round_ in range(3):
        for i, (_, fragments) in enumerate(planes):
            await fragments.meta.sync()  # as every API request does first
            for k in range(2):
                f = await fragments.append(
                    stream, b"x", producer_ts_ms=round_ * 10 + i * 2 + k, duration_ms=1
                )
                numbers.append(f.number)
        # The other node's block is the newer one next round.
        for node, (own, fragments) in reversed(list(enumerate(planes))):
            await fragments.append(
                await own.create_stream(name=f"other-{round_}-{node}", retention_hours=1),
                b"y",
                producer_ts_ms=0,
                duration_ms=1,
            )
    assert numbers == sorted(numbers) and len(set(numbers)) == len(numbers)
    listed = await planes[-1][1].list_fragments(stream)
    assert [f.producer_ts for f in listed] == sorted(f.producer_ts for f in listed)
