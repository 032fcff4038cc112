"""Signaling across two nodes (two apps on their own ports, one Redis bus prefix, one metadata
store), with real WebSocket clients: a master on one node and viewers on the other exchange
offers, answers and candidates; a second master on the other node replaces the first; a message
for an absent viewer waits for it wherever it connects; the viewer cap holds across nodes; the
storage session's traffic and joins reach the node that runs the channel's sessions."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from openkvs.control.sessions import RecordingSessions
from openkvs.errors import InvalidArgumentException
from openkvs.webrtc.manager import StorageSessionManager

from .cluster import Node, make_channel, start_nodes, stop_nodes
from .kvs import Client, b64json, connect_rejected, presigned_url, unb64json
from .test_storage_seam import RecordingEndpoint

OFFER = {"type": "offer", "sdp": "v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\n"}
ANSWER = {"type": "answer", "sdp": "v=0\r\no=- 2 2 IN IP4 127.0.0.1\r\n"}


def cand(n: int) -> dict[str, object]:
    return {
        "candidate": f"candidate:{n} 1 udp 2122260223 127.0.0.1 {5000 + n} typ host",
        "sdpMid": "0",
        "sdpMLineIndex": 0,
    }


@pytest.fixture
async def nodes(tmp_path: Path, redis_prefix: str) -> AsyncIterator[tuple[Node, Node]]:
    a, b = await start_nodes(tmp_path, redis_prefix, signaling_go_away_grace=0.3)
    try:
        yield a, b
    finally:
        await stop_nodes(a, b)


async def test_master_and_viewer_on_different_nodes(nodes: tuple[Node, Node]) -> None:
    a, b = nodes
    channel = await make_channel(a, "p2p")
    master = await Client.connect(a, channel.arn)  # type: ignore[arg-type]
    viewer = await Client.connect(b, channel.arn, "viewer-1")  # type: ignore[arg-type]
    try:
        await viewer.send("SDP_OFFER", OFFER)
        got = await master.recv()
        assert got["messageType"] == "SDP_OFFER" and got["senderClientId"] == "viewer-1"
        assert unb64json(got["messagePayload"]) == OFFER
        await master.send("SDP_ANSWER", ANSWER, recipient="viewer-1")
        got = await viewer.recv()
        assert got["messageType"] == "SDP_ANSWER" and "senderClientId" not in got
        assert unb64json(got["messagePayload"]) == ANSWER
        for n in range(3):
            await viewer.send("ICE_CANDIDATE", cand(n))
            await master.send("ICE_CANDIDATE", cand(10 + n), recipient="viewer-1")
        to_master = [unb64json((await master.recv())["messagePayload"]) for _ in range(3)]
        to_viewer = [unb64json((await viewer.recv())["messagePayload"]) for _ in range(3)]
        assert to_master == [cand(n) for n in range(3)]
        assert to_viewer == [cand(10 + n) for n in range(3)]
    finally:
        await master.close()
        await viewer.close()


async def test_a_second_master_on_another_node_replaces_the_first(
    nodes: tuple[Node, Node],
) -> None:
    a, b = nodes
    channel = await make_channel(a, "masters")
    old = await Client.connect(a, channel.arn)  # type: ignore[arg-type]
    viewer = await Client.connect(a, channel.arn, "v")  # type: ignore[arg-type]
    new = await Client.connect(b, channel.arn)  # type: ignore[arg-type]
    try:
        assert await old.recv() == {"messageType": "GO_AWAY"}
        await old.wait_closed()
        assert old.ws.close_code == 1001
        await viewer.send("SDP_OFFER", OFFER)
        got = await new.recv()
        assert got["messageType"] == "SDP_OFFER" and got["senderClientId"] == "v"
        where = await a.services.hub.connection_id(channel.arn, None)
        assert where is not None and where == await b.services.hub.connection_id(channel.arn, None)
        assert a.services.hub.bus.peers(channel.arn) != [] and len(b.services.hub.bus.peers()) == 1
    finally:
        for c in (old, viewer, new):
            await c.close()


async def test_a_message_for_an_absent_viewer_waits_for_it_on_another_node(
    nodes: tuple[Node, Node],
) -> None:
    a, b = nodes
    channel = await make_channel(a, "later", ttl=10)
    master = await Client.connect(a, channel.arn)  # type: ignore[arg-type]
    try:
        await master.send("SDP_OFFER", OFFER, recipient="late")
        await master.send("ICE_CANDIDATE", cand(1), recipient="late")
        await asyncio.sleep(0.3)
        viewer = await Client.connect(b, channel.arn, "late")  # type: ignore[arg-type]
        try:
            first, second = await viewer.recv(), await viewer.recv()
            assert (first["messageType"], second["messageType"]) == ("SDP_OFFER", "ICE_CANDIDATE")
            assert unb64json(second["messagePayload"]) == cand(1)
            await viewer.expect_nothing(0.3)
        finally:
            await viewer.close()
    finally:
        await master.close()


async def test_the_viewer_cap_holds_across_nodes(tmp_path: Path, redis_prefix: str) -> None:
    a, b = await start_nodes(tmp_path, redis_prefix, signaling_max_viewers=2)
    try:
        channel = await make_channel(a, "capped")
        v1 = await Client.connect(a, channel.arn, "v1")  # type: ignore[arg-type]
        v2 = await Client.connect(b, channel.arn, "v2")  # type: ignore[arg-type]
        refused = await connect_rejected(a, presigned_url(a, channel.arn, "v3"))  # type: ignore[arg-type]
        assert (refused.status, refused.error_type) == (400, "ClientLimitExceededException")
        # The same viewer reconnecting through the other node is not a new viewer.
        again = await Client.connect(a, channel.arn, "v2")  # type: ignore[arg-type]
        assert await v2.recv() == {"messageType": "GO_AWAY"}
        for c in (v1, v2, again):
            await c.close()
    finally:
        await stop_nodes(a, b)


async def test_storage_traffic_reaches_the_node_running_the_session(
    nodes: tuple[Node, Node],
) -> None:
    a, b = nodes
    channel = await make_channel(a, "stored", storage=True)
    ep = RecordingEndpoint()
    a.services.hub.set_storage_endpoint(ep)
    b.services.hub.set_storage_endpoint(None)  # B runs no sessions
    await a.services.cluster.sessions.claim(channel.arn)
    master = await Client.connect(b, channel.arn)  # type: ignore[arg-type]
    try:
        await master.send("SDP_ANSWER", ANSWER)
        assert await ep.next() == (
            "message",
            channel.arn,
            None,
            "SDP_ANSWER",
            b64json(ANSWER),
        )
        # An error on the session's node comes back as this connection's STATUS_RESPONSE.
        ep.fail_with = InvalidArgumentException("not now")
        await master.send("ICE_CANDIDATE", cand(1), correlation_id="c1")
        assert (await ep.next())[3] == "ICE_CANDIDATE"
        status = await master.recv()
        assert status["messageType"] == "STATUS_RESPONSE"
        assert status["statusResponse"]["errorType"] == "InvalidArgumentException"
        assert status["statusResponse"]["description"] == "not now"
        assert status["statusResponse"]["correlationId"] == "c1"
    finally:
        await master.close()
    assert await ep.next() == ("disconnect", channel.arn, None)


async def test_joins_run_where_the_master_is_connected(nodes: tuple[Node, Node]) -> None:
    a, b = nodes
    channel = await make_channel(a, "joins", storage=True)
    master = await Client.connect(a, channel.arn)  # type: ignore[arg-type]
    try:
        await b.join(channel.arn)
        await b.join(channel.arn, "viewer-1")
        recorded_a, recorded_b = a.services.sessions, b.services.sessions
        assert isinstance(recorded_a, RecordingSessions)
        assert isinstance(recorded_b, RecordingSessions)
        assert [j.client_id for j in recorded_a.joins] == [None, "viewer-1"]
        assert recorded_b.joins == []
        assert (
            await b.services.cluster.sessions.owner(channel.arn) == a.services.cluster.node.node_id
        )
        assert a.services.hub.bus.node_id == a.services.cluster.node.node_id  # one id per node
    finally:
        await master.close()


async def test_one_offer_when_the_join_comes_through_another_node(
    tmp_path: Path, redis_prefix: str
) -> None:
    a, b = await start_nodes(tmp_path, redis_prefix, media=True)
    try:
        channel = await make_channel(a, "offer", storage=True)
        master = await Client.connect(a, channel.arn)  # type: ignore[arg-type]
        try:
            await b.join(channel.arn)
            got = await master.recv(timeout=20)
            assert got["messageType"] == "SDP_OFFER" and "senderClientId" not in got
            assert unb64json(got["messagePayload"])["type"] == "offer"
            offers = 1
            try:
                while True:
                    offers += (await master.recv(timeout=1.5))["messageType"] == "SDP_OFFER"
            except TimeoutError:
                pass
            assert offers == 1
            sessions_a, sessions_b = a.services.sessions, b.services.sessions
            assert isinstance(sessions_a, StorageSessionManager)
            assert isinstance(sessions_b, StorageSessionManager)
            assert channel.arn in sessions_a.masters and not sessions_b.masters
        finally:
            await master.close()
    finally:
        await stop_nodes(a, b)


async def test_alexa_offer_through_another_node(nodes: tuple[Node, Node]) -> None:
    a, b = nodes
    channel = await make_channel(a, "alexa")
    master = await Client.connect(a, channel.arn)  # type: ignore[arg-type]
    sig = b.client("kinesis-video-signaling")
    try:
        call = asyncio.to_thread(
            sig.send_alexa_offer_to_master,
            ChannelARN=channel.arn,
            SenderClientId="alexa-1",
            MessagePayload=b64json(OFFER),
        )

        async def answer() -> None:
            event = await master.recv(timeout=10)
            assert event["senderClientId"] == "alexa-1" and event["messageType"] == "SDP_OFFER"
            await master.send("ICE_CANDIDATE", cand(1), recipient="alexa-1")
            await master.send("SDP_ANSWER", ANSWER, recipient="alexa-1")

        result, _ = await asyncio.gather(call, answer())
        assert unb64json(result["Answer"]) == ANSWER
        await master.expect_nothing(0.3)
        # Nothing was kept for the caller: a viewer taking its ClientId later gets nothing.
        late = await Client.connect(b, channel.arn, "alexa-1")  # type: ignore[arg-type]
        await late.expect_nothing(0.3)
        await late.close()
    finally:
        sig.close()
        await master.close()


async def test_replacing_a_master_through_another_node_tells_the_session(
    nodes: tuple[Node, Node],
) -> None:
    a, b = nodes
    channel = await make_channel(a, "moved", storage=True)
    ep = RecordingEndpoint()
    a.services.hub.set_storage_endpoint(ep)
    b.services.hub.set_storage_endpoint(None)
    await a.services.cluster.sessions.claim(channel.arn)
    first = await Client.connect(a, channel.arn)  # type: ignore[arg-type]
    second = await Client.connect(b, channel.arn)  # type: ignore[arg-type]
    try:
        assert await ep.next() == ("disconnect", channel.arn, None)
        assert await first.recv() == {"messageType": "GO_AWAY"}
        await first.wait_closed()
        await asyncio.sleep(0.2)
        assert ep.empty()  # the replaced socket's close is not a second disconnect
    finally:
        await first.close()
        await second.close()


async def test_deleting_a_channel_on_one_node_ends_its_sessions_on_another(
    nodes: tuple[Node, Node],
) -> None:
    a, b = nodes
    channel = await make_channel(a, "deleted", storage=True)
    master = await Client.connect(a, channel.arn)  # type: ignore[arg-type]
    viewer = await Client.connect(b, channel.arn, "v")  # type: ignore[arg-type]
    try:
        await b.join(channel.arn)  # runs on A, where the master is
        await b.services.control.delete_channel(arn=channel.arn, current_version=None)
        sessions_a = a.services.sessions
        assert isinstance(sessions_a, RecordingSessions)
        assert sessions_a.closed == [channel.arn]
        assert await master.recv() == {"messageType": "GO_AWAY"}
        assert await viewer.recv() == {"messageType": "GO_AWAY"}
    finally:
        await master.close()
        await viewer.close()


async def test_concurrent_joins_on_two_nodes_run_on_one(nodes: tuple[Node, Node]) -> None:
    a, b = nodes
    channel = await make_channel(a, "race", storage=True)  # no master connected yet
    await asyncio.gather(a.join(channel.arn), b.join(channel.arn), b.join(channel.arn, "v"))
    ran = []
    for node in (a, b):
        sessions = node.services.sessions
        assert isinstance(sessions, RecordingSessions)
        if sessions.joins:
            ran.append((node.services.hub.bus.node_id, len(sessions.joins)))
    owner = await a.services.cluster.sessions.owner(channel.arn)
    assert ran == [(owner, 3)]
