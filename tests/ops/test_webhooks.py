"""Webhooks against a real receiver (aiohttp on loopback): order, signatures, the event filter,
retries with backoff, and the bounded queue (a stalled receiver never slows the API)."""

from __future__ import annotations

import asyncio
import datetime
import time
from typing import Any

import pytest

from openkvs.ops.events import sign, verify

from ..dataplane.mediafiles import producer_mkv
from ..dataplane.producer import put_media
from ..mediagen import h264_clip, opus_packets
from ..support import ServerThread
from ..webrtc.harness import Camera, storage_channel, wait_for
from .receiver import SECRET, Receiver
from .test_metrics import scrape, value


def test_signature_is_hmac_sha256_of_the_raw_body() -> None:
    body = b'{"type":"stream.created"}'
    # Reference value: printf '%s' "$body" | openssl dgst -sha256 -hmac webhook-test-secret
    assert sign(SECRET, body) == (
        "sha256=" + __import__("hmac").new(SECRET.encode(), body, "sha256").hexdigest()
    )
    assert verify(SECRET, body, sign(SECRET, body))
    assert not verify(SECRET, body + b" ", sign(SECRET, body))
    assert not verify(SECRET, body, None)


@pytest.mark.slow
async def test_lifecycle_events_in_order_and_signed(make_server: Any, receiver: Receiver) -> None:
    srv: ServerThread = make_server(webhook_urls=(receiver.url,), webhook_secret=SECRET)
    ch, st = storage_channel(srv, "hooked")
    cam = Camera(srv, ch, h264_clip(seconds=1.0, gop=30), opus_packets(1.0))
    await cam.connect()
    await asyncio.to_thread(cam.join)
    track = cam.master.video_track
    assert track is not None
    await wait_for(lambda: track.done, 30)
    # The last frames may still be on their way: the camera hangs up once the server has them.
    async with asyncio.timeout(20):
        while value(await scrape(srv), "openkvs_frames_received_total") < len(track.sent):
            await asyncio.sleep(0.1)
    await cam.close()
    await wait_for(lambda: len(receiver.requests) >= 4, 20)
    kv = srv.client("kinesisvideo")
    await asyncio.to_thread(kv.delete_signaling_channel, ChannelARN=ch)
    await asyncio.to_thread(kv.delete_stream, StreamARN=st)
    await wait_for(lambda: len(receiver.requests) >= 6, 20)
    await asyncio.sleep(0.3)

    events = receiver.events()
    assert [e["type"] for e in events] == [
        "channel.created",
        "stream.created",
        "storage_session.started",
        "storage_session.ended",
        "channel.deleted",
        "stream.deleted",
    ]  # fragment.persisted is not sent unless asked for
    assert len({e["id"] for e in events}) == 6
    for e in events:
        when = datetime.datetime.fromisoformat(e["time"])
        assert abs((datetime.datetime.now(datetime.UTC) - when).total_seconds()) < 60
    assert events[0]["ChannelARN"] == ch and events[0]["ChannelName"] == "hooked"
    assert events[1]["StreamARN"] == st
    assert events[2] == {**events[2], "ChannelARN": ch, "StreamARN": st, "role": "master"}
    ended = events[3]
    assert ended["ChannelARN"] == ch and ended["StreamARN"] == st
    assert ended["role"] == "master" and ended["reasonCode"] == "signaling_closed"
    assert ended["fragments"] >= 1 and ended["videoFrames"] == len(track.sent)
    assert "verdict" not in ended  # it recorded and ended normally
    assert events[4]["ChannelARN"] == ch and events[5]["StreamARN"] == st
    samples = await scrape(srv)
    assert value(samples, "openkvs_webhook_events_delivered_total") == 6


