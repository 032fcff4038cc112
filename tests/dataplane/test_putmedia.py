"""PutMedia against the real server: a chunked, SigV4-signed upload of FFmpeg-made MKV, with the
acknowledgements read as they arrive."""

from __future__ import annotations

import asyncio
import json
import subprocess
from pathlib import Path
from typing import Any

import pytest

from openkvs.media import ebml, mkv

from ..support import ServerThread, need_tool
from .ebmlcheck import split_chunks
from .mediafiles import (
    cluster_timecode,
    clusters,
    header_part,
    producer_mkv,
    tracks_element,
    unknown_size_clusters,
)
from .producer import Producer, put_media

START_MS = 1_700_000_000_000


def create_stream(srv: ServerThread, name: str, retention: int = 24) -> str:
    kv = srv.client("kinesisvideo")
    return str(kv.create_stream(StreamName=name, DataRetentionInHours=retention)["StreamARN"])


def stored(srv: ServerThread, name: str) -> list[Any]:
    stream = srv.services.control.get_stream(name=name)
    return srv.call(srv.services.fragments.list_fragments(stream))


def input_blocks(data: bytes) -> list[tuple[int, int, bytes]]:
    return [(b.track, b.timecode, b.data) for b in mkv.read_fragment(data).blocks]


def ffprobe_frames(path: Path) -> dict[str, int]:
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


async def test_acks_arrive_per_fragment_in_order(server: ServerThread, tmp_path: Path) -> None:
    create_stream(server, "cam")
    data = producer_mkv()
    cls = clusters(data)
    assert len(cls) == 3
    p = Producer(server, stream_name="cam")
    await p.connect()
    assert await p.read_head() == 200
    await p.send(header_part(data))
    numbers = []
    for c in cls:
        await p.send(c, piece=4096)
        got = [await p.ack() for _ in range(3)]
        assert [a and a["EventType"] for a in got] == ["BUFFERING", "RECEIVED", "PERSISTED"]
        assert all(a and a["FragmentTimecode"] == cluster_timecode(data, c) for a in got)
        assert len({a and a["FragmentNumber"] for a in got}) == 1
        numbers.append(int(got[0]["FragmentNumber"]))  # type: ignore[index]
    await p.end()
    assert await p.acks_until_end() == []
    await p.close()
    assert numbers == sorted(numbers) and len(set(numbers)) == 3

    frags = stored(server, "cam")
    assert [f.number for f in frags] == numbers
    # Every stored fragment is a self-contained MKV with the producer's tracks and frames.
    got_blocks = []
    for f in frags:
        blob = server.call(server.services.fragments.read(f))
        assert tracks_element(data) in blob
        frag = mkv.read_fragment(blob)
        assert frag.cluster_timecode == f.producer_ts
        got_blocks += [(b.track, b.timecode, b.data) for b in frag.blocks]
        path = tmp_path / f"{f.number}.mkv"
        path.write_bytes(blob)
        counts = ffprobe_frames(path)
        assert counts["h264"] > 0 and counts["aac"] > 0
    assert got_blocks == input_blocks(data)
    assert frags[0].producer_ts == START_MS


def crafted(clusters_: list[bytes], tracks: bytes | None = None) -> bytes:
    from .mediafiles import segment_start, video_only_tracks

    return segment_start() + (tracks or video_only_tracks()) + b"".join(clusters_)


def simple_cluster(tc: int, frames: int = 3, step: int = 100, size: int = 200) -> bytes:
    from .mediafiles import block, craft_cluster

    return craft_cluster(
        tc, [block(1, i * step, bytes([i % 256]) * size, i == 0) for i in range(frames)]
    )


def events(acks: list[dict[str, Any]]) -> list[str]:
    return [a["EventType"] for a in acks]


