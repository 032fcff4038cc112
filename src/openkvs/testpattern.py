"""A synthetic camera's media, encoded once and cached: an H.264 test pattern with a running clock
and an Opus tone that ticks every second, for ``openkvs demo``.

The pattern is colour bars over a grey ramp, a seven-segment ``SS:FF`` timecode (seconds and the
frame number within the second) and a marker sweeping the ramp once a second. One loop of
``LOOP_SECONDS`` is encoded with x264 (constrained baseline, an IDR with SPS/PPS every second,
no B-frames: what a WebRTC camera sends) and libopus (20 ms packets), and written to a cache file,
so a demo costs one encode per resolution and then only sends packets.
"""

from __future__ import annotations

import dataclasses
import fractions
import json
import os
import struct
import threading
from pathlib import Path
from typing import Any

import av
import numpy as np

FORMAT_VERSION = 1
MAGIC = b"OKVS-TESTPATTERN\n"
LOOP_SECONDS = 60
FPS = 30
AUDIO_RATE = 48000
AUDIO_FRAME = 960  # 20 ms

# Seven-segment digits: which of the segments a..g are lit.
_SEGMENTS = {
    "0": "abcdef",
    "1": "bc",
    "2": "abged",
    "3": "abgcd",
    "4": "fgbc",
    "5": "afgcd",
    "6": "afgedc",
    "7": "abc",
    "8": "abcdefg",
    "9": "abfgcd",
}


@dataclasses.dataclass(frozen=True)
class Packet:
    data: bytes  # Annex B access unit (video) or one Opus packet (audio)
    pts_ms: float
    keyframe: bool


@dataclasses.dataclass(frozen=True)
class TestPattern:
    width: int
    height: int
    fps: int
    loop_ms: float
    video: tuple[Packet, ...]
    audio: tuple[Packet, ...]


def parse_resolution(text: str) -> tuple[int, int]:
    """``"1280x720"`` → (1280, 720); multiples of 4 from 64x64 to 3840x2160."""
    try:
        w_text, h_text = text.lower().split("x")
        width, height = int(w_text), int(h_text)
    except ValueError:
        raise ValueError(f"resolution must look like 1280x720, not {text!r}") from None
    if not (64 <= width <= 3840 and 64 <= height <= 2160) or width % 4 or height % 4:
        raise ValueError("resolution must be multiples of 4, between 64x64 and 3840x2160")
    return width, height


def cache_path(cache_dir: Path, width: int, height: int) -> Path:
    name = f"testpattern-v{FORMAT_VERSION}-{width}x{height}-{FPS}fps-{LOOP_SECONDS}s.bin"
    return cache_dir / name


class Cancelled(Exception):
    """The encoding was called off (``cancel`` was set); nothing was cached."""


def load_or_encode(
    cache_dir: Path, width: int, height: int, cancel: threading.Event | None = None
) -> tuple[TestPattern, bool]:
    """The cached pattern for this size, encoding (and caching) it first if needed.
    Returns (pattern, True if it was read from the cache). Blocking: run it in a thread; setting
    ``cancel`` stops an encoding within a frame (:class:`Cancelled`)."""
    path = cache_path(cache_dir, width, height)
    if path.exists():
        try:
            return read(path), True
        except (ValueError, KeyError, OSError, struct.error):
            pass  # a damaged cache file is simply made again
    pattern = encode(width, height, cancel)
    write(path, pattern)
    return pattern, False


# -- picture ------------------------------------------------------------------------------------


