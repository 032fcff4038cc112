"""One media clock for a session's tracks: RTP timestamps → epoch milliseconds.

Each track is anchored at the arrival time of its first frame. Once RTCP sender reports are known
for both video and audio, audio is placed on the video timeline through the sender's NTP clock
(lip sync as the sender meant it); until then, arrival times align them.

Audio is also kept on real time when the sender's audio clock is not: a sender that produces
audio slower (or faster) than real time, or whose sender reports are computed from its wall clock
while its audio timestamps are not (the KVS WebRTC C SDK's sample sends 20 ms of Opus every
20 ms plus its processing time, and stamps its reports with the wall clock), would otherwise
place its audio further and further behind its video, until every audio frame falls outside the
fragment being written. ``AudioDrift`` watches how late audio arrives compared with video and
steps the audio timeline when the two part by more than ``DRIFT_STEP_MS``.

A sender report is only taken when it describes the RTP clock the track's packets carry: its RTP
time must be within ``REPORT_TOLERANCE_MS`` of the latest packet's timestamp advanced by the time
since that packet arrived. The KVS WebRTC C SDK computes a report's RTP time from the wall-clock
time since the session's first frame, while its packets carry the application's presentation
time; its sample keeps that running across sessions, so from its second session on (after a
reconnect) its reports are off by as long as it has been streaming, and lip sync through them
would place audio seconds away from its video, outside every fragment.
"""

from __future__ import annotations

import bisect
import dataclasses
import math

DRIFT_WINDOW_MS = 1000.0  # arrival lags are compared by their minimum over this much time
DRIFT_STEP_MS = 80.0  # how far audio may part from video before its timeline is stepped
REPORT_TOLERANCE_MS = 2000.0  # how far a sender report's RTP time may be from the packets'


def extend(ts32: int, near: int) -> int:
    """The 64-bit timestamp with low 32 bits ``ts32`` closest to the extended timestamp ``near``."""
    base = near & ~0xFFFFFFFF
    candidates = (base - (1 << 32) + ts32, base + ts32, base + (1 << 32) + ts32)
    return min(candidates, key=lambda c: abs(c - near))


@dataclasses.dataclass
class _Report:
    ntp_ms: float
    rtp: int  # extended


class TrackClock:
    def __init__(self, clock_rate: int) -> None:
        self.rate = clock_rate
        self.anchor_ts: int | None = None
        self.anchor_ms = 0.0
        self.last_ts: int | None = None
        self.report: _Report | None = None
        self._arrived: tuple[int, float] | None = None  # the latest packet: (ts, arrival ms)
        self.refused_reports = 0
        self.report_offset_ms: float | None = None  # of the last report refused

    def arrived(self, ts: int, arrival_ms: float) -> None:
        """A packet with timestamp ``ts`` arrived (what sender reports are checked against)."""
        if self._arrived is None or ts >= self._arrived[0]:
            self._arrived = (ts, arrival_ms)

    def to_ms(self, ts: int, arrival_ms: float) -> float:
        if self.anchor_ts is None:
            self.anchor_ts = ts
            self.anchor_ms = arrival_ms
        self.last_ts = ts
        return self.anchor_ms + (ts - self.anchor_ts) * 1000.0 / self.rate

    def sender_report(self, ntp_ms: float, rtp32: int, arrival_ms: float) -> bool:
        """Take the sender's NTP time ↔ RTP time pair that arrived at ``arrival_ms`` if it
        agrees with the track's packets (see the module's notes); returns whether it did. A
        report before any packet cannot be checked and is not taken either."""
        if self._arrived is None:
            return False
        ts, at_ms = self._arrived
        now_ts = ts + (arrival_ms - at_ms) * self.rate / 1000.0
        rtp = extend(rtp32, round(now_ts))
        offset_ms = (rtp - now_ts) * 1000.0 / self.rate
        if abs(offset_ms) > REPORT_TOLERANCE_MS:
            self.refused_reports += 1
            self.report_offset_ms = offset_ms
            return False
        self.report = _Report(ntp_ms, rtp)
        return True

    def ntp_of(self, ts: int) -> float | None:
        if self.report is None:
            return None
        return self.report.ntp_ms + (ts - self.report.rtp) * 1000.0 / self.rate

    def ts_at_ntp(self, ntp_ms: float) -> float | None:
        if self.report is None:
            return None
        return self.report.rtp + (ntp_ms - self.report.ntp_ms) * self.rate / 1000.0