async def test_fragment_timecodes_and_numbers_in_acks(server: ServerThread) -> None:
    from .mediafiles import cluster_timecode

    create_stream(server, "tc")
    data = producer_mkv()
    status, acks = await put_media(server, data, stream_name="tc")
    assert status == 200
    assert events(acks) == ["BUFFERING", "RECEIVED", "PERSISTED"] * 3
    expected = [cluster_timecode(data, c) for c in clusters(data)]
    assert [a["FragmentTimecode"] for a in acks[::3]] == expected
    for i in range(3):
        group = acks[3 * i : 3 * i + 3]
        assert {a["FragmentTimecode"] for a in group} == {expected[i]}
        assert len({a["FragmentNumber"] for a in group}) == 1
        assert set(group[0]) == {"EventType", "FragmentTimecode", "FragmentNumber"}
    assert [int(a["FragmentNumber"]) for a in acks[::3]] == [f.number for f in stored(server, "tc")]


async def test_unknown_size_clusters_relative_timecodes_and_arn(server: ServerThread) -> None:
    """The KVS producer SDKs' layout: unknown-size Segment and Clusters, RELATIVE timecodes."""
    arn = create_stream(server, "sdk")
    data = unknown_size_clusters(producer_mkv(start_ms=0))
    status, acks = await put_media(
        server, data, stream_arn=arn, timecode_type="RELATIVE", start_timestamp="1700000100.250"
    )
    assert status == 200
    # The last unknown-size Cluster ends with the body, so it completes at the end.
    assert events(acks) == ["BUFFERING", "RECEIVED", "PERSISTED"] * 3
    frags = stored(server, "sdk")
    from .mediafiles import cluster_timecode

    tcs = [cluster_timecode(data, c) for c in clusters(data)]
    assert tcs[0] == 0
    assert [f.producer_ts for f in frags] == [1_700_000_100_250 + t for t in tcs]
    got = []
    for f in frags:
        got += [
            (b.track, b.timecode, b.data)
            for b in mkv.read_fragment(server.call(server.services.fragments.read(f))).blocks
        ]
    assert got == input_blocks(producer_mkv(start_ms=0))


async def test_file_layout_with_cues_and_known_segment(server: ServerThread) -> None:
    create_stream(server, "file")
    data = producer_mkv(live=False)
    status, acks = await put_media(server, data, stream_name="file", piece=1000)
    assert status == 200
    assert events(acks) == ["BUFFERING", "RECEIVED", "PERSISTED"] * 3
    assert len(stored(server, "file")) == 3


async def test_no_persisted_ack_without_retention(server: ServerThread) -> None:
    create_stream(server, "live-only", retention=0)
    status, acks = await put_media(server, producer_mkv(), stream_name="live-only")
    assert events(acks) == ["BUFFERING", "RECEIVED"] * 3


async def test_unsigned_payload_is_accepted(server: ServerThread) -> None:
    create_stream(server, "unsigned")
    status, acks = await put_media(
        server, producer_mkv(), stream_name="unsigned", payload_hash="UNSIGNED-PAYLOAD"
    )
    assert status == 200 and events(acks).count("PERSISTED") == 3


async def test_presigned_url_is_accepted(server: ServerThread) -> None:
    """Some third-party producers put SigV4 in the query string instead of the headers."""
    create_stream(server, "presigned")
    status, acks = await put_media(server, producer_mkv(), stream_name="presigned", presign=True)
    assert status == 200 and events(acks).count("PERSISTED") == 3


async def test_invalid_mkv_is_acked_and_the_stream_stays_healthy(server: ServerThread) -> None:
    create_stream(server, "bad")
    data = producer_mkv()
    # Two good fragments, then garbage where the third Cluster should be.
    good = header_part(data) + b"".join(clusters(data)[:2])
    status, acks = await put_media(server, good + b"\x00garbage" * 100, stream_name="bad")
    assert events(acks) == ["BUFFERING", "RECEIVED", "PERSISTED"] * 2 + ["ERROR"]
    assert acks[-1]["ErrorId"] == 4006 and acks[-1]["ErrorCode"] == "INVALID_MKV_DATA"
    before = stored(server, "bad")
    assert len(before) == 2
    # Not MKV at all.
    status, acks = await put_media(server, b"this is not matroska" * 50, stream_name="bad")
    assert events(acks) == ["ERROR"] and acks[0]["ErrorId"] == 4006
    # The stream takes a fresh, valid upload; earlier fragments are untouched.
    status, acks = await put_media(
        server, producer_mkv(start_ms=START_MS + 10_000), stream_name="bad"
    )
    assert events(acks) == ["BUFFERING", "RECEIVED", "PERSISTED"] * 3
    after = stored(server, "bad")
    assert after[:2] == before and len(after) == 5
    for f in before:
        mkv.read_fragment(server.call(server.services.fragments.read(f)))


