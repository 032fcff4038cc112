"""A cluster survives a node dying: node processes on one PostgreSQL database, one s3:// media
store (SeaweedFS) and one Redis bus, one of them killed with SIGKILL.

- during PutMedia: every fragment acknowledged as PERSISTED (or listed) before the kill is
  listed and plays through another node, no object in S3 is torn or without its row (nor a row
  without its object), and the producer, reconnecting to another node, continues the stream
  there once the dead node's writer lease has run out;
- during a WebRTC storage session: what was listed stays listed and playable, and the master,
  reconnecting to another node (new signaling socket, JoinStorageSession there), records again;
- retention on three nodes deletes each expired fragment's row and object exactly once.
"""

from __future__ import annotations

import asyncio
import re
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from botocore.exceptions import ClientError

from openkvs import clock
from openkvs.config import Settings
from openkvs.control.fragments import FragmentStore
from openkvs.control.resources import ControlPlane
from openkvs.dataplane.plane import WRITER_LEASE_TTL
from openkvs.store.factory import open_backends

from ..dataplane.ebmlcheck import CLUSTER, EBML, SEGMENT, UNKNOWN, element, split_chunks
from ..dataplane.mediafiles import producer_mkv
from ..faults.common import PacedPut, check_fragments_decode, listed_fragments
from ..mediagen import h264_clip, opus_packets
from ..support import need_tool
from ..webrtc.harness import Camera, wait_for
from .procnodes import MEDIA_PREFIX, Node, ProcCluster, proc_cluster
from .s3count import DeletionCounter

__all__ = ["proc_cluster"]  # the fixture, used by name

pytestmark = pytest.mark.slow

FPS = 30
GOP_S = 0.5  # one fragment per GOP: 15 frames
RETRY_S = 1.0  # between a producer's attempts to reconnect, like the Producer SDK's back-off
RECONNECT_LIMIT_S = 30.0


def _need_ffmpeg() -> None:
    if need_tool("ffmpeg") is None:
        pytest.skip("ffmpeg is not installed")


def whole_fragment(data: bytes) -> None:
    """``data`` is one complete MKV fragment: an EBML header, then a Segment whose elements
    (Clusters with blocks among them) all end within it, nothing cut short."""
    eid, ds, size = element(data, 0)
    assert eid == EBML and ds + size <= len(data)
    sid, sds, ssize = element(data, ds + size)
    assert sid == SEGMENT
    end = len(data) if ssize == UNKNOWN else sds + ssize
    assert end == len(data), (end, len(data))
    pos, clusters = sds, 0
    while pos < end:
        eid, ds, size = element(data, pos)
        assert size != UNKNOWN and ds + size <= end, (hex(eid), pos, size, end)
        clusters += eid == CLUSTER
        pos = ds + size
    assert pos == end and clusters >= 1
    (chunk,) = split_chunks(data)
    assert chunk.blocks


def check_store(cluster: ProcCluster) -> tuple[int, int]:
    """No row without its object; every object a whole fragment. (rows, objects)."""
    rows = cluster.rows()
    objects = set(cluster.objects())
    assert set(rows) <= objects, sorted(set(rows) - objects)
    for key in sorted(objects):
        try:
            whole_fragment(cluster.object(key))
        except (AssertionError, IndexError, ValueError) as exc:
            raise AssertionError(f"object {key} is not a whole fragment: {exc!r}") from exc
    return len(rows), len(objects)


async def decode_all(srv: Node, stream: str, numbers: list[str], tmp: Path) -> int:
    """``check_fragments_decode`` over ``numbers``, in two halves side by side; the frames."""
    half = len(numbers) // 2
    counts = await asyncio.gather(
        *(
            asyncio.to_thread(check_fragments_decode, srv, stream, part, tmp)
            for part in (numbers[:half], numbers[half:])
        )
    )
    return sum(counts)


async def reconnect(srv: Node, stream: str, data: bytes, resume_at: int) -> tuple[PacedPut, int]:
    """A PutMedia upload through ``srv`` that carries on from cluster ``resume_at``, retried
    (as the Producer SDK retries) while the stream's previous writer still holds it; and the
    number of attempts."""
    deadline = time.monotonic() + RECONNECT_LIMIT_S
    attempts = 0
    while True:
        attempts += 1
        put = PacedPut(srv, stream, data)
        await put.producer.connect()
        status = await put.producer.read_head(timeout=RECONNECT_LIMIT_S)
        if status == 200:
            put.reader = asyncio.ensure_future(put._read())
            await put.producer.send(put.head)
            put.sent = resume_at
            return put, attempts
        error = put.producer.response_headers.get("x-amzn-errortype", "")
        await put.producer.end_and_close()
        assert status == 400 and error.startswith("ConnectionLimitExceeded"), (status, error)
        assert time.monotonic() < deadline, "the dead node's writer lease was never freed"
        await asyncio.sleep(RETRY_S)