class AudioDrift:
    """Steps of the audio timeline that keep audio arriving as late, relative to video, as it did
    at the start.

    Each arrival gives a lag: arrival time minus the media time the clock gives the packet. The
    minimum over a window of ``DRIFT_WINDOW_MS`` is the lag without network jitter. The audio
    lag less the video lag stays constant for a sender whose clocks agree (whatever the network
    does to both); when it stays more than ``DRIFT_STEP_MS`` from its first value for two windows
    in a row (one late second is a stall of the sender or of this loop), audio from the next
    packet on is moved by that much. Moving it later leaves a gap in the recorded audio,
    moving it earlier drops the overlap: a sender with a bad clock loses a little audio, never
    all of it.
    """

    def __init__(self, step_ms: float = DRIFT_STEP_MS) -> None:
        self.step_ms = step_ms
        self.reset()

    def reset(self) -> None:
        self.base: float | None = None
        self.correction = 0.0
        self.steps = 0
        self._from_ts: list[int] = []
        self._values: list[float] = []
        self._window_end: float | None = None
        self._audio_min = math.inf
        self._video_min = math.inf
        self._last_ts: int | None = None
        self._pending: float | None = None  # a deviation seen in the last window only

    def video_lag(self, lag_ms: float) -> None:
        self._video_min = min(self._video_min, lag_ms)

    def audio_lag(self, ts: int, arrival_ms: float, lag_ms: float) -> None:
        """An audio packet with timestamp ``ts`` arrived ``lag_ms`` after its (corrected) time."""
        self._audio_min = min(self._audio_min, lag_ms)
        self._last_ts = ts if self._last_ts is None else max(self._last_ts, ts)
        if self._window_end is None:
            self._window_end = arrival_ms + DRIFT_WINDOW_MS
            return
        if arrival_ms < self._window_end:
            return
        video = self._video_min if math.isfinite(self._video_min) else 0.0
        relative = self._audio_min - video
        self._window_end = arrival_ms + DRIFT_WINDOW_MS
        self._audio_min = self._video_min = math.inf
        if self.base is None:
            self.base = relative
            return
        deviation = relative - self.base
        pending, self._pending = self._pending, None
        if abs(deviation) <= self.step_ms:
            return
        if pending is None or (pending > 0) != (deviation > 0):
            self._pending = deviation  # one late or early second is a stall, not drift
            return
        step = min(pending, deviation, key=abs)
        self.correction += step
        self.steps += 1
        self._from_ts.append(self._last_ts + 1)
        self._values.append(self.correction)

    def at(self, ts: int) -> float:
        """The correction (ms) for the audio packet with timestamp ``ts``."""
        i = bisect.bisect_right(self._from_ts, ts)
        return self._values[i - 1] if i else 0.0


class SessionClock:
    """Video defines the timeline; audio follows it through sender reports when it can."""

    def __init__(self, video_rate: int = 90000, audio_rate: int = 48000) -> None:
        self.video = TrackClock(video_rate)
        self.audio = TrackClock(audio_rate)
        self.drift = AudioDrift()
        self._reported = False  # whether audio is placed through sender reports

    def video_ms(self, ts: int, arrival_ms: float) -> float:
        self.video.arrived(ts, arrival_ms)
        ms = self.video.to_ms(ts, arrival_ms)
        self.drift.video_lag(arrival_ms - ms)
        return ms

    def audio_arrival(self, ts: int, arrival_ms: float) -> None:
        """An audio packet arrived: anchors the audio clock, and feeds the drift watch."""
        self.audio.arrived(ts, arrival_ms)
        ms = self.audio_ms(ts, arrival_ms)
        self.drift.audio_lag(ts, arrival_ms, arrival_ms - ms)

    def audio_ms(self, ts: int, arrival_ms: float) -> float:
        reported = self._mapped(ts, arrival_ms)
        return reported + self.drift.at(ts)

    def _mapped(self, ts: int, arrival_ms: float) -> float:
        own = self.audio.to_ms(ts, arrival_ms)
        reported = (
            self.audio.report is not None
            and self.video.report is not None
            and self.video.anchor_ts is not None
        )
        if reported != self._reported:
            # From arrival times to the sender's lip sync: a step that is no drift.
            self._reported = reported
            self.drift.reset()
        ntp = self.audio.ntp_of(ts)
        if ntp is None or self.video.anchor_ts is None:
            return own
        vts = self.video.ts_at_ntp(ntp)
        if vts is None:
            return own
        return self.video.anchor_ms + (vts - self.video.anchor_ts) * 1000.0 / self.video.rate
