"""ListFragments and GetMediaForFragmentList with boto3 against the real server."""

from __future__ import annotations

import asyncio
import json
import subprocess
from pathlib import Path
from typing import Any

import botocore.exceptions
import pytest

from openkvs.media import mkv

from ..support import ServerThread, need_tool
from .ebmlcheck import split_chunks
from .mediafiles import producer_mkv
from .producer import put_media

START_MS = 1_700_000_000_000


def archived(srv: ServerThread, name: str) -> Any:
    kv = srv.client("kinesisvideo")
    ep = kv.get_data_endpoint(StreamName=name, APIName="LIST_FRAGMENTS")["DataEndpoint"]
    return srv.client("kinesis-video-archived-media", endpoint=ep)


def seeded(srv: ServerThread, name: str = "arch", n: int = 12) -> list[Any]:
    """``n`` fragments: server timestamps 1 s apart, producer timestamps 2 s apart and in a
    different order for the last three (a producer clock that stepped back)."""
    from tests.media.test_h264_mkv import fragment_from_clip

    srv.client("kinesisvideo").create_stream(StreamName=name, DataRetentionInHours=24)
    stream = srv.services.control.get_stream(name=name)
    blob, _ = fragment_from_clip()
    out = []
    for i in range(n):
        producer = START_MS + 2000 * i if i < n - 3 else START_MS + 2000 * (i - n + 3) + 500
        out.append(
            srv.call(
                srv.services.fragments.append(
                    stream,
                    blob,
                    producer_ts_ms=producer,
                    server_ts_ms=START_MS + 50_000 + 1000 * i,
                    duration_ms=2000,
                )
            )
        )
    return out


def as_wire(f: Any) -> dict[str, Any]:
    return {
        "FragmentNumber": str(f.number),
        "FragmentSizeInBytes": f.size,
        "ProducerTimestamp": f.producer_ts,
        "ServerTimestamp": f.server_ts,
        "FragmentLengthInMilliseconds": f.duration_ms,
    }


def from_boto(item: dict[str, Any]) -> dict[str, Any]:
    out = dict(item)
    for k in ("ProducerTimestamp", "ServerTimestamp"):
        out[k] = round(item[k].timestamp() * 1000)
    return out


def listed(client: Any, name: str, **kwargs: Any) -> tuple[list[dict[str, Any]], str | None]:
    resp = client.list_fragments(StreamName=name, **kwargs)
    return [from_boto(f) for f in resp["Fragments"]], resp.get("NextToken")


def test_timestamp_ranges_on_both_clocks(server: ServerThread) -> None:
    frags = seeded(server)
    am = archived(server, "arch")

    def rng(kind: str, start_ms: int, end_ms: int, **kw: Any) -> list[int]:
        items, token = listed(
            am,
            "arch",
            FragmentSelector={
                "FragmentSelectorType": kind,
                "TimestampRange": {
                    "StartTimestamp": start_ms / 1000,
                    "EndTimestamp": end_ms / 1000,
                },
            },
            **kw,
        )
        assert token is None
        return [int(i["FragmentNumber"]) for i in items]

    nums = [f.number for f in frags]
    # Server clock: inclusive at both ends, against the fragment start.
    assert rng("SERVER_TIMESTAMP", START_MS + 52_000, START_MS + 55_000) == nums[2:6]
    assert rng("SERVER_TIMESTAMP", START_MS + 52_001, START_MS + 54_999) == nums[3:5]
    assert rng("SERVER_TIMESTAMP", START_MS, START_MS + 49_999) == []
    # Producer clock: listed in producer-timestamp order.
    got = rng("PRODUCER_TIMESTAMP", START_MS, START_MS + 4000)
    assert got == [nums[0], nums[9], nums[1], nums[10], nums[2]]
    everything, _ = listed(am, "arch")
    assert everything == [as_wire(f) for f in frags]


