"""Packet loss on the WebRTC path: a camera streams through a lossy UDP relay (2% and 5% of the
SRTP/SRTCP packets dropped, both ways). NACK (with RTX) and PLI recover what they can; the
recording stays decodable, every stored frame is one the camera sent (in order, intact), and
each fragment starts with a keyframe."""

from __future__ import annotations

import asyncio
import re
from pathlib import Path
from typing import Any

import pytest

from openkvs.media import h264
from openkvs.webrtc import tap

from ..mediagen import h264_clip
from ..signaling.kvs import Client, b64json, unb64json
from ..support import need_tool
from ..webrtc.fake_master import FakeMaster
from ..webrtc.harness import (
    Camera,
    ffmpeg_decode_errors,
    fragment_bytes,
    fragments_of,
    sessions,
    storage_channel,
    stored_video,
    wait_for,
)
from .common import LONG
from .lossy_relay import LossyRelay

pytestmark = pytest.mark.slow

GOP = 30  # frames: one second
_CANDIDATE = re.compile(r"^a=candidate:\S+ \d+ udp \d+ (\d+\.\d+\.\d+\.\d+) (\d+) typ host", re.M)


def _through(sdp: str, port: int) -> str:
    """The offer with its candidates replaced by the relay's."""
    lines = [
        line
        for line in sdp.split("\r\n")
        if not line.startswith(("a=candidate:", "a=end-of-candidates"))
    ]
    out: list[str] = []
    for line in lines:
        out.append(line)
        if line.startswith("m="):
            out.append(f"a=candidate:1 1 udp 2130706431 127.0.0.1 {port} typ host")
    return "\r\n".join(out)


def _without_candidates(sdp: str) -> str:
    return "\r\n".join(
        line
        for line in sdp.split("\r\n")
        if not line.startswith(("a=candidate:", "a=end-of-candidates"))
    )


def _is_subsequence(part: list[bytes], whole: list[bytes]) -> bool:
    it = iter(whole)
    return all(any(x == y for y in it) for x in part)


@pytest.mark.parametrize("loss", [0.02, 0.05])
async def test_lossy_path_recovers_and_recording_decodes(
    make_server: Any, tmp_path: Path, loss: float
) -> None:
    if need_tool("ffmpeg") is None:
        pytest.skip("ffmpeg is not installed")
    srv = make_server(storage_fragment_duration=1.0)
    name = f"loss{round(loss * 100)}"
    ch, _ = storage_channel(srv, name)
    client = await Client.connect(srv, ch)
    seconds = 20.0 if LONG else 8.0
    clip = h264_clip(width=640, height=360, seconds=seconds, gop=GOP, noise=6)
    cam = FakeMaster(clip, None)
    relay: LossyRelay | None = None
    try:
        await asyncio.to_thread(Camera(srv, ch, None).join)
        async with asyncio.timeout(10):
            while (msg := await client.recv(timeout=10))["messageType"] != "SDP_OFFER":
                pass  # the server's trickled candidates are not passed on: only the relay's
        offer = unb64json(msg["messagePayload"])["sdp"]
        ip, port = _CANDIDATE.findall(offer)[0]
        relay = LossyRelay((ip, int(port)), loss, seed=round(loss * 1000))
        await relay.start()
        answer = await cam.answer(_through(offer, relay.port))
        await client.send(
            "SDP_ANSWER", b64json({"type": "answer", "sdp": _without_candidates(answer)})
        )
        await cam.wait_sent(seconds + 30)
        await asyncio.sleep(1.0)
        master = sessions(srv).masters[ch]
        assert master.state.value == "connected"
        stats = master.stats()
        assembler = tap.video_assembler(master.video.receiver)
        assert assembler is not None
        asm = assembler.stats
    finally:
        await client.close()
        await cam.close()
        if relay is not None:
            relay.close()
    await wait_for(lambda: not sessions(srv).masters, 15)
    track: Any = cam.video_track
    sent = [h264.to_avcc(h264.split_annexb(data)) for data, _ in track.sent]
    frags = fragments_of(srv, f"{name}-stream")
    video, _, parsed = stored_video(srv, frags)
    assert _is_subsequence(video, sent)  # nothing corrupt, nothing out of order
    for i, (f, p) in enumerate(zip(frags, parsed, strict=True)):
        assert p.blocks[0].keyframe
        path = tmp_path / f"{i}.mkv"
        path.write_bytes(fragment_bytes(srv, f))
        assert ffmpeg_decode_errors(path) == ""
    assert relay is not None
    media_pt = max(relay.rtp_up, key=lambda pt: relay.rtp_up[pt])
    rtx = sum(n for pt, n in relay.rtp_up.items() if pt != media_pt)
    lost = len(sent) - len(video)
    print(
        f"\n{loss:.0%} loss: {relay.rtp_up[media_pt]} video RTP packets, {relay.dropped_up} dropped"
        f" upstream, {relay.dropped_down} downstream; {relay.nacks} NACKs, {rtx} RTX"
        f" retransmissions, {relay.plis} PLIs; frames sent {len(sent)}, assembled {asm.frames},"
        f" stored {len(video)}, lost {lost} ({lost / len(sent):.1%}); gaps skipped"
        f" {asm.gaps_skipped}; keyframe requests {stats['keyframe_requests']}"
    )
    assert relay.dropped_up > 0 and relay.nacks > 0 and rtx > 0  # loss happened, NACK answered
    assert rtx >= relay.dropped_up // 2  # most losses were repaired by retransmission
    # A loss that NACK does not repair (the NACK or the retransmission lost too) costs the
    # frames up to the next keyframe: the test camera sends a pre-encoded clip and cannot
    # answer the PLI with a keyframe sooner. Nothing else is lost.
    assert lost <= asm.gaps_skipped * GOP + 2
    assert lost / len(sent) < (0.3 if loss <= 0.02 else 0.6)
