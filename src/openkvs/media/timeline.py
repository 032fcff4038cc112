"""One media clock for a session's tracks: RTP timestamps → epoch milliseconds.

Each track is anchored at the arrival time of its first frame. Once RTCP sender reports are known
for both video and audio, audio is placed on the video timeline through the sender's NTP clock
(lip sync as the sender meant it); until then, arrival times align them.
"""

from __future__ import annotations

import dataclasses


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

    def to_ms(self, ts: int, arrival_ms: float) -> float:
        if self.anchor_ts is None:
            self.anchor_ts = ts
            self.anchor_ms = arrival_ms
        self.last_ts = ts
        return self.anchor_ms + (ts - self.anchor_ts) * 1000.0 / self.rate

    def sender_report(self, ntp_ms: float, rtp32: int) -> None:
        near = self.last_ts if self.last_ts is not None else rtp32
        self.report = _Report(ntp_ms, extend(rtp32, near))

    def ntp_of(self, ts: int) -> float | None:
        if self.report is None:
            return None
        return self.report.ntp_ms + (ts - self.report.rtp) * 1000.0 / self.rate

    def ts_at_ntp(self, ntp_ms: float) -> float | None:
        if self.report is None:
            return None
        return self.report.rtp + (ntp_ms - self.report.ntp_ms) * self.rate / 1000.0


class SessionClock:
    """Video defines the timeline; audio follows it through sender reports when it can."""

    def __init__(self, video_rate: int = 90000, audio_rate: int = 48000) -> None:
        self.video = TrackClock(video_rate)
        self.audio = TrackClock(audio_rate)

    def video_ms(self, ts: int, arrival_ms: float) -> float:
        return self.video.to_ms(ts, arrival_ms)

    def audio_ms(self, ts: int, arrival_ms: float) -> float:
        own = self.audio.to_ms(ts, arrival_ms)
        ntp = self.audio.ntp_of(ts)
        if ntp is None or self.video.anchor_ts is None:
            return own
        vts = self.video.ts_at_ntp(ntp)
        if vts is None:
            return own
        return self.video.anchor_ms + (vts - self.video.anchor_ts) * 1000.0 / self.video.rate