async def test_out_of_order_fragment_is_refused_and_the_upload_goes_on(
    server: ServerThread,
) -> None:
    create_stream(server, "order")
    body = crafted(
        [
            simple_cluster(START_MS),
            simple_cluster(START_MS + 1000),
            simple_cluster(START_MS + 500),
            simple_cluster(START_MS + 2000),
        ]
    )
    status, acks = await put_media(server, body, stream_name="order")
    assert events(acks) == (
        ["BUFFERING", "RECEIVED", "PERSISTED"] * 2
        + ["BUFFERING", "ERROR"]
        + ["BUFFERING", "RECEIVED", "PERSISTED"]
    )
    err = acks[7]
    assert err["ErrorId"] == 4004 and err["ErrorCode"] == "FRAGMENT_TIMECODE_LESSER_THAN_PREVIOUS"
    assert err["FragmentTimecode"] == START_MS + 500
    assert err["FragmentNumber"] == acks[6]["FragmentNumber"]
    assert [f.producer_ts for f in stored(server, "order")] == [
        START_MS,
        START_MS + 1000,
        START_MS + 2000,
    ]


async def test_too_large_and_too_long_fragments(make_server: Any) -> None:
    srv = make_server(putmedia_max_fragment_bytes=64 * 1024)
    create_stream(srv, "limits")
    big = simple_cluster(START_MS + 1000, frames=4, size=30_000)  # ~120 KB
    long = simple_cluster(START_MS + 2000, frames=3, step=5500)  # spans 11 s
    body = crafted([simple_cluster(START_MS), big, long, simple_cluster(START_MS + 20_000)])
    status, acks = await put_media(srv, body, stream_name="limits")
    assert events(acks) == (
        ["BUFFERING", "RECEIVED", "PERSISTED"]
        + ["BUFFERING", "ERROR"] * 2
        + ["BUFFERING", "RECEIVED", "PERSISTED"]
    )
    assert (acks[4]["ErrorId"], acks[4]["ErrorCode"]) == (4001, "MAX_FRAGMENT_SIZE_REACHED")
    assert (acks[6]["ErrorId"], acks[6]["ErrorCode"]) == (4002, "MAX_FRAGMENT_DURATION_REACHED")
    assert [f.producer_ts for f in stored(srv, "limits")] == [START_MS, START_MS + 20_000]


async def test_second_segment_ends_the_upload(server: ServerThread) -> None:
    create_stream(server, "two-seg")
    one = crafted([simple_cluster(START_MS)])
    two = crafted([simple_cluster(START_MS + 1000)])
    status, acks = await put_media(server, one + two, stream_name="two-seg")
    assert events(acks) == ["BUFFERING", "RECEIVED", "PERSISTED", "ERROR"]
    assert acks[-1]["ErrorId"] == 4006
    assert len(stored(server, "two-seg")) == 1


async def test_track_mismatch_and_missing_frames(server: ServerThread) -> None:
    from .mediafiles import block, craft_cluster

    create_stream(server, "tracks")
    two_tracks = mkv.tracks(
        [
            mkv.Track(1, mkv.CODEC_H264, b"\x01", width=64, height=64),
            mkv.Track(
                2, mkv.CODEC_AAC, b"\x11\x90", mkv.TRACK_TYPE_AUDIO, sample_rate=48000.0, channels=2
            ),
        ]
    )
    both = craft_cluster(START_MS, [block(1, 0, b"v"), block(2, 0, b"a")])
    stray = craft_cluster(
        START_MS + 1000, [block(1, 0, b"v"), block(3, 0, b"x"), block(2, 0, b"a")]
    )
    video_only = craft_cluster(START_MS + 2000, [block(1, 0, b"v")])
    last = craft_cluster(START_MS + 3000, [block(1, 0, b"v"), block(2, 0, b"a")])
    body = crafted([both, stray, video_only, last], tracks=two_tracks)
    status, acks = await put_media(server, body, stream_name="tracks")
    errors = [a for a in acks if a["EventType"] == "ERROR"]
    assert [(e["ErrorId"], e["ErrorCode"]) for e in errors] == [
        (4010, "TRACK_NUMBER_MISMATCH"),
        (4011, "FRAMES_MISSING_FOR_TRACK"),
    ]
    assert [f.producer_ts for f in stored(server, "tracks")] == [START_MS, START_MS + 3000]


