"""Silent AAC-LC frames and 20 ms Opus packets, for audio segments whose first frame starts
well after the segment.

Encoded once per (sample rate, channels, frame length) with FFmpeg's AAC encoder (Opus: per
channel count, with libopus); the frame is taken from the encoder's steady state (after its
priming frames), so it decodes on its own with the stream's AudioSpecificConfig (OpusHead).
Called from playback worker threads, never on the loop.
"""

from __future__ import annotations

import fractions
import functools
import logging
from typing import Any

import av
import numpy as np

from .codecs import AacConfig

logger = logging.getLogger(__name__)

AAC_LC = 2


def aac_frame(config: AacConfig) -> bytes | None:
    """One silent raw AAC frame decodable with ``config``; None when it cannot be made (not
    AAC-LC with 1024-sample frames, or a layout FFmpeg's encoder does not write)."""
    if (
        config.object_type != AAC_LC
        or config.frame_length != 1024
        or config.channels not in (1, 2)
        or not 0 < config.sample_rate <= 96000
    ):
        return None
    return _encode(config.sample_rate, config.channels)


@functools.lru_cache(maxsize=32)
def _encode(sample_rate: int, channels: int) -> bytes | None:
    try:
        ctx: Any = av.CodecContext.create("aac", "w")
        ctx.sample_rate = sample_rate
        ctx.layout = "mono" if channels == 1 else "stereo"
        ctx.format = "fltp"
        ctx.bit_rate = 32000 * channels
        ctx.time_base = fractions.Fraction(1, sample_rate)
        ctx.open()
        packets: list[bytes] = []
        zeros = np.zeros((channels, 1024), dtype=np.float32)
        for i in range(4):
            frame = av.AudioFrame.from_ndarray(zeros, format="fltp", layout=ctx.layout.name)
            frame.sample_rate = sample_rate
            frame.pts = i * 1024
            frame.time_base = ctx.time_base
            packets += [bytes(p) for p in ctx.encode(frame)]
    except (av.FFmpegError, ValueError):
        logger.warning("cannot encode silent AAC at %d Hz, %d channels", sample_rate, channels)
        return None
    return packets[-1] if packets else None


OPUS_FRAME = 960  # 20 ms at 48 kHz


def opus_frame(channels: int) -> bytes | None:
    """One silent 20 ms Opus packet of a mono or stereo stream; None when it cannot be made."""
    if channels not in (1, 2):
        return None
    return _encode_opus(channels)


@functools.lru_cache(maxsize=4)
def _encode_opus(channels: int) -> bytes | None:
    try:
        ctx: Any = av.CodecContext.create("libopus", "w")
        ctx.sample_rate = 48000
        ctx.layout = "mono" if channels == 1 else "stereo"
        ctx.format = "s16"
        ctx.time_base = fractions.Fraction(1, 48000)
        ctx.open()
        packets: list[bytes] = []
        zeros = np.zeros((1, OPUS_FRAME * channels), dtype=np.int16)
        for i in range(4):
            frame = av.AudioFrame.from_ndarray(zeros, format="s16", layout=ctx.layout.name)
            frame.sample_rate = 48000
            frame.pts = i * OPUS_FRAME
            frame.time_base = ctx.time_base
            packets += [bytes(p) for p in ctx.encode(frame)]
    except (av.FFmpegError, ValueError):
        logger.warning("cannot encode silent Opus with %d channels", channels)
        return None
    return packets[-1] if packets else None