async def test_fragment_events_are_opt_in(make_server: Any, receiver: Receiver) -> None:
    srv: ServerThread = make_server(
        webhook_urls=(receiver.url,), webhook_secret=SECRET, webhook_events=("fragment.persisted",)
    )
    kv = srv.client("kinesisvideo")
    arn = (await asyncio.to_thread(kv.create_stream, StreamName="up", DataRetentionInHours=1))[
        "StreamARN"
    ]
    _, acks = await put_media(srv, producer_mkv(3.0), stream_name="up")
    persisted = [a["FragmentNumber"] for a in acks if a.get("EventType") == "PERSISTED"]
    await wait_for(lambda: len(receiver.requests) >= len(persisted), 10)
    events = receiver.events()
    assert [e["type"] for e in events] == ["fragment.persisted"] * len(
        persisted
    )  # no stream.created
    assert [e["FragmentNumber"] for e in events] == persisted
    assert all(e["StreamARN"] == arn and e["SizeBytes"] > 0 for e in events)


async def test_retries_with_exponential_backoff(make_server: Any, receiver: Receiver) -> None:
    srv: ServerThread = make_server(webhook_urls=(receiver.url,), webhook_secret=SECRET)
    srv.services.events.backoff_first = 0.1
    receiver.fail_first = 3
    kv = srv.client("kinesisvideo")
    await asyncio.to_thread(kv.create_signaling_channel, ChannelName="retry1")
    await asyncio.to_thread(kv.create_signaling_channel, ChannelName="retry2")
    await wait_for(lambda: len(receiver.requests) >= 5, 10)
    await asyncio.sleep(0.2)
    bodies = [body for body, _, _ in receiver.requests]
    assert len(bodies) == 5
    assert bodies[0] == bodies[1] == bodies[2] == bodies[3]  # the same event, until accepted
    events = receiver.events()
    assert [e["ChannelName"] for e in events] == ["retry1"] * 4 + ["retry2"]  # order kept
    t = [at for _, _, at in receiver.requests]
    gaps = [t[1] - t[0], t[2] - t[1], t[3] - t[2]]
    assert gaps[0] >= 0.09 and gaps[1] >= 0.19 and gaps[2] >= 0.39, gaps
    samples = await scrape(srv)
    assert value(samples, "openkvs_webhook_events_delivered_total") == 2


async def test_a_stalled_receiver_is_bounded_and_never_slows_the_api(
    make_server: Any, receiver: Receiver
) -> None:
    srv: ServerThread = make_server(
        webhook_urls=(receiver.url,), webhook_secret=SECRET, webhook_queue=3
    )
    receiver.release.clear()  # the receiver takes requests but never answers (for now)
    kv = srv.client("kinesisvideo")
    started = time.monotonic()
    for i in range(10):
        await asyncio.to_thread(kv.create_signaling_channel, ChannelName=f"stall{i}")
    assert time.monotonic() - started < 5  # the API did not wait for the receiver
    samples = await scrape(srv)
    # One in flight, three queued, six dropped.
    assert value(samples, "openkvs_webhook_events_dropped_total", cause="queue_full") == 6
    receiver.release.set()
    await wait_for(lambda: len(receiver.requests) >= 4, 10)
    await asyncio.sleep(0.3)
    assert [e["ChannelName"] for e in receiver.events()] == [f"stall{i}" for i in range(4)]


async def test_spent_attempts_are_dropped_and_counted(make_server: Any, receiver: Receiver) -> None:
    srv: ServerThread = make_server(
        webhook_urls=(receiver.url,), webhook_secret=SECRET, webhook_max_attempts=2
    )
    srv.services.events.backoff_first = 0.05
    receiver.always_fail = True
    kv = srv.client("kinesisvideo")
    await asyncio.to_thread(kv.create_signaling_channel, ChannelName="doomed")

    async def dropped() -> bool:
        return value(await scrape(srv), "openkvs_webhook_events_dropped_total", cause="failed") == 1

    async with asyncio.timeout(10):
        while not await dropped():
            await asyncio.sleep(0.05)
    assert len(receiver.requests) == 2