def _background(width: int, height: int) -> np.ndarray:
    bars = np.array(
        [
            [192, 192, 192],
            [192, 192, 0],
            [0, 192, 192],
            [0, 192, 0],
            [192, 0, 192],
            [192, 0, 0],
            [0, 0, 192],
        ],
        dtype=np.uint8,
    )
    img = np.zeros((height, width, 3), dtype=np.uint8)
    split = height * 2 // 3
    columns = np.minimum(np.arange(width) * len(bars) // width, len(bars) - 1)
    img[:split] = bars[columns][None, :, :]
    ramp = (np.arange(width) * 255 // max(1, width - 1)).astype(np.uint8)
    img[split:] = ramp[None, :, None]
    return img


# Colours as limited-range BT.601 (Y, U, V): what the encoder takes without a conversion.
WHITE = (235, 128, 128)
BLACK = (16, 128, 128)
RED = (101, 95, 226)

Planes = tuple[np.ndarray, np.ndarray, np.ndarray]


def _yuv_background(width: int, height: int) -> Planes:
    frame = av.VideoFrame.from_ndarray(_background(width, height), format="rgb24")
    arr = frame.reformat(format="yuv420p").to_ndarray()
    quarter = width * height // 4
    flat = arr.reshape(-1)
    y = flat[: width * height].reshape(height, width)
    u = flat[width * height : width * height + quarter].reshape(height // 2, width // 2)
    v = flat[width * height + quarter :].reshape(height // 2, width // 2)
    return y.copy(), u.copy(), v.copy()


def _fill(planes: Planes, x0: int, y0: int, x1: int, y1: int, colour: tuple[int, int, int]) -> None:
    y, u, v = planes
    y[y0:y1, x0:x1] = colour[0]
    u[y0 // 2 : (y1 + 1) // 2, x0 // 2 : (x1 + 1) // 2] = colour[1]
    v[y0 // 2 : (y1 + 1) // 2, x0 // 2 : (x1 + 1) // 2] = colour[2]


def _digit(planes: Planes, x: int, y: int, w: int, h: int, char: str) -> None:
    t = max(2, w // 5)
    mid = y + h // 2
    boxes = {
        "a": (x + t, y, x + w - t, y + t),
        "b": (x + w - t, y + t, x + w, mid),
        "c": (x + w - t, mid, x + w, y + h - t),
        "d": (x + t, y + h - t, x + w - t, y + h),
        "e": (x, mid, x + t, y + h - t),
        "f": (x, y + t, x + t, mid),
        "g": (x + t, mid - t // 2, x + w - t, mid + (t + 1) // 2),
    }
    for seg in _SEGMENTS.get(char, ""):
        _fill(planes, *boxes[seg], WHITE)


def _frame(background: Planes, index: int) -> np.ndarray:
    """Frame ``index`` as a yuv420p array (Y, then U, then V rows)."""
    planes: Planes = (background[0].copy(), background[1].copy(), background[2].copy())
    height, width = planes[0].shape
    seconds, frame = divmod(index, FPS)
    text = f"{seconds % 60:02d}:{frame:02d}"
    # The timecode in a black box, centred on the colour bars.
    dh = max(16, height // 6)
    dw = dh // 2
    gap = max(2, dw // 3)
    box_w = 4 * dw + 7 * gap
    box_h = dh + 2 * gap
    bx, by = (width - box_w) // 2, max(0, height // 3 - box_h // 2)
    _fill(planes, bx, by, bx + box_w, by + box_h, BLACK)
    x = bx + gap
    for char in text:
        if char == ":":
            dot = max(2, gap)
            for row in (by + gap + dh // 3, by + gap + 2 * dh // 3):
                _fill(planes, x, row, x + dot, row + dot, WHITE)
            x += 2 * gap
            continue
        _digit(planes, x, by + gap, dw, dh, char)
        x += dw + gap
    # A marker sweeping the grey ramp once a second.
    mx = frame * (width - 8) // max(1, FPS - 1)
    _fill(planes, mx, height * 2 // 3, mx + 8, height, RED)
    flat = np.concatenate([p.reshape(-1) for p in planes])
    return flat.reshape(height * 3 // 2, width)


# -- encoding -----------------------------------------------------------------------------------


VIDEO_TB = fractions.Fraction(1, 90000)
AUDIO_TB = fractions.Fraction(1, 48000)


def encoded_packet(kind: str, data: bytes, pts_ms: float) -> Any:  # av.Packet
    """A pre-encoded frame as aiortc sends it from a track (RTP clock: 90 kHz video, 48 kHz
    audio), so a synthetic camera only packetises and never encodes."""
    packet = av.Packet(data)
    packet.pts = packet.dts = int(round(pts_ms * (90 if kind == "video" else 48)))
    packet.time_base = VIDEO_TB if kind == "video" else AUDIO_TB
    return packet


def encode(width: int, height: int, cancel: threading.Event | None = None) -> TestPattern:
    video = tuple(_encode_video(width, height, cancel))
    audio = tuple(_encode_audio())
    return TestPattern(width, height, FPS, LOOP_SECONDS * 1000.0, video, audio)


def _encode_video(width: int, height: int, cancel: threading.Event | None) -> list[Packet]:
    ctx: Any = av.CodecContext.create("libx264", "w")
    ctx.width, ctx.height = width, height
    ctx.pix_fmt = "yuv420p"
    ctx.time_base = fractions.Fraction(1, FPS)
    ctx.framerate = fractions.Fraction(FPS, 1)
    ctx.options = {
        "profile": "baseline",
        "preset": "ultrafast",
        "crf": "26",
        "x264-params": f"keyint={FPS}:min-keyint={FPS}:scenecut=0:bframes=0:repeat-headers=1",
    }
    background = _yuv_background(width, height)
    out: list[Packet] = []

    def collect(packets: Any) -> None:
        for pkt in packets:
            out.append(Packet(bytes(pkt), float(pkt.pts) * 1000 / FPS, bool(pkt.is_keyframe)))

    for i in range(LOOP_SECONDS * FPS):
        if cancel is not None and cancel.is_set():
            raise Cancelled
        frame = av.VideoFrame.from_ndarray(_frame(background, i), format="yuv420p")
        frame.pts = i
        collect(ctx.encode(frame))
    collect(ctx.encode(None))
    return out


def _tone() -> np.ndarray:
    """One second: a 1 kHz tick for 100 ms, then a quiet 440 Hz tone (int16 stereo)."""
    t = np.arange(AUDIO_RATE) / AUDIO_RATE
    wave = 0.08 * np.sin(2 * np.pi * 440 * t)
    tick = t < 0.1
    wave[tick] = 0.3 * np.sin(2 * np.pi * 1000 * t[tick])
    mono = (wave * 32767).astype(np.int16)
    return np.stack([mono, mono])


def _encode_audio() -> list[Packet]:
    ctx: Any = av.CodecContext.create("libopus", "w")
    ctx.sample_rate = AUDIO_RATE
    ctx.layout = "stereo"
    ctx.format = "s16"
    ctx.bit_rate = 48000
    ctx.time_base = fractions.Fraction(1, AUDIO_RATE)
    second = _tone()
    out: list[Packet] = []
    for i in range(LOOP_SECONDS * AUDIO_RATE // AUDIO_FRAME):
        start = (i * AUDIO_FRAME) % AUDIO_RATE
        chunk = second[:, start : start + AUDIO_FRAME]
        frame = av.AudioFrame.from_ndarray(
            np.ascontiguousarray(chunk.T).reshape(1, -1), format="s16", layout="stereo"
        )
        frame.sample_rate = AUDIO_RATE
        frame.pts = i * AUDIO_FRAME
        for pkt in ctx.encode(frame):
            out.append(Packet(bytes(pkt), float(pkt.pts) * 1000 / AUDIO_RATE, True))
    return out


# -- cache file: MAGIC, u32 header length, JSON header, then the packets back to back -----------


def write(path: Path, pattern: TestPattern) -> None:
    header = {
        "version": FORMAT_VERSION,
        "width": pattern.width,
        "height": pattern.height,
        "fps": pattern.fps,
        "loop_ms": pattern.loop_ms,
        "video": [[len(p.data), p.pts_ms, p.keyframe] for p in pattern.video],
        "audio": [[len(p.data), p.pts_ms] for p in pattern.audio],
    }
    blob = json.dumps(header, separators=(",", ":")).encode()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        f.write(MAGIC + struct.pack(">I", len(blob)) + blob)
        for p in pattern.video + pattern.audio:
            f.write(p.data)
    os.replace(tmp, path)


def read(path: Path) -> TestPattern:
    data = path.read_bytes()
    if not data.startswith(MAGIC):
        raise ValueError("not a test pattern cache file")
    pos = len(MAGIC)
    (size,) = struct.unpack_from(">I", data, pos)
    pos += 4
    header = json.loads(data[pos : pos + size])
    pos += size
    if header["version"] != FORMAT_VERSION:
        raise ValueError("old test pattern cache file")
    video: list[Packet] = []
    for length, pts_ms, key in header["video"]:
        video.append(Packet(data[pos : pos + length], float(pts_ms), bool(key)))
        pos += length
    audio: list[Packet] = []
    for length, pts_ms in header["audio"]:
        audio.append(Packet(data[pos : pos + length], float(pts_ms), True))
        pos += length
    if pos != len(data) or not video or not audio:
        raise ValueError("truncated test pattern cache file")
    return TestPattern(
        int(header["width"]),
        int(header["height"]),
        int(header["fps"]),
        float(header["loop_ms"]),
        tuple(video),
        tuple(audio),
    )
