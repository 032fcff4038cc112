"""What the KVS WebRTC C SDK (cameras) needs from the storage session's offer and ICE, reproduced
with aiortc peers through the real server and signaling:

- the real offers (master and viewer) carry one SHA-256 fingerprint per media section and
  announce trickle ICE at session level;
- the offer goes out at once even when the TURN server does not answer; server-reflexive and relay
  candidates follow as ICE_CANDIDATE messages;
- both ends use the one pair openkvs nominates: a camera that, like the C SDK, selects the best
  nominated pair and frees its TURN allocation keeps streaming on its host pair.
"""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from aioice import stun
from aioice.ice import CandidatePair
from aiortc import RTCConfiguration, RTCIceServer

from openkvs.signaling.turn import turn_credentials
from openkvs.webrtc import tap

from ..mediagen import h264_clip, opus_packets
from ..signaling.test_turn_relay import SECRET, coturn  # noqa: F401 - a fixture
from ..support import ServerThread
from .harness import Camera, fragments_of, sessions, storage_channel, wait_for
from .test_offer_sdp import check_offer


def offers(cam: Camera) -> list[str]:
    return [p["sdp"] for _, kind, p in cam.messages if kind == "SDP_OFFER"]


def trickled(cam: Camera) -> list[tuple[float, str]]:
    return [(t, p["candidate"]) for t, kind, p in cam.messages if kind == "ICE_CANDIDATE"]


async def test_master_and_viewer_offers_suit_the_c_sdk(make_server: Any) -> None:
    srv = make_server()
    ch, _ = storage_channel(srv, "fp")
    clip = h264_clip(seconds=1.0)
    cam = Camera(srv, ch, clip, opus_packets(1.0))
    viewer = Camera(srv, ch, None, opus_packets(1.0), client_id="viewer-1")
    await cam.connect()
    await viewer.connect()
    try:
        await asyncio.to_thread(cam.join)
        await asyncio.to_thread(viewer.join)
        await wait_for(lambda: cam.offers == 1 and viewer.offers == 1, 10)
        for c in (cam, viewer):
            (sdp,) = offers(c)
            check_offer(sdp)
        # DTLS still verifies both ways with the single fingerprint: media flows.
        await wait_for(lambda: cam.master.pc.connectionState == "connected", 15)
        await wait_for(lambda: viewer.master.pc.connectionState == "connected", 15)
        arn = ch
        await wait_for(lambda: sessions(srv).masters[arn].state.value == "connected", 10)
        await cam.master.wait_sent()
    finally:
        await viewer.close()
        await cam.close()
    await wait_for(lambda: fragments_of(srv, "fp-stream") != [], 15)


class SlowStun(asyncio.DatagramProtocol):
    """A STUN server that answers binding requests after ``delay`` seconds."""

    def __init__(self, delay: float) -> None:
        self.delay = delay
        self.transport: asyncio.DatagramTransport | None = None
        self.requests = 0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        try:
            request = stun.parse_message(data)
        except ValueError:
            return
        self.requests += 1
        response = stun.Message(
            message_method=request.message_method,
            message_class=stun.Class.RESPONSE,
            transaction_id=request.transaction_id,
        )
        response.attributes["XOR-MAPPED-ADDRESS"] = addr
        asyncio.get_running_loop().call_later(self.delay, self._send, bytes(response), addr)

    def _send(self, data: bytes, addr: tuple[str, int]) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.sendto(data, addr)


