"""GetMedia with boto3 against the real server: every StartSelectorType, tags on every chunk,
ffprobe decoding, and the live tail."""

from __future__ import annotations

import asyncio
import json
import subprocess
import time
from pathlib import Path
from typing import Any

import botocore.exceptions
import pytest

from openkvs.media import mkv

from ..support import ServerThread, need_tool
from .ebmlcheck import Chunk, split_chunks
from .mediafiles import producer_mkv, tracks_element
from .producer import put_media
from .reading import Ended, read_chunk

START_MS = 1_700_000_000_000


def setup_stream(srv: ServerThread, name: str = "cam") -> tuple[list[Any], bytes]:
    kv = srv.client("kinesisvideo")
    kv.create_stream(StreamName=name, DataRetentionInHours=24)
    data = producer_mkv()
    status, acks = asyncio.run(put_media(srv, data, stream_name=name))
    assert [a["EventType"] for a in acks].count("PERSISTED") == 3
    stream = srv.services.control.get_stream(name=name)
    return srv.call(srv.services.fragments.list_fragments(stream)), data


def media_client(srv: ServerThread) -> Any:
    kv = srv.client("kinesisvideo")
    ep = kv.get_data_endpoint(StreamName="cam", APIName="GET_MEDIA")["DataEndpoint"]
    return srv.client("kinesis-video-media", endpoint=ep, read_timeout=20)


def read_chunks(payload: Any, n: int) -> list[Chunk]:
    raw = [read_chunk(payload.read) for _ in range(n)]
    chunks = [c for r in raw for c in split_chunks(r)]
    assert len(chunks) == n
    return chunks


def seconds(ms: int) -> str:
    return f"{ms // 1000}.{ms % 1000:03d}"


def check_tags(chunk: Chunk, f: Any) -> None:
    """The AWS_KINESISVIDEO_* tags of a GetMedia chunk: identity before the Cluster, position
    after it. (Other tags before the Cluster are the producer's own, e.g. FFmpeg's ENCODER.)"""
    assert {k: v for k, v in chunk.before.items() if k.startswith("AWS_KINESISVIDEO")} == {
        "AWS_KINESISVIDEO_FRAGMENT_NUMBER": str(f.number),
        "AWS_KINESISVIDEO_SERVER_TIMESTAMP": seconds(f.server_ts),
        "AWS_KINESISVIDEO_PRODUCER_TIMESTAMP": seconds(f.producer_ts),
    }
    assert all(
        not k.startswith("AWS_")
        for k in set(chunk.before)
        - {
            "AWS_KINESISVIDEO_FRAGMENT_NUMBER",
            "AWS_KINESISVIDEO_SERVER_TIMESTAMP",
            "AWS_KINESISVIDEO_PRODUCER_TIMESTAMP",
        }
    )
    assert set(chunk.after) == {
        "AWS_KINESISVIDEO_MILLIS_BEHIND_NOW",
        "AWS_KINESISVIDEO_CONTINUATION_TOKEN",
    }
    assert chunk.after["AWS_KINESISVIDEO_CONTINUATION_TOKEN"] == str(f.number)
    behind = int(chunk.after["AWS_KINESISVIDEO_MILLIS_BEHIND_NOW"])
    assert 0 <= behind <= int(time.time() * 1000) - f.server_ts + 1000


def ffprobe_counts(path: Path) -> dict[str, int]:
    ffprobe = need_tool("ffprobe")
    if ffprobe is None:
        pytest.skip("ffprobe is not installed")
    out = subprocess.run(
        [ffprobe, "-v", "error", "-count_frames", "-show_streams", "-of", "json", str(path)],
        capture_output=True,
        text=True,
        check=True,
    )
    return {s["codec_name"]: int(s["nb_read_frames"]) for s in json.loads(out.stdout)["streams"]}


