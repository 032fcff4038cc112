"""The KVS Producer SDK's habits (kvssink: producer-c + PIC), reproduced by our own producer
against the real server: requests signed with a port-less Host and an empty-body payload hash,
GetDataEndpoint through that Host, END_OF_FRAGMENT at stop and on connection rotation, KVS event
metadata, and acks that always name their fragment's timecode."""

from __future__ import annotations

import asyncio
import base64
import http.client
import json
import ssl
from typing import Any

import av

from openkvs.dataplane.events import FragmentEvent
from openkvs.media import mkv
from openkvs.media.mkvstream import KvsEvent

from ..support import ServerThread
from .mediafiles import (
    END_OF_FRAGMENT,
    clusters,
    header_part,
    producer_mkv,
    sdk_tags,
    unknown_size_clusters,
)
from .producer import SDK_USER_AGENT, SdkProducer, sdk_sign


def sdk_call(
    srv: ServerThread, path: str, body: dict[str, Any], *, empty_hash: bool = False
) -> tuple[int, dict[str, str], dict[str, Any]]:
    """A control-plane call as the SDK makes it (raw HTTPS; Host without its port)."""
    raw = json.dumps(body).encode()
    headers = sdk_sign(
        "POST",
        f"{srv.endpoint}{path}",
        {"user-agent": SDK_USER_AGENT},
        None if empty_hash else raw,
        srv.keys,
        srv.settings.region,
    )
    headers["content-length"] = str(len(raw))
    conn = http.client.HTTPSConnection(
        "127.0.0.1", srv.port, context=ssl.create_default_context(cafile=srv.ca), timeout=10
    )
    try:
        conn.putrequest("POST", path, skip_host=True, skip_accept_encoding=True)
        for k, v in headers.items():
            conn.putheader(k, v)
        conn.endheaders(raw)
        resp = conn.getresponse()
        data = resp.read()
        return resp.status, {k.lower(): v for k, v in resp.getheaders()}, json.loads(data or b"{}")
    finally:
        conn.close()


def create_stream(srv: ServerThread, name: str) -> None:
    srv.client("kinesisvideo").create_stream(StreamName=name, DataRetentionInHours=24)


def data_endpoint(srv: ServerThread, name: str) -> str:
    status, _, out = sdk_call(srv, "/getDataEndpoint", {"StreamName": name, "APIName": "PUT_MEDIA"})
    assert status == 200, out
    return str(out["DataEndpoint"])


def sdk_stream(
    seconds: float = 3.0, start_ms: int = 1_700_000_000_000
) -> tuple[bytes, list[bytes]]:
    """(header, clusters) as PIC streams them: unknown-size Segment and Clusters."""
    data = unknown_size_clusters(producer_mkv(seconds, start_ms=start_ms))
    return header_part(data), clusters(data)


def timecode_of(header: bytes, cluster: bytes) -> int:
    return mkv.read_fragment(header + cluster).cluster_timecode


async def acks_for(p: SdkProducer, n: int) -> list[dict[str, Any]]:
    out = []
    for _ in range(n):
        a = await p.ack()
        assert a is not None
        out.append(a)
    return out


def check_every_ack_names_its_fragment(acks: list[dict[str, Any]]) -> None:
    for a in acks:
        if a["EventType"] != "IDLE":
            assert isinstance(a.get("FragmentTimecode"), int), a
            assert a.get("FragmentNumber", "").isdigit(), a


def stored(srv: ServerThread, name: str) -> list[Any]:
    stream = srv.services.control.get_stream(name=name)
    frags = srv.call(srv.services.fragments.list_fragments(stream))
    return sorted(frags, key=lambda f: f.producer_ts)


def video_frames(srv: ServerThread, frags: list[Any]) -> int:
    blobs = srv.services.fragments.blobs
    return sum(
        sum(1 for b in mkv.read_fragment(srv.call(blobs.get(f.blob_key))).blocks if b.track == 1)
        for f in frags
    )


def test_get_data_endpoint_keeps_the_port_of_a_portless_host(server: ServerThread) -> None:
    create_stream(server, "sdk-ep")
    status, _, out = sdk_call(server, "/describeStream", {"StreamName": "sdk-ep"})
    assert status == 200 and out["StreamInfo"]["StreamName"] == "sdk-ep"
    assert data_endpoint(server, "sdk-ep") == f"https://127.0.0.1:{server.port}"
    # A Host header with a port is handed back as it came.
    ep = server.client("kinesisvideo").get_data_endpoint(StreamName="sdk-ep", APIName="GET_MEDIA")
    assert ep["DataEndpoint"] == f"https://127.0.0.1:{server.port}"


