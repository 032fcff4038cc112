"""The hub's interface to storage sessions (media storage ENABLED): events without
senderClientId to the master or a viewer, buffered until they connect; the participants'
recipient-less SDP_ANSWER / ICE_CANDIDATE handed to the storage endpoint; disconnect notices."""

from __future__ import annotations

import asyncio
import queue
import statistics
import time
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

from openkvs.errors import InvalidArgumentException, ServiceError
from openkvs.signaling.hub import SignalingHub

from ..support import ServerThread
from .kvs import Client, b64json, enable_storage, setup_channel
from .test_messages import C_SDK_FRAME, C_SDK_FRAME_CORR

T = TypeVar("T")


class RecordingEndpoint:
    """A storage endpoint that records what the hub hands it (on the server's loop)."""

    def __init__(self) -> None:
        self.calls: queue.Queue[tuple[Any, ...]] = queue.Queue()
        self.fail_with: ServiceError | None = None

    async def on_message(
        self, channel_arn: str, client_id: str | None, message_type: str, payload: str
    ) -> None:
        self.calls.put(("message", channel_arn, client_id, message_type, payload))
        if self.fail_with is not None:
            raise self.fail_with

    async def on_disconnect(self, channel_arn: str, client_id: str | None) -> None:
        self.calls.put(("disconnect", channel_arn, client_id))

    async def next(self, timeout: float = 5.0) -> tuple[Any, ...]:
        return await asyncio.to_thread(self.calls.get, True, timeout)

    def empty(self) -> bool:
        return self.calls.empty()


async def on_server(server: ServerThread, coro: Coroutine[Any, Any, T]) -> T:
    return await asyncio.wrap_future(server.submit(coro))


async def storage_channel(server: ServerThread, name: str) -> tuple[str, RecordingEndpoint]:
    arn = setup_channel(server, name)
    enable_storage(server, arn, f"{name}-stream")
    ep = RecordingEndpoint()

    async def register() -> None:
        server.services.hub.set_storage_endpoint(ep)

    await on_server(server, register())
    return arn, ep


def hub(server: ServerThread) -> SignalingHub:
    return server.services.hub


async def test_offer_reaches_the_master_fast(server: ServerThread) -> None:
    arn, _ = await storage_channel(server, "fast")
    master = await Client.connect(server, arn)
    latencies = []
    for i in range(30):
        payload = b64json({"type": "offer", "sdp": f"v=0 {i}"})
        started = time.perf_counter()
        server.submit(hub(server).send(arn, None, "SDP_OFFER", payload))
        event = await master.recv()
        latencies.append(time.perf_counter() - started)
        # Storage-session messages carry no senderClientId.
        assert event == {"messageType": "SDP_OFFER", "messagePayload": payload}
    print(
        f"storage offer -> master: median {statistics.median(latencies) * 1000:.2f} ms, "
        f"max {max(latencies) * 1000:.2f} ms"
    )
    assert statistics.median(latencies) < 0.05
    assert statistics.quantiles(latencies, n=10)[-1] < 0.05  # 90th percentile
    await master.close()


async def test_participants_answer_the_storage_session(server: ServerThread) -> None:
    arn, ep = await storage_channel(server, "answers")
    master = await Client.connect(server, arn)
    viewer = await Client.connect(server, arn, "viewer-7")
    answer = b64json({"type": "answer", "sdp": "v=0"})
    candidate = b64json({"candidate": "candidate:1 1 udp 1 10.0.0.1 9 typ host", "sdpMid": "0"})
    # The JS master omits the recipient, the C master sends it empty.
    await master.send("SDP_ANSWER", answer, correlation_id="js")
    await master.send_raw(C_SDK_FRAME % ("ICE_CANDIDATE", "", candidate, ""))
    # A viewer's recipient is ignored, as always.
    await viewer.send("SDP_ANSWER", answer, recipient="MASTER")
    await viewer.send_raw(C_SDK_FRAME_CORR % ("ICE_CANDIDATE", "", candidate, "c", ""))
    got = [await ep.next() for _ in range(4)]
    assert got == [
        ("message", arn, None, "SDP_ANSWER", answer),
        ("message", arn, None, "ICE_CANDIDATE", candidate),
        ("message", arn, "viewer-7", "SDP_ANSWER", answer),
        ("message", arn, "viewer-7", "ICE_CANDIDATE", candidate),
    ]
    # Nothing went peer to peer, and success sends no STATUS_RESPONSE.
    await master.expect_nothing(0.3)
    await viewer.expect_nothing(0.1)
    for c in (master, viewer):
        await c.close()


