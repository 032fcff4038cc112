"""The session clock keeps audio on real time when the sender's audio clock is not."""

from __future__ import annotations

import random

from openkvs.media.timeline import DRIFT_STEP_MS, SessionClock

VIDEO_RATE, AUDIO_RATE = 90000, 48000
T0 = 1_800_000_000_000.0  # server epoch ms at the first packet


def _run(
    seconds: float,
    *,
    audio_speed: float,
    jitter_ms: float = 15.0,
    wall_clock_reports: bool = True,
    seed: int = 7,
    step_ms: float | None = None,
    audio_stall: tuple[float, float, float] | None = None,
    streaming_for: tuple[float, float] = (0.0, 0.0),
) -> tuple[SessionClock, list[tuple[float, float]]]:
    """A sender like the KVS WebRTC C SDK's sample: video at real time (25 fps), Opus packets of
    20 ms sent every ``20 / audio_speed`` ms, RTP timestamps from the media, sender reports from
    its wall clock (or from the media, as a browser's are). ``streaming_for``: the media time
    (s) the sample's video and audio had reached when this session began (its second session
    on), which its packets carry and its reports (time since the session's first frame) do not.
    Returns (arrival, recorded ms)."""
    rnd = random.Random(seed)
    clock = SessionClock()
    if step_ms is not None:
        clock.drift.step_ms = step_ms
    events: list[tuple[float, str, int]] = []
    video0, audio0 = round(streaming_for[0] * VIDEO_RATE), round(streaming_for[1] * AUDIO_RATE)
    for i in range(int(seconds * 25)):
        events.append((i * 40.0, "video", video0 + i * 3600))
    for i in range(int(seconds * 50 * audio_speed)):
        events.append((i * 20.0 / audio_speed, "audio", audio0 + i * 960))
    for k in range(1, int(seconds)):  # a report for each track every second
        send = k * 1000.0
        events.append((send, "sr-video", 0))
        events.append((send + 1, "sr-audio", 0))
    events.sort()
    placed: list[tuple[float, float]] = []
    for send, kind, ts in events:
        arrival = T0 + send + 30 + rnd.uniform(0, jitter_ms)
        if kind == "audio" and audio_stall and audio_stall[0] <= send < audio_stall[1]:
            arrival += audio_stall[2]  # the sender's audio thread (or this loop) stalled
        ntp = T0 - 5_000 + send  # the sender's NTP clock: another epoch
        if kind == "video":
            clock.video_ms(ts, arrival)
        elif kind == "audio":
            clock.audio_arrival(ts, arrival)
            placed.append((arrival, clock.audio_ms(ts, arrival)))
        elif kind == "sr-video":
            video_ts = send * VIDEO_RATE / 1000 + (0 if wall_clock_reports else video0)
            clock.video.sender_report(ntp, round(video_ts), arrival)
        else:
            media_ts = send * AUDIO_RATE / 1000
            if not wall_clock_reports:
                media_ts = audio0 + media_ts * audio_speed
            clock.audio.sender_report(ntp, round(media_ts), arrival)
    return clock, placed


def _spread(placed: list[tuple[float, float]]) -> float:
    """How far the audio's lateness (arrival less recorded time) wanders: bounded by a step
    plus the jitter when audio stays on real time; it grows without bound when it drifts."""
    lags = [arrival - ms for arrival, ms in placed]
    return max(lags) - min(lags)


def test_a_slow_audio_clock_is_kept_on_real_time() -> None:
    # 1.7% slow: the C SDK sample's audio thread on a loaded machine. Without the steps, its
    # audio is 10 s behind its video after ten minutes.
    clock, placed = _run(600, audio_speed=0.983)
    assert clock.drift.steps >= 50
    assert _spread(placed[500:]) < DRIFT_STEP_MS + 60