def test_non_streaming_operation_signed_as_empty_body_is_refused(server: ServerThread) -> None:
    # Only streaming operations may sign their body as empty: a JSON operation whose body is
    # not what was signed is refused, with no x-amz-content-sha256 header as with one.
    create_stream(server, "sdk-neg")
    status, headers, out = sdk_call(
        server, "/describeStream", {"StreamName": "sdk-neg"}, empty_hash=True
    )
    assert status == 403
    assert headers["x-amzn-errortype"].startswith("InvalidSignatureException")
    assert "signature" in out["message"].lower()


async def test_sdk_upload_ends_with_end_of_fragment(server: ServerThread) -> None:
    create_stream(server, "sdk-stop")
    endpoint = await asyncio.to_thread(data_endpoint, server, "sdk-stop")
    header, cls = sdk_stream()
    p = SdkProducer(server, stream_name="sdk-stop", endpoint=endpoint)
    assert "x-amz-content-sha256" not in {k.lower() for k in p.sdk_headers}
    await p.connect()
    assert await p.read_head() == 200
    await p.send(header)
    acks: list[dict[str, Any]] = []
    for i, c in enumerate(cls):
        await p.send(c)
        # An unknown-size Cluster ends with the next level-1 element: here the next Cluster,
        # and for the last one the END_OF_FRAGMENT tag, which completes it at once.
        if i:
            acks += await acks_for(p, 3)
        else:
            acks += await acks_for(p, 1)
    await p.send(END_OF_FRAGMENT)
    acks += await acks_for(p, 2)
    assert [a["EventType"] for a in acks] == ["BUFFERING", "RECEIVED", "PERSISTED"] * 3
    assert [a["FragmentTimecode"] for a in acks[::3]] == [timecode_of(header, c) for c in cls]
    await p.end()
    assert await p.acks_until_end() == []
    await p.close()
    check_every_ack_names_its_fragment(acks)
    frags = stored(server, "sdk-stop")
    assert len(frags) == 3 and video_frames(server, frags) == 90


async def test_connection_rotation_leaves_no_gap_and_no_duplicate(make_server: Any) -> None:
    srv = make_server(putmedia_handover_wait=10.0)
    create_stream(srv, "sdk-rot")
    endpoint = await asyncio.to_thread(data_endpoint, srv, "sdk-rot")
    header, cls = sdk_stream(6.0)
    assert len(cls) == 6
    first = SdkProducer(srv, stream_name="sdk-rot", endpoint=endpoint)
    await first.connect()
    assert await first.read_head() == 200
    await first.send(header + b"".join(cls[:3]) + END_OF_FRAGMENT)
    # The SDK opens its next connection before it has ended the current one: the new
    # connection waits for the old one instead of being refused.
    second = SdkProducer(srv, stream_name="sdk-rot", endpoint=endpoint)
    await second.connect()
    head = asyncio.ensure_future(second.read_head(timeout=15))
    acks = await acks_for(first, 9)
    assert [a["EventType"] for a in acks] == ["BUFFERING", "RECEIVED", "PERSISTED"] * 3
    await asyncio.sleep(0.3)
    assert not head.done()
    await first.end()
    assert await first.acks_until_end() == []
    await first.close()
    assert await head == 200
    # The new connection starts a new MKV stream with the next keyframe's Cluster.
    await second.send(header + b"".join(cls[3:]) + END_OF_FRAGMENT)
    acks2 = await acks_for(second, 9)
    assert [a["EventType"] for a in acks2] == ["BUFFERING", "RECEIVED", "PERSISTED"] * 3
    await second.end()
    assert await second.acks_until_end() == []
    await second.close()
    check_every_ack_names_its_fragment(acks + acks2)
    assert [a["FragmentTimecode"] for a in (acks + acks2)[::3]] == [
        timecode_of(header, c) for c in cls
    ]

    frags = stored(srv, "sdk-rot")
    assert len(frags) == 6
    assert len({f.number for f in frags}) == 6 and len({f.producer_ts for f in frags}) == 6
    for a, b in zip(frags, frags[1:], strict=False):
        gap = b.producer_ts - (a.producer_ts + a.duration_ms)
        assert abs(gap) <= 34, (a, b)  # back to back, within a frame
    assert video_frames(srv, frags) == 180


