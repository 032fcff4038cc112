from __future__ import annotations

import fractions
from typing import Any

import av
import numpy as np
import pytest

from openkvs.media import aac
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


@pytest.mark.parametrize(
    ("samples", "silent"),
    [
        ([], True),
        ([0, 0, 0], True),
        ([3 / 32768, -3 / 32768, 0], True),
        ([0, 4 / 32768, 0], False),
        ([0, 0, -4 / 32768], False),
        ([0.5, 0, 0], False),
    ],
)
def test_digital_silence_is_below_four_lsb(samples: list[float], silent: bool) -> None:
    assert aac.is_silent(np.array([samples, samples], dtype=np.float32)) is silent


def frames_of(signal: np.ndarray, start_pts: int, per_frame: int = 960) -> list[av.AudioFrame]:
    """``signal`` (float, full scale 1.0) as 20 ms s16 stereo frames from ``start_pts``."""
    ints = np.round(signal * 32767).astype(np.int16)
    frames = []
    for pos in range(0, len(ints), per_frame):
        frame = av.AudioFrame.from_ndarray(
            np.repeat(ints[pos : pos + per_frame], 2).reshape(1, -1), format="s16", layout="stereo"
        )
        frame.sample_rate = SAMPLE_RATE
        frame.pts = start_pts + pos
        frame.time_base = fractions.Fraction(1, SAMPLE_RATE)
        frames.append(frame)
    return frames


def decode(packets: list[tuple[bytes, int]], asc: bytes) -> np.ndarray:
    """The first channel of what FFmpeg's AAC decoder makes of the packets (no errors)."""
    dec: Any = av.CodecContext.create("aac", "r")
    dec.extradata = asc
    out = []
    for data, pts in packets:
        packet = av.Packet(data)
        packet.pts = pts
        packet.time_base = fractions.Fraction(1, SAMPLE_RATE)
        out += [f.to_ndarray()[0] for f in dec.decode(packet)]
    return np.concatenate(out)


def silence_tone_silence() -> np.ndarray:
    """4 s: silence, a 440 Hz tone (0.6-1.4 s), silence, a 50 ms 3 kHz burst (a transient,
    2.1 s), 90 ms of silence, a 1 kHz tone (2.2-2.9 s), silence. No edge on a frame boundary."""
    t = np.arange(4 * SAMPLE_RATE) / SAMPLE_RATE
    sig = np.zeros_like(t)
    for f, a, b, amp in ((440, 0.6, 1.4, 0.3), (3000, 2.1, 2.15, 0.5), (1000, 2.24, 2.9, 0.3)):
        span = (t >= a + 0.0003) & (t < b + 0.0007)
        sig[span] = amp * np.sin(2 * np.pi * f * t[span])
    return sig.astype(np.float32)


