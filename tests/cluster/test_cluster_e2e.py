"""openkvs as a real cluster: server processes on one PostgreSQL database, one S3 bucket
(SeaweedFS) and one Redis bus, driven by real clients (boto3, signaling WebSockets, aiortc
peers, PutMedia producers, HLS players) that talk to whichever node they like."""

from __future__ import annotations

import asyncio
import io
import re
from collections.abc import Iterator
from typing import Any

import av
import pytest
import redis
from botocore.exceptions import ClientError

from ..dataplane.ebmlcheck import split_chunks
from ..dataplane.mediafiles import clusters, header_part, producer_mkv
from ..dataplane.producer import Producer
from ..dataplane.reading import read_chunk
from ..mediagen import h264_clip, opus_packets
from ..playback.support import get, resolve, uris
from ..seaweed import Seaweed
from ..signaling.kvs import Client, b64json, enable_storage, setup_channel, unb64json
from ..signaling.peers import RED, call
from ..webrtc.harness import Camera, sent_video, wait_for
from .nodes import Node, fresh_engines, running_cluster

# Every node of the cluster the tests of this module share (a fresh database, bucket and bus
# prefix for the module; each test uses names of its own).
SETTINGS: dict[str, Any] = {
    "signaling_go_away_grace": 0.3,
    "storage_fragment_duration": 1.0,
    "putmedia_handover_wait": 1.0,
}


