"""Peer-to-peer routing (media storage disabled): viewer → master, master → viewer by
recipientClientId, never viewer → viewer; both client dialects; TTL buffering; malformed frames;
per-connection rate limits."""

from __future__ import annotations

import asyncio
import json

import aiohttp
import requests

from openkvs.signaling.bus import LocalBus

from ..support import ServerThread
from .conftest import FakeMonotonic
from .kvs import Client, b64json, setup_channel, unb64json
from .test_messages import C_SDK_FRAME, C_SDK_FRAME_CORR, C_SDK_ICE_LIST

OFFER = {"type": "offer", "sdp": "v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\n"}
ANSWER = {"type": "answer", "sdp": "v=0\r\no=- 2 2 IN IP4 127.0.0.1\r\n"}


def cand(n: int) -> dict[str, object]:
    return {
        "candidate": f"candidate:{n} 1 udp 2122260223 127.0.0.1 {5000 + n} typ host",
        "sdpMid": "0",
        "sdpMLineIndex": 0,
    }


async def pending(server: ServerThread, channel_arn: str, client_id: str | None) -> int:
    async def count() -> int:
        bus = server.services.hub.bus
        assert isinstance(bus, LocalBus)
        return bus.pending_count((channel_arn, client_id))

    return await asyncio.wrap_future(server.submit(count()))


async def wait_pending(server: ServerThread, arn: str, client_id: str | None, n: int) -> None:
    for _ in range(200):
        if await pending(server, arn, client_id) == n:
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"expected {n} pending messages")


async def test_offer_answer_and_candidates(server: ServerThread) -> None:
    arn = setup_channel(server, "p2p")
    master = await Client.connect(server, arn)
    viewer = await Client.connect(server, arn, "viewer-1")
    # A viewer's recipient is ignored: its messages always go to the master.
    await viewer.send("SDP_OFFER", OFFER, recipient="somebody-else", correlation_id="o-1")
    await viewer.send("ICE_CANDIDATE", cand(1))
    assert await master.recv() == {
        "senderClientId": "viewer-1",
        "messageType": "SDP_OFFER",
        "messagePayload": b64json(OFFER),
    }
    event = await master.recv()
    assert (event["senderClientId"], event["messageType"]) == ("viewer-1", "ICE_CANDIDATE")
    assert unb64json(event["messagePayload"]) == cand(1)

    await master.send("SDP_ANSWER", ANSWER, recipient="viewer-1", correlation_id="a-1")
    await master.send("ICE_CANDIDATE", cand(2), recipient="viewer-1")
    # From the master: no senderClientId.
    assert await viewer.recv() == {"messageType": "SDP_ANSWER", "messagePayload": b64json(ANSWER)}
    assert unb64json((await viewer.recv())["messagePayload"]) == cand(2)
    # Success never produces a STATUS_RESPONSE, correlated or not.
    await master.expect_nothing(0.3)
    await viewer.expect_nothing(0.1)
    for c in (master, viewer):
        await c.close()


async def test_viewers_never_reach_each_other(server: ServerThread) -> None:
    arn = setup_channel(server, "v2v")
    master = await Client.connect(server, arn)
    v1 = await Client.connect(server, arn, "v1")
    v2 = await Client.connect(server, arn, "v2")
    await v1.send("SDP_OFFER", OFFER, recipient="v2")
    event = await master.recv()
    assert event["senderClientId"] == "v1"
    await v2.expect_nothing(0.3)
    # The master reaches exactly the viewer it names.
    await master.send("SDP_ANSWER", ANSWER, recipient="v2")
    assert (await v2.recv())["messageType"] == "SDP_ANSWER"
    await v1.expect_nothing(0.3)
    for c in (master, v1, v2):
        await c.close()


async def test_c_sdk_dialect(server: ServerThread) -> None:
    arn = setup_channel(server, "csdk")
    master = await Client.connect(server, arn)
    viewer = await Client.connect(server, arn, "ConsumerViewer")
    # The C viewer sample addresses its offer to its master's client id; the service ignores it.
    await viewer.send_raw(
        C_SDK_FRAME_CORR % ("SDP_OFFER", "ProducerMaster", b64json(OFFER), "1", C_SDK_ICE_LIST)
    )
    await viewer.send_raw(C_SDK_FRAME % ("ICE_CANDIDATE", "ProducerMaster", b64json(cand(1)), ""))
    event = await master.recv()
    assert (event["senderClientId"], unb64json(event["messagePayload"])) == (
        "ConsumerViewer",
        OFFER,
    )
    assert unb64json((await master.recv())["messagePayload"]) == cand(1)

    await master.send_raw(C_SDK_FRAME % ("SDP_ANSWER", "ConsumerViewer", b64json(ANSWER), ""))
    assert unb64json((await viewer.recv())["messagePayload"]) == ANSWER
    # An empty RecipientClientId means none: from a master in peer-to-peer mode that is an error.
    await master.send_raw(C_SDK_FRAME_CORR % ("ICE_CANDIDATE", "", b64json(cand(2)), "corr-7", ""))
    status = await master.recv()
    assert status["messageType"] == "STATUS_RESPONSE"
    assert status["statusResponse"]["correlationId"] == "corr-7"
    assert status["statusResponse"]["statusCode"] == "400"
    await viewer.expect_nothing(0.3)
    for c in (master, viewer):
        await c.close()


