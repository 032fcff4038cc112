"""Storage-session lifecycle through real signaling: replacement, vanishing masters, several
channels, hostile answers."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from ..mediagen import h264_clip, opus_packets
from ..signaling.kvs import Client, b64json, unb64json
from .fake_master import FakeMaster
from .harness import (
    Camera,
    fragments_of,
    sent_video,
    sessions,
    storage_channel,
    stored_video,
    wait_for,
)

pytestmark = pytest.mark.slow


async def test_latest_master_wins(make_server: Any) -> None:
    srv = make_server(storage_fragment_duration=1.0)
    ch, _ = storage_channel(srv, "swap")
    clip = h264_clip(seconds=3.0)
    first = Camera(srv, ch, clip, opus_packets(3.0))
    await first.connect()
    await asyncio.to_thread(first.join)
    await wait_for(lambda: len(first.master.video_track.sent) > 45, 20)  # type: ignore[union-attr]
    # A second camera takes the channel: its connection replaces the first, its join the session.
    second = Camera(srv, ch, clip, opus_packets(3.0))
    await second.connect()
    await asyncio.to_thread(second.join)
    await second.master.wait_sent()
    await asyncio.sleep(0.5)
    await second.close()
    await first.close()
    await wait_for(lambda: not sessions(srv).masters, 15)
    ended = sessions(srv).ended
    assert [e["session"] for e in ended] == [1, 2]
    assert ended[0]["end_reason"] in (
        "replaced by a newer JoinStorageSession",
        "the master's signaling connection closed",
    )
    frags = fragments_of(srv, "swap-stream")
    video, _, _ = stored_video(srv, frags)
    sent_first = sent_video(first)
    # Everything the first camera got through before the switch is stored, then all of the second.
    assert (
        video[: len(video) - len(sent_video(second))]
        == sent_first[: len(video) - len(sent_video(second))]
    )
    assert video[-len(sent_video(second)) :] == sent_video(second)
    assert len(video) - len(sent_video(second)) >= 45


async def test_master_vanishing_mid_fragment_keeps_it(make_server: Any) -> None:
    srv = make_server(storage_fragment_duration=4.0, storage_media_timeout=1.5)
    ch, _ = storage_channel(srv, "gone")
    cam = Camera(srv, ch, h264_clip(seconds=3.0), None)
    await cam.connect()
    await asyncio.to_thread(cam.join)
    await wait_for(lambda: len(cam.master.video_track.sent) >= 50, 20)  # type: ignore[union-attr]
    # The camera dies: no more media, no goodbye on signaling.
    await cam.master.pc.close()
    await wait_for(lambda: not sessions(srv).masters, 10)
    reason = sessions(srv).ended[-1]["end_reason"]
    assert reason in ("no media for 1.5 s", "peer connection closed", "peer connection failed")
    frags = fragments_of(srv, "gone-stream")
    assert len(frags) == 1  # the partial fragment (target 4 s) was flushed and kept
    video, _, parsed = stored_video(srv, frags)
    assert video == sent_video(cam)[: len(video)] and len(video) >= 50
    assert parsed[0].blocks[0].keyframe
    await cam.close()


async def test_two_channels_record_independently(make_server: Any) -> None:
    srv = make_server(storage_fragment_duration=1.0)
    cams = []
    for name, width in (("left", 320), ("right", 480)):
        ch, _ = storage_channel(srv, name)
        cam = Camera(srv, ch, h264_clip(width=width, height=240, seconds=3.0), opus_packets(3.0))
        await cam.connect()
        cams.append((name, cam))
    await asyncio.gather(*(asyncio.to_thread(c.join) for _, c in cams))
    await asyncio.gather(*(c.master.wait_sent() for _, c in cams))
    await asyncio.sleep(0.5)
    for _, c in cams:
        await c.close()
    await wait_for(lambda: not sessions(srv).masters, 15)
    for name, cam in cams:
        video, audio, parsed = stored_video(srv, fragments_of(srv, f"{name}-stream"))
        assert video == sent_video(cam)
        assert audio > 60
        assert parsed[0].tracks[0].width == (320 if name == "left" else 480)


async def test_video_only_master_still_records(make_server: Any) -> None:
    srv = make_server(storage_fragment_duration=1.0)
    ch, _ = storage_channel(srv, "mute")
    cam = Camera(srv, ch, h264_clip(seconds=2.0), None)
    await cam.connect()
    await asyncio.to_thread(cam.join)
    await cam.master.wait_sent()
    await asyncio.sleep(0.3)
    await cam.close()
    await wait_for(lambda: not sessions(srv).masters, 15)
    video, audio, _ = stored_video(srv, fragments_of(srv, "mute-stream"))
    assert video == sent_video(cam) and audio == 0


async def _offer(srv: Any, ch: str) -> tuple[Client, dict[str, Any]]:
    client = await Client.connect(srv, ch)
    camera = Camera(srv, ch, None)
    await asyncio.to_thread(camera.join)
    while True:
        msg = await client.recv(timeout=10)
        if msg["messageType"] == "SDP_OFFER":
            return client, unb64json(msg["messagePayload"])


@pytest.mark.parametrize("bad", ["garbage", "not-base64", "vp8-only", "wrong-type"])
async def test_hostile_answers_get_status_response(make_server: Any, bad: str) -> None:
    srv = make_server()
    ch, _ = storage_channel(srv, "evil")
    client, offer = await _offer(srv, ch)
    if bad == "garbage":
        payload = b64json({"type": "answer", "sdp": "v=0\r\nthis is not sdp\r\n"})
    elif bad == "not-base64":
        payload = "%%%not base64%%%"
    elif bad == "wrong-type":
        payload = b64json({"type": "offer", "sdp": offer["sdp"]})
    else:
        fake = FakeMaster(h264_clip(seconds=0.5), None)
        answer = await fake.answer(offer["sdp"])
        await fake.close()
        payload = b64json({"type": "answer", "sdp": answer.replace("H264/90000", "VP8/90000")})
    await client.send("SDP_ANSWER", payload, correlation_id="bad-1")
    status = None
    async with asyncio.timeout(10):
        while status is None:
            msg = await client.recv(timeout=10)
            if msg["messageType"] == "STATUS_RESPONSE":
                status = msg["statusResponse"]
    assert status["correlationId"] == "bad-1"
    assert status["errorType"] == "InvalidArgumentException" and status["statusCode"] == "400"
    assert status["success"] is False
    if bad in ("garbage", "vp8-only", "wrong-type"):
        await wait_for(lambda: not sessions(srv).masters, 10)  # ended cleanly, not crashed
    await client.close()
    # The server is unharmed: a real camera records on the same channel right after.
    cam = Camera(srv, ch, h264_clip(seconds=1.0), None)
    await cam.connect()
    await asyncio.to_thread(cam.join)
    await cam.master.wait_sent()
    await asyncio.sleep(0.3)
    await cam.close()
    await wait_for(lambda: not sessions(srv).masters, 15)
    video, _, _ = stored_video(srv, fragments_of(srv, "evil-stream"))
    assert video == sent_video(cam)


async def test_answer_without_session_is_refused(make_server: Any) -> None:
    srv = make_server()
    ch, _ = storage_channel(srv, "nosession")
    client = await Client.connect(srv, ch)
    await client.send("SDP_ANSWER", b64json({"type": "answer", "sdp": "v=0"}), correlation_id="x1")
    msg = await client.recv(timeout=5)
    assert msg["messageType"] == "STATUS_RESPONSE"
    assert "JoinStorageSession" in msg["statusResponse"].get("description", "")
    await client.close()


async def test_offer_waits_for_a_master_that_connects_later(make_server: Any) -> None:
    srv = make_server(storage_fragment_duration=1.0)
    ch, _ = storage_channel(srv, "late")
    cam = Camera(srv, ch, h264_clip(seconds=1.5), None)
    await asyncio.to_thread(cam.join)  # no master connected yet: 200, the offer is buffered
    await asyncio.sleep(1.0)
    await cam.connect()
    await cam.master.wait_sent()
    await asyncio.sleep(0.3)
    assert cam.offers == 1
    await cam.close()
    await wait_for(lambda: not sessions(srv).masters, 15)
    video, _, _ = stored_video(srv, fragments_of(srv, "late-stream"))
    assert video == sent_video(cam)