@pytest.fixture(scope="module")
def nodes(
    seaweed: Seaweed,
    redis_server: str | None,
    postgres_admin_url: str,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[list[Node]]:
    with (
        fresh_engines(seaweed, redis_server, postgres_admin_url) as engines,
        running_cluster(engines, tmp_path_factory.mktemp("cluster")) as cluster,
    ):
        yield cluster.start(3, **SETTINGS)


def error_code(exc: pytest.ExceptionInfo[ClientError]) -> str:
    return str(exc.value.response["Error"]["Code"])


def test_any_node_answers_any_api_call(nodes: list[Node]) -> None:
    a, b, c = nodes
    assert a.keys == b.keys == c.keys and len({a.ca, b.ca, c.ca}) == 3
    # Three members of one cluster, each with its heartbeat on the shared bus.
    engines = a.cluster.engines
    ids = [n.node_id for n in nodes]
    assert None not in ids and len(set(ids)) == 3
    with redis.Redis.from_url(engines.redis_url) as r:
        for node_id in ids:
            assert r.exists(f"{engines.redis_prefix}:node:{node_id}")
    kva, kvb, kvc = (n.client("kinesisvideo") for n in nodes)

    # Channels: created on A, described, updated and deleted on B.
    arn = kva.create_signaling_channel(ChannelName="door")["ChannelARN"]
    kvb.create_signaling_channel(ChannelName="yard")
    info = kvb.describe_signaling_channel(ChannelName="door")["ChannelInfo"]
    assert info["ChannelARN"] == arn
    kvb.update_signaling_channel(
        ChannelARN=arn,
        CurrentVersion=info["Version"],
        SingleMasterConfiguration={"MessageTtlSeconds": 90},
    )
    updated = kva.describe_signaling_channel(ChannelARN=arn)["ChannelInfo"]
    assert updated["SingleMasterConfiguration"]["MessageTtlSeconds"] == 90
    with pytest.raises(ClientError) as stale:
        kva.update_signaling_channel(
            ChannelARN=arn,
            CurrentVersion=info["Version"],
            SingleMasterConfiguration={"MessageTtlSeconds": 30},
        )
    assert error_code(stale) == "VersionMismatchException"
    with pytest.raises(ClientError) as taken:
        kvb.create_signaling_channel(ChannelName="door")
    assert error_code(taken) == "ResourceInUseException"

    def channels(kv: object) -> list[tuple[str, str]]:
        listed = kv.list_signaling_channels()["ChannelInfoList"]  # type: ignore[attr-defined]
        return sorted((c["ChannelName"], c["ChannelARN"]) for c in listed)

    assert channels(kva) == channels(kvb) and [n for n, _ in channels(kva)] == ["door", "yard"]
    kvb.delete_signaling_channel(ChannelARN=arn, CurrentVersion=updated["Version"])
    with pytest.raises(ClientError) as gone:
        kva.describe_signaling_channel(ChannelARN=arn)
    assert error_code(gone) == "ResourceNotFoundException"
    assert channels(kva) == channels(kvb) == channels(kvc)
    assert [n for n, _ in channels(kvc)] == ["yard"]

    # Streams likewise.
    stream_arn = kva.create_stream(StreamName="cam-a", DataRetentionInHours=2)["StreamARN"]
    kvb.create_stream(StreamName="cam-b", DataRetentionInHours=1)
    desc = kvb.describe_stream(StreamName="cam-a")["StreamInfo"]
    assert desc["StreamARN"] == stream_arn and desc["DataRetentionInHours"] == 2
    kvb.update_stream(StreamARN=stream_arn, CurrentVersion=desc["Version"], DeviceName="porch")
    kva.tag_stream(StreamARN=stream_arn, Tags={"site": "north"})
    assert kvb.list_tags_for_stream(StreamARN=stream_arn)["Tags"] == {"site": "north"}
    desc = kva.describe_stream(StreamARN=stream_arn)["StreamInfo"]
    assert desc["DeviceName"] == "porch"

    def streams(kv: object) -> list[tuple[str, str]]:
        listed = kv.list_streams()["StreamInfoList"]  # type: ignore[attr-defined]
        return [(s["StreamName"], s["StreamARN"]) for s in listed]

    assert streams(kva) == streams(kvb) and [n for n, _ in streams(kva)] == ["cam-a", "cam-b"]
    # A page token from one node goes on at another.
    first = kva.list_streams(MaxResults=1)
    rest = kvc.list_streams(MaxResults=1, NextToken=first["NextToken"])
    assert [s["StreamName"] for s in first["StreamInfoList"] + rest["StreamInfoList"]] == [
        "cam-a",
        "cam-b",
    ]
    kvb.delete_stream(StreamARN=stream_arn, CurrentVersion=desc["Version"])
    with pytest.raises(ClientError) as gone:
        kva.describe_stream(StreamARN=stream_arn)
    assert error_code(gone) == "ResourceNotFoundException"
    assert streams(kva) == streams(kvb) == streams(kvc)
    assert [n for n, _ in streams(kvc)] == ["cam-b"]


async def test_signaling_across_nodes(nodes: list[Node]) -> None:
    a, b, _ = nodes
    ttl = 5
    arn = setup_channel(b, "p2p", ttl=ttl)
    early = await Client.connect(b, arn, "early")
    clients = [early]
    try:
        # A viewer's offers before any master is connected wait for it; the newer offer
        # replaces the older one and the candidates that went with it.
        await early.send("SDP_OFFER", {"type": "offer", "sdp": "v=0 one"})
        await early.send("ICE_CANDIDATE", {"candidate": "one"})
        await early.send("SDP_OFFER", {"type": "offer", "sdp": "v=0 two"})
        await asyncio.sleep(0.3)
        master = await Client.connect(a, arn, tls=True)  # wss, the way the SDKs connect
        clients.append(master)
        got = await master.recv()
        assert (got["messageType"], got["senderClientId"]) == ("SDP_OFFER", "early")
        assert unb64json(got["messagePayload"]) == {"type": "offer", "sdp": "v=0 two"}
        await master.expect_nothing(0.3)

        # Messages for viewers not connected anywhere yet wait for them (up to the TTL).
        sent_at = asyncio.get_running_loop().time()
        await master.send("SDP_OFFER", {"type": "offer", "sdp": "v=0 late"}, recipient="late")
        await master.send("ICE_CANDIDATE", {"candidate": "expired"}, recipient="expired")
        await asyncio.sleep(0.5)
        late = await Client.connect(b, arn, "late")
        clients.append(late)
        got = await late.recv()
        assert got["messageType"] == "SDP_OFFER" and "senderClientId" not in got
        assert unb64json(got["messagePayload"]) == {"type": "offer", "sdp": "v=0 late"}
        await late.expect_nothing(0.3)

        # A real call: the master's socket on A, the viewer's on B; the offer, the answer and
        # every candidate cross nodes, and video flows peer to peer.
        viewer = await Client.connect(b, arn, "viewer-1")
        clients.append(viewer)
        result = await call(master, viewer, "viewer-1", frames_wanted=5, timeout=30)
        assert result.viewer_candidates and result.master_candidates
        assert (result.viewer_state, result.master_state) == ("connected", "connected")
        assert (result.frames[-1].width, result.frames[-1].height) == (160, 120)
        rgb = result.frames[-1].to_ndarray(format="rgb24")
        assert abs(rgb.mean(axis=(0, 1)) - RED).max() < 20  # type: ignore[operator]

        # Past the TTL, the message for the viewer that never came has expired.
        wait = sent_at + ttl + 0.5 - asyncio.get_running_loop().time()
        await asyncio.sleep(max(0.0, wait))
        expired = await Client.connect(b, arn, "expired")
        clients.append(expired)
        await expired.expect_nothing(0.5)

        # A second master on B replaces the one on A, which is told to go away; viewers'
        # messages reach the new one.
        second = await Client.connect(b, arn)
        clients.append(second)
        assert await master.recv() == {"messageType": "GO_AWAY"}
        await master.wait_closed()
        other = await Client.connect(a, arn, "viewer-2")
        clients.append(other)
        await other.send("SDP_OFFER", {"type": "offer", "sdp": "v=0 two"})
        got = await second.recv()
        assert got["messageType"] == "SDP_OFFER" and got["senderClientId"] == "viewer-2"
        await second.send("SDP_ANSWER", b64json({"type": "answer", "sdp": "v=0"}), "viewer-2")
        got = await other.recv()
        assert unb64json(got["messagePayload"]) == {"type": "answer", "sdp": "v=0"}
    finally:
        for c in clients:
            await c.close()


def join_through(node: Node, channel_arn: str, client_id: str | None = None) -> None:
    """JoinStorageSession(AsViewer) as a device calls it: the WEBRTC endpoint that ``node``
    names, then the call there."""
    role = "MASTER" if client_id is None else "VIEWER"
    (endpoint,) = node.client("kinesisvideo").get_signaling_channel_endpoint(
        ChannelARN=channel_arn,
        SingleMasterChannelEndpointConfiguration={"Protocols": ["WEBRTC"], "Role": role},
    )["ResourceEndpointList"]
    assert endpoint["ResourceEndpoint"] == node.endpoint
    storage = node.client("kinesis-video-webrtc-storage", endpoint=endpoint["ResourceEndpoint"])
    if client_id is None:
        storage.join_storage_session(channelArn=channel_arn)
    else:
        storage.join_storage_session_as_viewer(channelArn=channel_arn, clientId=client_id)


async def test_storage_session_across_nodes(nodes: list[Node]) -> None:
    a, b, c = nodes
    arn = setup_channel(a, "stored")
    enable_storage(b, arn, "stored-stream")
    seconds = 5.0
    cam = Camera(a, arn, h264_clip(width=320, height=240, seconds=seconds), opus_packets(seconds))
    viewer = Camera(c, arn, None, client_id="viewer-1")
    try:
        await cam.connect()
        await asyncio.to_thread(join_through, b, arn)
        # Exactly one offer reaches the master on A, for the join that came through B.
        await wait_for(lambda: cam.offers == 1, 15)
        await wait_for(lambda: len(cam.master.video_track.sent) > 15, 15)  # type: ignore[union-attr]
        assert cam.offers == 1 and cam.status == []
        # A viewer whose socket is on C, joining through C, gets the master's live video.
        await viewer.connect()
        await asyncio.to_thread(join_through, c, arn, "viewer-1")
        await wait_for(lambda: len(viewer.master.received_video) >= 10, 20)
        frame = viewer.master.received_video[-1]
        assert (frame.width, frame.height) == (320, 240)
        await cam.master.wait_sent()
        await asyncio.sleep(0.5)
    finally:
        await viewer.close()
        await cam.close()  # the master leaves: the session ends and keeps its last fragment
    assert cam.offers == 1 and viewer.offers == 1 and viewer.status == []

    # The recording: rows that every node lists, each fragment's media an object in the bucket,
    # every frame the camera sent, byte for byte, read back through another node.
    def recorded() -> list[tuple[str, int, int]]:
        return list_fragments(b, "stored-stream")

    await wait_for(lambda: sum(d for _, _, d in recorded()) >= seconds * 1000 - 200, 20, 0.5)
    on_b = recorded()
    numbers = [n for n, _, _ in on_b]
    assert list_fragments(a, "stored-stream") == on_b == list_fragments(c, "stored-stream")
    assert len(on_b) >= 4 and [int(n) for n in numbers] == sorted(int(n) for n in numbers)
    assert stored_objects(a, numbers)
    archived = c.client("kinesis-video-archived-media")
    payload = archived.get_media_for_fragment_list(StreamName="stored-stream", Fragments=numbers)[
        "Payload"
    ].read()
    chunks = split_chunks(payload)
    assert [ch.before["AWS_KINESISVIDEO_FRAGMENT_NUMBER"] for ch in chunks] == numbers
    video = [data for ch in chunks for track, _, data in ch.blocks if track == 1]
    assert video == sent_video(cam)


def stored_objects(node: Node, numbers: list[str]) -> bool:
    """Whether each fragment's media is one object in the cluster's bucket (its key ends with
    the fragment number)."""
    names = [key.rpartition("/")[2] for key in node.cluster.engines.objects()]
    return all(names.count(f"{n}.mkv") == 1 for n in numbers)


def events(acks: list[dict[str, Any]]) -> list[str]:
    return [x["EventType"] for x in acks]


async def persisted(p: Producer) -> str:
    """The fragment number of the next PERSISTED acknowledgement."""
    while True:
        ack = await p.ack(timeout=20)
        assert ack is not None, "the acknowledgements ended"
        assert ack["EventType"] != "ERROR", ack
        if ack["EventType"] == "PERSISTED":
            return str(ack["FragmentNumber"])


def decoded_video_frames(init: bytes, segments: list[bytes]) -> list[int]:
    """The frames each segment decodes to. (Each on its own: sent faster than real time, the
    fragments overlap on the server-timestamp timeline, each after a discontinuity.)"""
    counts = []
    for segment in segments:
        with av.open(io.BytesIO(init + segment)) as container:
            counts.append(sum(1 for _ in container.decode(video=0)))
    return counts


def list_fragments(node: Node, stream: str) -> list[tuple[str, int, int]]:
    archived = node.client("kinesis-video-archived-media")
    listed = archived.list_fragments(StreamName=stream)["Fragments"]
    return sorted(
        (f["FragmentNumber"], f["FragmentSizeInBytes"], f["FragmentLengthInMilliseconds"])
        for f in listed
    )


async def test_media_put_on_one_node_is_tailed_and_played_on_the_other(nodes: list[Node]) -> None:
    a, b, _ = nodes
    a.client("kinesisvideo").create_stream(StreamName="tail", DataRetentionInHours=1)
    kvb = b.client("kinesisvideo")
    endpoint = kvb.get_data_endpoint(StreamName="tail", APIName="GET_MEDIA")["DataEndpoint"]
    assert endpoint == b.endpoint
    media = b.client("kinesis-video-media", endpoint=endpoint, read_timeout=20)
    payload = (
        await asyncio.to_thread(
            media.get_media, StreamName="tail", StartSelector={"StartSelectorType": "NOW"}
        )
    )["Payload"]
    data = producer_mkv(seconds=4.0)
    parts = clusters(data)
    assert len(parts) == 4
    p = Producer(a, stream_name="tail")
    numbers: list[str] = []
    try:
        await p.connect()
        assert await p.read_head() == 200
        await p.send(header_part(data))
        for i, part in enumerate(parts):
            await p.send(part)
            numbers.append(await persisted(p))
            # B's live tail delivers the fragment A just stored.
            (chunk,) = split_chunks(await asyncio.to_thread(read_chunk, payload.read))
            assert chunk.before["AWS_KINESISVIDEO_FRAGMENT_NUMBER"] == numbers[-1]
            if i == 1:
                # A LIVE HLS session minted on A plays from B.
                url_a = a.client(
                    "kinesis-video-archived-media", endpoint=a.http_endpoint
                ).get_hls_streaming_session_url(StreamName="tail", PlaybackMode="LIVE")[
                    "HLSStreamingSessionURL"
                ]
                url = url_a.replace(f":{a.http_port}/", f":{b.http_port}/")
                assert url != url_a
                video_url, playlist = await asyncio.to_thread(video_playlist, url)
                assert fragment_numbers(playlist) == numbers
                init, segments = await asyncio.to_thread(fetch_segments, video_url, playlist)
                assert len(segments) == 2
                assert decoded_video_frames(init, segments) == [30, 30]
        await p.end()
        assert "ERROR" not in events(await p.acks_until_end())
    finally:
        await p.close()
        payload.close()
    # The live playlist on B has moved on to the fragments stored since, and A (where the
    # session was minted) serves the same one: a player may be sent to either.
    playlist = (await asyncio.to_thread(get, video_url)).text
    assert fragment_numbers(playlist) == numbers
    url_on_a = video_url.replace(f":{b.http_port}/", f":{a.http_port}/")
    assert (await asyncio.to_thread(get, url_on_a)).text == playlist
    init, segments = await asyncio.to_thread(fetch_segments, video_url, playlist)
    assert decoded_video_frames(init, segments) == [30] * 4
    # Both nodes list the same fragments, whose media is in the bucket.
    on_a, on_b = list_fragments(a, "tail"), list_fragments(b, "tail")
    assert on_a == on_b and [n for n, _, _ in on_a] == numbers
    page = a.client("kinesis-video-archived-media").list_fragments(StreamName="tail", MaxResults=2)
    more = b.client("kinesis-video-archived-media").list_fragments(
        StreamName="tail", NextToken=page["NextToken"]
    )
    paged = page["Fragments"] + more["Fragments"]
    assert sorted(f["FragmentNumber"] for f in paged) == numbers
    assert stored_objects(a, numbers)


def video_playlist(master_url: str) -> tuple[str, str]:
    """(URL, text) of the video media playlist of an HLS session."""
    master = get(master_url)
    assert master.status_code == 200, master.text
    for uri in uris(master.text):
        if "TrackNumber=2" in uri:
            continue
        url = resolve(master_url, uri)
        media = get(url)
        assert media.status_code == 200, media.text
        assert "#EXT-X-ENDLIST" not in media.text  # LIVE
        return url, media.text
    raise AssertionError(f"no video playlist in {master.text!r}")


def fragment_numbers(playlist: str) -> list[str]:
    return re.findall(r"FragmentNumber=(\d+)", playlist)


def fetch_segments(media_url: str, playlist: str) -> tuple[bytes, list[bytes]]:
    """The init segment and the media segments of a media playlist, fetched from its host."""
    bodies = []
    for uri in uris(playlist):
        url = resolve(media_url, uri)
        assert url.startswith(media_url.split("/hls/")[0])
        r = get(url)
        assert r.status_code == 200, (uri, r.text)
        bodies.append(r.content)
    return bodies[0], bodies[1:]


async def test_a_second_producer_on_another_node_is_refused(nodes: list[Node]) -> None:
    a, b, _ = nodes
    b.client("kinesisvideo").create_stream(StreamName="one-writer", DataRetentionInHours=1)
    data = producer_mkv()
    first = Producer(a, stream_name="one-writer")
    second = Producer(b, stream_name="one-writer")
    third = Producer(b, stream_name="one-writer")
    try:
        await first.connect()
        assert await first.read_head() == 200
        await first.send(header_part(data) + clusters(data)[0])
        numbers = [await persisted(first)]
        await second.connect()
        assert await second.read_head() == 400
        assert second.response_headers["x-amzn-errortype"] == "ConnectionLimitExceededException"
        assert "message" in {k.lower() for k in await second.read_error()}
        await second.end_and_close()
        for part in clusters(data)[1:]:
            await first.send(part)
        await first.end()
        numbers += [
            str(x["FragmentNumber"])
            for x in await first.acks_until_end()
            if x["EventType"] == "PERSISTED"
        ]
        assert len(numbers) == 3
        await first.close()
        # Its upload over, the stream takes a producer through the other node.
        await third.connect()
        assert await third.read_head() == 200
        await third.send(producer_mkv(start_ms=1_700_000_100_000))
        await third.end()
        numbers += [
            str(x["FragmentNumber"])
            for x in await third.acks_until_end()
            if x["EventType"] == "PERSISTED"
        ]
        assert len(numbers) == 6
    finally:
        for p in (first, second, third):
            await p.close()
    # The stream's fragment numbers keep increasing whichever node wrote them.
    assert [int(n) for n in numbers] == sorted(int(n) for n in numbers)
    assert [n for n, _, _ in list_fragments(a, "one-writer")] == numbers