def test_earliest_returns_what_was_put_with_tags(server: ServerThread, tmp_path: Path) -> None:
    frags, data = setup_stream(server)
    media = media_client(server)
    resp = media.get_media(StreamName="cam", StartSelector={"StartSelectorType": "EARLIEST"})
    # UNVERIFIED in the reference: the Content-Type (video/webm, what the service is commonly
    # seen to send) and where the tags sit. Chosen: identity tags in a Tags element before the
    # Cluster (the AWS parser library reads them when the Cluster starts), position tags after.
    assert resp["ContentType"] == "video/webm"
    payload = resp["Payload"]
    raw = [read_chunk(payload.read) for _ in range(3)]
    payload.close()
    chunks = [split_chunks(r)[0] for r in raw]
    want = [(b.track, b.timecode, b.data) for b in mkv.read_fragment(data).blocks]
    got = []
    for chunk, f, r in zip(chunks, frags, raw, strict=True):
        check_tags(chunk, f)
        assert chunk.tracks == tracks_element(data)
        assert chunk.cluster_timecode == f.producer_ts
        got += chunk.blocks
        path = tmp_path / f"{f.number}.mkv"
        path.write_bytes(r)
        counts = ffprobe_counts(path)
        assert counts["h264"] == sum(1 for b in chunk.blocks if b[0] == 1)
        assert counts["aac"] == sum(1 for b in chunk.blocks if b[0] == 2)
    assert got == want
    # The whole payload, chunks back to back, decodes too.
    whole = tmp_path / "all.mkv"
    whole.write_bytes(b"".join(raw))
    counts = ffprobe_counts(whole)
    assert counts["h264"] == sum(1 for b in want if b[0] == 1)


def test_every_start_selector(server: ServerThread) -> None:
    frags, _ = setup_stream(server)
    media = media_client(server)

    def numbers(selector: dict[str, Any], n: int) -> list[int]:
        payload = media.get_media(StreamName="cam", StartSelector=selector)["Payload"]
        chunks = read_chunks(payload, n)
        payload.close()
        return [int(c.before["AWS_KINESISVIDEO_FRAGMENT_NUMBER"]) for c in chunks]

    nums = [f.number for f in frags]
    assert numbers({"StartSelectorType": "EARLIEST"}, 3) == nums
    assert (
        numbers({"StartSelectorType": "FRAGMENT_NUMBER", "AfterFragmentNumber": str(nums[0])}, 2)
        == nums[1:]
    )
    assert (
        numbers({"StartSelectorType": "CONTINUATION_TOKEN", "ContinuationToken": str(nums[1])}, 1)
        == nums[2:]
    )


def test_timestamp_selectors(server: ServerThread) -> None:
    """Fragments 2 s long, 2 s apart on both clocks: a timestamp selects the fragment holding it,
    and a timestamp after the newest waits for a fragment that reaches it."""
    from tests.media.test_h264_mkv import fragment_from_clip

    server.client("kinesisvideo").create_stream(StreamName="cam", DataRetentionInHours=1)
    stream = server.services.control.get_stream(name="cam")
    blob, _ = fragment_from_clip()
    server_base = int(time.time() * 1000) - 60_000
    frags = [
        server.call(
            server.services.fragments.append(
                stream,
                blob,
                producer_ts_ms=START_MS + 2000 * i,
                server_ts_ms=server_base + 2000 * i,
                duration_ms=2000,
            )
        )
        for i in range(4)
    ]
    nums = [f.number for f in frags]
    media = media_client(server)

    def numbers(kind: str, ts_ms: int, n: int) -> list[int]:
        payload = media.get_media(
            StreamName="cam",
            StartSelector={"StartSelectorType": kind, "StartTimestamp": ts_ms / 1000},
        )["Payload"]
        chunks = read_chunks(payload, n)
        payload.close()
        return [int(c.before["AWS_KINESISVIDEO_FRAGMENT_NUMBER"]) for c in chunks]

    assert numbers("SERVER_TIMESTAMP", server_base + 3000, 3) == nums[1:]
    assert numbers("SERVER_TIMESTAMP", server_base + 4000, 2) == nums[2:]
    assert numbers("SERVER_TIMESTAMP", server_base - 5000, 4) == nums
    assert numbers("PRODUCER_TIMESTAMP", START_MS + 6500, 1) == nums[3:]
    assert numbers("PRODUCER_TIMESTAMP", START_MS + 1999, 4) == nums
    # Later than everything stored: the first fragment at or after it, when it comes.
    payload = media.get_media(
        StreamName="cam",
        StartSelector={
            "StartSelectorType": "PRODUCER_TIMESTAMP",
            "StartTimestamp": (START_MS + 20_000) / 1000,
        },
    )["Payload"]
    early = server.call(
        server.services.fragments.append(
            stream, blob, producer_ts_ms=START_MS + 10_000, duration_ms=2000
        )
    )
    late = server.call(
        server.services.fragments.append(
            stream, blob, producer_ts_ms=START_MS + 20_000, duration_ms=2000
        )
    )
    (chunk,) = read_chunks(payload, 1)
    payload.close()
    assert early.number < late.number
    assert chunk.before["AWS_KINESISVIDEO_FRAGMENT_NUMBER"] == str(late.number)


