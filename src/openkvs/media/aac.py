"""Opus-decoded PCM → AAC-LC (KVS stores H.264 + AAC). Runs in a worker thread, never on the loop.

Input frames carry their RTP timestamp (48 kHz) as pts. Gaps (loss, DTX) up to ``max_gap`` are
filled with silence so AAC frame times stay exact; larger gaps restart the timeline.

Camera audio is mostly silence, which the encoder analyses like sound (at about half the cost
of a tone, see bench/steps.md). A frame's worth of digitally silent samples (:func:`is_silent`)
is not encoded: the stream gets the encoder's own silent frame instead, encoded once. FFmpeg's
encoder puts out the frame at time ``t`` (its MDCT window spans ``[t, t + 2048)``) once it has
the samples up to ``t + 3072`` (one frame of look-ahead for its window-shape decision), and its
first frame (the priming frame) starts one frame before its first sample. The output is one
frame per input frame, 1024 samples earlier, encoded or not, with no holes nor overlaps:

- sound → silence: ``DRAIN`` silent frames still go through the encoder, which by then has put
  out every frame whose window holds sound, and the first wholly silent one with the window
  shape it chose after the sound (a short-window transient must be followed by a stop window);
  it is then dropped unflushed (the frames it holds back are silent, and go out as such);
- silence → sound: a fresh encoder takes ``WARMUP`` silent frames just before the first frame
  of sound (with fewer, its rate control and transient detection start cold and the onset
  decodes a few dB worse than with one encoder throughout; with two it is bit-exact in mono);
  its frames for slots already put out as silence are dropped (they are silent: the decoder's
  overlap is the same), the next one, whose window holds the onset, takes the next slot.
"""

from __future__ import annotations

import fractions
import functools
from typing import Any

import av
import numpy as np

SAMPLE_RATE = 48000
CHANNELS = 2
FRAME = 1024
TIME_BASE = fractions.Fraction(1, SAMPLE_RATE)
# Samples below 4 LSB of 16-bit audio (-78 dBFS) are digital silence: the dither or rounding
# noise of a muted or idle source.
SILENCE_THRESHOLD = 4 / 32768
OPTIONS = {"aac_coder": "fast"}  # FFmpeg's AAC encoder options (see bench/steps.md)
DRAIN = 3  # silent frames still encoded when sound stops
WARMUP = 2  # silent frames a fresh encoder takes before the sound (its priming state)


def is_silent(pcm: np.ndarray, threshold: float = SILENCE_THRESHOLD) -> bool:
    """True when every sample (float, full scale 1.0) is below ``threshold`` in magnitude."""
    return pcm.size == 0 or float(np.max(np.abs(pcm))) < threshold


def is_dual_mono(frames: list[av.AudioFrame]) -> bool:
    """True when every frame's two channels carry the same samples (a mono source in stereo
    clothing, as browsers send Opus by default)."""
    for frame in frames:
        if len(frame.layout.channels) != 2:
            return len(frame.layout.channels) == 1
        arr = frame.to_ndarray()
        if frame.format.is_planar:
            if not np.array_equal(arr[0], arr[1]):
                return False
        elif not np.array_equal(arr[0, 0::2], arr[0, 1::2]):
            return False
    return True


def _open(channels: int, bitrate: int, options: dict[str, str] | None = None) -> Any:
    ctx: Any = av.CodecContext.create("aac", "w")
    ctx.sample_rate = SAMPLE_RATE
    ctx.layout = "mono" if channels == 1 else "stereo"
    ctx.format = "fltp"
    ctx.bit_rate = bitrate
    ctx.time_base = fractions.Fraction(1, SAMPLE_RATE)
    ctx.options = {**OPTIONS, **(options or {})}
    ctx.open()
    return ctx


@functools.lru_cache(maxsize=8)
def silent_frame(channels: int, bitrate: int) -> bytes:
    """The encoder's steady-state frame for silence (after its priming frame)."""
    ctx = _open(channels, bitrate)
    packets: list[bytes] = []
    for i in range(4):
        frame = av.AudioFrame.from_ndarray(
            np.zeros((channels, FRAME), dtype=np.float32), format="fltp", layout=ctx.layout.name
        )
        frame.sample_rate = SAMPLE_RATE
        frame.pts = i * FRAME
        frame.time_base = ctx.time_base
        packets += [bytes(p) for p in ctx.encode(frame)]
    return packets[-1]