def test_settings_from_environment_flags_and_errors(tmp_path: Any) -> None:
    from openkvs.cli import SERVE_FLAGS, _settings, build_parser
    from openkvs.config import ConfigError, Settings

    env = {
        "OPENKVS_WEBHOOK_URLS": "http://127.0.0.1:9000/a, https://hooks.example/b",
        "OPENKVS_WEBHOOK_SECRET": "s",
        "OPENKVS_WEBHOOK_EVENTS": "*",
        "OPENKVS_METRICS_LISTEN": "both",
    }
    s = Settings.load(env, None, {"data_dir": tmp_path})
    assert s.webhook_urls == ("http://127.0.0.1:9000/a", "https://hooks.example/b")
    assert s.webhook_events == ("*",) and s.metrics_listen == "both"
    args = build_parser().parse_args(
        [
            "serve",
            "--webhook-urls",
            "http://h/x",
            "--webhook-events",
            "fragment.persisted",
            "--metrics-channel-labels",
            "--data-dir",
            str(tmp_path),
        ]
    )
    s = _settings(args, SERVE_FLAGS)
    assert s.webhook_urls == ("http://h/x",) and s.webhook_events == ("fragment.persisted",)
    assert s.metrics_channel_labels
    for bad in (
        {"webhook_urls": "ftp://h/x"},
        {"webhook_events": "stream.renamed"},
        {"webhook_queue": 0},
        {"metrics_listen": "udp"},
    ):
        with pytest.raises(ConfigError):
            Settings.load({}, None, {"data_dir": tmp_path, **bad})


async def test_producer_notifications_become_webhook_events(
    make_server: Any, receiver: Receiver
) -> None:
    from ..dataplane.mediafiles import END_OF_FRAGMENT, sdk_tags
    from ..dataplane.producer import SdkProducer
    from ..dataplane.test_producer_sdk import sdk_stream

    srv: ServerThread = make_server(
        webhook_urls=(receiver.url,),
        webhook_secret=SECRET,
        webhook_events=("fragment.notification",),
    )
    kv = srv.client("kinesisvideo")
    arns: dict[str, str] = {}
    persisted: dict[str, list[str]] = {}
    for name, enabled in (("notified", True), ("quiet", False)):
        arn = (await asyncio.to_thread(kv.create_stream, StreamName=name, DataRetentionInHours=1))[
            "StreamARN"
        ]
        arns[name] = arn
        if enabled:
            await asyncio.to_thread(
                kv.update_notification_configuration,
                StreamARN=arn,
                NotificationConfiguration={
                    "Status": "ENABLED",
                    "DestinationConfig": {"Uri": "https://example.invalid/hook"},
                },
            )
        header, cls = sdk_stream()
        notify = sdk_tags("AWS_KINESISVIDEO_NOTIFICATION", siblings=[("reason", "motion")])
        p = SdkProducer(srv, stream_name=name)
        await p.connect()
        assert await p.read_head() == 200
        await p.send(header + cls[0] + notify + cls[1] + END_OF_FRAGMENT, piece=1000)
        await p.end()
        acks = await p.acks_until_end()
        await p.close()
        persisted[name] = [a["FragmentNumber"] for a in acks if a["EventType"] == "PERSISTED"]
        assert len(persisted[name]) == 2
    await wait_for(lambda: len(receiver.requests) >= 1, 10)
    await asyncio.sleep(0.5)  # a stream without an enabled configuration sends nothing
    events = receiver.events()
    assert [e["type"] for e in events] == ["fragment.notification"]
    event = events[0]
    assert event["StreamARN"] == arns["notified"]
    assert event["DestinationUri"] == "https://example.invalid/hook"
    assert event["metadata"] == {"reason": "motion"}
    # The event belongs to the fragment after the tag: the second one.
    assert event["FragmentNumber"] == persisted["notified"][1]
