"""Realistic stored fragments for tests: H.264 (libx264) + AAC (or Opus, ``audio_codec="libopus"``),
one MKV file per GOP.

Frames come from FFmpeg's ``testsrc2`` (moving content, so a wrong frame is visibly wrong) and
a ``sine`` tone; both are encoded once, continuously, then each GOP is muxed with PyAV into its own
self-contained MKV in memory, the way the fragment store keeps them::

    frags = generate(count=6, start_ms=clock.now_ms() - 10_000)
    stream = append(server, "cam", frags)          # creates nothing: the stream must exist

``relative_timecodes=True`` (the default) writes every fragment's cluster with timestamps starting
at 0, as PutMedia producers in RELATIVE mode do; readers must place fragments on the timeline from
their metadata, not from the MKV timecodes.
"""

from __future__ import annotations

import dataclasses
import functools
import io
import random
from collections.abc import Sequence
from fractions import Fraction
from typing import Any

import av

from openkvs.records import Fragment


@dataclasses.dataclass(frozen=True)
class GeneratedFragment:
    data: bytes
    producer_ts_ms: int
    server_ts_ms: int
    duration_ms: int
    frame_pts_ms: tuple[float, ...]  # video frames, presentation order, relative to the start
    audio_frames: int
    first_frame_index: int  # index of this fragment's first frame in the whole encoded video


def _encode(
    *,
    seconds: float,
    width: int,
    height: int,
    fps: int,
    gop: int,
    bframes: int,
    video: bool,
    audio: bool,
    sample_rate: int,
    channels: int,
    audio_codec: str = "aac",
) -> tuple[Any, Any, list[Any], list[Any], Any]:
    template = av.open(io.BytesIO(), "w", format="matroska")
    vs = as_ = None
    vpackets: list[Any] = []
    apackets: list[Any] = []
    if video:
        vs = template.add_stream("libx264", rate=fps)
        vs.width = width
        vs.height = height
        vs.pix_fmt = "yuv420p"
        vs.codec_context.options = {
            "preset": "veryfast",
            "x264-params": f"keyint={gop}:min-keyint={gop}:scenecut=0:bframes={bframes}",
        }
    if audio:
        as_ = template.add_stream(audio_codec, rate=sample_rate)
        as_.codec_context.layout = "mono" if channels == 1 else "stereo"
        as_.codec_context.bit_rate = 64_000
    if vs is not None:
        src = av.open(
            f"testsrc2=size={width}x{height}:rate={fps}:duration={seconds}", format="lavfi"
        )
        for frame in src.decode(video=0):
            # testsrc2 marks every frame as an I picture; let x264 choose (keyint decides).
            frame.pict_type = av.video.frame.PictureType.NONE
            frame.time_base = Fraction(1, fps)
            vpackets += vs.encode(frame)
        vpackets += vs.encode(None)
        src.close()
    if as_ is not None:
        layout = "mono" if channels == 1 else "stereo"
        src = av.open(
            f"sine=frequency=440:sample_rate={sample_rate}:duration={seconds}", format="lavfi"
        )
        resampler = av.AudioResampler(
            format="fltp" if audio_codec == "aac" else "flt", layout=layout, rate=sample_rate
        )
        for frame in src.decode(audio=0):
            for out in resampler.resample(frame):
                apackets += as_.encode(out)
        for out in resampler.resample(None):
            apackets += as_.encode(out)
        apackets += as_.encode(None)
        src.close()
    template.start_encoding()
    return vs, as_, vpackets, apackets, template