def test_a_fast_audio_clock_is_stepped_back() -> None:
    clock, placed = _run(120, audio_speed=1.02)
    assert clock.drift.steps >= 10
    assert clock.drift.correction < 0
    assert _spread(placed[500:]) < DRIFT_STEP_MS + 60


def test_agreeing_clocks_are_never_stepped() -> None:
    # A browser: audio at real time, reports from the media clock; network jitter up to 60 ms.
    clock, placed = _run(600, audio_speed=1.0, jitter_ms=60.0, wall_clock_reports=False)
    assert clock.drift.steps == 0
    assert clock.drift.correction == 0
    assert _spread(placed[500:]) < 80


def test_without_steps_the_slow_clock_drifts() -> None:
    # What the steps prevent: the same sender with the drift watch disabled.
    clock, placed = _run(120, audio_speed=0.983, step_ms=1e9)
    assert clock.drift.steps == 0
    assert _spread(placed[500:]) > 1500


def test_steps_apply_from_the_next_packet_on() -> None:
    clock, placed = _run(60, audio_speed=0.97)
    assert clock.drift.steps >= 1
    assert clock.drift.at(0) == 0.0  # audio from before the first step keeps its place
    assert clock.drift.at(10**12) == clock.drift.correction


def test_a_stall_of_a_second_is_no_drift() -> None:
    clock, placed = _run(
        60, audio_speed=1.0, wall_clock_reports=False, audio_stall=(20_000, 21_300, 150)
    )
    assert clock.drift.steps == 0


def test_a_lasting_shift_of_audio_alone_is_stepped() -> None:
    # The same lateness for three seconds and on: the sender's audio really moved.
    clock, placed = _run(
        60, audio_speed=1.0, wall_clock_reports=False, audio_stall=(20_000, 60_000, 150)
    )
    assert clock.drift.steps == 1
    assert 80 < clock.drift.correction <= 170


def _placement(placed: list[tuple[float, float]]) -> float:
    """Where the audio was recorded against its arrival (ms), at the end."""
    return min(arrival - ms for arrival, ms in placed[-100:])


def test_reports_that_disagree_with_the_packets_are_not_used() -> None:
    # The C SDK sample's second session (a reconnect after 80 s of video, 73 s of its slower
    # audio): its packets carry the media time, its reports the time since this session began.
    # Through those reports its audio was placed 7 s before its video: outside every fragment.
    clock, placed = _run(60, audio_speed=0.98, streaming_for=(80.0, 73.0))
    assert clock.video.report is None and clock.audio.report is None
    assert clock.video.refused_reports >= 50 and clock.audio.refused_reports >= 50
    assert clock.audio.report_offset_ms is not None
    assert -73_000 < clock.audio.report_offset_ms < -71_000  # less what the slow audio lost
    # Aligned by arrival: recorded about when it arrived, as the first session is.
    _, first = _run(60, audio_speed=0.98)
    assert abs(_placement(placed) - _placement(first)) < DRIFT_STEP_MS + 60
    assert -100 < _placement(placed) < DRIFT_STEP_MS + 100


def test_reports_that_agree_with_the_packets_are_used() -> None:
    # A browser, and the C SDK's first session: every report is taken.
    clock, _ = _run(30, audio_speed=1.0, wall_clock_reports=False, streaming_for=(5.0, 5.0))
    assert clock.video.report is not None and clock.audio.report is not None
    assert clock.video.refused_reports == 0 and clock.audio.refused_reports == 0
    clock, _ = _run(10, audio_speed=0.98)
    assert clock.video.refused_reports == 0 and clock.audio.refused_reports == 0


def test_a_report_before_any_packet_is_not_used() -> None:
    clock = SessionClock()
    assert not clock.video.sender_report(T0, 123456, T0)
    assert clock.video.report is None
    clock.video_ms(123456, T0 + 10)
    assert clock.video.sender_report(T0, 123456 + 900, T0 + 20)
    assert clock.video.report is not None
