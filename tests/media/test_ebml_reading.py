"""The shared Matroska reading primitives: EBML vints and element headers (``media/ebml.py``),
block lacing (``media/mkv.py``), and track settings every reader sees the same way."""

from __future__ import annotations

import pytest

from openkvs.media import ebml, mkv
from openkvs.playback import mkv as playback_mkv


@pytest.mark.parametrize("kind", [bytes, bytearray, memoryview])
def test_read_vint_on_any_buffer(kind: type) -> None:
    data = kind(b"\x1a\x45\xdf\xa3" + b"\x42\x86" + b"\x81" + b"\xff" + b"\x40\x7f" + b"\x7f\xff")
    assert ebml.read_vint(data, 0, is_id=True) == (0x1A45DFA3, 4)
    assert ebml.read_vint(data, 4) == (0x286, 2)
    assert ebml.read_vint(data, 6) == (1, 1)
    # All ones: an unknown size, or 127 as a plain number (block track numbers, lace sizes).
    assert ebml.read_vint(data, 7) == (ebml.UNKNOWN_SIZE, 1)
    assert ebml.read_vint(data, 7, unknown=False) == (127, 1)
    assert ebml.read_vint(data, 8) == (127, 2)
    assert ebml.read_vint(data, 10) == (ebml.UNKNOWN_SIZE, 2)
    assert ebml.read_vint(data, 10, unknown=False) == (0x3FFF, 2)


def test_read_vint_respects_its_end_bound() -> None:
    data = b"\x40\x05\x81"
    assert ebml.read_vint(data, 0) == (5, 2)
    with pytest.raises(ebml.Truncated, match="truncated at offset 0"):
        ebml.read_vint(data, 0, end=1)
    with pytest.raises(ebml.Truncated):
        ebml.read_vint(data, 2, end=2)
    with pytest.raises(ValueError, match="invalid EBML length marker at offset 1") as bad:
        ebml.read_vint(b"\x81\x00", 1)
    assert not isinstance(bad.value, ebml.Truncated)
    with pytest.raises(ValueError, match="invalid EBML element ID") as bad:
        ebml.read_vint(b"\x08\x00\x00\x00\x00", 0, is_id=True)
    assert not isinstance(bad.value, ebml.Truncated)


def test_signed_vints_of_ebml_lacing() -> None:
    # One byte holds -63..63 around the bias 63; two bytes -8191..8191 around 8191.
    assert ebml.read_signed_vint(b"\xbf", 0, 1) == (0, 1)
    assert ebml.read_signed_vint(b"\x80", 0, 1) == (-63, 1)
    assert ebml.read_signed_vint(b"\xfe", 0, 1) == (63, 1)
    assert ebml.read_signed_vint((0x4000 | (295 + 8191)).to_bytes(2, "big"), 0, 2) == (295, 2)


def test_header_at_matches_read_header_and_waits_on_truncation() -> None:
    blob = mkv.write_fragment([mkv.Track(1, mkv.CODEC_H264, b"")], [], timecode=0)
    pos = 0
    for _ in range(4):
        el = ebml.read_header(blob, pos)
        assert ebml.header_at(blob, pos) == (el.id, el.size, el.data_start)
        assert ebml.header_at(bytearray(blob), pos) == (el.id, el.size, el.data_start)
        for cut in range(pos, el.data_start):
            with pytest.raises(ebml.Truncated):
                ebml.header_at(blob, pos, cut)
        pos = el.data_start if el.size == ebml.UNKNOWN_SIZE else el.end
    with pytest.raises(ValueError, match="invalid EBML length marker"):
        ebml.header_at(b"\x1a\x45\xdf\xa3\x00", 0)


