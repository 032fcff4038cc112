from __future__ import annotations

import fractions

import av
import numpy as np
import pytest

from openkvs.media.aac import FRAME, SAMPLE_RATE, AacEncoder


def pcm_frames(samples: int, per_frame: int = 960, start_pts: int = 0) -> list[av.AudioFrame]:
    """20 ms s16 stereo frames of a 440 Hz tone, as the Opus decoder hands them over."""
    frames = []
    t = np.arange(samples) / SAMPLE_RATE
    tone = (np.sin(2 * np.pi * 440 * t) * 12000).astype(np.int16)
    for pos in range(0, samples, per_frame):
        chunk = tone[pos : pos + per_frame]
        interleaved = np.repeat(chunk, 2).reshape(1, -1)
        frame = av.AudioFrame.from_ndarray(interleaved, format="s16", layout="stereo")
        frame.sample_rate = SAMPLE_RATE
        frame.pts = start_pts + pos
        frame.time_base = fractions.Fraction(1, SAMPLE_RATE)
        frames.append(frame)
    return frames


@pytest.mark.parametrize("samples", [960 * 3, 960 * 5 + 100, FRAME * 4])
def test_flush_emits_every_pending_sample(samples: int) -> None:
    enc = AacEncoder(channels=1)
    packets = enc.encode(pcm_frames(samples))
    # The encoder holds back samples short of a frame and its own look-ahead...
    assert len(packets) * FRAME < samples
    packets += enc.flush()
    # ...which the flush hands out: every input sample is in a frame, with exact, rising times
    # (the first frame is the encoder's priming frame, one frame before the first sample).
    assert len(packets) == -(-samples // FRAME) + 1
    times = [pts for _, pts in packets]
    assert times == [(k - 1) * FRAME for k in range(len(packets))]
    assert times[-1] < samples <= times[-1] + FRAME
    assert all(data for data, _ in packets)


def test_flush_with_nothing_pending() -> None:
    enc = AacEncoder(channels=2)
    assert enc.flush() == []


@pytest.mark.parametrize("channels", [1, 2])
@pytest.mark.parametrize("layout", ["mono", "stereo"])
@pytest.mark.parametrize("fmt", ["s16", "s16p", "fltp"])
def test_pcm_conversion_matches_the_general_path(channels: int, layout: str, fmt: str) -> None:
    """Every input layout and format becomes the same float planes (first channel for mono)."""
    rng = np.random.default_rng(3)
    n_in = 1 if layout == "mono" else 2
    ints = rng.integers(-32768, 32767, size=(n_in, 960), dtype=np.int16)
    if fmt == "s16":
        frame = av.AudioFrame.from_ndarray(ints.T.reshape(1, -1), format="s16", layout=layout)
    elif fmt == "s16p":
        frame = av.AudioFrame.from_ndarray(ints, format="s16p", layout=layout)
    else:
        frame = av.AudioFrame.from_ndarray(
            ints.astype(np.float32) / 32768, format="fltp", layout=layout
        )
    frame.sample_rate = SAMPLE_RATE
    want = ints.astype(np.float32) / 32768
    want = want[:1] if channels == 1 else (np.vstack([want, want]) if n_in == 1 else want)
    got = AacEncoder(channels=channels)._pcm(frame)
    assert got.dtype == np.float32 and got.shape == want.shape
    assert np.allclose(got, want, atol=1e-6)