async def test_kill9_of_a_node_during_putmedia(proc_cluster: ProcCluster, tmp_path: Path) -> None:
    _need_ffmpeg()
    a, b = proc_cluster.start(2)
    a.client("kinesisvideo").create_stream(StreamName="cam", DataRetentionInHours=1)
    data = producer_mkv(seconds=20.0, gop_seconds=GOP_S, fps=FPS)
    put = PacedPut(a, "cam", data)
    await put.open()
    while len(put.numbers("PERSISTED")) < 4:
        assert await put.send_next(0.1), "ran out of clusters before the kill"
    await put.send_next(0.0)
    listed_before = set(await asyncio.to_thread(listed_fragments, b, "cam"))
    # Land the kill with a fragment on its way: half of the next cluster sent.
    cut = put.sent
    nxt = put.clusters[cut]
    await put.producer.send(nxt[: len(nxt) // 2])
    a.kill9()
    killed_at = time.monotonic()
    await put.close()
    persisted = set(put.numbers("PERSISTED"))
    received = set(put.numbers("RECEIVED"))

    listed = await asyncio.to_thread(listed_fragments, b, "cam")
    assert persisted | listed_before <= set(listed), sorted(persisted | listed_before - set(listed))
    assert set(listed) <= received  # nothing listed that was not received
    assert len(received - set(listed)) <= 1  # at most the fragment in flight at the kill

    # The producer reconnects to B at once (retrying while the dead node's writer lease lives)
    # and the stream continues from the cluster that was cut.
    again, attempts = await reconnect(b, "cam", data, cut)
    accepted_after = time.monotonic() - killed_at
    # B waits for the stream (putmedia_handover_wait, 10 s) longer than the dead node's writer
    # lease lives unrenewed (WRITER_LEASE_TTL, 6 s): the first attempt gets it.
    assert attempts == 1 and accepted_after < WRITER_LEASE_TTL + 3.0, (attempts, accepted_after)
    more = 4
    while len(again.numbers("PERSISTED")) < more:
        assert await again.send_next(0.05), "ran out of clusters after the reconnect"
    resumed_after = time.monotonic() - killed_at
    await again.producer.end()
    await wait_for(lambda: again.producer.eof or again.reader is None or again.reader.done(), 15)
    await again.close()
    after = await asyncio.to_thread(listed_fragments, b, "cam")
    assert set(again.numbers("PERSISTED")) <= set(after)
    assert set(listed) < set(after)
    new = [n for n in after if n not in set(listed)]
    assert min(int(n) for n in new) > max(int(n) for n in listed)
    frames = await decode_all(b, "cam", after, tmp_path)
    assert frames == len(after) * round(GOP_S * FPS)  # whole fragments only
    rows, objects = await asyncio.to_thread(check_store, proc_cluster)
    assert rows == len(after)
    print(
        f"\nkill -9 of node A during PutMedia: {len(received)} fragments received,"
        f" {len(persisted)} persisted-acked, {len(listed_before)} listed through B before the kill,"
        f" {len(listed)} listed through B after it ({len(received) - len(listed)} lost);"
        f" {objects} objects in S3 for {rows} rows at the end; upload accepted by B after"
        f" {accepted_after:.1f} s, {more} fragments persisted on B after {resumed_after:.1f} s"
    )


async def test_kill9_of_a_node_during_a_webrtc_storage_session(
    proc_cluster: ProcCluster, tmp_path: Path
) -> None:
    _need_ffmpeg()
    a, b = proc_cluster.start(2, storage_fragment_duration="0.5")
    kv = a.client("kinesisvideo")
    ch = kv.create_signaling_channel(ChannelName="door")["ChannelARN"]
    st = kv.create_stream(StreamName="door-stream", DataRetentionInHours=1)["StreamARN"]
    kv.update_media_storage_configuration(
        ChannelARN=ch, MediaStorageConfiguration={"StreamARN": st, "Status": "ENABLED"}
    )
    clip = h264_clip(width=320, height=240, seconds=8.0, gop=15)
    cam = Camera(a, ch, clip, opus_packets(8.0))  # type: ignore[arg-type]
    await cam.connect()
    await asyncio.to_thread(cam.join)
    # Recording on A: fragments listed (through B) before the kill.
    before: list[str] = []

    async def some_listed() -> bool:
        before[:] = await asyncio.to_thread(listed_fragments, b, "door-stream")
        return len(before) >= 3

    await wait_until(some_listed, 40)
    a.kill9()
    killed_at = time.monotonic()
    await cam.close()

    listed = await asyncio.to_thread(listed_fragments, b, "door-stream")
    assert set(before) <= set(listed), sorted(set(before) - set(listed))
    await decode_all(b, "door-stream", listed, tmp_path)

    # The master reconnects through B: a new signaling socket there, JoinStorageSession there.
    again = Camera(b, ch, clip, opus_packets(8.0))  # type: ignore[arg-type]
    await again.connect()
    joined_after = None
    for _ in range(5):
        try:
            await asyncio.to_thread(again.join)
            joined_after = time.monotonic() - killed_at
            break
        except ClientError as exc:  # the SDKs retry a failed join
            print(f"\nJoinStorageSession through B failed: {exc}")
            await asyncio.sleep(RETRY_S)
    assert joined_after is not None
    new: list[str] = []

    async def new_listed() -> bool:
        after = await asyncio.to_thread(listed_fragments, b, "door-stream")
        new[:] = [n for n in after if n not in set(listed)]
        return len(new) >= 2

    await wait_until(new_listed, 40)
    resumed_after = time.monotonic() - killed_at
    await again.close()
    # B met the dead node's claim on the channel (its heartbeat not yet expired) and took over.
    assert any("is gone: the join runs here" in line for line in b.log), "".join(b.log)[-3000:]
    assert min(int(n) for n in new) > max(int(n) for n in listed)
    await decode_all(b, "door-stream", new, tmp_path)
    rows, objects = await asyncio.to_thread(check_store, proc_cluster)
    print(
        f"\nkill -9 of node A during a WebRTC storage session: {len(before)} fragments listed"
        f" before the kill, {len(listed)} after it; JoinStorageSession through B accepted after"
        f" {joined_after:.1f} s, recording on B listed after {resumed_after:.1f} s;"
        f" {rows} rows, {objects} objects in S3"
    )


async def wait_until(check: Any, timeout: float, every: float = 0.3) -> None:
    deadline = time.monotonic() + timeout
    while not await check():
        assert time.monotonic() < deadline, f"not within {timeout} s"
        await asyncio.sleep(every)


EXPIRED = 24
YOUNG = 4
HOUR_MS = 3_600_000
RETENTION_PASS = re.compile(r"retention removed (\d+) fragments")


async def test_retention_across_nodes_removes_each_expired_fragment_once(
    proc_cluster: ProcCluster,
) -> None:
    deletions = DeletionCounter(proc_cluster.seaweed.endpoint)
    deletions.start()
    proc_cluster.s3_endpoint = deletions.endpoint  # every node's deletions counted
    try:
        await _retention_on_three_nodes(proc_cluster, deletions)
    finally:
        deletions.stop()


async def _retention_on_three_nodes(proc_cluster: ProcCluster, deletions: DeletionCounter) -> None:
    nodes = proc_cluster.start(3, storage_retention_interval="0.5")
    nodes[0].client("kinesisvideo").create_stream(StreamName="old", DataRetentionInHours=1)
    # Fragments whose server timestamps are hours old can only be written beside the nodes:
    # through a control plane and fragment store of this process on the same database and S3.
    settings = Settings(
        data_dir=proc_cluster.root / "writer",
        database_url=proc_cluster.database_url,
        media_url=f"s3://{proc_cluster.bucket}/{MEDIA_PREFIX}",
        s3_endpoint_url=proc_cluster.seaweed.endpoint,
    )
    backends = open_backends(settings)
    plane = ControlPlane(backends.meta, backends.blobs, region="us-east-1", account_id="0" * 12)
    await plane.start()
    fragments = FragmentStore(backends.meta, backends.blobs)
    await fragments.start()
    try:
        await plane.sync()
        stream = plane.get_stream(name="old")
        now = clock.now_ms()
        young = [
            await fragments.append(
                stream, b"young", producer_ts_ms=i, server_ts_ms=now + i, duration_ms=1
            )
            for i in range(YOUNG)
        ]
        old = [
            await fragments.append(
                stream, b"old", producer_ts_ms=i, server_ts_ms=now - 3 * HOUR_MS + i, duration_ms=1
            )
            for i in range(EXPIRED)
        ]
    finally:
        await fragments.stop()
        await plane.stop()
    expired_keys = {f.blob_key for f in old}
    young_keys = {f.blob_key for f in young}

    async def all_expired_gone() -> bool:
        rows = await asyncio.to_thread(proc_cluster.rows)
        objects = set(await asyncio.to_thread(proc_cluster.objects))
        return not expired_keys & (set(rows) | objects)

    await wait_until(all_expired_gone, 30)
    await asyncio.sleep(1.5)  # a few more passes on every node: nothing more to delete
    assert set(proc_cluster.rows()) == young_keys
    assert set(proc_cluster.objects()) == young_keys
    removed = [
        sum(int(m.group(1)) for line in n.log if (m := RETENTION_PASS.search(line))) for n in nodes
    ]
    assert sum(removed) == EXPIRED, removed  # each expired fragment removed by one node, once
    # Each expired object deleted exactly once in S3, no other object deleted.
    prefix = f"{proc_cluster.bucket}/{MEDIA_PREFIX}/"
    assert deletions.deleted == Counter(prefix + k for k in expired_keys), deletions.deleted
    print(
        f"\nretention on three nodes: fragments removed per node {removed}, {YOUNG} kept,"
        f" {sum(deletions.deleted.values())} object deletions in S3"
    )
