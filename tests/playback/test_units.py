"""Pure parts of playback: MKV reading, codec records, tokens, timeline slots, image options and
the bounded cache. Fragments come from the realistic generator (``media.py``)."""

from __future__ import annotations

import asyncio
import os
import struct
from pathlib import Path

import av
import numpy as np
import pytest

from openkvs.media import mkv as ids  # Matroska element IDs
from openkvs.playback import codecs, fmp4, images, mkv, service, silence, timeline, tokens
from openkvs.playback.cache import ByteLRU

from .media import GeneratedFragment, generate

T0 = 1_700_000_000_000


@pytest.fixture(scope="module")
def frags() -> list[GeneratedFragment]:
    return generate(3, T0, bframes=2)


# -- a tiny EBML writer, to build the MKV shapes the generator never makes ------------------------


def el(eid: int, payload: bytes, size: bytes | None = None) -> bytes:
    ident = eid.to_bytes((eid.bit_length() + 7) // 8, "big")
    if size is None:
        size = (0x10000000 | len(payload)).to_bytes(4, "big")
    return ident + size + payload


def uint(eid: int, value: int) -> bytes:
    return el(eid, value.to_bytes(8, "big"))


UNKNOWN = b"\x01\xff\xff\xff\xff\xff\xff\xff"


def hand_mkv(tracks: bytes, clusters: bytes, *, unknown_segment: bool = False) -> bytes:
    header = el(ids.EBML_HEADER, el(0x4282, b"matroska"))
    body = el(ids.INFO, uint(ids.TIMECODE_SCALE, 1_000_000)) + el(ids.TRACKS, tracks) + clusters
    return header + el(ids.SEGMENT, body, UNKNOWN if unknown_segment else None)


def track_entry(number: int, kind: int, codec: str, private: bytes = b"", **extra: bytes) -> bytes:
    body = uint(ids.TRACK_NUMBER, number) + uint(ids.TRACK_TYPE, kind)
    body += el(ids.CODEC_ID, codec.encode())
    if private:
        body += el(ids.CODEC_PRIVATE, private)
    for value in extra.values():
        body += value
    return el(ids.TRACK_ENTRY, body)


def block(track: int, rel: int, flags: int, payload: bytes) -> bytes:
    return bytes([0x80 | track]) + struct.pack(">hB", rel, flags) + payload


# -- MKV ---------------------------------------------------------------------------------------


def test_parse_generated_fragment(frags: list[GeneratedFragment]) -> None:
    f = mkv.parse_fragment(frags[1].data)
    video, audio = f.video(), f.audio()
    assert video is not None and audio is not None
    assert (video.number, video.codec_id, video.width, video.height) == (
        1,
        "V_MPEG4/ISO/AVC",
        640,
        360,
    )
    assert (audio.number, audio.codec_id, audio.sample_rate) == (2, "A_AAC", 48000)
    frames = f.frames[1]
    assert len(frames) == 30 and frames[0].key and not any(x.key for x in frames[1:])
    assert frames[0].pts_ns == 0
    shown = sorted(x.pts_ns // 1_000_000 for x in frames)
    assert shown == [round(t) for t in frags[1].frame_pts_ms]
    assert len(f.frames[2]) == frags[1].audio_frames


def test_relative_and_absolute_timecodes_read_the_same() -> None:
    rel = generate(2, T0, relative_timecodes=True)[1]
    absolute = generate(2, T0, relative_timecodes=False)[1]
    a, b = mkv.parse_fragment(rel.data), mkv.parse_fragment(absolute.data)
    assert [x.pts_ns for x in a.frames[1]] == [x.pts_ns for x in b.frames[1]]
    assert [x.pts_ns for x in a.frames[2]] == [x.pts_ns for x in b.frames[2]]


@pytest.mark.parametrize("lacing", ["xiph", "ebml", "fixed"])
def test_laced_blocks_and_unknown_sizes(lacing: str) -> None:
    frames = [b"\x21" * 5, b"\x22" * 300, b"\x23" * 7] if lacing != "fixed" else [b"\x24" * 9] * 3
    if lacing == "xiph":
        head = bytes([2, 5, 255, 45])
        flags = 0x82
    elif lacing == "ebml":
        # sizes 5, 300, 7: first as a vint, then signed differences (+295 as 2 bytes, -293)
        head = bytes([2, 0x85]) + (0x4000 | (295 + 0x1FFF)).to_bytes(2, "big")
        flags = 0x86
    else:
        head = bytes([2])
        flags = 0x84
    payload = block(2, 10, flags, head + b"".join(frames))
    asc = bytes([0x11, 0x90])  # AAC LC, 48 kHz, 2 channels
    audio = el(ids.AUDIO, el(ids.SAMPLING_FREQUENCY, struct.pack(">d", 48000.0)))
    tracks = track_entry(2, 2, "A_AAC", asc, audio=audio)
    cluster = el(ids.CLUSTER, uint(ids.TIMECODE, 5000) + el(ids.SIMPLE_BLOCK, payload), UNKNOWN)
    parsed = mkv.parse_fragment(hand_mkv(tracks, cluster, unknown_segment=True))
    got = parsed.frames[2]
    assert [x.data for x in got] == frames
    step = 1024 * 1_000_000_000 // 48000
    assert [x.pts_ns for x in got] == [0, step, 2 * step]


def test_block_group_keyframes_follow_reference_blocks() -> None:
    tracks = track_entry(1, 1, "V_MPEG4/ISO/AVC", b"\x01")
    key = el(ids.BLOCK_GROUP, el(ids.BLOCK, block(1, 0, 0, b"k")))
    delta = el(ids.BLOCK_GROUP, el(ids.BLOCK, block(1, 40, 0, b"d")) + uint(ids.REFERENCE_BLOCK, 1))
    cluster = el(ids.CLUSTER, uint(ids.TIMECODE, 0) + key + delta)
    parsed = mkv.parse_fragment(hand_mkv(tracks, cluster))
    assert [(x.data, x.key, x.pts_ns) for x in parsed.frames[1]] == [
        (b"k", True, 0),
        (b"d", False, 40_000_000),
    ]


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"", "not an EBML document"),
        (b"\x1a\x45\xdf\xa3\x84ab", "overruns its parent"),
        (el(ids.EBML_HEADER, b""), "no Segment element"),
        (el(ids.EBML_HEADER, b"") + el(ids.SEGMENT, b""), "fragment has no Tracks"),
        (b"\x00\x00\x00", "invalid EBML length marker"),
    ],
)
def test_malformed_fragments_raise_value_error(data: bytes, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        mkv.parse_fragment(data)


def test_truncated_fragment_is_rejected(frags: list[GeneratedFragment]) -> None:
    with pytest.raises(ValueError):
        mkv.parse_fragment(frags[0].data[: len(frags[0].data) // 2])


# -- codec records -----------------------------------------------------------------------------


def test_codec_private_records(frags: list[GeneratedFragment]) -> None:
    f = mkv.parse_fragment(frags[0].data)
    video, audio = f.video(), f.audio()
    assert video is not None and audio is not None
    avc = codecs.parse_avcc(video.codec_private)
    assert avc.nal_length_size == 4 and avc.sps[0][0] & 0x1F == 7 and avc.pps[0][0] & 0x1F == 8
    assert avc.codec_string == f"avc1.{avc.profile:02x}{avc.compat:02x}{avc.level:02x}"
    aac = codecs.parse_asc(audio.codec_private)
    assert (aac.object_type, aac.sample_rate, aac.channels, aac.frame_length) == (2, 48000, 1, 1024)
    annexb = codecs.avcc_to_annexb(f.frames[1][0].data, avc, keyframe=True)
    assert annexb.startswith(b"\0\0\0\1" + avc.sps[0])
    adts = codecs.adts_frame(b"\xaa" * 10, aac)
    assert adts[:2] == b"\xff\xf1" and ((adts[3] & 3) << 11 | adts[4] << 3 | adts[5] >> 5) == 17
    with pytest.raises(ValueError, match="avcC"):
        codecs.parse_avcc(b"\x00\x01")
    with pytest.raises(fmp4.UnsupportedCodec):
        fmp4.track_spec(mkv.Track(1, 1, "V_MPEGH/ISO/HEVC", b"\x01"))
    with pytest.raises(fmp4.MissingCodecPrivate):
        fmp4.track_spec(mkv.Track(1, 1, "V_MPEG4/ISO/AVC", b""))
    with pytest.raises(fmp4.InvalidCodecPrivate):
        fmp4.track_spec(mkv.Track(2, 2, "A_AAC", b"\xff"))


def test_audio_run_covers_its_segment_start() -> None:
    # AAC-LC, 48 kHz mono (AudioSpecificConfig 0x1188): 1024-sample frames, timescale 48000.
    spec = fmp4.track_spec(mkv.Track(2, 2, "A_AAC", b"\x11\x88", sample_rate=48000, channels=1))
    assert (spec.timescale, spec.frame_length) == (48000, 1024)
    assert spec.aac is not None
    quiet = silence.aac_frame(spec.aac)
    assert quiet is not None and 0 < len(quiet) < 64

    def run(*dts: int) -> fmp4.Samples:
        n = len(dts)
        durations = [b - a for a, b in zip(dts, dts[1:], strict=False)] + [1024]
        return fmp4.Samples(list(dts), durations, [0] * n, [True] * n, [b"x"] * n)

    def cover(samples: fmp4.Samples) -> fmp4.Samples:
        return fmp4.cover_start(spec, samples, 1000, lambda: quiet)

    # The segment starts at 1000 ms = tick 48000. Audio 4.7 ms (224 ticks) late: the first
    # frame is pulled back onto the start and lasts that much longer.
    late = cover(run(48224, 49248, 50272))
    assert late.dts == [48000, 49248, 50272] and late.durations == [1248, 1024, 1024]
    assert late.data == [b"x"] * 3
    # Already covering (a frame lent by the previous fragment), or on the dot: unchanged.
    for dts in [(47800, 48824), (48000, 49024)]:
        assert cover(run(*dts)).dts == list(dts)
    # 62 ms late (2976 ticks): two silent frames from the start, the second lasting up to the
    # first real frame, whose time is kept.
    later = cover(run(50976, 52000))
    assert later.dts == [48000, 49024, 50976, 52000]
    assert later.durations == [1024, 1952, 1024, 1024]
    assert later.data == [quiet, quiet, b"x", b"x"] and later.keys == [True] * 4
    assert later.ctos == [0] * 4
    # No silent frame for this configuration: a late run is left as it is.
    assert fmp4.cover_start(spec, run(50976), 1000, lambda: None).dts == [50976]
    assert len(cover(run())) == 0


def test_audio_run_meets_the_previous_segment() -> None:
    spec = fmp4.track_spec(mkv.Track(2, 2, "A_AAC", b"\x11\x88", sample_rate=48000, channels=1))

    def run(*dts: int) -> fmp4.Samples:
        n = len(dts)
        durations = [b - a for a, b in zip(dts, dts[1:], strict=False)] + [1024]
        return fmp4.Samples(list(dts), durations, [0] * n, [True] * n, [b"%d" % d for d in dts])

    # Starts 150 ticks after the seam: the first sample moves onto it, its end stays.
    late = fmp4.meet(spec, run(48150, 49174), 48000)
    assert late.dts == [48000, 49174] and late.durations == [1174, 1024]
    # Starts 150 ticks before it: shortened, same end.
    early = fmp4.meet(spec, run(47850, 48874), 48000)
    assert early.dts == [48000, 48874] and early.durations == [874, 1024]
    # A sample wholly before the seam was played by the previous segment: dropped.
    dropped = fmp4.meet(spec, run(46800, 47824, 48848), 48000)
    assert dropped.dts == [48000, 48848] and dropped.data == [b"47824", b"48848"]
    # On the dot, a gap of a frame or more (a real one), or nothing: unchanged.
    for dts in [(48000, 49024), (49024, 50048), ()]:
        assert fmp4.meet(spec, run(*dts), 48000).dts == list(dts)


def test_live_audio_cut_partitions_frames_at_the_fragments_own_end() -> None:
    # 30 fps video from 0 to 966.7 ms (ends at 1000 ms); AAC frames every 21.333 ms from 0.
    frame_ns = 1024 * 1_000_000_000 // 48000
    video = [mkv.Frame(round(i * 1e9 / 30), b"v", i == 0) for i in range(30)]
    audio = [mkv.Frame(i * frame_ns, b"%d" % i, True) for i in range(48)]
    parsed = mkv.ParsedFragment(
        {
            1: mkv.Track(1, 1, "V_MPEG4/ISO/AVC", b""),
            2: mkv.Track(2, 2, "A_AAC", b"\x11\x88", sample_rate=48000, channels=1),
        },
        {1: video, 2: audio},
    )
    # A PutMedia duration runs to the end of the last audio frame; the video's end wins.
    end = service.own_end_ns(parsed, 1024)
    assert end == video[-1].pts_ns + (video[-1].pts_ns - video[-2].pts_ns)
    assert service.own_end_ns(parsed, 990) == 990_000_000  # never past the slot
    cut = service.Cut(end, whole=True)
    kept = [f for f in audio if cut.keeps(f, frame_ns)]
    lent = service.overhang(parsed, 2, end, 1_000_000_000)
    assert [f.data for f in kept] + [f.data for f in lent] == [f.data for f in audio]
    assert kept[-1].pts_ns + frame_ns <= end < audio[len(kept)].pts_ns + frame_ns
    assert lent[0].pts_ns == audio[len(kept)].pts_ns - 1_000_000_000  # re-timed, same place
    last = service.last_kept(parsed, 2, end, 1_000_000_000)
    assert last is not None and last.data == kept[-1].data
    assert last.pts_ns == kept[-1].pts_ns - 1_000_000_000


def test_silent_aac_frames_decode_to_silence() -> None:
    for asc, channels in [(b"\x11\x88", 1), (b"\x11\x90", 2), (b"\x14\x08", 1)]:
        config = codecs.parse_asc(asc)
        frame = silence.aac_frame(config)
        assert frame is not None, config
        decoder = av.CodecContext.create("aac", "r")
        decoder.extradata = asc
        out = [f.to_ndarray() for _ in range(3) for f in decoder.decode(av.Packet(frame))]
        assert out and all(a.shape[0] == channels for a in out), config
        assert max(float(np.abs(a).max()) for a in out) < 1e-4, config
    # HE-AAC (object type 5) or 960-sample frames: none.
    assert silence.aac_frame(codecs.AacConfig(5, 48000, 1, 1024)) is None
    assert silence.aac_frame(codecs.AacConfig(2, 48000, 1, 960)) is None
    # Rates FFmpeg's encoder does not take (an explicit 12345 Hz), or none at all: none either.
    for rate in (12345, 0, 192000):
        assert silence.aac_frame(codecs.AacConfig(2, rate, 1, 1024)) is None


# -- tokens ------------------------------------------------------------------------------------


def _session(**changes: object) -> tokens.Session:
    fields: dict[str, object] = {
        "kind": tokens.HLS,
        "session_id": b"\x01" * 9,
        "stream_id": 7,
        "stream_tag": tokens.stream_tag("arn:aws:kinesisvideo:us-east-1:0:stream/a/1"),
        "mode": "ON_DEMAND",
        "selector": "PRODUCER_TIMESTAMP",
        "start_ms": T0,
        "end_ms": T0 + 60_000,
        "origin_ms": T0 + 5,
        "anchor_ms": T0 + 9000,
        "ref_number": 123456789012345678,
        "created_ms": T0,
        "expires_ms": T0 + 300_000,
        "container": "MPEG_TS",
        "discontinuity": "ON_DISCONTINUITY",
        "display_timestamp": True,
        "display_number": False,
        "max_results": 5000,
    }
    fields.update(changes)
    return tokens.Session(**fields)  # type: ignore[arg-type]


def test_token_round_trip_and_tampering() -> None:
    signer = tokens.TokenSigner(b"k" * 32)
    session = _session()
    token = signer.issue(session)
    assert token.replace("-", "").replace("_", "").isalnum()
    assert signer.verify(token, T0 + 1000) == session
    assert signer.verify(signer.issue(_session(start_ms=None, end_ms=None)), T0).end_ms is None
    for i in range(len(token)):
        altered = token[:i] + ("A" if token[i] != "A" else "B") + token[i + 1 :]
        with pytest.raises(tokens.InvalidToken):
            signer.verify(altered, T0)
    for bad in ("", "x", token[:-4], token + "AAAA", "%%%%", "A" * 5000):
        with pytest.raises(tokens.InvalidToken):
            signer.verify(bad, T0)
    with pytest.raises(tokens.InvalidToken):
        tokens.TokenSigner(b"j" * 32).verify(token, T0)
    with pytest.raises(tokens.ExpiredToken):
        signer.verify(token, T0 + 300_000)


def test_token_key_file_is_private_and_stable(tmp_path: Path) -> None:
    key = tokens.load_or_create_key(tmp_path)
    path = tmp_path / tokens.KEY_FILE
    assert len(key) == 32 and path.stat().st_mode & 0o777 == 0o600
    assert tokens.load_or_create_key(tmp_path) == key
    os.chmod(path, 0o644)
    assert tokens.load_or_create_key(tmp_path) == key
    assert path.stat().st_mode & 0o777 == 0o600


# -- timeline slots, image options -------------------------------------------------------------


@pytest.mark.parametrize(
    ("ts", "duration", "next_ts", "slot"),
    [
        (0, 1000, 1000, 1000),
        (0, 1000, 1030, 1030),  # jitter within 50 ms: abut exactly
        (0, 1000, 970, 970),
        (0, 1000, 1200, 1000),  # a gap: the recorded duration, then the gap
        (0, 1000, None, 1000),
        (0, 0, 800, 800),  # no recorded duration: until the next one
        (0, 0, None, timeline.DEFAULT_DURATION_MS),
    ],
)
def test_slot_lengths(ts: int, duration: int, next_ts: int | None, slot: int) -> None:
    assert timeline.slot_ms(ts, duration, next_ts) == slot


def test_image_size_and_quality_mapping() -> None:
    assert images.output_size(640, 360, None, None) == (640, 360)
    assert images.output_size(640, 360, 320, None) == (320, 180)
    assert images.output_size(640, 360, None, 90) == (160, 90)
    assert images.output_size(640, 360, 100, 100) == (100, 100)
    scales = [images.jpeg_qscale(q) for q in range(1, 101)]
    assert scales == sorted(scales, reverse=True)
    assert scales[0] == 31 and scales[-1] == 1 and images.jpeg_qscale(80) == 5


# -- cache ---------------------------------------------------------------------------------------


def test_byte_lru_stays_within_budget_and_shares_work() -> None:
    cache: ByteLRU[int, bytes] = ByteLRU(100, len)
    for i in range(10):
        cache.put(i, b"x" * 30)
    assert cache.bytes <= 100 and len(cache) == 3 and cache.get(9) is not None
    assert cache.get(0) is None
    cache.put(99, b"y" * 101)  # larger than the whole budget: not kept
    assert cache.get(99) is None and cache.bytes <= 100

    calls = 0

    async def scenario() -> list[bytes]:
        async def make() -> bytes:
            nonlocal calls
            calls += 1
            await asyncio.sleep(0.01)
            return b"z" * 10

        return await asyncio.gather(*(cache.get_or_create("k", make) for _ in range(5)))  # type: ignore[arg-type]

    assert asyncio.run(scenario()) == [b"z" * 10] * 5
    assert calls == 1 and cache.get("k") == b"z" * 10  # type: ignore[arg-type]
