"""The WebRTC storage session end to end, through the real server and real signaling: a camera
(aiortc) connects as master, calls JoinStorageSession, answers the server's offer and streams
pre-encoded H.264 + Opus; the recording is checked with ffprobe/ffmpeg and bit for bit."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from ..mediagen import h264_clip, opus_packets
from ..support import need_tool
from .harness import (
    Camera,
    ffmpeg_decode_errors,
    ffprobe_fragment,
    fragment_bytes,
    fragments_of,
    sent_video,
    sessions,
    storage_channel,
    stored_video,
    wait_for,
)

pytestmark = pytest.mark.slow


@pytest.mark.parametrize(
    "profile,width,height,noise,ff_profile",
    [("main", 1280, 720, 8, "Main"), ("high", 1920, 1080, 4, "High")],
)
async def test_records_h264_and_aac_bit_exact(
    make_server: Any,
    tmp_path: Path,
    profile: str,
    width: int,
    height: int,
    noise: float,
    ff_profile: str,
) -> None:
    if need_tool("ffprobe") is None:
        pytest.skip("ffprobe is not installed")
    srv = make_server(storage_fragment_duration=1.0)
    clip = h264_clip(width=width, height=height, seconds=4.0, profile=profile, noise=noise, crf=20)
    assert max(len(f.data) for f in clip if f.keyframe) > 200_000  # big keyframes survive
    ch, _ = storage_channel(srv, "cam")
    cam = Camera(srv, ch, clip, opus_packets(4.0))
    await cam.connect()
    t0 = await asyncio.to_thread(cam.join)
    await wait_for(lambda: cam.offer_at is not None, 10)
    assert cam.offer_at is not None and cam.offer_at - t0 < 1.0
    await cam.master.wait_sent()
    await asyncio.sleep(0.5)
    await cam.close()  # the master leaves: the session ends and its last fragment is kept
    await wait_for(lambda: not sessions(srv).masters, 15)
    assert cam.offers == 1 and cam.status == []

    frags = fragments_of(srv, "cam-stream")
    assert len(frags) >= 3, sessions(srv).ended
    video, audio_blocks, parsed = stored_video(srv, frags)
    assert video == sent_video(cam)  # every frame, in order, byte for byte
    assert audio_blocks > 120  # ~4 s of AAC at 48 kHz is ~187 frames
    total_ms = sum(f.duration_ms for f in frags)
    assert abs(total_ms - 4000) <= 200, total_ms
    assert [f.number for f in frags] == sorted(f.number for f in frags)
    for p in parsed:
        assert p.blocks[0].keyframe

    frames = 0
    for i, f in enumerate(frags):
        path = tmp_path / f"{i}.mkv"
        path.write_bytes(fragment_bytes(srv, f))
        streams = ffprobe_fragment(path)["streams"]
        v = next(s for s in streams if s["codec_type"] == "video")
        a = next(s for s in streams if s["codec_type"] == "audio")
        assert v["codec_name"] == "h264" and v["profile"] == ff_profile
        assert (v["width"], v["height"]) == (width, height)
        assert a["codec_name"] == "aac" and int(a["sample_rate"]) == 48000
        frames += int(v["nb_read_frames"])
        assert ffmpeg_decode_errors(path) == ""
    assert frames == len(clip)
