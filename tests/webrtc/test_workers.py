"""Storage sessions in worker processes (webrtc_workers > 0) behave as in-process ones."""

from __future__ import annotations

import asyncio
import os
import signal
from pathlib import Path
from typing import Any

import pytest

from ..mediagen import h264_clip, opus_packets
from ..signaling.kvs import Client, b64json
from .harness import (
    Camera,
    fragments_of,
    sent_video,
    sessions,
    storage_channel,
    stored_video,
    wait_for,
)

pytestmark = pytest.mark.slow


async def test_two_workers_record_bit_exact_and_serve_viewers(
    make_server: Any, tmp_path: Path
) -> None:
    # The workers open their blob store from the same settings as the server (media_url).
    media = tmp_path / "media-elsewhere"
    srv = make_server(webrtc_workers=2, storage_fragment_duration=1.0, media_url=f"file://{media}")
    pool = sessions(srv)
    cams = []
    for name in ("w-left", "w-right"):
        ch, _ = storage_channel(srv, name)
        cam = Camera(srv, ch, h264_clip(width=320, height=240, seconds=3.0), opus_packets(3.0))
        await cam.connect()
        cams.append((name, ch, cam))
    await asyncio.gather(*(asyncio.to_thread(c.join) for _, _, c in cams))
    assert sorted(pool.assigned.values()) == [0, 1]  # one channel per worker
    viewer = Camera(srv, cams[0][1], None, client_id="watcher")
    await viewer.connect()
    await asyncio.to_thread(viewer.join)
    await wait_for(lambda: len(viewer.master.received_video) >= 10, 20)
    for _, _, c in cams:
        await c.master.wait_sent()
    await asyncio.sleep(0.5)
    await viewer.close()
    for _, _, c in cams:
        await c.close()
    await wait_for(lambda: not pool.masters and not pool.assigned, 15)
    for name, _, cam in cams:
        video, audio, _ = stored_video(srv, fragments_of(srv, f"{name}-stream"))
        assert video == sent_video(cam)
        assert audio > 60
    assert {e["role"] for e in pool.ended} == {"master", "viewer"}
    assert len(list(media.rglob("*.mkv"))) >= 4
    assert not (srv.settings.data_dir / "media").exists()


async def test_worker_errors_come_back_as_status_responses(make_server: Any) -> None:
    srv = make_server(webrtc_workers=1)
    ch, _ = storage_channel(srv, "w-evil")
    client = await Client.connect(srv, ch)
    await asyncio.to_thread(Camera(srv, ch, None).join)
    msg = await client.recv(timeout=10)
    assert msg["messageType"] in ("SDP_OFFER", "ICE_CANDIDATE")
    await client.send(
        "SDP_ANSWER", b64json({"type": "answer", "sdp": "v=0\r\nnope"}), correlation_id="w1"
    )
    async with asyncio.timeout(10):
        while True:
            msg = await client.recv(timeout=10)
            if msg["messageType"] == "STATUS_RESPONSE":
                break
    assert msg["statusResponse"]["errorType"] == "InvalidArgumentException"
    assert msg["statusResponse"]["correlationId"] == "w1"
    await client.close()


async def test_a_dead_worker_is_replaced(make_server: Any) -> None:
    srv = make_server(webrtc_workers=1, storage_fragment_duration=1.0)
    pool = sessions(srv)
    first = pool.workers[0]
    os.kill(first.process.pid, signal.SIGKILL)
    await wait_for(lambda: pool.workers[0] is not None and pool.workers[0] is not first, 30)
    ch, _ = storage_channel(srv, "w-again")
    cam = Camera(srv, ch, h264_clip(seconds=1.5), None)
    await cam.connect()
    await asyncio.to_thread(cam.join)
    await cam.master.wait_sent()
    await asyncio.sleep(0.3)
    await cam.close()
    await wait_for(lambda: not pool.masters, 15)
    video, _, _ = stored_video(srv, fragments_of(srv, "w-again-stream"))
    assert video == sent_video(cam)
