"""Regression tests for server bugs that the browser end-to-end tests exposed, reproduced without
a browser so they run fast and pin the exact condition: the real Recorder and FragmentStore, fed
the way a browser's media arrives."""

from __future__ import annotations

import asyncio
import fractions
import subprocess
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import av
import numpy as np

from openkvs.media import aac, mkv
from openkvs.webrtc.opus_in import PoolStage
from openkvs.webrtc.recorder import Recorder

from ..mediagen import h264_clip
from ..playback.support import ffmpeg_decode_errors, tool
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


def record(
    server: ServerThread,
    stream_name: str,
    *,
    sender_report_at: int | None = None,
    audio_stall: tuple[int, int] | None = None,
    audio: Callable[[int], av.AudioFrame] = tone_frame,
    streaming_for: tuple[float, float] | None = None,
    stage_every: int = 0,
    payloads: list[bytes] | None = None,
) -> tuple[Recorder, list[tuple[int, int, list[int]]]]:
    """Feed a Recorder 3 s of H.264 (keyframe every 0.5 s) and 20 ms audio frames, in media
    order. ``sender_report_at``: at that audio frame, sender reports place audio 85 ms earlier
    than its arrival (what Chrome's reports do). ``audio_stall=(first, last)``: those audio
    frames are held back and delivered in one burst after ``last`` (a busy event loop).
    ``audio``: the decoded frame at a pts (a 440 Hz tone by default).
    ``streaming_for=(video s, audio s)``: the KVS WebRTC C SDK sample's session after a
    reconnect: its packets carry the media time it had reached (video, audio), its sender
    reports (every 0.5 s) the time since this session's first frame. ``stage_every=k``: every
    k-th frame goes through the recorder's decoding-job stage when it offers one (as
    ``OpusIn`` does while nobody listens live), the others through ``on_audio``. ``payloads``
    collects the stored audio blocks' bytes.
    Returns the recorder and each stored fragment's (start, end, audio block times)."""
    kv = server.client("kinesisvideo")
    kv.create_stream(StreamName=stream_name, DataRetentionInHours=1)
    stream = server.services.control.get_stream(name=stream_name)
    video = h264_clip(width=320, height=180, seconds=3.0, gop=15, noise=2.0)
    pool = ThreadPoolExecutor(2)
    video0, audio0 = (0, 0)
    if streaming_for is not None:
        video0, audio0 = round(streaming_for[0] * 90000), round(streaming_for[1] * 48000)

    async def run() -> Recorder:
        recorder = Recorder(
            stream, server.services.fragments, pool, target_ms=1000, request_keyframe=lambda: False
        )
        recorder.start()

        delivered = 0
        staged: list[asyncio.Task[None]] = []

        async def through_stage(stage: PoolStage, frame: av.AudioFrame) -> None:
            result = await asyncio.get_running_loop().run_in_executor(pool, stage.run, [frame])
            stage.done(result, [frame])

        def deliver(frame: av.AudioFrame) -> None:
            """What the storage session does: the packet arrives, then its decoded frame."""
            nonlocal delivered
            delivered += 1
            recorder.audio_arrived(int(frame.pts))
            stage = recorder.audio_stage() if stage_every and delivered % stage_every == 0 else None
            if stage is not None:
                staged.append(asyncio.ensure_future(through_stage(stage, frame)))
            else:
                recorder.on_audio([frame])

        frames = iter(video)
        next_video = next(frames, None)
        held: list[av.AudioFrame] = []
        for i in range(150):
            now_ms = i * 20
            while next_video is not None and next_video.pts_ms <= now_ms:
                recorder.on_video(next_video.data, video0 + int(round(next_video.pts_ms * 90)))
                next_video = next(frames, None)
            frame = audio(audio0 + i * 960)
            if audio_stall is not None and audio_stall[0] <= i <= audio_stall[1]:
                held.append(frame)
            else:
                deliver(frame)
            if audio_stall is not None and i == audio_stall[1]:
                for late in held:
                    deliver(late)
                    await asyncio.sleep(0.002)
            if streaming_for is not None and i and i % 25 == 0:
                ntp_s = 3_000_000_000.0 + now_ms / 1000  # the sender's wall clock
                recorder.on_sender_report("video", ntp_s, now_ms * 90)
                recorder.on_sender_report("audio", ntp_s, now_ms * 48)
            if i == sender_report_at:
                recorder.on_sender_report("video", 1000.0, 0)
                recorder.on_sender_report("audio", 1000.0, 4080)
            await asyncio.sleep(0.002)
        await asyncio.sleep(0.3)
        await recorder.close()
        assert all(task.done() for task in staged)
        if stage_every:
            assert staged, "the stage was never offered"
        return recorder

    try:
        recorder = server.call(run())
    finally:
        pool.shutdown()
    out = []
    for frag in server.call(server.services.fragments.list_fragments(stream, limit=100)):
        parsed = mkv.read_fragment(server.call(server.services.fragments.read(frag)))
        audio = [b.timecode for b in parsed.blocks if b.track == 2]
        if payloads is not None:
            payloads += [b.data for b in parsed.blocks if b.track == 2]
        out.append((frag.producer_ts, frag.producer_ts + frag.duration_ms, audio))
    return recorder, out


