"""aiortc peers that negotiate through openkvs signaling the way KVS WebRTC apps do: the viewer
offers, the master answers, and ICE candidates trickle as ICE_CANDIDATE messages (aiortc gathers
before it signals, so candidates are taken out of the SDP and sent one by one)."""

from __future__ import annotations

import asyncio
import dataclasses
import fractions
from typing import Any

import av
import numpy as np
from aiortc import (
    RTCConfiguration,
    RTCIceServer,
    RTCIceTransportPolicy,
    RTCPeerConnection,
    RTCSessionDescription,
    VideoStreamTrack,
)
from aiortc.sdp import candidate_from_sdp

from .kvs import Client, unb64json

WIDTH, HEIGHT = 160, 120
RED = (220, 20, 30)


class ColorTrack(VideoStreamTrack):
    """A solid-colour video source, so the viewer can check what it decodes."""

    def __init__(self, rgb: tuple[int, int, int] = RED) -> None:
        super().__init__()
        self.image = np.zeros((HEIGHT, WIDTH, 3), dtype=np.uint8)
        self.image[:, :] = rgb

    async def recv(self) -> av.VideoFrame:
        pts, time_base = await self.next_timestamp()
        frame = av.VideoFrame.from_ndarray(self.image, format="rgb24")
        frame.pts = pts
        frame.time_base = fractions.Fraction(time_base)
        return frame


@dataclasses.dataclass
class Trickle:
    sdp: str  # without candidates
    candidates: list[dict[str, Any]]


def split_candidates(sdp: str) -> Trickle:
    """Take the candidates out of a gathered SDP, as a trickling browser would send them."""
    kept: list[str] = []
    candidates: list[dict[str, Any]] = []
    index, mid = -1, None
    for line in sdp.splitlines():
        if line.startswith("m="):
            index, mid = index + 1, None
        elif line.startswith("a=mid:"):
            mid = line[len("a=mid:") :]
        if line.startswith("a=candidate:"):
            candidates.append({"candidate": line[2:], "sdpMid": mid, "sdpMLineIndex": index})
            continue
        if line == "a=end-of-candidates":
            continue
        kept.append(line)
    return Trickle("\r\n".join(kept) + "\r\n", candidates)


def make_pc(ice_servers: list[dict[str, Any]] | None = None, relay: bool = False) -> Any:
    servers = [
        RTCIceServer(urls=s["Uris"], username=s["Username"], credential=s["Password"])
        for s in ice_servers or []
    ]
    config = RTCConfiguration(
        iceServers=servers,
        iceTransportPolicy=RTCIceTransportPolicy.RELAY if relay else RTCIceTransportPolicy.ALL,
    )
    return RTCPeerConnection(configuration=config)


async def send_description(client: Client, pc: Any, action: str, recipient: str | None) -> Trickle:
    trickle = split_candidates(pc.localDescription.sdp)
    kind = "offer" if action == "SDP_OFFER" else "answer"
    await client.send(action, {"type": kind, "sdp": trickle.sdp}, recipient=recipient)
    for cand in trickle.candidates:
        await client.send("ICE_CANDIDATE", cand, recipient=recipient)
    # End of candidates, as browsers signal it: an empty candidate string.
    await client.send(
        "ICE_CANDIDATE", {"candidate": "", "sdpMid": "0", "sdpMLineIndex": 0}, recipient=recipient
    )
    return trickle


async def apply_candidate(pc: Any, payload: str) -> None:
    data = unb64json(payload)
    if not data["candidate"]:
        await pc.addIceCandidate(None)
        return
    cand = candidate_from_sdp(data["candidate"].split(":", 1)[1])
    cand.sdpMid = data["sdpMid"]
    cand.sdpMLineIndex = data["sdpMLineIndex"]
    await pc.addIceCandidate(cand)


@dataclasses.dataclass
class CallResult:
    viewer_candidates: list[dict[str, Any]]
    master_candidates: list[dict[str, Any]]
    frames: list[av.VideoFrame]
    viewer_state: str
    master_state: str


async def call(
    master: Client,
    viewer: Client,
    viewer_id: str,
    *,
    ice_servers: dict[str, list[dict[str, Any]]] | None = None,
    relay: bool = False,
    frames_wanted: int = 5,
    timeout: float = 30.0,
) -> CallResult:
    """Viewer offers (receive-only video), master answers with a ColorTrack; return what the
    viewer decoded."""
    servers = ice_servers or {}
    master_pc = make_pc(servers.get("master"), relay)
    viewer_pc = make_pc(servers.get("viewer"), relay)
    master_pc.addTrack(ColorTrack())
    viewer_pc.addTransceiver("video", direction="recvonly")
    frames: list[av.VideoFrame] = []
    got_frames = asyncio.Event()

    async def consume(track: Any) -> None:
        while len(frames) < frames_wanted:
            frames.append(await track.recv())
        got_frames.set()

    consumers: list[asyncio.Task[None]] = []
    viewer_pc.on("track", lambda track: consumers.append(asyncio.create_task(consume(track))))

    async def master_side() -> Trickle:
        event = await master.recv(timeout=timeout)
        assert (event["messageType"], event["senderClientId"]) == ("SDP_OFFER", viewer_id)
        offer = unb64json(event["messagePayload"])
        await master_pc.setRemoteDescription(RTCSessionDescription(offer["sdp"], offer["type"]))
        await master_pc.setLocalDescription(await master_pc.createAnswer())
        sent = await send_description(master, master_pc, "SDP_ANSWER", viewer_id)
        while True:
            event = await master.recv(timeout=timeout)
            assert (event["messageType"], event["senderClientId"]) == ("ICE_CANDIDATE", viewer_id)
            await apply_candidate(master_pc, event["messagePayload"])
            if not unb64json(event["messagePayload"])["candidate"]:
                return sent

    async def viewer_side() -> Trickle:
        await viewer_pc.setLocalDescription(await viewer_pc.createOffer())
        sent = await send_description(viewer, viewer_pc, "SDP_OFFER", None)
        event = await viewer.recv(timeout=timeout)
        assert event["messageType"] == "SDP_ANSWER" and "senderClientId" not in event
        answer = unb64json(event["messagePayload"])
        await viewer_pc.setRemoteDescription(RTCSessionDescription(answer["sdp"], answer["type"]))
        while True:
            event = await viewer.recv(timeout=timeout)
            assert event["messageType"] == "ICE_CANDIDATE"
            await apply_candidate(viewer_pc, event["messagePayload"])
            if not unb64json(event["messagePayload"])["candidate"]:
                return sent

    try:
        async with asyncio.timeout(timeout):
            from_master, from_viewer = await asyncio.gather(master_side(), viewer_side())
            await got_frames.wait()
        return CallResult(
            viewer_candidates=from_viewer.candidates,
            master_candidates=from_master.candidates,
            frames=frames,
            viewer_state=viewer_pc.connectionState,
            master_state=master_pc.connectionState,
        )
    finally:
        for task in consumers:
            task.cancel()
        await asyncio.gather(*consumers, return_exceptions=True)
        await viewer_pc.close()
        await master_pc.close()