async def test_a_second_writer_is_refused_when_the_first_stays(make_server: Any) -> None:
    srv = make_server(putmedia_handover_wait=0.5)
    create_stream(srv, "sdk-busy")
    first = SdkProducer(srv, stream_name="sdk-busy")
    await first.connect()
    assert await first.read_head() == 200
    second = SdkProducer(srv, stream_name="sdk-busy")
    await second.connect()
    t0 = asyncio.get_running_loop().time()
    assert await second.read_head() == 400
    assert 0.4 <= asyncio.get_running_loop().time() - t0 <= 5
    assert second.response_headers["x-amzn-errortype"] == "ConnectionLimitExceededException"
    await second.end_and_close()
    await first.close()


async def test_event_metadata_is_accepted_and_published(server: ServerThread) -> None:
    create_stream(server, "sdk-events")
    seen: list[FragmentEvent] = []
    unsubscribe = server.services.dataplane.events.subscribe(seen.append)
    try:
        header, cls = sdk_stream()
        image = sdk_tags(
            "AWS_KINESISVIDEO_IMAGE_GENERATION",
            siblings=[("AWS_KINESISVIDEO_IMAGE_PREFIX", "door-"), ("zone", "3")],
        )
        notify = sdk_tags("AWS_KINESISVIDEO_NOTIFICATION", siblings=[("reason", "motion")])
        reserved = sdk_tags("AWS_KINESISVIDEO_SOMETHING_ELSE", "1")
        p = SdkProducer(server, stream_name="sdk-events")
        await p.connect()
        assert await p.read_head() == 200
        body = header + cls[0] + image + notify + cls[1] + reserved + cls[2] + END_OF_FRAGMENT
        await p.send(body, piece=1000)
        await p.end()
        acks = await p.acks_until_end()
        await p.close()
    finally:
        unsubscribe()
    check_every_ack_names_its_fragment(acks)
    assert [a["EventType"] for a in acks] == ["BUFFERING", "RECEIVED", "PERSISTED"] * 2 + [
        "BUFFERING",
        "ERROR",
    ]
    # Any other reserved name refuses the fragment it travels with, naming it.
    refused = acks[-1]
    assert (refused["ErrorId"], refused["ErrorCode"]) == (4009, "FRAGMENT_METADATA_LIMIT_REACHED")
    assert refused["FragmentTimecode"] == timecode_of(header, cls[2])
    assert refused["FragmentNumber"] == acks[-2]["FragmentNumber"]
    # The events belong to the fragment after them and are published once it is stored.
    number = int(acks[3]["FragmentNumber"])
    assert acks[3]["FragmentTimecode"] == timecode_of(header, cls[1])
    assert [(e.fragment_number, e.event) for e in seen] == [
        (number, KvsEvent("IMAGE_GENERATION", "door-", (("zone", "3"),))),
        (number, KvsEvent("NOTIFICATION", None, (("reason", "motion"),))),
    ]
    assert (
        seen[0].stream_name == "sdk-events"
        and seen[0].producer_ts_ms == acks[3]["FragmentTimecode"]
    )
    frags = stored(server, "sdk-events")
    assert len(frags) == 2
    # The event tags are not stored with the fragment.
    data = server.call(server.services.fragments.blobs.get(frags[1].blob_key))
    assert not any(k.startswith("AWS_") for k in mkv.read_fragment(data).tags)


async def test_image_generation_event_writes_the_fragments_images(server: ServerThread) -> None:
    kv = server.client("kinesisvideo")
    for name in ("sdk-img", "sdk-noimg"):
        create_stream(server, name)
    kv.update_image_generation_configuration(
        StreamName="sdk-img",
        ImageGenerationConfiguration={
            "Status": "ENABLED",
            "ImageSelectorType": "PRODUCER_TIMESTAMP",
            "DestinationConfig": {"Uri": "s3://bucket/x", "DestinationRegion": "us-west-2"},
            "SamplingInterval": 500,
            "Format": "JPEG",
            "FormatConfig": {"JPEGQuality": "70"},
            "WidthPixels": 160,
        },
    )
    header, cls = sdk_stream()
    image = sdk_tags(
        "AWS_KINESISVIDEO_IMAGE_GENERATION", siblings=[("AWS_KINESISVIDEO_IMAGE_PREFIX", "door-")]
    )
    for name in ("sdk-img", "sdk-noimg"):
        p = SdkProducer(server, stream_name=name)
        await p.connect()
        assert await p.read_head() == 200
        await p.send(header + cls[0] + image + cls[1] + cls[2] + END_OF_FRAGMENT)
        await p.end()
        acks = await p.acks_until_end()
        await p.close()
        assert [a["EventType"] for a in acks] == ["BUFFERING", "RECEIVED", "PERSISTED"] * 3
    await asyncio.to_thread(server.call, server.services.imagegen.idle())
    folder = server.settings.data_dir / "images"
    assert sorted(p.name for p in folder.iterdir()) == ["sdk-img"]
    # One image every 500 ms of the marked (second, ~1 s) fragment, named by producer time.
    marked = stored(server, "sdk-img")[1]
    assert 1000 <= marked.duration_ms <= 1100
    want = [f"door-{marked.producer_ts + t}.jpg" for t in range(0, marked.duration_ms, 500)]
    files = sorted(folder.joinpath("sdk-img").iterdir())
    assert [f.name for f in files] == want
    for f in files:
        data = f.read_bytes()
        assert data[:2] == b"\xff\xd8" and data[-2:] == b"\xff\xd9"
        frame = next(av.open(str(f)).decode(video=0))
        assert (frame.width, frame.height) == (160, 120)
    assert server.services.imagegen.written == len(want)
    # They are the images GetImages gives for the same times and options.
    am = server.client("kinesis-video-archived-media")
    got = am.get_images(
        StreamName="sdk-img",
        ImageSelectorType="PRODUCER_TIMESTAMP",
        StartTimestamp=marked.producer_ts / 1000,
        EndTimestamp=(marked.producer_ts + marked.duration_ms - 1) / 1000,
        SamplingInterval=500,
        Format="JPEG",
        FormatConfig={"JPEGQuality": "70"},
        WidthPixels=160,
    )["Images"]
    assert [base64.b64decode(i["ImageContent"]) for i in got] == [f.read_bytes() for f in files]


