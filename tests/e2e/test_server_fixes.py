"""Regression tests for server bugs that the browser end-to-end tests exposed, reproduced without
a browser so they run fast and pin the exact condition."""

from __future__ import annotations

import asyncio
import fractions
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import av
import numpy as np

from openkvs.media import mkv
from openkvs.webrtc.recorder import Recorder

from ..mediagen import h264_clip
from ..support import ServerThread

AUDIO_TB = fractions.Fraction(1, 48000)


def tone_frame(pts: int) -> av.AudioFrame:
    t = (np.arange(960) + pts) / 48000
    wave = (np.sin(2 * np.pi * 440 * t) * 8000).astype(np.int16)
    frame = av.AudioFrame.from_ndarray(
        np.repeat(wave[:, None], 2, axis=1).reshape(1, -1), format="s16", layout="stereo"
    )
    frame.sample_rate = 48000
    frame.pts = pts
    frame.time_base = AUDIO_TB
    return frame


def test_recorded_audio_stays_in_order_when_sender_reports_move_it_earlier(
    make_server: Callable[..., ServerThread],
) -> None:
    """Chrome's RTCP sender reports put its audio ~85 ms earlier than the arrival time the
    recorder anchored it at. The recorder used to write the next AAC frames over the previous
    ones (FFmpeg: "non monotonically increasing dts"); they must stay strictly in order, with
    only the overlapping ~85 ms dropped."""
    server = make_server()
    kv = server.client("kinesisvideo")
    kv.create_stream(StreamName="sr-jump", DataRetentionInHours=1)
    stream = server.services.control.get_stream(name="sr-jump")
    video = h264_clip(width=320, height=180, seconds=3.0, gop=15, noise=2.0)
    pool = ThreadPoolExecutor(2)

    async def record() -> Recorder:
        recorder = Recorder(
            stream,
            server.services.fragments,
            pool,
            target_ms=1000,
            request_keyframe=lambda: False,
        )
        recorder.start()
        frames = iter(video)
        next_video = next(frames, None)
        for i in range(150):  # 3 s of 20 ms audio frames, video interleaved at its own times
            now_ms = i * 20
            while next_video is not None and next_video.pts_ms <= now_ms:
                recorder.on_video(next_video.data, int(round(next_video.pts_ms * 90)))
                next_video = next(frames, None)
            recorder.on_audio(tone_frame(i * 960))
            if i == 50:
                # Both tracks' sender reports at the same NTP instant: video RTP 0 and audio RTP
                # 4080, i.e. the audio was captured 85 ms before its arrival suggested.
                recorder.on_sender_report("video", 1000.0, 0)
                recorder.on_sender_report("audio", 1000.0, 4080)
            await asyncio.sleep(0.002)
        await asyncio.sleep(0.3)
        await recorder.close()
        return recorder

    try:
        recorder = server.call(record())
    finally:
        pool.shutdown()
    stored = server.call(server.services.fragments.list_fragments(stream, limit=100))
    assert len(stored) >= 2
    times: list[int] = []
    for frag in stored:
        parsed = mkv.read_fragment(server.call(server.services.fragments.read(frag)))
        times += [b.timecode for b in parsed.blocks if b.track == 2]
    assert times == sorted(times) and len(set(times)) == len(times), times
    steps = [b - a for a, b in zip(times, times[1:], strict=False)]
    assert all(20 <= s <= 22 for s in steps), steps  # contiguous: no overlap, no hole
    # Only what overlapped was dropped: about 85 ms, i.e. 3 to 5 AAC frames.
    assert 3 <= recorder.stats.dropped_audio <= 5, recorder.stats