@pytest.fixture
def dead_udp_port() -> Iterator[int]:
    """A loopback UDP port that takes packets and never answers (a TURN server that is down)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind(("127.0.0.1", 0))
        yield sock.getsockname()[1]


@pytest.mark.parametrize("role", ["master", "viewer"])
async def test_offer_is_immediate_with_an_unreachable_turn_server(
    make_server: Callable[..., ServerThread], dead_udp_port: int, role: str
) -> None:
    loop = asyncio.get_running_loop()
    stun_transport, stun_server = await loop.create_datagram_endpoint(
        lambda: SlowStun(0.3), local_addr=("127.0.0.1", 0)
    )
    stun_port = stun_transport.get_extra_info("sockname")[1]
    srv = make_server(
        turn_uris=(f"turn:127.0.0.1:{dead_udp_port}?transport=udp",),
        turn_secret="unreachable-secret",
        webrtc_ice_servers=(f"stun:127.0.0.1:{stun_port}",),
    )
    ch, _ = storage_channel(srv, f"dead-turn-{role}")
    client_id = None if role == "master" else "viewer-1"
    video = h264_clip(seconds=1.0) if role == "master" else None
    cam = Camera(srv, ch, video, opus_packets(1.0), client_id=client_id)
    await cam.connect()
    try:
        t_call = await asyncio.to_thread(cam.join)
        t_returned = time.perf_counter()
        await wait_for(lambda: cam.offer_at is not None, 10)
        assert cam.offer_at is not None
        since_call, since_return = cam.offer_at - t_call, cam.offer_at - t_returned
        print(
            f"\n{role}: SDP_OFFER {since_call * 1000:.1f} ms after the JoinStorageSession call, "
            f"{since_return * 1000:.1f} ms after it returned"
        )
        assert since_return < 0.5, since_return  # it was ~5 s when all candidates came first
        (sdp,) = offers(cam)
        check_offer(sdp)
        assert "a=end-of-candidates" not in sdp  # more candidates are coming
        assert " typ host" in sdp and " typ srflx" not in sdp and " typ relay" not in sdp
        # The server-reflexive candidates follow, trickled after the offer.
        await wait_for(lambda: any(" typ srflx" in c for _, c in trickled(cam)), 5)
        srflx = [(t, c) for t, c in trickled(cam) if " typ srflx" in c]
        assert all(t > cam.offer_at for t, _ in srflx)
        assert stun_server.requests >= 1
        assert not any(" typ relay" in c for _, c in trickled(cam))
        # And the camera connects over the host candidates meanwhile.
        await wait_for(lambda: cam.master.pc.connectionState == "connected", 15)
    finally:
        await cam.close()
        stun_transport.close()


def _ice(pc: Any) -> Any:
    """The aioice connection of a peer (bundled: one transport)."""
    return pc.getTransceivers()[0].receiver.transport.transport.iceGatherer._connection


async def check_relay_pairs_like_the_c_sdk(pc: Any) -> int:
    """The C SDK checks every pair, its relay candidates' included, until it selects one (aioice
    stops at the first nomination). Checks from the relay candidates to openkvs's host
    candidates; returns how many were answered."""
    conn = _ice(pc)

    async def check(protocol: Any, remote: Any) -> bool:
        pair = CandidatePair(protocol, remote)
        request = conn.build_request(pair, nominate=False)
        try:
            await protocol.request(
                request,
                pair.remote_addr,
                integrity_key=conn.remote_password.encode(),
                retransmissions=2,
            )
        except stun.TransactionError:
            return False
        return True

    checks = [
        check(protocol, remote)
        for protocol in list(conn._protocols)
        if protocol.local_candidate.type == "relay"
        for remote in conn._remote_candidates
        if remote.type == "host" and protocol.local_candidate.can_pair_with(remote)
    ]
    return sum(await asyncio.gather(*checks))


async def select_and_free_relays_like_the_c_sdk(pc: Any) -> tuple[Any, Any]:
    """What the KVS C SDK does once ICE is ready (IceAgent.c, iceAgentReadyStateSetup): select the
    first pair in priority order that is nominated and succeeded, then shut down every TURN
    allocation that pair does not use. Returns (the selected pair, the connection)."""
    conn = _ice(pc)
    succeeded = [p for p in conn._check_list if p.nominated and p.state.name == "SUCCEEDED"]
    assert succeeded, conn._check_list
    pair = succeeded[0]
    conn._nominated[pair.component] = pair
    for protocol in list(conn._protocols):
        if protocol.local_candidate.type == "relay" and protocol is not pair.protocol:
            await protocol.close()
    return pair, conn


@pytest.mark.slow
async def test_one_nominated_pair_kept_for_a_minute_after_relays_are_freed(
    coturn: int,  # noqa: F811 - the fixture; first, so it outlives the server (TURN release)
    make_server: Callable[..., ServerThread],
) -> None:
    turn_uri = f"turn:127.0.0.1:{coturn}?transport=udp"
    srv = make_server(turn_uris=(turn_uri,), turn_secret=SECRET, storage_fragment_duration=2.0)
    ch, _ = storage_channel(srv, "hold")
    username, password = turn_credentials(SECRET, "camera", int(time.time()) + 600)
    config = RTCConfiguration(
        iceServers=[RTCIceServer(urls=turn_uri, username=username, credential=password)]
    )
    clip = h264_clip(width=320, height=240, seconds=2.0, gop=30)
    cam = Camera(srv, ch, clip, opus_packets(2.0), loops=40, configuration=config)
    await cam.connect()
    try:
        await asyncio.to_thread(cam.join)
        await wait_for(lambda: cam.master.pc.connectionState == "connected", 20)
        await wait_for(lambda: ch in sessions(srv).masters, 5)
        session = sessions(srv).masters[ch]
        await wait_for(lambda: session.state.value == "connected", 10)
        # The camera has its relay candidate and openkvs checked pairs with it too.
        answer = cam.master.pc.localDescription.sdp
        assert " typ relay" in answer, answer
        # openkvs's own relay candidates came trickled, after an offer with host candidates only.
        (offer,) = offers(cam)
        assert " typ relay" not in offer and "a=end-of-candidates" not in offer
        relays = [t for t, c in trickled(cam) if " typ relay " in c]
        assert relays and cam.offer_at is not None and min(relays) > cam.offer_at
        assert await check_relay_pairs_like_the_c_sdk(cam.master.pc) >= 1
        await asyncio.sleep(1.0)  # openkvs's triggered checks on those pairs complete
        pair, conn = await select_and_free_relays_like_the_c_sdk(cam.master.pc)
        assert pair.local_candidate.type == "host", pair
        nominated = [p for p in conn._check_list if p.nominated]
        ours = tap.selected_pair(
            session.pc.getTransceivers()[0].receiver.transport.transport.iceGatherer
        )
        assert ours == (pair.remote_addr, pair.local_addr), (ours, pair, nominated)
        assert len(nominated) == 1, nominated  # one USE-CANDIDATE: no pair to disagree on
        number = session.number
        start = time.monotonic()
        frames_at_start = session.recorder.stats.as_dict().get("video_frames", 0)
        while time.monotonic() - start < 60:
            await asyncio.sleep(5)
            current = sessions(srv).masters.get(ch)
            assert current is session and session.state.value == "connected", (
                time.monotonic() - start,
                [e.get("end_reason") for e in sessions(srv).ended],
            )
            assert session.pc.connectionState == "connected"
            assert cam.master.pc.connectionState == "connected"
        assert session.number == number
        stats = session.recorder.stats.as_dict()
        assert time.monotonic() - session.recorder.stats.last_media_at < 2.0, stats
        print(f"\nrecorder after 60 s on the host pair: {stats}, {frames_at_start=}")
    finally:
        await cam.close()
