"""Opus as stored and served without decoding: packet durations, OpusHead and dOps, checked
against RFC 6716 / RFC 7845 / Opus-in-ISOBMFF byte layouts and against what FFmpeg writes."""

from __future__ import annotations

import dataclasses
import struct
import subprocess
from pathlib import Path

import pytest

from openkvs.media import mkv, opus
from openkvs.playback import fmp4
from openkvs.playback.mkv import parse_fragment

from ..dataplane.mediafiles import producer_mkv
from ..support import need_tool


@pytest.mark.parametrize(
    "packet,samples",
    [
        (bytes([31 << 3]), 960),  # CELT 20 ms, one frame
        (bytes([(31 << 3) | 1, 0]), 1920),  # two frames of equal size
        (bytes([(31 << 3) | 2, 1, 0]), 1920),  # two frames of different sizes
        (bytes([(31 << 3) | 3, 3]), 2880),  # code 3: three frames
        (bytes([0 << 3]), 480),  # SILK 10 ms
        (bytes([(3 << 3) | 1]), 5760),  # two SILK 60 ms frames: 120 ms
        (bytes([(16 << 3) | 4]), 120),  # CELT 2.5 ms (the stereo bit does not matter)
        (bytes([(13 << 3)]), 960),  # hybrid 20 ms
    ],
)
def test_packet_samples(packet: bytes, samples: int) -> None:
    assert opus.packet_samples(packet) == samples


@pytest.mark.parametrize(
    "packet",
    [b"", bytes([(31 << 3) | 3]), bytes([(31 << 3) | 3, 0]), bytes([(31 << 3) | 3, 7])],
)
def test_bad_packets(packet: bytes) -> None:
    with pytest.raises(ValueError):
        opus.packet_samples(packet)


def test_opus_head_and_dops_vectors() -> None:
    # RFC 7845 §5.1: magic, version 1, channels, pre-skip (LE), input rate (LE), gain, family 0.
    assert opus.opus_head(2).to_bytes() == bytes.fromhex("4f707573486561640102000080bb0000000000")
    assert opus.opus_head(1, 312).to_bytes() == bytes.fromhex(
        "4f707573486561640101380180bb0000000000"
    )
    # Opus in ISO BMFF §4.3.2: version 0, the same fields big-endian.
    assert opus.opus_head(2).dops() == bytes([0, 2, 0, 0, 0, 0, 0xBB, 0x80, 0, 0, 0])
    assert opus.opus_head(1, 312).dops() == bytes([0, 1, 0x01, 0x38, 0, 0, 0xBB, 0x80, 0, 0, 0])
    head = opus.parse_opus_head(opus.opus_head(1, 312).to_bytes())
    assert head == opus.OpusHead(1, 312)
    # Family 1 (surround) keeps its mapping table.
    six = (
        b"OpusHead"
        + struct.pack("<BBHIhB", 1, 6, 312, 48000, 0, 1)
        + bytes([4, 2, 0, 4, 1, 2, 3, 5])
    )
    parsed = opus.parse_opus_head(six)
    assert (parsed.channels, parsed.family, parsed.mapping) == (
        6,
        1,
        bytes([4, 2, 0, 4, 1, 2, 3, 5]),
    )
    assert parsed.to_bytes() == six
    assert parsed.dops()[-8:] == bytes([4, 2, 0, 4, 1, 2, 3, 5])
    for bad in (b"OpusTags" + six[8:], six[:18], six[:22], opus.opus_head(2).to_bytes()[:9]):
        with pytest.raises(ValueError):
            opus.parse_opus_head(bad)
    with pytest.raises(ValueError):
        opus.opus_head(3)


def test_a_opus_track_round_trips_through_mkv() -> None:
    track = mkv.Track(
        2,
        mkv.CODEC_OPUS,
        opus.opus_head(2).to_bytes(),
        mkv.TRACK_TYPE_AUDIO,
        sample_rate=48000.0,
        channels=2,
        seek_pre_roll_ns=opus.SEEK_PRE_ROLL_NS,
    )
    data = mkv.write_fragment(
        [track], [mkv.Block(2, 1000, bytes([31 << 3, 1, 2]), True)], timecode=1000
    )
    (read,) = mkv.read_fragment(data).tracks
    assert read == dataclasses.replace(track, uid=2)  # a written UID is the track number


def _box(data: bytes, path: list[bytes]) -> bytes:
    """The payload of the box at ``path`` (sample entries: their children after 28 bytes)."""
    pos, end = 0, len(data)
    for i, kind in enumerate(path):
        while pos + 8 <= end:
            size, name = struct.unpack(">I4s", data[pos : pos + 8])
            if name == kind:
                body = pos + 8
                if kind == b"stsd":
                    body += 8
                elif kind in (b"Opus", b"mp4a"):
                    body += 28
                pos, end = body, pos + size
                break
            pos += size
        else:
            raise AssertionError(f"no {kind!r} box")
        if i == len(path) - 1:
            return data[pos:end]
    raise AssertionError


