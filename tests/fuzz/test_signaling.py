"""Signaling frames fuzzed through a real WebSocket: whatever a viewer sends (text that is not
JSON, wrong types, JSON nested thousands of levels, mutated SDK frames), it gets a STATUS_RESPONSE
or nothing, its connection stays open, and a valid message after it is still relayed."""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import Coroutine, Iterator
from typing import Any, TypeVar

import aiohttp
import pytest
from hypothesis import given

from ..signaling.kvs import Client, b64json, setup_channel
from ..support import ServerThread, make_settings
from .test_parsers import frames, fuzz_settings

pytestmark = pytest.mark.fuzz

T = TypeVar("T")
OFFER = {"type": "offer", "sdp": "v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\n"}


class Peers:
    """A master and a viewer on one channel, driven from a loop of their own."""

    def __init__(self, server: ServerThread) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        arn = setup_channel(server, "fuzz")
        self.master = self.run(Client.connect(server, arn))
        self.viewer = self.run(Client.connect(server, arn, "fuzzer"))
        self.sent = 0

    def run(self, coro: Coroutine[Any, Any, T]) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(30)

    def close(self) -> None:
        self.run(self.master.close())
        self.run(self.viewer.close())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)
        self.loop.close()


@pytest.fixture(scope="module")
def peers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Peers]:
    server = ServerThread(
        make_settings(
            tmp_path_factory.mktemp("signaling-fuzz"),
            signaling_sdp_rate=1e6,
            signaling_ice_rate=1e6,
            rate_limit_account=1e9,
            rate_limit_resource=1e9,
        )
    )
    p = Peers(server)
    yield p
    p.close()
    server.close()


async def drain(client: Client) -> None:
    """Read whatever the server already sent (a relayed frame, a STATUS_RESPONSE)."""
    while True:
        try:
            msg = await client.ws.receive(timeout=0.001)
        except TimeoutError:
            return
        if msg.type is not aiohttp.WSMsgType.TEXT:
            raise ConnectionError(f"the connection ended: {msg.type} {msg.data!r}")


async def exchange(p: Peers, text: str) -> None:
    viewer = p.viewer
    await viewer.send_raw(text)
    # A frame refused for certain, with a correlation id: its answer shows the connection is
    # alive and that everything sent before it was handled.
    p.sent += 1
    marker = f"m{p.sent}"
    await viewer.send_raw(
        json.dumps({"action": "NOPE", "messagePayload": "eA==", "correlationId": marker})
    )
    while True:
        event = await viewer.recv(timeout=10)
        if event.get("statusResponse", {}).get("correlationId") == marker:
            break
        assert event["messageType"] == "STATUS_RESPONSE", event
        assert event["statusResponse"]["success"] is False
        assert int(event["statusResponse"]["statusCode"]) < 500, event
    await drain(p.master)


def test_signaling_fuzz(peers: Peers) -> None:
    @fuzz_settings(300)
    @given(text=frames)
    def run(text: str) -> None:
        peers.run(exchange(peers, text))

    run()
    peers.run(peers.viewer.send("SDP_OFFER", OFFER))
    relayed = peers.run(peers.master.recv())
    assert relayed == {
        "senderClientId": "fuzzer",
        "messageType": "SDP_OFFER",
        "messagePayload": b64json(OFFER),
    }
    assert peers.sent >= 300
