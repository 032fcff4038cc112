"""Test media made once with PyAV (libx264, libopus, aac) and cached per test session.

Everything here is deterministic for given parameters: frames carry a slowly moving pattern over
a fixed seeded noise field, so keyframes are large (the noise level controls their size) while
P frames stay small, like a real camera looking at a detailed, mostly still scene.
"""

from __future__ import annotations

import fractions
import functools
from typing import Any

import av
import numpy as np

from openkvs import testpattern

# One pre-encoded frame (Annex B for H.264, raw packets for audio): the synthetic cameras' own.
EncodedFrame = testpattern.Packet


def _pattern(
    width: int, height: int, i: int, noise: np.ndarray | None, motion: bool = False
) -> np.ndarray:
    y = np.arange(height, dtype=np.float32)[:, None]
    x = np.arange(width, dtype=np.float32)[None, :]
    m = i if motion else 0
    base = 128 + 60 * np.sin((x + 4 * m) / 37.0) * np.cos((y - 2 * m) / 23.0)
    img = np.repeat(base[:, :, None], 3, axis=2)
    img[:, :, 1] = 128 + 60 * np.cos((x - 3 * m) / 29.0)
    img[:, :, 2] = (x + y + 5 * m) % 256
    # A bright block that moves one block per frame, so frames are distinguishable.
    bx = (i * 16) % max(16, width - 64)
    img[32:96, bx : bx + 64, :] = 240
    if noise is not None:
        img += noise
    return np.clip(img, 0, 255).astype(np.uint8)


@functools.cache
def h264_clip(
    width: int = 640,
    height: int = 360,
    fps: int = 30,
    seconds: float = 3.0,
    profile: str = "main",
    gop: int | None = None,
    noise: float = 4.0,
    crf: int = 23,
    motion: bool = False,
) -> tuple[EncodedFrame, ...]:
    """Encode a synthetic clip; every keyframe is an IDR carrying SPS and PPS in-band."""
    gop = gop or fps
    ctx: Any = av.CodecContext.create("libx264", "w")
    ctx.width, ctx.height = width, height
    ctx.pix_fmt = "yuv420p"
    ctx.time_base = fractions.Fraction(1, fps)
    ctx.framerate = fractions.Fraction(fps, 1)
    ctx.options = {
        "profile": profile,
        "preset": "ultrafast" if profile == "baseline" else "veryfast",
        "crf": str(crf),
        "x264-params": f"keyint={gop}:min-keyint={gop}:scenecut=0:bframes=0:repeat-headers=1",
    }
    # A fixed noise field: keyframes are large (detail), P frames small (only the motion).
    rng = np.random.default_rng(1234)
    field = rng.normal(0, noise, (height, width, 3)).astype(np.float32) if noise else None
    out: list[EncodedFrame] = []
    n = int(round(seconds * fps))
    for i in range(n):
        frame = av.VideoFrame.from_ndarray(
            _pattern(width, height, i, field, motion), format="rgb24"
        )
        frame = frame.reformat(format="yuv420p")
        frame.pts = i
        for pkt in ctx.encode(frame):
            out.append(EncodedFrame(bytes(pkt), float(pkt.pts) * 1000 / fps, bool(pkt.is_keyframe)))
    for pkt in ctx.encode(None):
        out.append(EncodedFrame(bytes(pkt), float(pkt.pts) * 1000 / fps, bool(pkt.is_keyframe)))
    return tuple(out)


def _tone(seconds: float, rate: int, freq: float = 440.0) -> np.ndarray:
    t = np.arange(int(seconds * rate)) / rate
    wave = 0.3 * np.sin(2 * np.pi * freq * t)
    return (np.stack([wave, wave]) * 32767).astype(np.int16)


@functools.cache
def opus_packets(
    seconds: float = 3.0, freq: float = 440.0, channels: int = 2
) -> tuple[EncodedFrame, ...]:
    """20 ms Opus packets of a tone at 48 kHz (mono, like browsers, when channels=1)."""
    ctx: Any = av.CodecContext.create("libopus", "w")
    ctx.sample_rate = 48000
    ctx.layout = "stereo" if channels == 2 else "mono"
    ctx.format = "s16"
    ctx.time_base = fractions.Fraction(1, 48000)
    pcm = _tone(seconds, 48000, freq)
    out: list[EncodedFrame] = []
    for i in range(0, pcm.shape[1] - 959, 960):
        frame = av.AudioFrame.from_ndarray(
            pcm[:, i : i + 960].T.reshape(1, -1), format="s16", layout="stereo"
        )
        frame.sample_rate = 48000
        frame.pts = i
        for pkt in ctx.encode(frame):
            out.append(EncodedFrame(bytes(pkt), float(pkt.pts) / 48, True))
    return tuple(out)


@functools.cache
def aac_frames(seconds: float = 3.0, rate: int = 48000) -> tuple[tuple[EncodedFrame, ...], bytes]:
    """AAC-LC frames (raw, no ADTS) of a tone, plus the AudioSpecificConfig."""
    ctx: Any = av.CodecContext.create("aac", "w")
    ctx.sample_rate = rate
    ctx.layout = "stereo"
    ctx.format = "fltp"
    ctx.time_base = fractions.Fraction(1, rate)
    pcm = _tone(seconds, rate).astype(np.float32) / 32767
    out: list[EncodedFrame] = []
    for i in range(0, pcm.shape[1] - 1023, 1024):
        frame = av.AudioFrame.from_ndarray(
            np.ascontiguousarray(pcm[:, i : i + 1024]), format="fltp", layout="stereo"
        )
        frame.sample_rate = rate
        frame.pts = i
        for pkt in ctx.encode(frame):
            out.append(EncodedFrame(bytes(pkt), float(pkt.pts) * 1000 / rate, True))
    for pkt in ctx.encode(None):
        out.append(EncodedFrame(bytes(pkt), float(pkt.pts) * 1000 / rate, True))
    return tuple(out), bytes(ctx.extradata or b"")