async def test_messages_wait_for_the_recipient(server: ServerThread) -> None:
    arn = setup_channel(server, "ttl", ttl=60)
    viewer = await Client.connect(server, arn, "early")
    await viewer.send("SDP_OFFER", OFFER)
    await viewer.send("ICE_CANDIDATE", cand(1))
    await wait_pending(server, arn, None, 2)
    master = await Client.connect(server, arn)
    assert (await master.recv())["messageType"] == "SDP_OFFER"
    assert unb64json((await master.recv())["messagePayload"]) == cand(1)
    # And the other way: an answer for a viewer that is not connected (yet).
    await master.send("SDP_ANSWER", ANSWER, recipient="late")
    await wait_pending(server, arn, "late", 1)
    late = await Client.connect(server, arn, "late")
    assert unb64json((await late.recv())["messagePayload"]) == ANSWER
    for c in (viewer, master, late):
        await c.close()


async def test_pending_messages_expire_after_the_channel_ttl(
    server: ServerThread, monotonic: FakeMonotonic
) -> None:
    arn = setup_channel(server, "expire", ttl=5)
    viewer = await Client.connect(server, arn, "v")
    await viewer.send("SDP_OFFER", OFFER)
    await wait_pending(server, arn, None, 1)
    monotonic.advance(4.5)
    await viewer.send("ICE_CANDIDATE", cand(1))
    await wait_pending(server, arn, None, 2)
    monotonic.advance(1.0)  # the offer is 5.5 s old, the candidate 1 s
    master = await Client.connect(server, arn)
    event = await master.recv()
    assert event["messageType"] == "ICE_CANDIDATE"
    await master.expect_nothing(0.3)
    for c in (viewer, master):
        await c.close()


async def test_newer_offer_replaces_pending_ones(server: ServerThread) -> None:
    arn = setup_channel(server, "replace")
    v1 = await Client.connect(server, arn, "v1")
    v2 = await Client.connect(server, arn, "v2")
    await v2.send("SDP_OFFER", {"type": "offer", "sdp": "v2"})
    await wait_pending(server, arn, None, 1)
    await v1.send("SDP_OFFER", {"type": "offer", "sdp": "first"})
    await v1.send("ICE_CANDIDATE", cand(1))
    await wait_pending(server, arn, None, 3)
    await v1.send("SDP_OFFER", {"type": "offer", "sdp": "second"})
    await v1.send("ICE_CANDIDATE", cand(2))
    # v1's first offer and its candidate are gone; v2's offer is untouched.
    await wait_pending(server, arn, None, 3)
    master = await Client.connect(server, arn)
    got = [await master.recv() for _ in range(3)]
    assert [(e["senderClientId"], unb64json(e["messagePayload"])) for e in got] == [
        ("v2", {"type": "offer", "sdp": "v2"}),
        ("v1", {"type": "offer", "sdp": "second"}),
        ("v1", cand(2)),
    ]
    await master.expect_nothing(0.3)
    for c in (v1, v2, master):
        await c.close()