async def test_too_many_tracks(server: ServerThread) -> None:
    create_stream(server, "many")
    four = mkv.tracks([mkv.Track(n, "A_AAC", b"", mkv.TRACK_TYPE_AUDIO) for n in range(1, 5)])
    status, acks = await put_media(
        server, crafted([simple_cluster(START_MS)], tracks=four), stream_name="many"
    )
    assert [(a["EventType"], a["ErrorId"]) for a in acks] == [("ERROR", 4012)]
    assert stored(server, "many") == []


async def test_producer_vanishing_mid_cluster(server: ServerThread) -> None:
    create_stream(server, "vanish")
    data = unknown_size_clusters(producer_mkv())
    cls = clusters(data)
    p = Producer(server, stream_name="vanish")
    await p.connect()
    assert await p.read_head() == 200
    await p.send(header_part(data) + cls[0] + cls[1][: len(cls[1]) // 2])
    # Cluster 0 completes when cluster 1 begins; cluster 1 is only buffering.
    got = [await p.ack() for _ in range(4)]
    assert [a and a["EventType"] for a in got] == [
        "BUFFERING",
        "RECEIVED",
        "PERSISTED",
        "BUFFERING",
    ]
    p.abort()
    # The writer slot is freed once the server sees the connection drop.
    for _ in range(50):
        try:
            status, acks = await put_media(
                server, producer_mkv(start_ms=START_MS + 60_000), stream_name="vanish"
            )
            break
        except AssertionError as exc:
            assert "ConnectionLimitExceeded" in str(exc), exc
            await asyncio.sleep(0.1)
    else:
        pytest.fail("the vanished producer's writer slot was not freed within 5 s")
    assert events(acks).count("PERSISTED") == 3
    frags = stored(server, "vanish")
    # The first fragment and the three of the second upload; nothing of the cut-off cluster.
    assert len(frags) == 4 and str(frags[0].number) == got[0]["FragmentNumber"]  # type: ignore[index]
    assert got[3]["FragmentNumber"] not in {str(f.number) for f in frags}  # type: ignore[index]
    stream_id = server.services.control.get_stream(name="vanish").id
    keys = server.call(server.services.fragments.blobs.keys())
    assert {k for k in keys if k.startswith(f"s{stream_id}/")} == {f.blob_key for f in frags}


async def test_unknown_stream_and_bad_headers(server: ServerThread) -> None:
    p = Producer(server, stream_name="nope")
    await p.connect()
    assert await p.read_head() == 404
    assert p.response_headers["x-amzn-errortype"] == "ResourceNotFoundException"
    await p.end_and_close()
    create_stream(server, "hdr")
    for kwargs in (
        {"stream_name": "hdr", "timecode_type": "SIDEWAYS"},
        {"stream_name": "hdr", "timecode_type": "RELATIVE"},
        {"stream_name": "hdr", "start_timestamp": "yesterday"},
        {},
    ):
        p = Producer(server, **kwargs)  # type: ignore[arg-type]
        await p.connect()
        assert await p.read_head() == 400, kwargs
        assert p.response_headers["x-amzn-errortype"] == "InvalidArgumentException"
        assert (await p.read_error())["message"]
        await p.end_and_close()


async def test_wrong_signature_is_refused_before_any_byte_is_stored(server: ServerThread) -> None:
    create_stream(server, "signed")
    akid, _ = server.keys
    p = Producer(server, stream_name="signed", keys=(akid, "not-the-secret"))
    await p.connect()
    assert await p.read_head() == 403
    assert p.response_headers["x-amzn-errortype"] == "InvalidSignatureException"
    # Refused on the headers alone: the body that follows is never parsed or stored.
    try:
        await p.send(producer_mkv())
    except ConnectionError:
        pass
    await p.end_and_close()
    await asyncio.sleep(0.2)
    assert stored(server, "signed") == []
    assert server.call(server.services.fragments.blobs.keys()) == set()


async def test_one_writer_per_stream(make_server: Any) -> None:
    server = make_server(putmedia_handover_wait=0.2)
    create_stream(server, "single")
    first = Producer(server, stream_name="single")
    await first.connect()
    assert await first.read_head() == 200
    second = Producer(server, stream_name="single")
    await second.connect()
    assert await second.read_head() == 400
    assert second.response_headers["x-amzn-errortype"] == "ConnectionLimitExceededException"
    await second.end_and_close()
    await first.send(producer_mkv())
    await first.end()
    assert events(await first.acks_until_end()).count("PERSISTED") == 3
    await first.close()


async def test_idle_acks_then_close(make_server: Any) -> None:
    srv = make_server(putmedia_idle_timeout=2.0, putmedia_idle_ack_interval=0.5)
    create_stream(srv, "idle")
    data = producer_mkv()
    p = Producer(srv, stream_name="idle")
    await p.connect()
    assert await p.read_head() == 200
    await p.send(header_part(data) + clusters(data)[0])
    assert [(await p.ack() or {}).get("EventType") for _ in range(3)] == [
        "BUFFERING",
        "RECEIVED",
        "PERSISTED",
    ]
    t0 = asyncio.get_running_loop().time()
    idle = await p.acks_until_end(timeout=10)
    waited = asyncio.get_running_loop().time() - t0
    # IDLE about every 0.5 s while nothing arrives, then the request ends after ~2 s.
    assert 1 <= len(idle) <= 5 and all(a == {"EventType": "IDLE"} for a in idle)
    assert p.eof and 1.5 <= waited <= 6.0
    await p.close()


async def test_stream_deleted_during_upload(server: ServerThread) -> None:
    arn = create_stream(server, "doomed")
    data = producer_mkv()
    cls = clusters(data)
    p = Producer(server, stream_name="doomed")
    await p.connect()
    assert await p.read_head() == 200
    await p.send(header_part(data) + cls[0])
    assert [(await p.ack() or {})["EventType"] for _ in range(3)] == [
        "BUFFERING",
        "RECEIVED",
        "PERSISTED",
    ]
    server.client("kinesisvideo").delete_stream(StreamARN=arn)
    try:
        await p.send(cls[1])
    except ConnectionError:
        pass
    acks = await p.acks_until_end()
    assert events(acks) == ["BUFFERING", "RECEIVED", "ERROR"]
    assert (acks[-1]["ErrorId"], acks[-1]["ErrorCode"]) == (4008, "STREAM_DELETED")
    await p.close()


async def test_lacing_and_block_groups_are_stored_as_simple_blocks(
    server: ServerThread, tmp_path: Path
) -> None:
    """A producer that laces audio (Xiph and EBML) and puts video in BlockGroups."""
    from .mediafiles import craft_cluster, segment_start

    create_stream(server, "laced")
    src = producer_mkv()
    frames = mkv.read_fragment(src).blocks
    gop_starts = [b.timecode for b in frames if b.track == 1 and b.keyframe]
    built = []
    for gi, start in enumerate(gop_starts):
        end = gop_starts[gi + 1] if gi + 1 < len(gop_starts) else 1 << 62
        video = [b for b in frames if b.track == 1 and start <= b.timecode < end]
        audio = [b for b in frames if b.track == 2 and start <= b.timecode < end]
        children = []
        for b in video:
            blk = ebml.element(
                mkv.BLOCK,
                bytes([0x81]) + (b.timecode - start).to_bytes(2, "big") + b"\x00" + b.data,
            )
            extra = [] if b.keyframe else [ebml.sint(mkv.REFERENCE_BLOCK, -33)]
            children.append(ebml.master(mkv.BLOCK_GROUP, blk, *extra))
        for i in range(0, len(audio), 4):
            lace = audio[i : i + 4]
            sizes = [len(b.data) for b in lace]
            if gi % 2 == 0:  # Xiph lacing
                head = bytes([len(lace) - 1])
                for s in sizes[:-1]:
                    head += b"\xff" * (s // 255) + bytes([s % 255])
                flags = 0x80 | 0x02
            else:  # EBML lacing
                head = bytes([len(lace) - 1])
                if len(lace) > 1:
                    head += ebml.encode_size(sizes[0])
                    for prev, cur in zip(sizes[:-2], sizes[1:-1], strict=True):
                        # signed 2-byte vint: bias 2^13 - 1, length marker 0x4000
                        head += ((cur - prev + 8191) | 0x4000).to_bytes(2, "big")
                flags = 0x80 | 0x06
            payload = (
                bytes([0x82])
                + (lace[0].timecode - start).to_bytes(2, "big", signed=True)
                + bytes([flags])
                + head
                + b"".join(b.data for b in lace)
            )
            children.append(ebml.element(mkv.SIMPLE_BLOCK, payload))
        built.append(craft_cluster(start, children))
    body = segment_start() + tracks_element(src) + b"".join(built)
    status, acks = await put_media(server, body, stream_name="laced")
    assert events(acks) == ["BUFFERING", "RECEIVED", "PERSISTED"] * len(gop_starts)
    got = []
    for f in stored(server, "laced"):
        blob = server.call(server.services.fragments.read(f))
        frag = mkv.read_fragment(blob)
        # Stored as plain SimpleBlocks: a reader that knows neither lacing nor BlockGroups agrees.
        (chunk,) = split_chunks(blob)
        assert chunk.blocks == [(b.track, b.timecode, b.data) for b in frag.blocks]
        got += [(b.track, b.timecode, b.data, b.keyframe) for b in frag.blocks]
        path = tmp_path / f"{f.number}.mkv"
        path.write_bytes(blob)
        counts = ffprobe_frames(path)
        assert counts["h264"] == sum(1 for b in frag.blocks if b.track == 1)
        assert counts["aac"] == sum(1 for b in frag.blocks if b.track == 2)
    want_video = [(b.track, b.timecode, b.data, b.keyframe) for b in frames if b.track == 1]
    assert [g for g in got if g[0] == 1] == want_video
    audio_got = sorted((g for g in got if g[0] == 2), key=lambda g: g[1])
    audio_want = [b for b in frames if b.track == 2]
    assert [g[2] for g in audio_got] == [b.data for b in audio_want]
    assert all(abs(g[1] - b.timecode) <= 1 for g, b in zip(audio_got, audio_want, strict=True))


async def test_ffmpeg_cli_pipe_is_accepted(server: ServerThread) -> None:
    """What the README shows: FFmpeg's own muxer (audio queued across Cluster starts) piped in."""
    ffmpeg = need_tool("ffmpeg")
    if ffmpeg is None:
        pytest.skip("ffmpeg is not installed")
    create_stream(server, "cli")
    out = await asyncio.to_thread(
        subprocess.run,
        [
            ffmpeg,
            "-v",
            "error",
            "-f",
            "lavfi",
            "-i",
            "testsrc=size=320x240:rate=30",
            "-f",
            "lavfi",
            "-i",
            "sine=frequency=440",
            "-t",
            "6",
            "-c:v",
            "libx264",
            "-g",
            "60",
            "-preset",
            "veryfast",
            "-c:a",
            "aac",
            "-f",
            "matroska",
            "-cluster_size_limit",
            "8000000",
            "-cluster_time_limit",
            "20000",
            "-",
        ],
        capture_output=True,
        check=True,
    )
    status, acks = await put_media(
        server,
        out.stdout,
        stream_name="cli",
        timecode_type="RELATIVE",
        start_timestamp="1700000000",
    )
    assert [a for a in acks if a["EventType"] == "ERROR"] == []
    assert events(acks) == ["BUFFERING", "RECEIVED", "PERSISTED"] * 3
    tcs = [cluster_timecode(out.stdout, c) for c in clusters(out.stdout)]
    assert [f.producer_ts for f in stored(server, "cli")] == [START_MS + t for t in tcs]
