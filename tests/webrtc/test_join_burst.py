"""A master that calls JoinStorageSession many times at once (a camera that retries) gets one
SDP_OFFER per session at most, in order, the live session's last; joins that come together
coalesce into far fewer sessions (one, on a quiet machine). An answer to the offer of a session that was replaced is
refused without harming the live session."""

from __future__ import annotations

import asyncio
from typing import Any

import aiohttp
import pytest

from ..faults.common import join_at_once, join_together, signed_request
from ..mediagen import h264_clip
from ..signaling.kvs import Client, b64json, unb64json
from .fake_master import FakeMaster
from .harness import (
    Camera,
    fragments_of,
    offer_session,
    offer_tag,
    sent_video,
    sessions,
    storage_channel,
    stored_video,
    wait_for,
)

pytestmark = pytest.mark.slow


async def _messages(client: Client, wait: float) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    while True:
        try:
            out.append(await client.recv(timeout=wait))
        except TimeoutError:
            return out


async def _next_offer(client: Client) -> str:
    async with asyncio.timeout(15):
        while True:
            msg = await client.recv(timeout=15)
            if msg["messageType"] == "SDP_OFFER":
                payload: str = msg["messagePayload"]
                return payload


async def _statuses(client: Client, wait: float) -> list[dict[str, Any]]:
    return [
        m["statusResponse"]
        for m in await _messages(client, wait)
        if m["messageType"] == "STATUS_RESPONSE"
    ]


async def _answer_stale(client: Client, offer: str) -> dict[str, Any]:
    """Answer ``offer`` (of a replaced session) and return the STATUS_RESPONSE it gets."""
    stale = FakeMaster(h264_clip(seconds=0.5), None)
    try:
        sdp = await stale.answer(unb64json(offer)["sdp"])
    finally:
        await stale.close()
    await client.send("SDP_ANSWER", b64json({"type": "answer", "sdp": sdp}), correlation_id="old")
    (status,) = await _statuses(client, 1.5)
    return status


def check_offers(received: list[dict[str, Any]], live: int | None, first: int) -> None:
    """Joins that come together coalesce: the sessions they create (numbered from ``first``,
    the session after the one that offered before)
    are far fewer than the joins, and each offers at most once, in order, the live session's
    last. One offer is what a quiet machine gives; a join taken after an offer went out (the
    burst spread over a loaded machine) replaces that session, which then offers anew."""
    numbers = [
        offer_session(m["messagePayload"]) for m in received if m["messageType"] == "SDP_OFFER"
    ]
    assert numbers and numbers == sorted(set(numbers)), numbers
    assert numbers[0] >= first, numbers
    if live is not None:
        assert numbers[-1] == live, (numbers, live)
    assert numbers[-1] - first < 5, numbers  # ten joins, at most five sessions


async def _record_live(srv: Any, ch: str, client: Client, received: list[dict[str, Any]]) -> Camera:
    """Answer the last offer in ``received`` (with its candidates, which follow it) and stream
    a short clip."""
    last = max(i for i, m in enumerate(received) if m["messageType"] == "SDP_OFFER")
    cam = Camera(srv, ch, h264_clip(seconds=1.0), None)
    reply = await cam.master.handle("SDP_OFFER", received[last]["messagePayload"])
    assert reply is not None
    for m in received[last + 1 :]:
        if m["messageType"] == "ICE_CANDIDATE":
            await cam.master.handle("ICE_CANDIDATE", m["messagePayload"])
    await client.send(reply[0], reply[1], correlation_id="new")
    await cam.master.wait_sent()
    await asyncio.sleep(0.3)
    assert await _statuses(client, 0.3) == []
    return cam


