"""Capture times of relayed video: from the master's sender report to the frames the viewer's
sender hands out."""

from __future__ import annotations

import asyncio

import pytest

from openkvs.webrtc import tap
from openkvs.webrtc.video import SENT_HISTORY, VideoRelayTrack

IDR = b"\x00\x00\x00\x01\x65\x88"  # an IDR slice: a keyframe
P = b"\x00\x00\x00\x01\x41\x9a"  # a non-IDR slice


def test_report_maps_rtp_timestamps_across_the_wrap() -> None:
    report = tap.SenderReport(ssrc=1, ntp_seconds=1000.0, rtp_timestamp=0xFFFF_FF00)
    assert report.time_of(0xFFFF_FF00, 90000) == 1000.0
    # 0x100 ticks after the wrap, as a 32-bit or an unwrapped (64-bit) timestamp.
    assert report.time_of(0x0000_0100, 90000) == pytest.approx(1000.0 + 0x200 / 90000)
    assert report.time_of((1 << 32) + 0x100, 90000) == pytest.approx(1000.0 + 0x200 / 90000)
    assert report.time_of(0xFFFF_FF00 - 90000, 90000) == pytest.approx(999.0)


def test_ntp64_round_trips_through_the_report_conversion() -> None:
    ntp = tap.ntp64(1_796_315_675.25)
    assert ntp >> 32 == 1_796_315_675 + tap.NTP_UNIX_OFFSET
    assert (ntp & 0xFFFF_FFFF) == 1 << 30
    assert ntp / (1 << 32) - tap.NTP_UNIX_OFFSET == pytest.approx(1_796_315_675.25)


async def test_relay_keeps_the_capture_times_of_the_frames_it_handed_out() -> None:
    relay = VideoRelayTrack()
    relay.push(IDR, 5000, 100.0)
    relay.push(P, 8000, 100.0 + 3000 / 90000)
    relay.push(P, 11000, None)  # before the master's first report
    assert relay.capture_time(0) is None  # queued, not yet handed out
    for _ in range(3):
        await asyncio.wait_for(relay.recv(), 1)
    # Output timestamps start at 0 and follow the master's steps.
    assert relay.capture_time(0) == 100.0
    assert relay.capture_time(3000) == pytest.approx(100.0 + 3000 / 90000)
    assert relay.capture_time(6000) is None
    assert relay.capture_time(1500) is None  # no frame there
    for i in range(SENT_HISTORY):
        relay.push(P, 14000 + 3000 * i, 200.0 + i)
        await asyncio.wait_for(relay.recv(), 1)
    assert relay.capture_time(0) is None  # forgotten
    assert relay.capture_time(9000 + 3000 * (SENT_HISTORY - 1)) == 200.0 + SENT_HISTORY - 1
    relay.stop()