async def test_fragments_sent_again_after_lost_acks_are_not_stored_twice(
    server: ServerThread,
) -> None:
    create_stream(server, "sdk-resend")
    header, cls = sdk_stream(5.0)
    assert len(cls) == 5
    first = SdkProducer(server, stream_name="sdk-resend")
    await first.connect()
    assert await first.read_head() == 200
    await first.send(header + b"".join(cls[:3]) + END_OF_FRAGMENT)
    acks = await acks_for(first, 9)
    numbers = [a["FragmentNumber"] for a in acks[::3]]
    first.abort()  # the connection breaks; say the last two PERSISTED acks never arrived
    await asyncio.sleep(0.2)
    # The SDK reconnects and rolls back to the first fragment it has no PERSISTED ack for.
    second = SdkProducer(server, stream_name="sdk-resend")
    await second.connect()
    assert await second.read_head() == 200
    await second.send(header + b"".join(cls[1:]) + END_OF_FRAGMENT)
    await second.end()
    acks2 = await second.acks_until_end()
    await second.close()
    check_every_ack_names_its_fragment(acks2)
    assert [a["EventType"] for a in acks2] == ["BUFFERING", "RECEIVED", "PERSISTED"] * 4
    assert [a["FragmentTimecode"] for a in acks2[::3]] == [timecode_of(header, c) for c in cls[1:]]
    # The fragments sent again keep their numbers; the new ones get new numbers.
    assert [a["FragmentNumber"] for a in acks2[:6:3]] == numbers[1:]
    assert int(acks2[6]["FragmentNumber"]) > int(numbers[-1])
    frags = stored(server, "sdk-resend")
    assert [str(f.number) for f in frags[:3]] == numbers
    assert len(frags) == 5 and len({f.producer_ts for f in frags}) == 5
    assert video_frames(server, frags) == 150


async def test_a_writer_gone_silent_gives_way(make_server: Any) -> None:
    # A producer that vanished without closing its connection (power loss, NAT timeout) does
    # not lock its stream until the idle timeout: its silent connection gives way.
    srv = make_server(putmedia_handover_wait=10.0, putmedia_handover_idle=1.0)
    create_stream(srv, "sdk-gone")
    header, cls = sdk_stream()
    first = SdkProducer(srv, stream_name="sdk-gone")
    await first.connect()
    assert await first.read_head() == 200
    await first.send(header + cls[0] + END_OF_FRAGMENT)
    assert [a["EventType"] for a in await acks_for(first, 3)] == [
        "BUFFERING",
        "RECEIVED",
        "PERSISTED",
    ]
    second = SdkProducer(srv, stream_name="sdk-gone")
    await second.connect()
    t0 = asyncio.get_running_loop().time()
    assert await second.read_head(timeout=15) == 200
    assert asyncio.get_running_loop().time() - t0 <= 5
    assert await first.acks_until_end() == [] and first.eof  # the old response was ended
    await first.close()
    await second.send(header + b"".join(cls[1:]) + END_OF_FRAGMENT)
    await second.end()
    acks = await second.acks_until_end()
    await second.close()
    assert [a["EventType"] for a in acks] == ["BUFFERING", "RECEIVED", "PERSISTED"] * 2
    assert len(stored(srv, "sdk-gone")) == 3
