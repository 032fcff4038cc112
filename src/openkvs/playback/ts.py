"""MPEG-TS segments for HLS (``ContainerFormat=MPEG_TS``): one fragment, all tracks, remuxed.

H.264 goes in as Annex B with SPS/PPS in front of every keyframe, AAC as ADTS frames and Opus
packets as stored (FFmpeg adds the control headers of Opus in MPEG-TS), so each segment decodes
on its own; FFmpeg's mpegts muxer (through PyAV, into memory) writes PAT/PMT,
PES packets and PCR. Timestamps are on the 90 kHz session timeline, shifted by ``TS_OFFSET`` so
that reordered video (DTS before PTS) and early audio never go negative.
"""

from __future__ import annotations

import io
from fractions import Fraction
from typing import Any

import av

from .codecs import adts_frame, avcc_to_annexb
from .fmp4 import TrackSpec, audio_samples, drop_before, video_samples
from .mkv import Frame

TS_OFFSET = 10 * 90_000  # 10 s
_TB = Fraction(1, 90_000)


def ts_segment(
    video: tuple[TrackSpec, list[Frame]] | None,
    audio: tuple[TrackSpec, list[Frame]] | None,
    start_ms: int,
    duration_ms: int,
) -> bytes:
    """One TS file holding a fragment's video and/or audio at ``start_ms`` on the timeline."""
    packets: list[tuple[int, int, int, bytes, bool]] = []  # (dts, pts, stream index, data, key)
    buf = io.BytesIO()
    out: Any = av.open(buf, "w", format="mpegts")
    try:
        index = 0
        if video is not None:
            spec, frames = video
            assert spec.avc is not None
            out.add_mux_stream("h264", width=spec.width, height=spec.height)
            samples = video_samples(spec, frames, start_ms * 90, (start_ms + duration_ms) * 90)
            # DTS must not exceed PTS in a TS: shift decode times back by the reorder depth.
            delay = max((-c for c in samples.ctos), default=0)
            delay = max(delay, 0)
            for i, f in enumerate(frames):
                dts = samples.dts[i] - delay
                pts = samples.dts[i] + samples.ctos[i]
                packets.append(
                    (dts, pts, index, avcc_to_annexb(f.data, spec.avc, keyframe=f.key), f.key)
                )
            index += 1
        if audio is not None:
            spec, frames = audio
            aac = spec.aac
            assert aac is not None or spec.opus is not None
            # Opus goes in as received; the muxer writes its TS control headers.
            out.add_mux_stream("aac" if aac is not None else "opus", rate=spec.timescale)
            start = start_ms * spec.timescale // 1000
            # Audio starting before the video would make players start the video late (a
            # hole): a frame early by timecode rounding is moved, an earlier one dropped.
            samples = drop_before(
                audio_samples(spec, frames, start_ms), start, spec.timescale // 1000
            )
            for t, data in zip(samples.dts, samples.data, strict=True):
                t90 = t * 90_000 // spec.timescale
                payload = adts_frame(data, aac) if aac is not None else data
                packets.append((t90, t90, index, payload, True))
        streams = list(out.streams)
        packets.sort(key=lambda p: (p[0], p[2]))
        for dts, pts, idx, data, key in packets:
            packet = av.Packet(data)
            packet.stream = streams[idx]
            packet.time_base = _TB
            packet.dts = dts + TS_OFFSET
            packet.pts = pts + TS_OFFSET
            packet.is_keyframe = key
            out.mux(packet)
    finally:
        out.close()
    return buf.getvalue()
