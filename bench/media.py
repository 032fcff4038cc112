"""The benchmark camera's media: 1280x720 30 fps ≈2 Mb/s H.264 (1 s GOP) + 20 ms Opus, 4 s loops.

Encoded once with PyAV (tests.mediagen) and cached under bench/out so each camera process starts
at once.
"""

from __future__ import annotations

import pickle
from pathlib import Path

from tests.mediagen import EncodedFrame, h264_clip, opus_packets

CACHE = Path(__file__).resolve().parent / "out" / "media-720p-v1.pkl"
LOOP_SECONDS = 4.0
FPS = 30


def clip_720p() -> tuple[EncodedFrame, ...]:
    # ≈2 Mb/s 1280x720 30 fps main profile, 1 s GOP.
    return h264_clip(
        width=1280, height=720, seconds=LOOP_SECONDS, profile="main", noise=2, crf=29, motion=True
    )


def camera_media() -> tuple[tuple[EncodedFrame, ...], tuple[EncodedFrame, ...]]:
    """(video, audio) of one loop, from the cache when it exists."""
    if CACHE.exists():
        try:
            video, audio = pickle.loads(CACHE.read_bytes())
            return tuple(video), tuple(audio)
        except Exception:  # noqa: BLE001 - a stale or torn cache is simply rebuilt
            pass
    video, audio = clip_720p(), opus_packets(LOOP_SECONDS)
    CACHE.parent.mkdir(parents=True, exist_ok=True)
    tmp = CACHE.with_suffix(".tmp")
    tmp.write_bytes(pickle.dumps((video, audio)))
    tmp.replace(CACHE)
    return video, audio
