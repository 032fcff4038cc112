"""The RTCP sender reports a viewer gets with the master's relayed video map its RTP timestamps to
the master's capture clock (from the master's own sender reports), not to the server's send time.

A camera whose clock runs 700 ms behind says so in its sender reports; the viewer's reports then
put every relayed frame 700 ms (plus the relay's own small delay) before the moment the report
arrives. When the camera's clock is set right, they follow it back to the real time.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest

from openkvs.webrtc import tap

from ..mediagen import h264_clip
from .harness import Camera, sessions, storage_channel, wait_for

pytestmark = pytest.mark.slow

BEHIND = 0.7  # seconds the camera's clock is behind at first
SETTLE = 3.0  # seconds for a new camera clock to reach the viewer's reports (SRs every 0.5-1.5 s)


async def test_viewer_sender_reports_carry_the_masters_capture_clock(make_server: Any) -> None:
    srv = make_server(storage_fragment_duration=1.0)
    ch, _ = storage_channel(srv, "lat")
    cam = Camera(
        srv, ch, h264_clip(width=320, height=240, seconds=4.0), loops=6, clock_offset=-BEHIND
    )
    await cam.connect()
    await asyncio.to_thread(cam.join)
    await wait_for(lambda: len(cam.master.video_track.sent) > 10, 20)  # type: ignore[union-attr]

    # (arrival, Unix seconds; the report) for each sender report the viewer receives
    reports: list[tuple[float, tap.SenderReport]] = []
    viewer = Camera(
        srv,
        ch,
        None,
        client_id="viewer",
        on_video_report=lambda r: reports.append((time.time(), r)),
    )
    await viewer.connect()
    await asyncio.to_thread(viewer.join)
    await wait_for(lambda: len(viewer.master.received_video) > 10, 30)

    def lags(since: float) -> list[float]:
        """How long before its arrival each report (since then) says its frame was captured."""
        return [at - r.ntp_seconds for at, r in reports if at >= since]

    # The camera's clock 700 ms behind: the viewer's reports are too, by the same amount plus
    # the relay's delay (loopback: well under 500 ms even on a loaded machine). Without the
    # mapping they would carry the server's send time, about 0 ms before arrival.
    start = time.time() + SETTLE
    await wait_for(lambda: len(lags(start)) >= 3, 20)
    behind = lags(start)
    assert all(BEHIND - 0.02 < lag < BEHIND + 0.5 for lag in behind), behind

    # Consecutive reports map RTP timestamps at the video clock's rate (90 kHz), in one clock.
    pairs = [r for at, r in reports if at >= start]
    for a, b in zip(pairs, pairs[1:], strict=False):
        rtp = ((b.rtp_timestamp - a.rtp_timestamp) & 0xFFFFFFFF) / 90000
        assert abs((b.ntp_seconds - a.ntp_seconds) - rtp) < 0.002, (a, b)

    # The camera's clock set right: the viewer's reports follow it to the real capture times.
    cam.master.clock_offset = 0.0
    start = time.time() + SETTLE
    await wait_for(lambda: len(lags(start)) >= 3, 20)
    right = lags(start)
    assert all(-0.02 < lag < 0.5 for lag in right), right

    stats = [s for s in sessions(srv).stats() if s["role"] == "viewer"]
    assert stats and stats[0]["sender_reports_with_capture_time"] >= 6, stats
    await viewer.close()
    await cam.close()
    await wait_for(lambda: not sessions(srv).masters and not sessions(srv).viewers, 15)


def test_check_internals_fails_loudly_when_sender_internals_move(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import aiortc.rtcrtpsender as rs

    tap.check_internals()

    async def run_rtcp(self: object) -> None:  # builds no sender report of its own
        pass

    monkeypatch.setattr(rs.RTCRtpSender, "_run_rtcp", run_rtcp)
    with pytest.raises(RuntimeError, match="_run_rtcp no longer uses RtcpSrPacket"):
        tap.check_internals()
    monkeypatch.undo()
    monkeypatch.delattr(rs.RTCRtpSender, "_next_encoded_frame")
    with pytest.raises(RuntimeError, match="no _next_encoded_frame"):
        tap.check_internals()
    monkeypatch.undo()
    tap.check_internals()