def test_max_results_and_next_token(server: ServerThread) -> None:
    frags = seeded(server)
    am = archived(server, "arch")
    for kind in ("SERVER_TIMESTAMP", "PRODUCER_TIMESTAMP"):
        selector = {
            "FragmentSelectorType": kind,
            "TimestampRange": {
                "StartTimestamp": START_MS / 1000,
                "EndTimestamp": (START_MS + 10**6) / 1000,
            },
        }
        pages = []
        items, token = listed(am, "arch", FragmentSelector=selector, MaxResults=5)
        pages.append(items)
        while token:
            # The token carries the selector; the request needs nothing else.
            items, token = listed(am, "arch", NextToken=token, MaxResults=5)
            pages.append(items)
        assert [len(p) for p in pages] == [5, 5, 2]
        flat = [i for p in pages for i in p]
        key = "ServerTimestamp" if kind == "SERVER_TIMESTAMP" else "ProducerTimestamp"
        assert flat == sorted(
            (as_wire(f) for f in frags), key=lambda i: (i[key], int(i["FragmentNumber"]))
        )
    # boto3's paginator drives the same tokens.
    paginator = am.get_paginator("list_fragments")
    seen = [
        f["FragmentNumber"]
        for page in paginator.paginate(StreamName="arch", PaginationConfig={"PageSize": 4})
        for f in page["Fragments"]
    ]
    assert seen == [str(f.number) for f in frags]