def test_recorded_audio_stays_in_order_when_sender_reports_move_it_earlier(
    make_server: Callable[..., ServerThread],
) -> None:
    """Chrome's RTCP sender reports put its audio ~85 ms earlier than the arrival time the
    recorder anchored it at. The recorder used to write the next AAC frames over the previous
    ones (FFmpeg: "non monotonically increasing dts"); they must stay strictly in order, with
    only the overlapping ~85 ms dropped."""
    recorder, fragments = record(make_server(), "sr-jump", sender_report_at=50)
    assert len(fragments) >= 2
    times = [t for _, _, audio in fragments for t in audio]
    assert times == sorted(times) and len(set(times)) == len(times), times
    steps = [b - a for a, b in zip(times, times[1:], strict=False)]
    assert all(20 <= s <= 22 for s in steps), steps  # contiguous: no overlap, no hole
    # Only what overlapped was dropped: about 85 ms, i.e. 3 to 5 AAC frames.
    assert 3 <= recorder.stats.dropped_audio <= 5, recorder.stats


def test_audio_is_recorded_after_the_c_sdk_sample_reconnects(
    make_server: Callable[..., ServerThread],
) -> None:
    """The KVS WebRTC C SDK's sample master, in a storage session after a reconnect (here after
    80 s of video and 73 s of its slower audio), sends sender reports whose RTP times count from
    the session's first frame, while its packets carry the media time it had reached. Lip sync
    through those reports put its audio 7 s before its video: every fragment of the session was
    stored without audio. Such reports are not used; the audio is aligned by arrival."""
    recorder, fragments = record(make_server(), "sdk-reconnect", streaming_for=(80.0, 73.0))
    assert len(fragments) >= 2
    for start, end, audio in fragments[:-1]:  # the last one is cut short by the hang-up
        assert audio, (start, end)
        assert audio[0] - start <= 25 and end - audio[-1] <= 45, (start, end, audio[0], audio[-1])
    assert recorder.clock.video.report is None and recorder.clock.audio.report is None
    assert recorder.stats.dropped_audio <= 1, recorder.stats


def test_fragments_keep_their_audio_when_it_arrives_late(
    make_server: Callable[..., ServerThread],
) -> None:
    """While a viewer joins, the event loop is busy and a browser master's audio reaches the
    recorder up to ~900 ms after the video of the same moment. Fragments closed meanwhile used
    to be stored without their last audio (the recorder waited 700 ms of video), which hls.js
    reports as buffer holes; every fragment must keep its audio to its end."""
    # Audio frames 40-89 (0.8 s to 1.8 s, across the fragment boundary at 1 s) arrive in one
    # burst at 1.8 s: the audio of 0.8 s comes 1 s late.
    recorder, fragments = record(make_server(), "late-audio", audio_stall=(40, 89))
    assert len(fragments) >= 3
    for start, end, audio in fragments[:-1]:  # the last one is cut short by the hang-up
        assert audio, (start, end)
        assert audio[0] - start <= 25 and end - audio[-1] <= 45, (start, end, audio[0], audio[-1])
        steps = [b - a for a, b in zip(audio, audio[1:], strict=False)]
        assert all(20 <= s <= 22 for s in steps), steps
    # At most the AAC encoder's priming frame, which starts before the first keyframe.
    assert recorder.stats.dropped_audio <= 1, recorder.stats