async def test_ten_joins_at_once_send_one_offer(make_server: Any) -> None:
    srv = make_server(storage_fragment_duration=1.0)
    ch, _ = storage_channel(srv, "burst")
    client = await Client.connect(srv, ch)
    cam: Camera | None = None
    try:
        assert await join_at_once(srv, [ch]) == [200]
        old = await _next_offer(client)
        await asyncio.sleep(0.5)
        assert await join_together(srv, [ch] * 10) == [200] * 10
        received = await _messages(client, 2.0)
        live = sessions(srv).masters[ch]
        check_offers(received, live.number, first=offer_session(old) + 1)
        # The first session's offer went out before it was replaced: answering it is refused
        # and the live session is unharmed.
        status = await _answer_stale(client, old)
        assert status["correlationId"] == "old"
        assert status["errorType"] == "InvalidArgumentException"
        assert "replaced" in status.get("description", "")
        assert sessions(srv).masters.get(ch) is live and live.state.value == "offered"
        # The one offer is the live session's: answering it connects and records.
        cam = await _record_live(srv, ch, client, received)
        assert sessions(srv).masters[ch] is live and live.state.value == "connected"
    finally:
        await client.close()
        if cam is not None:
            await cam.close()
    await wait_for(lambda: not sessions(srv).masters, 15)
    video, _, _ = stored_video(srv, fragments_of(srv, "burst-stream"))
    assert video == sent_video(cam)
    # Every session created (joins that come together coalesce) ended; none was left running.
    ended = sessions(srv).ended
    assert sorted(e["session"] for e in ended) == list(range(1, live.number + 1))


async def test_in_a_worker_process_too(make_server: Any) -> None:
    """The same with storage sessions in a worker process."""
    srv = make_server(webrtc_workers=1, storage_fragment_duration=1.0)
    ch, _ = storage_channel(srv, "wburst")
    client = await Client.connect(srv, ch)
    cam: Camera | None = None
    try:
        assert await join_at_once(srv, [ch]) == [200]
        old = await _next_offer(client)
        await asyncio.sleep(0.5)
        assert await join_together(srv, [ch] * 10) == [200] * 10
        received = await _messages(client, 2.0)
        check_offers(received, None, first=offer_session(old) + 1)
        status = await _answer_stale(client, old)
        assert status["errorType"] == "InvalidArgumentException"
        cam = await _record_live(srv, ch, client, received)
    finally:
        await client.close()
        if cam is not None:
            await cam.close()
    await wait_for(lambda: not sessions(srv).masters, 15)
    video, _, _ = stored_video(srv, fragments_of(srv, "wburst-stream"))
    assert video == sent_video(cam)


async def test_viewer_joining_ten_times_at_once_gets_only_live_offers(make_server: Any) -> None:
    srv = make_server(storage_fragment_duration=1.0)
    ch, _ = storage_channel(srv, "vburst")
    viewer = await Client.connect(srv, ch, "watcher")
    try:
        requests = [
            signed_request(
                srv, "/joinStorageSessionAsViewer", {"channelArn": ch, "clientId": "watcher"}
            )
            for _ in range(10)
        ]
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as http:

            async def one(req: tuple[str, dict[str, str], bytes]) -> int:
                async with http.post(req[0], headers=req[1], data=req[2]) as r:
                    await r.read()
                    return r.status

            assert await asyncio.gather(*(one(r) for r in requests)) == [200] * 10
        received = await _messages(viewer, 2.0)
        live = sessions(srv).viewers[ch]["watcher"]
        assert live.offer_sent and live.state.value == "offered"
        # Joins that arrive before the live session's offer went out merge into it; a join that
        # the server takes after an offer went out replaces that session and offers anew. So:
        # at most one offer per session, in the order of the sessions, and the last one is the
        # live session's (a replaced session never offers after its successor).
        tags = [
            offer_tag(unb64json(m["messagePayload"])["sdp"])
            for m in received
            if m["messageType"] == "SDP_OFFER"
        ]
        assert tags and tags[-1] == live.tag, (tags, live.tag)
        numbers = [int(t[1:], 36) for t in tags]
        assert numbers == sorted(set(numbers)), tags
    finally:
        await viewer.close()
