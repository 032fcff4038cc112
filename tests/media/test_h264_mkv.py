from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from openkvs.media import h264, mkv

from ..mediagen import aac_frames, h264_clip
from ..support import need_tool


def fragment_from_clip(
    profile: str = "main", width: int = 640, height: int = 360
) -> tuple[bytes, int]:
    clip = h264_clip(width=width, height=height, seconds=2.0, profile=profile)
    first = h264.split_annexb(clip[0].data)
    sps = [n for n in first if h264.nal_type(n) == h264.NAL_SPS]
    pps = [n for n in first if h264.nal_type(n) == h264.NAL_PPS]
    info = h264.parse_sps(sps[0])
    video = mkv.Track(
        1,
        mkv.CODEC_H264,
        h264.avc_decoder_configuration(sps, pps),
        width=info.width,
        height=info.height,
    )
    audio_frames, asc = aac_frames(2.0)
    audio = mkv.Track(2, mkv.CODEC_AAC, asc, mkv.TRACK_TYPE_AUDIO, sample_rate=48000.0, channels=2)
    base = 1_700_000_000_000
    blocks = [
        mkv.Block(1, base + round(f.pts_ms), h264.to_avcc(h264.split_annexb(f.data)), f.keyframe)
        for f in clip
    ]
    blocks += [mkv.Block(2, base + round(f.pts_ms), f.data, True) for f in audio_frames]
    blocks.sort(key=lambda b: (b.timecode, b.track))
    data = mkv.write_fragment([video, audio], blocks, timecode=base, duration_ms=2000.0)
    return data, len(clip)


@pytest.mark.parametrize(
    "profile,width,height,name",
    [
        ("baseline", 320, 240, "constrained-baseline"),
        ("main", 640, 360, "main"),
        ("high", 1280, 720, "high"),
    ],
)
def test_parse_sps(profile: str, width: int, height: int, name: str) -> None:
    clip = h264_clip(width=width, height=height, seconds=0.2, profile=profile)
    nals = h264.split_annexb(clip[0].data)
    assert h264.is_keyframe(nals)
    sps = h264.parse_sps(next(n for n in nals if h264.nal_type(n) == h264.NAL_SPS))
    assert (sps.width, sps.height) == (width, height)
    assert sps.profile_name == name or (profile == "baseline" and sps.profile_name == "baseline")


def test_avcc_roundtrip() -> None:
    clip = h264_clip(seconds=0.2, profile="high")
    nals = h264.split_annexb(clip[0].data)
    sps = [n for n in nals if h264.nal_type(n) == h264.NAL_SPS]
    pps = [n for n in nals if h264.nal_type(n) == h264.NAL_PPS]
    rec = h264.avc_decoder_configuration(sps, pps)
    assert h264.parse_avc_decoder_configuration(rec) == (sps, pps)
    assert h264.split_avcc(h264.to_avcc(nals)) == nals


@pytest.mark.parametrize("bad", [b"", b"\x67", b"\x67\x64\x00", b"\x68\x00\x00\x00\x00"])
def test_parse_sps_rejects_garbage(bad: bytes) -> None:
    with pytest.raises(ValueError):
        h264.parse_sps(bad)


def test_fragment_roundtrip_and_ffprobe(tmp_path: Path) -> None:
    data, n_video = fragment_from_clip("high", 1280, 720)
    frag = mkv.read_fragment(data)
    assert frag.cluster_timecode == 1_700_000_000_000
    assert [t.codec_id for t in frag.tracks] == [mkv.CODEC_H264, mkv.CODEC_AAC]
    assert sum(1 for b in frag.blocks if b.track == 1) == n_video
    assert frag.blocks[0].keyframe

    ffprobe = need_tool("ffprobe")
    if ffprobe is None:
        pytest.skip("ffprobe is not installed")
    path = tmp_path / "f.mkv"
    path.write_bytes(data)
    out = subprocess.run(
        [ffprobe, "-v", "error", "-show_streams", "-count_frames", "-of", "json", str(path)],
        capture_output=True,
        text=True,
        check=True,
    )
    streams = json.loads(out.stdout)["streams"]
    v = next(s for s in streams if s["codec_type"] == "video")
    a = next(s for s in streams if s["codec_type"] == "audio")
    assert v["codec_name"] == "h264" and v["profile"] == "High"
    assert (v["width"], v["height"]) == (1280, 720)
    assert int(v["nb_read_frames"]) == n_video
    assert a["codec_name"] == "aac" and int(a["channels"]) == 2
    res = subprocess.run(
        ["ffmpeg", "-v", "error", "-i", str(path), "-f", "null", "-"],
        capture_output=True,
        text=True,
    )
    assert res.returncode == 0 and res.stderr == ""


def test_tags_and_appended_elements() -> None:
    data, _ = fragment_from_clip()
    tagged = data + mkv.tags({"AWS_KINESISVIDEO_FRAGMENT_NUMBER": "123"})
    assert mkv.read_fragment(tagged).tags == {"AWS_KINESISVIDEO_FRAGMENT_NUMBER": "123"}


@pytest.mark.parametrize("cut", [10, 100, 1000])
def test_truncated_fragment_raises_value_error(cut: int) -> None:
    data, _ = fragment_from_clip()
    with pytest.raises(ValueError):
        mkv.read_fragment(data[:cut])