def test_now_waits_for_new_fragments_from_putmedia(server: ServerThread) -> None:
    frags, _ = setup_stream(server)
    media = media_client(server)
    payload = media.get_media(StreamName="cam", StartSelector={"StartSelectorType": "NOW"})[
        "Payload"
    ]
    # Nothing old is sent; the next upload arrives as it becomes durable.
    later = producer_mkv(start_ms=START_MS + 60_000)
    status, acks = asyncio.run(put_media(server, later, stream_name="cam"))
    persisted = [int(a["FragmentNumber"]) for a in acks if a["EventType"] == "PERSISTED"]
    chunks = read_chunks(payload, 3)
    payload.close()
    assert [int(c.before["AWS_KINESISVIDEO_FRAGMENT_NUMBER"]) for c in chunks] == persisted
    assert all(n > frags[-1].number for n in persisted)
    assert [b[2] for c in chunks for b in c.blocks] == [
        b.data for b in mkv.read_fragment(later).blocks
    ]


async def test_live_tail_follows_putmedia_as_it_happens(server: ServerThread) -> None:
    """A reader started before the producer receives each fragment while the upload goes on."""
    from .mediafiles import clusters, header_part
    from .producer import Producer

    server.client("kinesisvideo").create_stream(StreamName="cam", DataRetentionInHours=1)
    media = media_client(server)
    payload = media.get_media(StreamName="cam", StartSelector={"StartSelectorType": "EARLIEST"})[
        "Payload"
    ]
    data = producer_mkv()
    p = Producer(server, stream_name="cam")
    await p.connect()
    assert await p.read_head() == 200
    await p.send(header_part(data))
    for c in clusters(data):
        await p.send(c)
        acks = [await p.ack() for _ in range(3)]
        assert acks[-1] is not None and acks[-1]["EventType"] == "PERSISTED"
        # The chunk for this fragment is readable now, before the upload ends.
        (chunk,) = split_chunks(await asyncio.to_thread(read_chunk, payload.read))
        assert chunk.before["AWS_KINESISVIDEO_FRAGMENT_NUMBER"] == acks[-1]["FragmentNumber"]
    await p.end()
    await p.acks_until_end()
    await p.close()
    payload.close()


def test_live_tail_receives_fragments_of_other_writers(server: ServerThread) -> None:
    """Fragments appended by another writer (a WebRTC storage session appends through the same
    FragmentStore) reach a live GetMedia too."""
    from tests.media.test_h264_mkv import fragment_from_clip

    server.client("kinesisvideo").create_stream(StreamName="cam", DataRetentionInHours=1)
    media = media_client(server)
    payload = media.get_media(StreamName="cam", StartSelector={"StartSelectorType": "NOW"})[
        "Payload"
    ]
    stream = server.services.control.get_stream(name="cam")
    blob, _ = fragment_from_clip()
    appended = []
    for i in range(2):
        time.sleep(0.2)
        appended.append(
            server.call(
                server.services.fragments.append(
                    stream, blob, producer_ts_ms=START_MS + 2000 * i, duration_ms=2000
                )
            )
        )
    chunks = read_chunks(payload, 2)
    payload.close()
    for chunk, f in zip(chunks, appended, strict=True):
        check_tags(chunk, f)
        assert chunk.blocks == [
            (b.track, b.timecode, b.data) for b in mkv.read_fragment(blob).blocks
        ]