async def test_peer_to_peer_traffic_is_refused_in_storage_mode(server: ServerThread) -> None:
    arn, ep = await storage_channel(server, "nop2p")
    master = await Client.connect(server, arn)
    viewer = await Client.connect(server, arn, "v")
    offer = b64json({"type": "offer", "sdp": "v=0"})
    await viewer.send("SDP_OFFER", offer, correlation_id="v-offer")
    await viewer.send("SDP_OFFER", offer)  # uncorrelated: dropped silently
    await master.send("SDP_ANSWER", offer, recipient="v", correlation_id="m-direct")
    await master.send("SDP_OFFER", offer, correlation_id="m-offer")
    v_status = (await viewer.recv())["statusResponse"]
    assert (v_status["correlationId"], v_status["errorType"]) == (
        "v-offer",
        "InvalidArgumentException",
    )
    assert "Media storage is enabled for channel nop2p" in v_status["description"]
    ids = [(await master.recv())["statusResponse"]["correlationId"] for _ in range(2)]
    assert ids == ["m-direct", "m-offer"]
    await master.expect_nothing(0.3)
    await viewer.expect_nothing(0.1)
    assert ep.empty()
    for c in (master, viewer):
        await c.close()


async def test_storage_errors_come_back_as_status_responses(server: ServerThread) -> None:
    arn, ep = await storage_channel(server, "errors")
    master = await Client.connect(server, arn)
    ep.fail_with = InvalidArgumentException("The SDP answer has no H.264 video.")
    answer = b64json({"type": "answer", "sdp": "v=0"})
    await master.send("SDP_ANSWER", answer, correlation_id="bad-answer")
    await master.send("SDP_ANSWER", answer)
    assert (await ep.next())[3] == "SDP_ANSWER"
    assert (await ep.next())[3] == "SDP_ANSWER"
    status = (await master.recv())["statusResponse"]
    assert status == {
        "correlationId": "bad-answer",
        "errorType": "InvalidArgumentException",
        "statusCode": "400",
        "description": "The SDP answer has no H.264 video.",
        "success": False,
    }
    await master.expect_nothing(0.3)
    await master.close()


async def test_without_a_storage_session(make_server: Callable[..., ServerThread]) -> None:
    server = make_server(webrtc_enabled=False)  # nothing registers a storage endpoint
    arn = setup_channel(server, "nosession")
    enable_storage(server, arn, "nosession-stream")
    master = await Client.connect(server, arn)
    await master.send("SDP_ANSWER", b64json({"type": "answer", "sdp": "v=0"}), correlation_id="x")
    status = (await master.recv())["statusResponse"]
    assert status["errorType"] == "InvalidArgumentException"
    assert "call JoinStorageSession" in status["description"]
    await master.close()


async def test_messages_wait_for_the_participant(server: ServerThread) -> None:
    arn, _ = await storage_channel(server, "later")
    h = hub(server)
    old_offer = b64json({"type": "offer", "sdp": "old"})
    new_offer = b64json({"type": "offer", "sdp": "new"})
    cand = b64json({"candidate": "candidate:1 1 udp 1 10.0.0.1 9 typ host", "sdpMid": "0"})
    for client_id in (None, "viewer-9"):
        await on_server(server, h.send(arn, client_id, "SDP_OFFER", old_offer))
        await on_server(server, h.send(arn, client_id, "ICE_CANDIDATE", cand))
        # A newer offer drops what was pending for that participant.
        await on_server(server, h.send(arn, client_id, "SDP_OFFER", new_offer))
        await on_server(server, h.send(arn, client_id, "ICE_CANDIDATE", cand))
        # Events without a payload are for connected participants only.
        await on_server(server, h.send(arn, client_id, "GO_AWAY", None))
        client = await Client.connect(server, arn, client_id)
        assert await client.recv() == {"messageType": "SDP_OFFER", "messagePayload": new_offer}
        assert await client.recv() == {"messageType": "ICE_CANDIDATE", "messagePayload": cand}
        await client.expect_nothing(0.3)
        await client.close()


async def test_disconnects_and_connection_ids(server: ServerThread) -> None:
    arn, ep = await storage_channel(server, "ids")
    h = hub(server)

    async def state(client_id: str | None) -> tuple[bool, str | None]:
        return await h.is_connected(arn, client_id), await h.connection_id(arn, client_id)

    assert await on_server(server, state(None)) == (False, None)
    first = await Client.connect(server, arn)
    connected, first_id = await on_server(server, state(None))
    assert connected and first_id
    second = await Client.connect(server, arn)
    # The replaced connection counts as a disconnect, announced before the new one is usable.
    assert await ep.next() == ("disconnect", arn, None)
    connected, second_id = await on_server(server, state(None))
    assert connected and second_id not in (None, first_id)
    assert await first.recv() == {"messageType": "GO_AWAY"}
    await first.wait_closed()
    viewer = await Client.connect(server, arn, "v1")
    await viewer.close()
    assert await ep.next() == ("disconnect", arn, "v1")
    await second.close()
    assert await ep.next() == ("disconnect", arn, None)
    assert await on_server(server, state(None)) == (False, None)
    # The old master's own close came after it was replaced: no second notice for it.
    await asyncio.sleep(0.2)
    assert ep.empty()
    await on_server(server, h.send(arn, None, "GO_AWAY", None))
    again = await Client.connect(server, arn)
    await on_server(server, h.send(arn, None, "GO_AWAY", None))
    assert await again.recv() == {"messageType": "GO_AWAY"}
    await first.close()
    await again.close()
