"""GetMedia's live tail follows a WebRTC storage session: a camera (aiortc, through the real
signaling and JoinStorageSession) streams while a boto3 GetMedia started before it reads."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from openkvs.media import mkv

from ..mediagen import h264_clip, opus_packets
from ..webrtc.harness import (
    Camera,
    fragment_bytes,
    fragments_of,
    sessions,
    storage_channel,
    wait_for,
)
from .ebmlcheck import split_chunks
from .reading import read_chunk

pytestmark = pytest.mark.slow


async def test_live_tail_receives_storage_session_fragments(make_server: Any) -> None:
    srv = make_server(storage_fragment_duration=1.0)
    channel, _ = storage_channel(srv, "cam")
    kv = srv.client("kinesisvideo")
    ep = kv.get_data_endpoint(StreamName="cam-stream", APIName="GET_MEDIA")["DataEndpoint"]
    media = srv.client("kinesis-video-media", endpoint=ep, read_timeout=30)
    payload = media.get_media(StreamName="cam-stream", StartSelector={"StartSelectorType": "NOW"})[
        "Payload"
    ]
    reader = asyncio.ensure_future(
        asyncio.to_thread(lambda: [split_chunks(read_chunk(payload.read))[0] for _ in range(2)])
    )
    cam = Camera(srv, channel, h264_clip(seconds=4.0), opus_packets(4.0))
    await cam.connect()
    await asyncio.to_thread(cam.join)
    chunks = await asyncio.wait_for(reader, 60)
    await cam.master.wait_sent()
    await cam.close()
    await wait_for(lambda: not sessions(srv).masters, 15)
    payload.close()

    stored = {f.number: f for f in fragments_of(srv, "cam-stream")}
    for chunk in chunks:
        number = int(chunk.before["AWS_KINESISVIDEO_FRAGMENT_NUMBER"])
        f = stored[number]  # the chunk is a fragment the session stored
        assert chunk.after["AWS_KINESISVIDEO_CONTINUATION_TOKEN"] == str(number)
        assert chunk.blocks == [
            (b.track, b.timecode, b.data) for b in mkv.read_fragment(fragment_bytes(srv, f)).blocks
        ]
        assert any(b[0] == 1 for b in chunk.blocks)
    first, second = (int(c.before["AWS_KINESISVIDEO_FRAGMENT_NUMBER"]) for c in chunks)
    assert first < second and [n for n in sorted(stored) if first <= n <= second] == [first, second]