def generate(
    count: int,
    start_ms: int,
    *,
    width: int = 640,
    height: int = 360,
    fps: int = 30,
    gop_seconds: float = 1.0,
    bframes: int = 0,
    video: bool = True,
    audio: bool = True,
    sample_rate: int = 48_000,
    channels: int = 1,
    audio_codec: str = "aac",
    relative_timecodes: bool = True,
    server_delay_ms: tuple[int, int] = (40, 70),
    seed: int = 1,
) -> list[GeneratedFragment]:
    """``count`` fragments of ``gop_seconds`` each; the first starts at producer time ``start_ms``.

    Server timestamps trail the producer's by a random delay in ``server_delay_ms`` (network
    jitter; the default keeps consecutive fragments within 50 ms of abutting on the server
    timeline too).
    """
    rng = random.Random(seed)
    gop = max(1, round(fps * gop_seconds))
    seconds = count * gop / fps + 0.5
    vs, as_, vpackets, apackets, template = _encode(
        seconds=seconds,
        width=width,
        height=height,
        fps=fps,
        gop=gop,
        bframes=bframes,
        video=video,
        audio=audio,
        sample_rate=sample_rate,
        channels=channels,
        audio_codec=audio_codec,
    )
    # Fragment boundaries, in seconds: keyframes for video, fixed chunks for audio-only.
    if video:
        bounds = [float(p.pts * p.time_base) for p in vpackets if p.is_keyframe]
    else:
        bounds = [i * gop_seconds for i in range(count + 1)]
    bounds = bounds[: count + 1]
    if len(bounds) < count + 1:
        bounds.append(bounds[-1] + gop_seconds)
    out: list[GeneratedFragment] = []
    frame_index = 0
    for i in range(count):
        lo, hi = bounds[i], bounds[i + 1]
        buf = io.BytesIO()
        mkv = av.open(buf, "w", format="matroska")
        streams = []
        if vs is not None:
            streams.append(("v", mkv.add_stream_from_template(vs)))
        if as_ is not None:
            streams.append(("a", mkv.add_stream_from_template(as_)))
        pts_ms: list[float] = []
        n_audio = 0
        for kind, stream in streams:
            packets = vpackets if kind == "v" else apackets
            for p in packets:
                if p.pts is None or p.size == 0:
                    continue
                t = float(p.pts * p.time_base)
                if not lo <= t < hi - 1e-9:
                    continue
                if relative_timecodes:
                    shift = round(lo / p.time_base)
                    p.pts -= shift
                    p.dts = (p.dts - shift) if p.dts is not None else None
                    if p.dts is not None and p.dts < 0 and kind == "v":
                        p.dts = None
                p.stream = stream
                mkv.mux(p)
                if kind == "v":
                    pts_ms.append((t - lo) * 1000)
                else:
                    n_audio += 1
        mkv.close()
        producer = start_ms + round(lo * 1000)
        duration = round((hi - lo) * 1000)
        out.append(
            GeneratedFragment(
                data=buf.getvalue(),
                producer_ts_ms=producer,
                server_ts_ms=producer + rng.randint(*server_delay_ms),
                duration_ms=duration,
                frame_pts_ms=tuple(sorted(pts_ms)),
                audio_frames=n_audio,
                first_frame_index=frame_index,
            )
        )
        frame_index += len(pts_ms)
    template.close()
    return out


def append(
    server: Any, stream_name: str, frags: Sequence[GeneratedFragment], *, server_ts: bool = True
) -> list[Fragment]:
    """Append fragments to an existing stream through the fragment store (on the server loop)."""
    stream = server.services.control.get_stream(name=stream_name)
    stored = []
    for f in frags:
        stored.append(
            server.call(
                server.services.fragments.append(
                    stream,
                    f.data,
                    producer_ts_ms=f.producer_ts_ms,
                    server_ts_ms=f.server_ts_ms if server_ts else None,
                    duration_ms=f.duration_ms,
                )
            )
        )
    return stored


def restamp(frags: Sequence[GeneratedFragment], start_ms: int) -> list[GeneratedFragment]:
    """The same media recorded from ``start_ms`` (fragments with relative timecodes only)."""
    base = frags[0].producer_ts_ms
    out = []
    for f in frags:
        producer = start_ms + f.producer_ts_ms - base
        delay = f.server_ts_ms - f.producer_ts_ms
        out.append(dataclasses.replace(f, producer_ts_ms=producer, server_ts_ms=producer + delay))
    return out


@functools.cache
def _encoded(count: int, options: tuple[tuple[str, Any], ...]) -> tuple[GeneratedFragment, ...]:
    return tuple(generate(count, 0, **dict(options)))


def recorded(count: int, start_ms: int, **options: Any) -> list[GeneratedFragment]:
    """``generate`` with the encoding cached per process (tests differ only in timestamps)."""
    return restamp(_encoded(count, tuple(sorted(options.items()))), start_ms)
