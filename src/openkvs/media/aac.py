"""Opus-decoded PCM → AAC-LC (KVS stores H.264 + AAC). Runs in a worker thread, never on the loop.

Input frames carry their RTP timestamp (48 kHz) as pts. Gaps (loss, DTX) up to ``max_gap`` are
filled with silence so AAC frame times stay exact; larger gaps restart the timeline.
"""

from __future__ import annotations

import fractions
from typing import Any

import av
import numpy as np

SAMPLE_RATE = 48000
CHANNELS = 2
FRAME = 1024


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


class AacEncoder:
    """AAC-LC with FFmpeg's native encoder in its fast coder (half the CPU of the default
    two-loop search, which matters with many sessions); 64 kb/s mono or 96 kb/s stereo."""

    def __init__(
        self, channels: int = 2, bitrate: int | None = None, max_gap: int = SAMPLE_RATE
    ) -> None:
        if channels not in (1, 2):
            raise ValueError("AAC encoder supports 1 or 2 channels")
        ctx: Any = av.CodecContext.create("aac", "w")
        ctx.sample_rate = SAMPLE_RATE
        ctx.layout = "mono" if channels == 1 else "stereo"
        ctx.format = "fltp"
        ctx.bit_rate = bitrate or (64000 if channels == 1 else 96000)
        ctx.time_base = fractions.Fraction(1, SAMPLE_RATE)
        ctx.options = {"aac_coder": "fast"}
        ctx.open()
        self.channels = channels
        self._ctx = ctx
        self._max_gap = max_gap
        self._pending = np.zeros((channels, 0), dtype=np.float32)
        self._pending_pts: int | None = None  # rtp time of _pending[:, 0]
        self._next_pts: int | None = None  # expected rtp time of the next input sample

    @property
    def audio_specific_config(self) -> bytes:
        return bytes(self._ctx.extradata or b"")

    def _pcm(self, frame: av.AudioFrame) -> np.ndarray:
        arr = frame.to_ndarray()
        fmt = frame.format.name
        channels = len(frame.layout.channels)
        if fmt in ("s16", "s16p"):
            scale = 1.0 / 32768.0
        elif fmt in ("flt", "fltp"):
            scale = 1.0
        else:
            raise ValueError(f"unsupported PCM format {fmt}")
        if frame.format.is_planar:
            pcm = arr.astype(np.float32) * scale
        else:
            pcm = arr.reshape(-1, channels).T.astype(np.float32) * scale
        if self.channels == 1:
            pcm = pcm[:1]
        elif channels == 1:
            pcm = np.vstack([pcm, pcm])
        elif channels > 2:
            pcm = pcm[:2]
        if frame.sample_rate != SAMPLE_RATE:
            raise ValueError(f"unsupported sample rate {frame.sample_rate}")
        return pcm

    def encode(self, frames: list[av.AudioFrame]) -> list[tuple[bytes, int]]:
        """Encode decoded frames; return (AAC frame, rtp timestamp of its first sample) pairs."""
        for frame in frames:
            pcm = self._pcm(frame)
            pts = int(frame.pts) if frame.pts is not None else self._next_pts or 0
            if self._next_pts is not None:
                gap = pts - self._next_pts
                if 0 < gap <= self._max_gap:
                    pcm = np.hstack([np.zeros((self.channels, gap), dtype=np.float32), pcm])
                    pts = self._next_pts
                elif gap < -self._max_gap or gap > self._max_gap:
                    self._pending = self._pending[:, :0]
                    self._pending_pts = None
                elif gap < 0:
                    pcm = pcm[:, -gap:]  # overlap: drop what we already have
                    pts = self._next_pts
            if self._pending_pts is None:
                self._pending_pts = pts
            self._pending = np.hstack([self._pending, pcm]) if self._pending.size else pcm
            self._next_pts = pts + pcm.shape[1]
        out: list[tuple[bytes, int]] = []
        while self._pending.shape[1] >= FRAME:
            chunk, self._pending = self._pending[:, :FRAME], self._pending[:, FRAME:]
            out += self._encode_chunk(chunk)
        return out

    def flush(self) -> list[tuple[bytes, int]]:
        """End of input: the samples still pending (padded with silence to a whole frame) and
        the frames the encoder holds back for its look-ahead. The encoder takes no more input."""
        out: list[tuple[bytes, int]] = []
        if self._pending.shape[1] and self._pending_pts is not None:
            pad = np.zeros((self.channels, FRAME - self._pending.shape[1]), dtype=np.float32)
            chunk, self._pending = np.hstack([self._pending, pad]), self._pending[:, :0]
            out += self._encode_chunk(chunk)
            self._pending_pts = None
        out += [(bytes(pkt), int(pkt.pts)) for pkt in self._ctx.encode(None)]
        return out

    def _encode_chunk(self, chunk: np.ndarray) -> list[tuple[bytes, int]]:
        """One AAC frame's worth of samples, starting at ``_pending_pts``, into the encoder."""
        assert self._pending_pts is not None
        af = av.AudioFrame.from_ndarray(
            np.ascontiguousarray(chunk), format="fltp", layout=self._ctx.layout.name
        )
        af.sample_rate = SAMPLE_RATE
        af.pts = self._pending_pts
        af.time_base = fractions.Fraction(1, SAMPLE_RATE)
        self._pending_pts += FRAME
        return [(bytes(pkt), int(pkt.pts)) for pkt in self._ctx.encode(af)]
