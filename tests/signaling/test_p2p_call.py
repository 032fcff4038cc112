"""A real peer-to-peer call: an aiortc master and an aiortc viewer negotiate through openkvs
signaling (offer, answer, trickled ICE candidates) and the viewer decodes the master's video."""

from __future__ import annotations

from ..support import ServerThread
from .kvs import Client, setup_channel
from .peers import HEIGHT, RED, WIDTH, call


async def test_aiortc_call_through_openkvs(server: ServerThread) -> None:
    arn = setup_channel(server, "call")
    master = await Client.connect(server, arn, tls=True)
    viewer = await Client.connect(server, arn, "aiortc-viewer", tls=True)
    try:
        result = await call(master, viewer, "aiortc-viewer")
    finally:
        await viewer.close()
        await master.close()
    assert result.viewer_candidates and result.master_candidates  # ICE went through signaling
    assert result.viewer_state == "connected" and result.master_state == "connected"
    assert len(result.frames) == 5
    for frame in result.frames:
        assert (frame.width, frame.height) == (WIDTH, HEIGHT)
        mean = frame.to_ndarray(format="rgb24").reshape(-1, 3).mean(axis=0)
        assert all(abs(m - c) < 25 for m, c in zip(mean, RED, strict=True)), mean