def test_pages_with_equal_timestamps(server: ServerThread) -> None:
    """Many fragments on one producer timestamp page through without loss or repetition."""
    from tests.media.test_h264_mkv import fragment_from_clip

    server.client("kinesisvideo").create_stream(StreamName="same", DataRetentionInHours=24)
    stream = server.services.control.get_stream(name="same")
    blob, _ = fragment_from_clip()
    frags = [
        server.call(
            server.services.fragments.append(
                stream, blob, producer_ts_ms=START_MS + (i // 7) * 1000, duration_ms=1000
            )
        )
        for i in range(17)
    ]
    am = archived(server, "same")
    selector = {
        "FragmentSelectorType": "PRODUCER_TIMESTAMP",
        "TimestampRange": {
            "StartTimestamp": START_MS / 1000,
            "EndTimestamp": (START_MS + 5000) / 1000,
        },
    }
    got: list[str] = []
    items, token = listed(am, "same", FragmentSelector=selector, MaxResults=3)
    got += [i["FragmentNumber"] for i in items]
    while token:
        items, token = listed(am, "same", NextToken=token, MaxResults=3)
        got += [i["FragmentNumber"] for i in items]
    assert got == [str(f.number) for f in frags]


def test_list_fragments_errors(server: ServerThread) -> None:
    seeded(server, n=3)
    am = archived(server, "arch")
    cases: list[tuple[dict[str, Any], str]] = [
        ({"StreamName": "nope"}, "ResourceNotFoundException"),
        ({"StreamName": "arch", "NextToken": "bm90IGEgdG9rZW4="}, "InvalidArgumentException"),
        ({"StreamName": "arch", "NextToken": "!!"}, "InvalidArgumentException"),
        (
            {
                "StreamName": "arch",
                "FragmentSelector": {
                    "FragmentSelectorType": "SERVER_TIMESTAMP",
                    "TimestampRange": {"StartTimestamp": 20, "EndTimestamp": 10},
                },
            },
            "InvalidArgumentException",
        ),
    ]
    for kwargs, code in cases:
        with pytest.raises(botocore.exceptions.ClientError) as e:
            am.list_fragments(**kwargs)
        assert e.value.response["Error"]["Code"] == code, kwargs
    # Tokens are checked before they reach the database.
    import base64
    import json as _json

    stream_id = server.services.control.get_stream(name="arch").id
    for payload in (
        {"v": 1, "s": stream_id, "t": None, "n": 10**30, "c": 0},
        {"v": 1, "s": stream_id, "t": "SERVER_TIMESTAMP", "n": 1, "c": 0},
        {"v": 2, "s": stream_id, "t": None, "n": 1, "c": 0},
        {"v": 1, "s": stream_id, "t": None, "n": True, "c": 0},
    ):
        token = base64.b64encode(_json.dumps(payload).encode()).decode()
        with pytest.raises(botocore.exceptions.ClientError) as e:
            am.list_fragments(StreamName="arch", NextToken=token)
        assert e.value.response["Error"]["Code"] == "InvalidArgumentException", payload
    # A token from another stream is refused.
    seeded(server, name="other", n=3)
    _, token = listed(am, "other", MaxResults=1)
    with pytest.raises(botocore.exceptions.ClientError) as e:
        am.list_fragments(StreamName="arch", NextToken=token)
    assert e.value.response["Error"]["Code"] == "InvalidArgumentException"


def test_get_media_for_fragment_list_returns_what_was_put(
    server: ServerThread, tmp_path: Path
) -> None:
    server.client("kinesisvideo").create_stream(StreamName="arch", DataRetentionInHours=24)
    data = producer_mkv()
    status, acks = asyncio.run(put_media(server, data, stream_name="arch"))
    am = archived(server, "arch")
    items, _ = listed(am, "arch")
    assert [i["FragmentNumber"] for i in items] == [
        a["FragmentNumber"] for a in acks if a["EventType"] == "PERSISTED"
    ]
    wanted = [items[2]["FragmentNumber"], items[0]["FragmentNumber"], items[1]["FragmentNumber"]]
    resp = am.get_media_for_fragment_list(StreamName="arch", Fragments=wanted)
    assert resp["ContentType"] == "video/webm"
    raw = resp["Payload"].read()
    chunks = split_chunks(raw)
    assert [c.before["AWS_KINESISVIDEO_FRAGMENT_NUMBER"] for c in chunks] == wanted
    by_number = {i["FragmentNumber"]: i for i in items}
    for c in chunks:
        item = by_number[c.before["AWS_KINESISVIDEO_FRAGMENT_NUMBER"]]
        server_s = f"{item['ServerTimestamp'] // 1000}.{item['ServerTimestamp'] % 1000:03d}"
        producer_s = f"{item['ProducerTimestamp'] // 1000}.{item['ProducerTimestamp'] % 1000:03d}"
        # UNVERIFIED in the reference: the docs name *_SIDE_TIMESTAMP, the AWS parser library
        # reads *_TIMESTAMP (and treats a chunk without it as an error). Both are sent.
        aws = {k: v for k, v in c.before.items() if k.startswith("AWS_")}
        assert aws == {
            "AWS_KINESISVIDEO_FRAGMENT_NUMBER": item["FragmentNumber"],
            "AWS_KINESISVIDEO_SERVER_TIMESTAMP": server_s,
            "AWS_KINESISVIDEO_PRODUCER_TIMESTAMP": producer_s,
            "AWS_KINESISVIDEO_SERVER_SIDE_TIMESTAMP": server_s,
            "AWS_KINESISVIDEO_PRODUCER_SIDE_TIMESTAMP": producer_s,
        }
        assert c.after == {}
    in_order = sorted(chunks, key=lambda c: c.cluster_timecode or 0)
    assert [b for c in in_order for b in c.blocks] == [
        (b.track, b.timecode, b.data) for b in mkv.read_fragment(data).blocks
    ]
    ffprobe = need_tool("ffprobe")
    if ffprobe is None:
        pytest.skip("ffprobe is not installed")
    path = tmp_path / "list.mkv"
    path.write_bytes(raw[chunks[1].start : chunks[1].end])
    out = subprocess.run(
        [ffprobe, "-v", "error", "-count_frames", "-show_streams", "-of", "json", str(path)],
        capture_output=True,
        text=True,
        check=True,
    )
    counts = {s["codec_name"]: int(s["nb_read_frames"]) for s in json.loads(out.stdout)["streams"]}
    assert counts == {
        "h264": sum(1 for b in chunks[1].blocks if b[0] == 1),
        "aac": sum(1 for b in chunks[1].blocks if b[0] == 2),
    }


def test_get_media_for_fragment_list_errors(server: ServerThread) -> None:
    frags = seeded(server, n=2)
    am = archived(server, "arch")
    for kwargs, code in (
        (
            {"StreamName": "arch", "Fragments": [str(frags[0].number), "42"]},
            "ResourceNotFoundException",
        ),
        ({"StreamName": "arch", "Fragments": ["9" * 40]}, "ResourceNotFoundException"),
        ({"StreamName": "nope", "Fragments": ["1"]}, "ResourceNotFoundException"),
        ({"StreamName": "arch", "Fragments": ["x1"]}, "InvalidArgumentException"),
    ):
        with pytest.raises(botocore.exceptions.ClientError) as e:
            am.get_media_for_fragment_list(**kwargs)
        assert e.value.response["Error"]["Code"] == code, kwargs
    # A fragment that disappears after the request was accepted gets an error chunk.
    stream = server.services.control.get_stream(name="arch")
    server.call(server.services.fragments.blobs.delete([frags[1].blob_key]))
    raw = am.get_media_for_fragment_list(
        StreamName="arch", Fragments=[str(frags[0].number), str(frags[1].number)]
    )["Payload"].read()
    ok, gone = split_chunks(raw)
    assert ok.before["AWS_KINESISVIDEO_FRAGMENT_NUMBER"] == str(frags[0].number) and ok.blocks
    assert gone.before == {
        "AWS_KINESISVIDEO_FRAGMENT_NUMBER": str(frags[1].number),
        "AWS_KINESISVIDEO_EXCEPTION_ERROR_CODE": "4000",
        "AWS_KINESISVIDEO_EXCEPTION_MESSAGE": "Fragment not found.",
    }
    del stream
