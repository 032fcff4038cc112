"""A master that calls JoinStorageSession many times at once (a camera that retries) gets exactly
one SDP_OFFER: the live session's. An answer to the offer of a session that was replaced is
refused without harming the live session."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from ..mediagen import h264_clip
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


def _storage_client(srv: Any, ch: str) -> Any:
    kv = srv.client("kinesisvideo")
    eps = kv.get_signaling_channel_endpoint(
        ChannelARN=ch,
        SingleMasterChannelEndpointConfiguration={"Protocols": ["WEBRTC"], "Role": "MASTER"},
    )["ResourceEndpointList"]
    return srv.client("kinesis-video-webrtc-storage", endpoint=eps[0]["ResourceEndpoint"])


async def _messages(client: Client, wait: float) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    while True:
        try:
            out.append(await client.recv(timeout=wait))
        except TimeoutError:
            return out


async def test_ten_joins_at_once_send_one_offer(make_server: Any) -> None:
    srv = make_server(storage_fragment_duration=1.0)
    ch, _ = storage_channel(srv, "burst")
    storage = _storage_client(srv, ch)
    storage.join_storage_session(channelArn=ch)  # warm the client's connection pool
    client = await Client.connect(srv, ch)
    first = await _messages(client, 1.5)
    assert [m["messageType"] for m in first].count("SDP_OFFER") == 1
    await asyncio.gather(
        *(asyncio.to_thread(storage.join_storage_session, channelArn=ch) for _ in range(10))
    )
    received = await _messages(client, 2.0)
    offers = [m for m in received if m["messageType"] == "SDP_OFFER"]
    assert len(offers) == 1, [m["messageType"] for m in received]
    live = sessions(srv).masters[ch]
    # That one offer is the live session's: answering it connects and records.
    cam = Camera(srv, ch, h264_clip(seconds=1.0), None)
    reply = await cam.master.handle("SDP_OFFER", offers[0]["messagePayload"])
    assert reply is not None
    for m in received:
        if m["messageType"] == "ICE_CANDIDATE":
            await cam.master.handle("ICE_CANDIDATE", m["messagePayload"])
    await client.send(reply[0], reply[1], correlation_id="a1")
    await cam.master.wait_sent()
    await asyncio.sleep(0.3)
    status = [m for m in await _messages(client, 0.3) if m["messageType"] == "STATUS_RESPONSE"]
    assert status == []
    assert sessions(srv).masters[ch] is live and live.state.value == "connected"
    await client.close()
    await cam.close()
    await wait_for(lambda: not sessions(srv).masters, 15)
    video, _, _ = stored_video(srv, fragments_of(srv, "burst-stream"))
    assert video == sent_video(cam)
    ended = sessions(srv).ended
    # Every session created (joins that came together coalesce) ended; none was left running.
    assert sorted(e["session"] for e in ended) == list(range(1, live.number + 1))


async def test_answer_to_a_replaced_sessions_offer_is_refused(make_server: Any) -> None:
    srv = make_server(storage_fragment_duration=1.0)
    ch, _ = storage_channel(srv, "stale")
    storage = _storage_client(srv, ch)
    client = await Client.connect(srv, ch)
    offers: list[str] = []
    for _ in range(2):
        await asyncio.to_thread(storage.join_storage_session, channelArn=ch)
        async with asyncio.timeout(10):
            while True:
                msg = await client.recv(timeout=10)
                if msg["messageType"] == "SDP_OFFER":
                    offers.append(msg["messagePayload"])
                    break
    live = sessions(srv).masters[ch]
    # The camera answers the first (replaced) session's offer: refused, the live one unharmed.
    stale = FakeMaster(h264_clip(seconds=0.5), None)
    sdp = await stale.answer(unb64json(offers[0])["sdp"])
    await stale.close()
    await client.send("SDP_ANSWER", b64json({"type": "answer", "sdp": sdp}), correlation_id="old")
    status = None
    async with asyncio.timeout(10):
        while status is None:
            msg = await client.recv(timeout=10)
            if msg["messageType"] == "STATUS_RESPONSE":
                status = msg["statusResponse"]
    assert status["correlationId"] == "old"
    assert status["errorType"] == "InvalidArgumentException"
    assert "replaced" in status.get("description", "")
    assert sessions(srv).masters.get(ch) is live and live.state.value == "offered"
    # Then it answers the live offer: the session connects and records.
    cam = Camera(srv, ch, h264_clip(seconds=1.0), None)
    reply = await cam.master.handle("SDP_OFFER", offers[1])
    assert reply is not None
    await client.send(reply[0], reply[1], correlation_id="new")
    await cam.master.wait_sent()
    await asyncio.sleep(0.3)
    assert sessions(srv).masters.get(ch) is live and live.state.value == "connected"
    await client.close()
    await cam.close()
    await wait_for(lambda: not sessions(srv).masters, 15)
    video, _, _ = stored_video(srv, fragments_of(srv, "stale-stream"))
    assert video == sent_video(cam)


async def test_in_a_worker_process_too(make_server: Any) -> None:
    """The same with storage sessions in a worker process: one offer for ten joins, an answer
    to a replaced session's offer refused, the live one records."""
    srv = make_server(webrtc_workers=1, storage_fragment_duration=1.0)
    ch, _ = storage_channel(srv, "wburst")
    storage = _storage_client(srv, ch)
    client = await Client.connect(srv, ch)
    await asyncio.to_thread(storage.join_storage_session, channelArn=ch)
    old = next(m for m in await _messages(client, 1.5) if m["messageType"] == "SDP_OFFER")
    await asyncio.gather(
        *(asyncio.to_thread(storage.join_storage_session, channelArn=ch) for _ in range(10))
    )
    received = await _messages(client, 2.0)
    offers = [m for m in received if m["messageType"] == "SDP_OFFER"]
    assert len(offers) == 1, [m["messageType"] for m in received]
    stale = FakeMaster(h264_clip(seconds=0.5), None)
    sdp = await stale.answer(unb64json(old["messagePayload"])["sdp"])
    await stale.close()
    await client.send("SDP_ANSWER", b64json({"type": "answer", "sdp": sdp}), correlation_id="old")
    (status,) = [m for m in await _messages(client, 1.0) if m["messageType"] == "STATUS_RESPONSE"]
    assert status["statusResponse"]["errorType"] == "InvalidArgumentException"
    cam = Camera(srv, ch, h264_clip(seconds=1.0), None)
    reply = await cam.master.handle("SDP_OFFER", offers[0]["messagePayload"])
    assert reply is not None
    await client.send(reply[0], reply[1], correlation_id="new")
    await cam.master.wait_sent()
    await asyncio.sleep(0.3)
    assert [m for m in await _messages(client, 0.3) if m["messageType"] == "STATUS_RESPONSE"] == []
    await client.close()
    await cam.close()
    await wait_for(lambda: not sessions(srv).masters, 15)
    video, _, _ = stored_video(srv, fragments_of(srv, "wburst-stream"))
    assert video == sent_video(cam)