def test_silence_is_stored_without_encoding_and_the_tone_in_place(
    make_server: Callable[..., ServerThread], tmp_path: Path
) -> None:
    """Silence, 0.8 s of tone, silence: the silent AAC frames are not encoded, the stored audio
    is one continuous timeline that FFmpeg decodes without an error (GetClip's MP4), silent
    where the source was and with the tone where it was."""

    def audio(pts: int) -> av.AudioFrame:
        frame = tone_frame(pts)
        if not 48000 <= pts < 86400:  # the tone from 1.0 s to 1.8 s
            for plane in frame.planes:
                plane.update(bytes(plane.buffer_size))
        return frame

    server = make_server()
    recorder, fragments = record(server, "silent-gaps", audio=audio)
    times = [t for _, _, blocks in fragments for t in blocks]
    steps = [b - a for a, b in zip(times, times[1:], strict=False)]
    assert times and all(20 <= s <= 22 for s in steps), steps  # no hole, no overlap
    stats = recorder.stats
    # 0.8 s of tone is ~38 frames; the encoder also takes a few around each edge.
    assert stats.aac_silent_frames >= 90, stats
    assert stats.aac_encoded_frames <= 38 + 2 * (aac.DRAIN + aac.WARMUP + 2), stats

    client = server.client("kinesis-video-archived-media")
    start, end = fragments[0][0], fragments[-1][1]
    clip = client.get_clip(
        StreamName="silent-gaps",
        ClipFragmentSelector={
            "FragmentSelectorType": "PRODUCER_TIMESTAMP",
            "TimestampRange": {"StartTimestamp": start / 1000, "EndTimestamp": end / 1000},
        },
    )["Payload"].read()
    path = tmp_path / "clip.mp4"
    path.write_bytes(clip)
    assert ffmpeg_decode_errors(path) == ""
    pcm = np.frombuffer(
        subprocess.run(
            [tool("ffmpeg"), "-nostdin", "-v", "error", "-i", str(path), "-map", "0:a"]
            + ["-ac", "1", "-f", "f32le", "-"],
            capture_output=True,
            timeout=120,
            check=True,
        ).stdout,
        dtype=np.float32,
    )
    # The tone is 0.8 s long, 1.0 s into the clip (which starts with the first video frame;
    # the audio and video clocks are both anchored at their first arrival, a few ms apart).
    loud = np.flatnonzero(np.abs(pcm) > 0.05)
    onset_ms, end_ms = loud[0] / 48, loud[-1] / 48
    assert 970 <= onset_ms <= 1050 and 780 <= end_ms - onset_ms <= 820, (onset_ms, end_ms)
    middle = pcm[loud[0] + 9600 :][:9600]
    spectrum = np.abs(np.fft.rfft(middle * np.hanning(len(middle))))
    assert abs(np.argmax(spectrum) * 48000 / len(middle) - 440) <= 5
    # Silence decodes to digital silence away from the edges.
    assert np.max(np.abs(pcm[: max(0, loud[0] - 2400)])) < 1e-3
    assert np.max(np.abs(pcm[loud[-1] + 2400 :])) < 1e-3
    assert len(pcm) >= loud[-1] + 48 * 500


def test_audio_encoded_in_the_decoding_job_is_stored_as_through_on_audio(
    make_server: Callable[..., ServerThread],
) -> None:
    """Frames handed over through the recorder's stage (AAC encoding in the Opus decoding job)
    mixed with frames through ``on_audio`` (while the stage is busy, or not asked for): the
    same AAC frames are stored, in one continuous timeline, as when all go through on_audio."""
    server = make_server()
    plain: list[bytes] = []
    mixed: list[bytes] = []
    rec_plain, frags_plain = record(server, "audio-plain", payloads=plain)
    rec_mixed, frags_mixed = record(server, "audio-staged", stage_every=2, payloads=mixed)
    times = [t for _, _, blocks in frags_mixed for t in blocks]
    steps = [b - a for a, b in zip(times, times[1:], strict=False)]
    assert times and all(20 <= s <= 22 for s in steps), [s for s in steps if not 20 <= s <= 22]
    assert rec_mixed.stats.audio_frames == rec_plain.stats.audio_frames == 150
    assert rec_mixed.stats.aac_frames == rec_plain.stats.aac_frames
    assert rec_mixed.stats.dropped_audio == rec_plain.stats.dropped_audio
    assert mixed == plain
