"""GetClip: one MP4 for a timestamp range, playable by ordinary players (moov before mdat)."""

from __future__ import annotations

import struct
from pathlib import Path
from typing import Any

import pytest

from openkvs import clock

from ..support import ServerThread
from .media import append, recorded
from .support import create_stream, ffmpeg_decode_errors, ffprobe_json, ms, packet_times


def boxes(data: bytes) -> list[str]:
    out, pos = [], 0
    while pos + 8 <= len(data):
        size, kind = struct.unpack(">I4s", data[pos : pos + 8])
        if size == 1:
            size = struct.unpack(">Q", data[pos + 8 : pos + 16])[0]
        out.append(kind.decode())
        assert size >= 8
        pos += size
    assert pos == len(data)
    return out


def clip(server: ServerThread, start_ms: int, end_ms: int, **kwargs: Any) -> dict[str, Any]:
    client = server.client("kinesis-video-archived-media")
    return dict(
        client.get_clip(
            StreamName=kwargs.pop("name", "cam"),
            ClipFragmentSelector={
                "FragmentSelectorType": kwargs.pop("selector", "PRODUCER_TIMESTAMP"),
                "TimestampRange": {"StartTimestamp": ms(start_ms), "EndTimestamp": ms(end_ms)},
            },
        )
    )


def test_clip_is_one_playable_mp4(server: ServerThread, tmp_path: Path) -> None:
    create_stream(server, "cam")
    t0 = clock.now_ms() - 120_000
    frags = recorded(6, t0, bframes=2)
    append(server, "cam", frags)
    # Fragments that start at or after the start, up to the (inclusive) end: 1, 2, 3 and 4.
    response = clip(server, t0 + 1000, t0 + 4000)
    assert response["ContentType"] == "video/mp4"
    data = response["Payload"].read()
    assert boxes(data) == ["ftyp", "moov", "mdat"]  # progressive, moov first
    path = tmp_path / "clip.mp4"
    path.write_bytes(data)
    assert ffmpeg_decode_errors(path) == ""
    info = ffprobe_json(path, "-show_streams", "-show_format")
    video, audio = sorted(info["streams"], key=lambda s: s["codec_type"], reverse=True)
    assert (video["codec_name"], video["width"], video["height"]) == ("h264", 640, 360)
    assert (audio["codec_name"], audio["sample_rate"], audio["channels"]) == ("aac", "48000", 1)
    assert int(video["nb_frames"]) == 4 * 30
    assert int(audio["nb_frames"]) == sum(f.audio_frames for f in frags[1:5])
    assert float(info["format"]["duration"]) == pytest.approx(4.0, abs=0.05)
    times = [t for t, _ in packet_times(path, "v")]
    steps = [b - a for a, b in zip(times, times[1:], strict=False)]
    assert max(abs(s - 1 / 30) for s in steps) < 0.002  # fragment boundaries continuous
    assert times[0] == pytest.approx(0.0, abs=0.001)


def test_clip_stops_at_200_fragments(server: ServerThread, tmp_path: Path) -> None:
    create_stream(server, "cam")
    t0 = clock.now_ms() - 600_000
    frags = recorded(
        205, t0, width=160, height=90, fps=10, gop_seconds=0.1, audio=False, server_delay_ms=(5, 5)
    )
    append(server, "cam", frags)
    data = clip(server, t0, t0 + 60_000)["Payload"].read()
    path = tmp_path / "clip.mp4"
    path.write_bytes(data)
    info = ffprobe_json(path, "-show_streams")
    (video,) = info["streams"]
    assert int(video["nb_frames"]) == 200
    assert float(video["duration"]) == pytest.approx(20.0, abs=0.01)


def test_clip_errors(server: ServerThread) -> None:
    create_stream(server, "cam")
    create_stream(server, "no-retention", retention=0)
    create_stream(server, "voice")
    t0 = clock.now_ms() - 120_000
    append(server, "cam", recorded(2, t0))
    append(server, "voice", recorded(2, t0, video=False))
    client = server.client("kinesis-video-archived-media")
    errors = client.exceptions
    with pytest.raises(errors.ResourceNotFoundException):
        clip(server, t0 - 60_000, t0 - 1000)
    with pytest.raises(errors.NoDataRetentionException):
        clip(server, t0, t0 + 1000, name="no-retention")
    with pytest.raises(errors.UnsupportedStreamMediaTypeException):
        clip(server, t0, t0 + 5000, name="voice")
    with pytest.raises(errors.InvalidArgumentException, match="24 hours"):
        clip(server, t0 - 25 * 3600_000, t0)
    with pytest.raises(errors.InvalidArgumentException, match="later than"):
        clip(server, t0 + 1000, t0)
    with pytest.raises(errors.ResourceNotFoundException):
        clip(server, t0, t0 + 1000, name="missing")
