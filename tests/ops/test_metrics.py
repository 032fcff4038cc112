"""GET /metrics: scraped and parsed with prometheus_client's parser; counters move with real
traffic (API calls, a WebRTC ingest in-process and in a storage worker, PutMedia, GetImages)."""

from __future__ import annotations

import asyncio
import datetime
import ssl
from typing import Any

import aiohttp
import pytest
from botocore.exceptions import ClientError
from prometheus_client.parser import text_string_to_metric_families

from ..dataplane.mediafiles import producer_mkv
from ..dataplane.producer import put_media
from ..mediagen import h264_clip, opus_packets
from ..support import ServerThread
from ..webrtc.harness import Camera, storage_channel, wait_for

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


async def scrape_raw(
    srv: ServerThread, *, tls: bool = False, token: str | None = None
) -> tuple[int, str, str]:
    base = srv.endpoint if tls else srv.http_endpoint
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    ctx = ssl.create_default_context(cafile=srv.ca)
    async with (
        aiohttp.ClientSession() as session,
        session.get(base + "/metrics", headers=headers, ssl=ctx if tls else None) as resp,
    ):
        return resp.status, resp.headers.get("Content-Type", ""), await resp.text()


def parse(text: str) -> Samples:
    out: Samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            out[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return out


async def scrape(srv: ServerThread) -> Samples:
    status, ctype, text = await scrape_raw(srv)
    assert status == 200 and ctype.startswith("text/plain"), (status, ctype)
    return parse(text)


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def total(samples: Samples, name: str) -> float:
    return sum(v for (n, _), v in samples.items() if n == name)


async def test_api_counters_and_process_metrics(server: ServerThread) -> None:
    before = await scrape(server)
    kv = server.client("kinesisvideo")
    await asyncio.to_thread(kv.create_signaling_channel, ChannelName="m1")
    with pytest.raises(ClientError):
        await asyncio.to_thread(kv.describe_stream, StreamName="nope")
    after = await scrape(server)

    name = "openkvs_api_requests_total"
    created = value(after, name, operation="CreateSignalingChannel", status="200")
    assert created - value(before, name, operation="CreateSignalingChannel", status="200") == 1
    assert value(after, name, operation="DescribeStream", status="404") == 1
    hist = "openkvs_api_request_duration_seconds_count"
    assert value(after, hist, operation="CreateSignalingChannel") >= 1
    assert (
        value(
            after,
            "openkvs_api_request_duration_seconds_bucket",
            operation="DescribeStream",
            le="+Inf",
        )
        == 1
    )
    assert value(after, "process_resident_memory_bytes") > 10_000_000
    assert value(after, "process_cpu_seconds_total") > 0
    # Probes and scrapes are not API requests; no channel or stream name is a label.
    assert not any(dict(labels).get("operation") == "unknown" for _, labels in after)
    assert "m1" not in {v for _, labels in after for _, v in labels}
    assert value(after, "openkvs_pool_queue_depth", pool="playback") == 0


async def test_metrics_port_and_token(make_server: Any) -> None:
    srv = make_server()
    assert (await scrape_raw(srv, tls=True))[0] == 404  # plain port only by default
    srv = make_server(metrics_listen="tls", metrics_token="s3cret-token")
    assert (await scrape_raw(srv, tls=False))[0] == 404
    assert (await scrape_raw(srv, tls=True))[0] == 401
    assert (await scrape_raw(srv, tls=True, token="wrong"))[0] == 401
    status, _, text = await scrape_raw(srv, tls=True, token="s3cret-token")
    assert status == 200 and "openkvs_api_requests_total" in text
    srv = make_server(metrics_listen="off")
    assert (await scrape_raw(srv))[0] == 404


@pytest.mark.slow
@pytest.mark.parametrize("workers", [0, 1])
async def test_storage_session_counters_move_with_an_ingest(make_server: Any, workers: int) -> None:
    srv: ServerThread = make_server(webrtc_workers=workers, storage_fragment_duration=1.0)
    ch, _ = storage_channel(srv, "metered")
    cam = Camera(srv, ch, h264_clip(seconds=3.0, gop=30), opus_packets(3.0))
    await cam.connect()
    try:
        samples = await scrape(srv)
        assert value(samples, "openkvs_signaling_connections", role="master") == 1
        await asyncio.to_thread(cam.join)
        track = cam.master.video_track
        assert track is not None
        await wait_for(lambda: len(track.sent) > 60, 30)
        live = await scrape(srv)
        assert value(live, "openkvs_storage_sessions_active", role="master") == 1
        assert value(live, "openkvs_frames_received_total") > 0
        assert value(live, "openkvs_ingested_bytes_total", source="webrtc") > 0
        await wait_for(lambda: track.done, 30)
        await asyncio.sleep(0.5)
    finally:
        await cam.close()

    async def ended() -> Samples:
        while True:
            s = await scrape(srv)
            if value(
                s, "openkvs_storage_sessions_ended_total", role="master", reason="signaling_closed"
            ):
                return s
            await asyncio.sleep(0.1)

    done = await asyncio.wait_for(ended(), 20)
    assert value(done, "openkvs_storage_sessions_active", role="master") == 0
    assert value(done, "openkvs_signaling_connections", role="master") == 0
    frames = value(done, "openkvs_frames_received_total")
    assert frames >= value(live, "openkvs_frames_received_total")  # never backwards
    assert frames == len(track.sent)  # every frame sent was received
    assert value(done, "openkvs_frames_lost_total") == 0
    fragments = value(done, "openkvs_fragments_persisted_total")
    assert fragments >= 3
    assert value(done, "openkvs_fragment_durability_seconds_count") == fragments
    assert (
        value(done, "openkvs_ingested_bytes_total", source="webrtc")
        >= sum(len(d) for d, _ in track.sent) * 0.9
    )

    # GetImages over the recording: images decoded, playback counted by kind.
    archived = srv.client("kinesis-video-archived-media")
    listed = await asyncio.to_thread(archived.list_fragments, StreamName="metered-stream")
    starts = sorted(f["ServerTimestamp"] for f in listed["Fragments"])
    result = await asyncio.to_thread(
        archived.get_images,
        StreamName="metered-stream",
        ImageSelectorType="SERVER_TIMESTAMP",
        StartTimestamp=starts[0],
        EndTimestamp=starts[-1] + datetime.timedelta(milliseconds=500),
        SamplingInterval=500,
        Format="JPEG",
    )
    got = sum(1 for image in result["Images"] if "ImageContent" in image)
    assert got > 0, result["Images"]
    after = await scrape(srv)
    assert value(after, "openkvs_getimages_decoded_images_total") == got
    assert value(after, "openkvs_playback_requests_total", kind="images") == 1


async def test_putmedia_bytes_and_channel_labels(make_server: Any) -> None:
    srv: ServerThread = make_server(metrics_channel_labels=True)
    kv = srv.client("kinesisvideo")
    await asyncio.to_thread(kv.create_stream, StreamName="up", DataRetentionInHours=1)
    data = producer_mkv(2.0)
    status, acks = await put_media(srv, data, stream_name="up")
    assert status == 200 and any(a.get("EventType") == "PERSISTED" for a in acks)
    samples = await scrape(srv)
    assert value(samples, "openkvs_ingested_bytes_total", source="putmedia", channel="") == len(
        data
    )
    assert value(samples, "openkvs_api_requests_total", operation="PutMedia", status="200") == 1
    assert value(samples, "openkvs_fragments_persisted_total") >= 2