def test_unknown_fragment_number_gets_an_error_chunk(server: ServerThread) -> None:
    setup_stream(server)
    media = media_client(server)
    payload = media.get_media(
        StreamName="cam",
        StartSelector={"StartSelectorType": "FRAGMENT_NUMBER", "AfterFragmentNumber": "12345"},
    )["Payload"]
    raw = payload.read()
    (chunk,) = split_chunks(raw)
    assert chunk.cluster_timecode is None
    assert chunk.before == {
        "AWS_KINESISVIDEO_FRAGMENT_NUMBER": "12345",
        "AWS_KINESISVIDEO_ERROR_CODE": "Requested fragment is not found.",
        "AWS_KINESISVIDEO_ERROR_ID": "4000",
    }


def test_get_media_errors(server: ServerThread) -> None:
    setup_stream(server)
    media = media_client(server)
    with pytest.raises(botocore.exceptions.ClientError) as e:
        media.get_media(StreamName="nope", StartSelector={"StartSelectorType": "NOW"})
    assert e.value.response["Error"]["Code"] == "ResourceNotFoundException"
    assert e.value.response["ResponseMetadata"]["HTTPStatusCode"] == 404
    for selector in (
        {"StartSelectorType": "FRAGMENT_NUMBER"},
        {"StartSelectorType": "SERVER_TIMESTAMP"},
        {"StartSelectorType": "CONTINUATION_TOKEN"},
        {"StartSelectorType": "CONTINUATION_TOKEN", "ContinuationToken": "abc"},
    ):
        with pytest.raises(botocore.exceptions.ClientError) as e:
            media.get_media(StreamName="cam", StartSelector=selector)
        assert e.value.response["Error"]["Code"] == "InvalidArgumentException", selector


def test_live_tail_ends_when_the_stream_is_deleted(server: ServerThread) -> None:
    setup_stream(server)
    media = media_client(server)
    payload = media.get_media(StreamName="cam", StartSelector={"StartSelectorType": "EARLIEST"})[
        "Payload"
    ]
    read_chunks(payload, 3)
    kv = server.client("kinesisvideo")
    kv.delete_stream(StreamARN=kv.describe_stream(StreamName="cam")["StreamInfo"]["StreamARN"])
    with pytest.raises(Ended):
        read_chunk(payload.read)


def test_streamed_responses_carry_cors_headers(server: ServerThread) -> None:
    setup_stream(server)
    media = media_client(server)

    def add_origin(request: Any, **_: Any) -> None:
        request.headers["Origin"] = "https://console.example"

    media.meta.events.register("before-sign.kinesis-video-media.GetMedia", add_origin)
    resp = media.get_media(StreamName="cam", StartSelector={"StartSelectorType": "EARLIEST"})
    headers = resp["ResponseMetadata"]["HTTPHeaders"]
    resp["Payload"].close()
    assert headers["access-control-allow-origin"] == "https://console.example"
    assert "x-amzn-RequestId".lower() in headers["access-control-expose-headers"].lower()
    assert headers["x-amzn-requestid"]


async def test_open_connections_do_not_hold_the_server_at_shutdown(server: ServerThread) -> None:
    from .mediafiles import clusters, header_part
    from .producer import Producer

    server.client("kinesisvideo").create_stream(StreamName="cam", DataRetentionInHours=1)
    payload = media_client(server).get_media(
        StreamName="cam", StartSelector={"StartSelectorType": "NOW"}
    )["Payload"]
    data = producer_mkv()
    p = Producer(server, stream_name="cam")
    await p.connect()
    assert await p.read_head() == 200
    await p.send(header_part(data) + clusters(data)[0])
    assert [(await p.ack() or {}).get("EventType") for _ in range(3)][-1] == "PERSISTED"
    t0 = time.monotonic()
    await asyncio.to_thread(server.stop_server)
    assert time.monotonic() - t0 < 3.0  # not aiohttp's 5 s shutdown timeout
    # Both responses ended properly: the producer saw the end of its acks, the reader its chunk.
    assert await p.acks_until_end() == [] and p.eof
    (chunk,) = split_chunks(await asyncio.to_thread(read_chunk, payload.read))
    assert chunk.after["AWS_KINESISVIDEO_CONTINUATION_TOKEN"] == str(
        int(p.acks[0]["FragmentNumber"])
    )
    with pytest.raises(Ended):
        read_chunk(payload.read)
    await p.close()