class AacEncoder:
    """AAC-LC with FFmpeg's native encoder in its fast coder (half the CPU of the default
    two-loop search, which matters with many sessions); 64 kb/s mono or 96 kb/s stereo.
    Digital silence is not encoded (see the module's notes)."""

    def __init__(
        self,
        channels: int = 2,
        bitrate: int | None = None,
        max_gap: int = SAMPLE_RATE,
        options: dict[str, str] | None = None,
    ) -> None:
        if channels not in (1, 2):
            raise ValueError("AAC encoder supports 1 or 2 channels")
        self.channels = channels
        self._bitrate = bitrate or (64000 if channels == 1 else 96000)
        self._options = options
        self._ctx: Any = _open(channels, self._bitrate, options)  # None while silent
        self._asc = bytes(self._ctx.extradata or b"")
        self._silent = silent_frame(channels, self._bitrate)
        self._fed = 0  # frames the current encoder has taken
        self._quiet = 0  # silent frames in a row the current encoder has taken
        self._next_out: int | None = None  # where the next output frame starts
        self._last_in: int | None = None  # where the last input frame started
        self._max_gap = max_gap
        self._pending = np.zeros((channels, 0), dtype=np.float32)
        self._pending_pts: int | None = None  # rtp time of _pending[:, 0]
        self._next_pts: int | None = None  # expected rtp time of the next input sample
        self._out: list[tuple[bytes, int]] = []
        self._layout = "mono" if channels == 1 else "stereo"
        self._feed: list[np.ndarray] = []  # frames queued for the encoder, from _feed_pts
        self._feed_pts = 0
        self.encoded_frames = 0  # frames run through FFmpeg's encoder
        self.silent_frames = 0  # silent frames put out without it

    @property
    def audio_specific_config(self) -> bytes:
        return self._asc

    def _pcm(self, frame: av.AudioFrame) -> np.ndarray:
        """The frame's samples as float planes (full scale 1.0), in this encoder's channels."""
        if frame.sample_rate != SAMPLE_RATE:
            raise ValueError(f"unsupported sample rate {frame.sample_rate}")
        arr = frame.to_ndarray()
        fmt = frame.format.name
        channels = len(frame.layout.channels)
        if fmt in ("s16", "s16p"):
            scale: float | None = 1.0 / 32768.0
        elif fmt in ("flt", "fltp"):
            scale = None
        else:
            raise ValueError(f"unsupported PCM format {fmt}")
        if frame.format.is_planar:
            planes = arr[:1] if self.channels == 1 else arr[:2]
        elif self.channels == 1 or channels == 1:
            planes = arr[:, ::channels]  # the first channel of the interleaved samples
        else:
            planes = arr.reshape(-1, channels)[:, :2].T
        pcm: np.ndarray = planes.astype(np.float32)
        if scale is not None:
            pcm *= np.float32(scale)  # a power of two: exact
        if self.channels == 2 and pcm.shape[0] == 1:
            pcm = np.vstack([pcm, pcm])
        return pcm

    def encode(self, frames: list[av.AudioFrame]) -> list[tuple[bytes, int]]:
        """Encode decoded frames; return (AAC frame, rtp timestamp of its first sample) pairs.

        The batch's samples are gathered first and cut into AAC frames once; the frames that go
        through FFmpeg's encoder are handed to it a run at a time (:meth:`_feed_out`), which
        yields the same packets as one call per frame at a fraction of PyAV's per-call cost."""
        parts: list[np.ndarray] = [self._pending] if self._pending.shape[1] else []
        size = self._pending.shape[1]
        for frame in frames:
            pcm = self._pcm(frame)
            pts = int(frame.pts) if frame.pts is not None else self._next_pts or 0
            start = pts  # where this frame's samples (and the silence before them) start
            if self._next_pts is not None:
                gap = pts - self._next_pts
                if 0 < gap <= self._max_gap:
                    parts.append(np.zeros((self.channels, gap), dtype=np.float32))
                    size += gap
                    start = self._next_pts
                elif gap < -self._max_gap or gap > self._max_gap:
                    self._frames(parts, size)  # what came before the jump, then a fresh start
                    parts, size = [], 0
                    self._restart()
                elif gap < 0:
                    pcm = pcm[:, -gap:]  # overlap: drop what we already have
                    pts = start = self._next_pts
            if self._pending_pts is None:
                self._pending_pts = start
            parts.append(pcm)
            size += pcm.shape[1]
            self._next_pts = pts + pcm.shape[1]
        self._pending = self._frames(parts, size)
        self._feed_out()
        out, self._out = self._out, []
        return out

    def _frames(self, parts: list[np.ndarray], size: int) -> np.ndarray:
        """Run the whole frames of ``parts`` (``size`` samples, from ``_pending_pts``) through
        :meth:`_frame`; return the samples short of a frame."""
        if size < FRAME:
            return np.concatenate(parts, axis=1) if len(parts) > 1 else self._pending_of(parts)
        buf = np.concatenate(parts, axis=1) if len(parts) > 1 else parts[0]
        whole = size - size % FRAME
        for i in range(0, whole, FRAME):
            self._frame(buf[:, i : i + FRAME])
        return buf[:, whole:]

    def _pending_of(self, parts: list[np.ndarray]) -> np.ndarray:
        return parts[0] if parts else np.zeros((self.channels, 0), dtype=np.float32)

    def flush(self) -> list[tuple[bytes, int]]:
        """End of input: the samples still pending (padded with silence to a whole frame) and
        the frames the encoder holds back for its look-ahead. The encoder takes no more input."""
        if self._pending.shape[1] and self._pending_pts is not None:
            pad = np.zeros((self.channels, FRAME - self._pending.shape[1]), dtype=np.float32)
            chunk, self._pending = np.hstack([self._pending, pad]), self._pending[:, :0]
            self._frame(chunk)
            self._feed_out()
        self._pending_pts = None
        self._end_run()
        out, self._out = self._out, []
        return out

    def _restart(self) -> None:
        """A jump in the timeline: what was pending is dropped, and the encoder ends its run
        (its last frames go out) so the next one starts clean at the new time."""
        self._pending = self._pending[:, :0]
        self._pending_pts = None
        self._end_run()

    def _end_run(self) -> None:
        """Every frame up to the last input frame's, as the encoder's flush gives them."""
        if self._ctx is not None and self._fed:
            self._feed_out()
            for pkt in self._ctx.encode(None):
                self._emit(bytes(pkt), int(pkt.pts))
            self._ctx = None
            self._fed = 0
        elif self._last_in is not None:
            self._fill(self._last_in + FRAME)
        self._next_out = None
        self._last_in = None

    def _emit(self, data: bytes, pts: int) -> None:
        self._fill(pts)
        self._out.append((data, pts))
        self._next_out = pts + FRAME

    def _fill(self, until: int) -> None:
        """Silent frames from where the output stands up to ``until``."""
        if self._next_out is None:
            return
        while self._next_out < until:
            self._out.append((self._silent, self._next_out))
            self.silent_frames += 1
            self._next_out += FRAME

    def _frame(self, chunk: np.ndarray) -> None:
        """One AAC frame's worth of samples, starting at ``_pending_pts``."""
        assert self._pending_pts is not None
        pts = self._pending_pts
        self._pending_pts += FRAME
        self._last_in = pts
        silent = is_silent(chunk)
        if self._ctx is not None and self._fed:
            self._quiet = self._quiet + 1 if silent else 0
            self._encode_chunk(chunk, pts)
            if self._quiet >= DRAIN:
                # Every frame whose window holds sound is out; the ones it holds are silent.
                self._feed_out()
                self._ctx = None
            return
        if silent:
            if self._next_out is None:
                self._next_out = pts - FRAME  # where the priming frame would be
            self._fill(pts)
            return
        if self._ctx is None:
            self._ctx = _open(self.channels, self._bitrate, self._options)
            self._fed = 0
        if not self._fed:
            if self._next_out is None:
                self._next_out = pts - FRAME  # the stream starts with this encoder's priming
            zeros = np.zeros_like(chunk)
            for k in range(WARMUP, 0, -1):
                self._encode_chunk(zeros, pts - k * FRAME)
        self._quiet = 0
        self._encode_chunk(chunk, pts)

    def _encode_chunk(self, chunk: np.ndarray, pts: int) -> None:
        """Queue a frame for the encoder; the run of queued frames goes in at once."""
        if self._feed and pts != self._feed_pts + FRAME * len(self._feed):
            self._feed_out()
        if not self._feed:
            self._feed_pts = pts
        self._feed.append(chunk)
        self._fed += 1
        self.encoded_frames += 1

    def _feed_out(self) -> None:
        """The queued frames through the encoder, as one PyAV frame: its resampler cuts them
        into the encoder's 1024-sample frames again, so the packets are those of one call per
        frame."""
        if not self._feed:
            return
        feed, self._feed = self._feed, []
        samples = np.ascontiguousarray(np.concatenate(feed, axis=1) if len(feed) > 1 else feed[0])
        af = av.AudioFrame.from_ndarray(samples, format="fltp", layout=self._layout)
        af.sample_rate = SAMPLE_RATE
        af.pts = self._feed_pts
        af.time_base = TIME_BASE
        for pkt in self._ctx.encode(af):
            pts = int(pkt.pts)
            if self._next_out is None or pts >= self._next_out:
                self._emit(bytes(pkt), pts)
