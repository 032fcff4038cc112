"""JoinStorageSessionAsViewer through real signaling: live video out, audio in both directions."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from botocore.exceptions import ClientError

from ..mediagen import h264_clip, opus_packets
from .harness import Camera, sessions, storage_channel, wait_for

pytestmark = pytest.mark.slow


async def test_viewers_see_the_master_and_are_heard(make_server: Any) -> None:
    srv = make_server(storage_max_viewers=10, storage_fragment_duration=1.0)
    ch, _ = storage_channel(srv, "live")
    cam = Camera(srv, ch, h264_clip(width=320, height=240, seconds=6.0), opus_packets(6.0))
    await cam.connect()
    await asyncio.to_thread(cam.join)
    await wait_for(lambda: len(cam.master.video_track.sent) > 10, 20)  # type: ignore[union-attr]
    viewers = [
        Camera(
            srv,
            ch,
            None,
            opus_packets(4.0, freq=660.0) if i == 0 else None,
            client_id=f"viewer-{i}",
        )
        for i in range(10)
    ]
    for v in viewers:
        await v.connect()
    await asyncio.gather(*(asyncio.to_thread(v.join) for v in viewers))
    # Every viewer decodes the master's live video (forwarded without re-encoding).
    await wait_for(lambda: all(len(v.master.received_video) >= 20 for v in viewers), 30)
    frame = viewers[5].master.received_video[-1]
    assert (frame.width, frame.height) == (320, 240)
    # The talking viewer's audio reaches the master (and the other viewers).
    await wait_for(lambda: len(cam.master.received_audio) >= 25, 20)
    await wait_for(lambda: len(viewers[3].master.received_audio) >= 25, 20)
    stats = {s["client_id"]: s for s in sessions(srv).stats() if s["role"] == "viewer"}
    assert len(stats) == 10 and all(s["has_master"] for s in stats.values())
    for v in viewers:
        await v.close()
    await cam.close()
    await wait_for(lambda: not sessions(srv).masters and not sessions(srv).viewers, 15)


async def test_viewer_cap_and_same_client_replaces(make_server: Any) -> None:
    srv = make_server(storage_max_viewers=2)
    ch, _ = storage_channel(srv, "cap")
    a = Camera(srv, ch, None, client_id="a")
    b = Camera(srv, ch, None, client_id="b")
    c = Camera(srv, ch, None, client_id="c")
    for v in (a, b):
        await v.connect()
        await asyncio.to_thread(v.join)
    with pytest.raises(ClientError) as exc:
        await asyncio.to_thread(c.join)
    err = exc.value.response
    assert err["Error"]["Code"] == "ClientLimitExceededException"
    assert err["ResponseMetadata"]["HTTPStatusCode"] == 480
    assert "maximum number of viewers connected to the session" in err["Error"]["Message"]
    # The same clientId joining again replaces its older session instead of taking a slot.
    await asyncio.to_thread(a.join)
    await wait_for(lambda: a.offers >= 2, 10)
    assert len(sessions(srv).viewers[ch]) == 2
    for v in (a, b, c):
        await v.close()


async def test_lone_viewer_gives_up_after_waiting(make_server: Any) -> None:
    srv = make_server(storage_viewer_wait=1.0)
    ch, _ = storage_channel(srv, "alone")
    v = Camera(srv, ch, None, client_id="lonely")
    await v.connect()
    await asyncio.to_thread(v.join)
    await wait_for(lambda: bool(sessions(srv).viewers.get(ch)), 5)
    # Connected with no master: ends after storage_viewer_wait.
    await wait_for(lambda: not sessions(srv).viewers.get(ch), 15)
    await v.close()