def test_dops_matches_what_ffmpeg_writes(tmp_path: Path) -> None:
    """FFmpeg's MP4 muxer turns an MKV's OpusHead into dOps; ours must be the same bytes, and
    our init segment must carry the same sample entry fields."""
    ffmpeg = need_tool("ffmpeg")
    if ffmpeg is None:
        pytest.skip("ffmpeg is not installed")
    src = tmp_path / "in.mkv"
    src.write_bytes(producer_mkv(1.0, audio_codec="libopus", live=False))
    out = tmp_path / "out.mp4"
    subprocess.run(
        [ffmpeg, "-v", "error", "-i", str(src), "-vn", "-c:a", "copy", str(out)], check=True
    )
    path = [b"moov", b"trak", b"mdia", b"minf", b"stbl", b"stsd", b"Opus", b"dOps"]
    theirs = _box(out.read_bytes(), path)
    parsed = parse_fragment(src.read_bytes())
    audio = parsed.audio()
    assert audio is not None and audio.codec_id == "A_OPUS"
    spec = fmp4.track_spec(audio)
    assert spec.opus is not None and spec.opus.pre_skip == 312  # libopus's look-ahead
    assert (spec.codec, spec.timescale, spec.channels) == ("opus", 48000, 2)
    assert spec.opus.dops() == theirs
    assert _box(fmp4.init_segment(spec), path) == theirs


def test_fmp4_keeps_a_transmission_gap(tmp_path: Path) -> None:
    """Discontinuous transmission: 200 ms of packets, 400 ms without any, 200 ms more. The
    fMP4 segment keeps every packet at its own time (the packet before the gap lasts until
    the next one), and FFmpeg decodes it."""
    ffprobe, ffmpeg = need_tool("ffprobe"), need_tool("ffmpeg")
    if ffprobe is None or ffmpeg is None:
        pytest.skip("ffprobe or ffmpeg is not installed")
    from openkvs.playback.mkv import Frame
    from openkvs.playback.mkv import Track as PlaybackTrack

    from ..mediagen import opus_packets

    packets = [p.data for p in opus_packets(1.0)]
    times_ms = [i * 20 for i in range(10)] + [600 + i * 20 for i in range(10)]
    frames = [Frame(t * 1_000_000, d, True) for t, d in zip(times_ms, packets, strict=False)]
    track = PlaybackTrack(2, 2, "A_OPUS", opus.opus_head(2).to_bytes(), sample_rate=48000)
    spec = fmp4.track_spec(track)
    samples = fmp4.audio_samples(spec, frames, 1000)
    assert samples.dts == [48 * (1000 + t) for t in times_ms]
    assert samples.durations == [960] * 9 + [960 * 21] + [960] * 10
    path = tmp_path / "gap.mp4"
    path.write_bytes(fmp4.init_segment(spec) + fmp4.media_segment(spec, samples, 1))
    out = subprocess.run(
        [ffprobe, "-v", "error", "-select_streams", "a", "-show_entries", "packet=pts"]
        + ["-of", "csv=p=0", str(path)],
        capture_output=True,
        text=True,
        check=True,
    )
    assert [int(x) for x in out.stdout.split()] == samples.dts
    decoded = subprocess.run(
        [ffmpeg, "-v", "error", "-i", str(path), "-f", "null", "-"], capture_output=True
    )
    assert decoded.returncode == 0 and decoded.stderr == b""


def _answer(fmtp: str | None) -> str:
    lines = [
        "v=0",
        "o=- 1 1 IN IP4 127.0.0.1",
        "s=-",
        "t=0 0",
        "m=audio 9 UDP/TLS/RTP/SAVPF 111",
        "c=IN IP4 0.0.0.0",
        "a=mid:0",
        "a=rtpmap:111 opus/48000/2",
    ]
    if fmtp is not None:
        lines.append(f"a=fmtp:111 {fmtp}")
    return "\r\n".join(lines) + "\r\n"


@pytest.mark.parametrize(
    "fmtp,channels",
    [
        (None, 2),  # opus/48000/2, as FFmpeg reads it
        ("minptime=10;useinbandfec=1", 2),  # Chromium's answer
        ("sprop-stereo=1;stereo=1", 2),
        ("minptime=10;sprop-stereo=0", 1),  # the sender says it sends mono
    ],
)
def test_stored_opus_channels_from_the_answer(fmtp: str | None, channels: int) -> None:
    from openkvs.webrtc.master import opus_channels

    assert opus_channels(_answer(fmtp)) == channels


def test_laced_opus_packets_are_timed_by_their_own_durations() -> None:
    """A Xiph-laced block of Opus packets (20 ms, 60 ms, 20 ms) in a track without
    DefaultDuration: each frame starts where the one before it ends."""
    from openkvs.media import ebml

    track = mkv.Track(2, mkv.CODEC_OPUS, opus.opus_head(2).to_bytes(), mkv.TRACK_TYPE_AUDIO)
    track = dataclasses.replace(track, sample_rate=48000.0, channels=2)
    packets = [bytes([31 << 3, 1, 2]), bytes([3 << 3, 9]), bytes([31 << 3, 7, 7, 7])]
    lace = bytes([len(packets) - 1, len(packets[0]), len(packets[1])])
    block = bytes([0x82, 0, 0, 0x80 | 0x02]) + lace + b"".join(packets)
    data = mkv.write_fragment([track], [], timecode=0)
    data += ebml.element(
        mkv.CLUSTER, ebml.uint(mkv.TIMECODE, 0) + ebml.element(mkv.SIMPLE_BLOCK, block)
    )
    parsed = parse_fragment(data)
    frames = parsed.frames[2]
    assert [f.data for f in frames] == packets
    assert [f.pts_ns for f in frames] == [0, 20_000_000, 80_000_000]