@pytest.mark.parametrize("channels", [1, 2])
def test_silence_is_not_encoded_and_decodes_as_one_encoder_would(
    channels: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    sig = silence_tone_silence()
    start = 123_456
    enc = AacEncoder(channels=channels)
    packets = enc.encode(frames_of(sig, start)) + enc.flush()
    # One frame per 1024 input samples (and the priming frame), in a continuous timeline.
    times = [pts for _, pts in packets]
    assert times == [start - FRAME + k * FRAME for k in range(-(-len(sig) // FRAME) + 1)]
    # The encoder ran for the sound only (and a few frames around each onset and end).
    sound_frames = 0.8 * SAMPLE_RATE / FRAME + 0.05 * SAMPLE_RATE / FRAME + 0.66 * 48 + 9
    assert enc.encoded_frames < sound_frames + 3 * (aac.DRAIN + aac.WARMUP + 2)
    assert enc.silent_frames + enc.encoded_frames >= len(packets) - 1
    assert enc.silent_frames > 100
    got = decode(packets, enc.audio_specific_config)

    # The same input through one encoder that encodes everything.
    monkeypatch.setattr(aac, "is_silent", lambda pcm: False)
    ref_enc = AacEncoder(channels=channels)
    ref = decode(
        ref_enc.encode(frames_of(sig, start)) + ref_enc.flush(), ref_enc.audio_specific_config
    )
    assert ref_enc.silent_frames == 0
    assert got.shape == ref.shape
    # (Bit-exact in mono; in stereo the encoder's channel-pair state leaves a trace < -70 dBFS.)
    assert np.max(np.abs(got - ref)) < 3e-4

    # Against the source: output sample i is input time start - FRAME + i.
    src = np.zeros_like(got)
    src[FRAME : FRAME + len(sig)] = sig[: len(got) - FRAME]
    snr = 10 * np.log10(np.sum(src**2) / np.sum((got - src) ** 2))
    assert snr > 40, snr
    # Silence decodes to silence, the tones are where they were (spectral peak per window).
    for a, b in ((0.0, 0.55), (1.45, 2.05), (2.95, 3.9)):
        assert (
            np.max(np.abs(got[FRAME + int(a * SAMPLE_RATE) : FRAME + int(b * SAMPLE_RATE)])) < 1e-3
        )
    for a, freq in ((0.7, 440), (1.2, 440), (2.3, 1000), (2.8, 1000)):
        window = got[FRAME + int(a * SAMPLE_RATE) :][:4800]
        spectrum = np.abs(np.fft.rfft(window * np.hanning(len(window))))
        assert abs(np.argmax(spectrum) * SAMPLE_RATE / len(window) - freq) <= 10


def test_only_silence_never_runs_the_encoder() -> None:
    enc = AacEncoder(channels=1)
    quiet = np.zeros(SAMPLE_RATE, dtype=np.float32)
    quiet[::7] = 2 / 32768  # below the threshold: still silence
    packets = enc.encode(frames_of(quiet, 0)) + enc.flush()
    assert enc.encoded_frames == 0
    assert [pts for _, pts in packets] == [
        (k - 1) * FRAME for k in range(-(-SAMPLE_RATE // FRAME) + 1)
    ]
    assert {data for data, _ in packets} == {aac.silent_frame(1, 64000)}
    assert not np.any(decode(packets, enc.audio_specific_config))


def test_a_jump_in_time_ends_the_run_and_starts_over() -> None:
    """Sound, a gap longer than ``max_gap``, sound: each run is whole (its tail flushed, all but
    the samples short of a frame) and the second starts with its priming frame at the new time."""
    t = np.arange(SAMPLE_RATE // 2) / SAMPLE_RATE
    tone = (0.3 * np.sin(2 * np.pi * 440 * t)).astype(np.float32)
    enc = AacEncoder(channels=1)
    later = 10 * SAMPLE_RATE
    packets = enc.encode(frames_of(tone, 0) + frames_of(tone, later)) + enc.flush()
    times = [pts for _, pts in packets]
    first = [(k - 1) * FRAME for k in range(len(tone) // FRAME + 1)]
    second = [later + (k - 1) * FRAME for k in range(-(-len(tone) // FRAME) + 1)]
    assert times == first + second
    got = decode(packets, enc.audio_specific_config)
    assert got.shape == (len(times) * FRAME,)


@pytest.mark.parametrize("batch", [1, 4, 5, 7, 1000])
def test_frames_fed_a_run_at_a_time_give_the_packets_of_one_call_per_frame(batch: int) -> None:
    """The encoder is handed each run of frames as one PyAV frame; its packets are FFmpeg's for
    the same samples given one 1024-sample frame per call, whatever the batches' sizes."""
    rng = np.random.default_rng(11)
    sig = np.clip(rng.standard_normal(SAMPLE_RATE) * 0.2, -1, 1).astype(np.float32)
    frames = frames_of(sig, 0)
    enc = AacEncoder(channels=1)
    packets: list[tuple[bytes, int]] = []
    for i in range(0, len(frames), batch):
        packets += enc.encode(frames[i : i + batch])
    packets += enc.flush()

    pcm = np.round(sig * 32767).astype(np.int16).astype(np.float32) / 32768
    pcm = np.concatenate([pcm, np.zeros(-len(pcm) % FRAME, dtype=np.float32)])
    ctx = aac._open(1, 64000)
    want: list[tuple[bytes, int]] = []
    chunks = [np.zeros(FRAME, dtype=np.float32)] * aac.WARMUP + [
        pcm[i : i + FRAME] for i in range(0, len(pcm), FRAME)
    ]
    for k, chunk in enumerate(chunks):
        frame = av.AudioFrame.from_ndarray(chunk.reshape(1, -1), format="fltp", layout="mono")
        frame.sample_rate = SAMPLE_RATE
        frame.pts = (k - aac.WARMUP) * FRAME
        frame.time_base = fractions.Fraction(1, SAMPLE_RATE)
        want += [(bytes(p), int(p.pts)) for p in ctx.encode(frame)]
    want += [(bytes(p), int(p.pts)) for p in ctx.encode(None)]
    want = [(data, pts) for data, pts in want if pts >= -FRAME]
    assert enc.encoded_frames == len(chunks)
    assert packets == want