async def test_malformed_frames(server: ServerThread) -> None:
    arn = setup_channel(server, "junk")
    master = await Client.connect(server, arn)
    viewer = await Client.connect(server, arn, "v")
    frames = [
        ("not json at all", None),
        ("[1, 2, 3]", None),
        (json.dumps({"action": "SDP_OFFER", "messagePayload": "%%%"}), None),
        (
            json.dumps({"action": "SDP_OFFER", "messagePayload": "%%%", "correlationId": "b64"}),
            "b64",
        ),
        (json.dumps({"action": "SDP_OFFER", "messagePayload": "QUFB" * 2600}), None),
        (
            json.dumps(
                {"action": "SDP_OFFER", "messagePayload": "QUFB" * 2600, "correlationId": "big"}
            ),
            "big",
        ),
        (json.dumps({"action": "DELETE_CHANNEL", "messagePayload": "eA=="}), None),
        (
            json.dumps(
                {"action": "DELETE_CHANNEL", "messagePayload": "eA==", "correlationId": "u"}
            ),
            "u",
        ),
        (json.dumps({"action": "ICE_CANDIDATE", "correlationId": "nopayload"}), "nopayload"),
    ]
    for text, _ in frames:
        await viewer.send_raw(text)
    await viewer.ws.send_bytes(b"\x00\x01binary")
    statuses = []
    for _ in [f for f in frames if f[1] is not None]:
        statuses.append(await viewer.recv())
    assert [s["statusResponse"]["correlationId"] for s in statuses] == [
        "b64",
        "big",
        "u",
        "nopayload",
    ]
    for s in statuses:
        assert s["messageType"] == "STATUS_RESPONSE"
        assert s["statusResponse"]["errorType"] == "InvalidArgumentException"
        assert s["statusResponse"]["success"] is False
    await viewer.expect_nothing(0.3)
    await master.expect_nothing(0.1)
    # The connection still works, and so does the server.
    await viewer.send("SDP_OFFER", OFFER)
    assert (await master.recv())["senderClientId"] == "v"
    health = await asyncio.to_thread(
        requests.get, server.endpoint + "/health", verify=server.ca, timeout=5
    )
    assert health.ok
    for c in (master, viewer):
        await c.close()


async def test_deeply_nested_frames(server: ServerThread) -> None:
    """JSON nested past the parser's recursion limit is malformed JSON: its correlation id
    cannot be read, so the frame is dropped; the connection stays and relays what follows."""
    arn = setup_channel(server, "deep")
    master = await Client.connect(server, arn)
    viewer = await Client.connect(server, arn, "v")
    deep = "[" * 2000 + "]" * 2000
    await viewer.send_raw(deep)
    await viewer.send_raw('{"a":' * 990 + "1" + "}" * 990)
    await viewer.send_raw(
        json.dumps({"action": "SDP_OFFER", "messagePayload": "eA==", "correlationId": "d"})[:-1]
        + ', "extra": '
        + deep
        + "}"
    )
    # A correlated frame after them is still answered, and a valid one still relayed.
    await viewer.send_raw(
        json.dumps({"action": "NOPE", "messagePayload": "eA==", "correlationId": "after"})
    )
    status = await viewer.recv()
    assert status["statusResponse"]["correlationId"] == "after"
    await viewer.send("SDP_OFFER", OFFER)
    assert (await master.recv())["messagePayload"] == b64json(OFFER)
    await master.expect_nothing(0.2)
    for c in (master, viewer):
        await c.close()


async def test_oversized_frame_closes_only_that_connection(server: ServerThread) -> None:
    arn = setup_channel(server, "huge")
    master = await Client.connect(server, arn)
    viewer = await Client.connect(server, arn, "v")
    await viewer.send_raw("x" * (300 * 1024))
    closed = await viewer.wait_closed()
    assert closed.type is aiohttp.WSMsgType.CLOSE and closed.data == 1009  # message too big
    other = await Client.connect(server, arn, "other")
    await other.send("SDP_OFFER", OFFER)
    assert (await master.recv())["senderClientId"] == "other"
    for c in (master, viewer, other):
        await c.close()


async def test_rate_limits(server: ServerThread, monotonic: FakeMonotonic) -> None:
    arn = setup_channel(server, "rates")
    master = await Client.connect(server, arn)
    viewer = await Client.connect(server, arn, "v")
    monotonic.freeze()  # no refill while the burst is sent
    for i in range(7):
        await viewer.send("SDP_OFFER", OFFER, correlation_id=f"sdp-{i}")
    for i in range(22):
        await viewer.send("ICE_CANDIDATE", cand(i), correlation_id=f"ice-{i}")
    await viewer.send("SDP_ANSWER", ANSWER)  # over the limit, uncorrelated: dropped silently
    refused = [await viewer.recv() for _ in range(4)]
    assert [r["statusResponse"]["correlationId"] for r in refused] == [
        "sdp-5",
        "sdp-6",
        "ice-20",
        "ice-21",
    ]
    assert {r["statusResponse"]["errorType"] for r in refused} == {"ClientLimitExceededException"}
    delivered = [await master.recv() for _ in range(25)]
    assert [e["messageType"] for e in delivered] == ["SDP_OFFER"] * 5 + ["ICE_CANDIDATE"] * 20
    await master.expect_nothing(0.3)
    await viewer.expect_nothing(0.1)
    monotonic.advance(1.0)  # a second later the bucket is full again
    await viewer.send("SDP_ANSWER", ANSWER, correlation_id="later")
    assert (await master.recv())["messageType"] == "SDP_ANSWER"
    await viewer.expect_nothing(0.2)
    for c in (master, viewer):
        await c.close()