@pytest.mark.parametrize(
    ("lacing", "head", "frames"),
    [
        (mkv.LACING_XIPH, bytes([2, 255, 45, 7]), [b"a" * 300, b"b" * 7, b"c" * 4]),
        (mkv.LACING_EBML, bytes([2, 0x85, 0x80 | (33 + 63)]), [b"a" * 5, b"b" * 38, b"c" * 2]),
        (mkv.LACING_FIXED, bytes([2]), [b"a" * 4, b"b" * 4, b"c" * 4]),
        # A lace of one frame (count byte 0) has no sizes in any lacing: the frame fills it.
        (mkv.LACING_XIPH, bytes([0]), [b"abcd"]),
        (mkv.LACING_EBML, bytes([0]), [b"abcd"]),
        (mkv.LACING_FIXED, bytes([0]), [b"abcd"]),
    ],
)
def test_read_block_splits_laces(lacing: int, head: bytes, frames: list[bytes]) -> None:
    payload = b"\x82" + (-5).to_bytes(2, "big", signed=True) + bytes([0x80 | lacing << 1])
    payload += head + b"".join(frames)
    data = b"junk" + payload + b"more"
    track, relative, flags, spans = mkv.read_block(data, 4, 4 + len(payload))
    assert (track, relative, flags & 0x80) == (2, -5, 0x80)
    assert [data[s:e] for s, e in spans] == frames
    with pytest.raises(ValueError, match="laced"):
        mkv.parse_block(payload)


def test_bad_laces_are_value_errors() -> None:
    base = b"\x81\x00\x00"
    for payload in (
        base + bytes([0x84, 2]) + b"12345",  # fixed lacing that does not divide evenly
        base + bytes([0x82, 2, 200, 200]) + b"x",  # Xiph sizes larger than the block
        base + bytes([0x82, 2, 255]),  # Xiph header cut short
        base + bytes([0x86, 2, 0x82, 0x80]) + b"xy",  # EBML lace size going negative
        base + bytes([0x86]),  # no lace header at all
    ):
        with pytest.raises(ValueError):
            mkv.read_block(payload, 0, len(payload))


def test_default_duration_and_codec_delay_round_trip_and_reach_playback() -> None:
    video = mkv.Track(1, mkv.CODEC_H264, b"\x01", width=64, height=64, uid=1)
    opus = mkv.Track(
        2,
        "A_OPUS",
        b"OpusHead",
        mkv.TRACK_TYPE_AUDIO,
        sample_rate=48000.0,
        channels=2,
        uid=2,
        default_duration_ns=20_000_000,
        codec_delay_ns=6_500_000,
    )
    blocks = [
        mkv.Block(1, 1000, b"k", True),
        mkv.Block(2, 1000, b"o1", True),
        mkv.Block(2, 1020, b"o2", True),
    ]
    blob = mkv.write_fragment([video, opus], blocks, timecode=1000)
    frag = mkv.read_fragment(blob)
    assert frag.tracks == (video, opus)
    parsed = playback_mkv.parse_fragment(blob)
    track = parsed.tracks[2]
    assert (track.default_duration_ns, track.codec_delay_ns, track.sample_rate) == (
        20_000_000,
        6_500_000,
        48000,
    )
    # Times are relative to the first video frame; audio is shifted back by its CodecDelay.
    assert [f.pts_ns for f in parsed.frames[2]] == [-6_500_000, 13_500_000]
    assert [f.pts_ns for f in parsed.frames[1]] == [0]


def test_track_without_track_type_is_neither_video_nor_audio() -> None:
    entry = ebml.master(
        mkv.TRACK_ENTRY, ebml.uint(mkv.TRACK_NUMBER, 3), ebml.string(mkv.CODEC_ID, "S_TEXT/UTF8")
    )
    track = mkv.read_track(entry, ebml.read_header(entry, 0))
    assert (track.number, track.codec_id, track.track_type, track.is_video) == (
        3,
        "S_TEXT/UTF8",
        0,
        False,
    )
    with pytest.raises(ValueError, match="TrackNumber or CodecID"):
        bare = ebml.master(mkv.TRACK_ENTRY, ebml.uint(mkv.TRACK_NUMBER, 3))
        mkv.read_track(bare, ebml.read_header(bare, 0))


def test_an_element_overrunning_its_segment_is_rejected() -> None:
    header = ebml.master(mkv.EBML_HEADER, ebml.uint(0x4286, 1))
    info = ebml.master(mkv.INFO, ebml.uint(mkv.TIMECODE_SCALE, 1_000_000))
    # The Segment says it ends two bytes before its Info does; more bytes follow in the buffer
    # (the next fragment of a GetMedia stream), which must not be read as part of it.
    segment = ebml.encode_id(mkv.SEGMENT) + ebml.encode_size(len(info) - 2) + info
    with pytest.raises(ValueError, match="overruns the Segment"):
        mkv.scan_fragment(header + segment + b"\x00" * 16)
