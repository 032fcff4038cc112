"""The incremental PutMedia parser and the wire renderings, without a server."""

from __future__ import annotations

import random

import pytest

from openkvs.dataplane import chunks
from openkvs.dataplane.acks import AckError, ack
from openkvs.media import ebml, mkv, mkvstream
from openkvs.media.mkvstream import (
    FragmentReady,
    FragmentRejected,
    FragmentStarted,
    KvsEvent,
    MkvStreamParser,
    Problem,
    StreamRejected,
)

from .mediafiles import (
    END_OF_FRAGMENT,
    block,
    craft_cluster,
    producer_mkv,
    sdk_tags,
    segment_start,
    unknown_size_clusters,
    video_only_tracks,
)

MB = 1024 * 1024


def run(data: bytes, pieces: list[int] | None = None, **kw: int) -> list[mkvstream.Event]:
    parser = MkvStreamParser(max_fragment_bytes=kw.pop("max_fragment_bytes", 50 * MB), **kw)
    out: list[mkvstream.Event] = []
    i = 0
    rnd = random.Random(len(data))
    while i < len(data):
        n = pieces[i % len(pieces)] if pieces else rnd.choice([1, 3, 64, 4096, 65536])
        out += parser.feed(data[i : i + n])
        i += n
    return out + parser.finish()


def frames(evs: list[mkvstream.Event]) -> list[tuple[int, int, bytes]]:
    out = []
    for e in evs:
        if isinstance(e, FragmentReady):
            out += [
                (b.track, b.timecode, b.data)
                for b in mkv.read_fragment(mkvstream.assemble(e)).blocks
            ]
    return out


@pytest.mark.parametrize("layout", ["live", "file", "sdk"])
def test_any_split_gives_the_same_fragments(layout: str) -> None:
    data = {
        "live": lambda: producer_mkv(),
        "file": lambda: producer_mkv(live=False),
        "sdk": lambda: unknown_size_clusters(producer_mkv()),
    }[layout]()
    want = [(b.track, b.timecode, b.data) for b in mkv.read_fragment(data).blocks]
    whole = run(data, [len(data)])
    assert [type(e) for e in whole] == [FragmentStarted, FragmentReady] * 3
    assert frames(whole) == want
    assert frames(run(data)) == want
    byte_by_byte = run(data[: len(data)], [7])
    assert frames(byte_by_byte) == want


def test_stored_fragment_is_self_contained_and_fast_path_keeps_bytes() -> None:
    data = producer_mkv()
    ready = [e for e in run(data, [len(data)]) if isinstance(e, FragmentReady)]
    for r in ready:
        assert not r.rebuild
        blob = mkvstream.assemble(r)
        frag = mkv.read_fragment(blob)
        assert frag.cluster_timecode == r.timecode_ms
        assert r.first_ms == min(b.timecode for b in frag.blocks)
        assert r.last_ms == max(b.timecode for b in frag.blocks)
        assert 900 <= r.duration_ms <= 1200
        assert bytes(r.body) in blob  # the producer's blocks, byte for byte


def test_truncation_and_garbage() -> None:
    data = producer_mkv()
    # Ends cleanly inside a known-size Cluster: the stream is refused, nothing is ready.
    evs = run(data[: len(data) - 100], [len(data)])
    assert isinstance(evs[-1], StreamRejected) and evs[-1].problem is Problem.INVALID_MKV_DATA
    assert sum(isinstance(e, FragmentReady) for e in evs) == 2
    for junk in (b"\x00" * 10, b"GET / HTTP/1.1\r\n", b"\x1a\x45\xdf\xa3\x84" + b"x" * 10):
        evs = run(junk, [len(junk)])
        assert [type(e) for e in evs] == [StreamRejected], junk


def test_a_body_resuming_inside_a_stream_is_a_retriable_read_error() -> None:
    # The KVS Producer SDK can start a new connection inside the fragment a broken one was
    # sending (a SimpleBlock first). STREAM_READ_ERROR makes it roll back and resend the whole
    # fragment; INVALID_MKV_DATA would make it skip the rest of that fragment.
    data = producer_mkv()
    start = data.index(bytes([0x1F, 0x43, 0xB6, 0x75]))  # the first Cluster
    block = data.index(b"\xa3", start + 20)
    for body in (data[start:], data[block:]):
        evs = run(body, [len(body)])
        assert [type(e) for e in evs] == [StreamRejected]
        assert evs[0].problem is Problem.STREAM_READ_ERROR
        assert AckError.of(evs[0].problem) is AckError.STREAM_READ_ERROR
    # Anything else at the start is still invalid data.
    evs = run(b"\x86\x81\x00" + data[start:], [len(data)])
    assert evs[-1].problem is Problem.INVALID_MKV_DATA


def test_a_body_of_only_the_end_of_fragment_tags_is_no_error() -> None:
    # At stop, after refused fragments, the Producer SDK sends one more PutMedia whose whole
    # body is its END_OF_FRAGMENT Tags element (no EBML header): nothing to store, no ERROR.
    from .mediafiles import END_OF_FRAGMENT

    assert run(END_OF_FRAGMENT, [len(END_OF_FRAGMENT)]) == []
    data = producer_mkv()
    assert run(END_OF_FRAGMENT + data, [7]) == run(data, [7])


def test_a_dead_parser_ignores_input() -> None:
    parser = MkvStreamParser(max_fragment_bytes=MB)
    assert isinstance(parser.feed(b"\x00\x01")[0], StreamRejected)
    assert parser.dead and parser.feed(producer_mkv()) == [] and parser.finish() == []


def test_oversized_fragment_is_skipped_without_buffering() -> None:
    big = craft_cluster(
        1000, [block(1, i, b"\x55" * 100_000) for i in range(30)], unknown_size=True
    )
    small = craft_cluster(2000, [block(1, 0, b"k")], unknown_size=True)
    data = segment_start() + video_only_tracks() + big + small
    parser = MkvStreamParser(max_fragment_bytes=256 * 1024)
    evs: list[mkvstream.Event] = []
    peak = 0
    for i in range(0, len(data), 10_000):
        evs += parser.feed(data[i : i + 10_000])
        peak = max(peak, parser.buffered_bytes)
    evs += parser.finish()
    assert peak <= 256 * 1024 + 10_000
    assert [type(e) for e in evs] == [
        FragmentStarted,
        FragmentRejected,
        FragmentStarted,
        FragmentReady,
    ]
    assert evs[1].problem is Problem.MAX_FRAGMENT_SIZE_REACHED  # type: ignore[union-attr]


def test_fixed_lacing_and_timecode_scale() -> None:
    """TimecodeScale 100 µs: timecodes are converted to ms; fixed lacing is split evenly."""
    tracks = mkv.tracks(
        [mkv.Track(1, "A_PCM/INT/LIT", b"", mkv.TRACK_TYPE_AUDIO, sample_rate=8000.0, channels=1)]
    )
    laced = bytes([0x81]) + (0).to_bytes(2, "big") + bytes([0x80 | 0x04, 3]) + b"aaaabbbbccccdddd"
    second = block(1, 400, b"eeee")  # 40 ms later in 100 µs units
    cl = craft_cluster(20_000, [ebml.element(mkv.SIMPLE_BLOCK, laced), second])  # 2 s
    evs = run(segment_start(scale=100_000) + tracks + cl, [1000])
    (ready,) = [e for e in evs if isinstance(e, FragmentReady)]
    assert ready.rebuild and ready.timecode == 20_000 and ready.timecode_ms == 2000
    frag = mkv.read_fragment(mkvstream.assemble(ready))
    assert [(b.timecode, b.data) for b in frag.blocks] == [
        (2000, b"aaaa"),
        (2010, b"bbbb"),
        (2020, b"cccc"),
        (2030, b"dddd"),
        (2040, b"eeee"),
    ]


def test_fragment_rules() -> None:
    t = video_only_tracks()
    ok = craft_cluster(1000, [block(1, 0, b"k")])
    cases = {
        "stray track": (craft_cluster(2000, [block(5, 0, b"x")]), Problem.TRACK_NUMBER_MISMATCH),
        "empty": (craft_cluster(2000, []), Problem.FRAMES_MISSING_FOR_TRACK),
        "too long": (
            craft_cluster(2000, [block(1, 0, b"k"), block(1, 10_001, b"p")]),
            Problem.MAX_FRAGMENT_DURATION_REACHED,
        ),
        "backwards": (
            craft_cluster(500, [block(1, 0, b"k")]),
            Problem.FRAGMENT_TIMECODE_LESSER_THAN_PREVIOUS,
        ),
    }
    for name, (bad, problem) in cases.items():
        after = craft_cluster(5000, [block(1, 0, b"k")])
        evs = run(segment_start() + t + ok + bad + after, [len(ok) + 300])
        rejected = [e for e in evs if isinstance(e, FragmentRejected)]
        assert [r.problem for r in rejected] == [problem], name
        assert [e.timecode_ms for e in evs if isinstance(e, FragmentReady)] == [1000, 5000], name


def test_stream_rules() -> None:
    t = video_only_tracks()
    ok = craft_cluster(1000, [block(1, 0, b"k")])
    four = mkv.tracks([mkv.Track(n, "V_X", b"") for n in range(1, 5)])
    cases = {
        "cluster before tracks": (segment_start() + ok, Problem.INVALID_MKV_DATA),
        "block before timecode": (
            segment_start() + t + ebml.element(mkv.CLUSTER, block(1, 0, b"k")),
            Problem.INVALID_MKV_DATA,
        ),
        "too many tracks": (segment_start() + four + ok, Problem.MORE_THAN_ALLOWED_TRACKS_FOUND),
        "second segment": (segment_start() + t + ok + segment_start(), Problem.INVALID_MKV_DATA),
        "doc type": (
            segment_start().replace(b"matroska", b"matrosk\x61"[:7] + b"Z") + t + ok,
            Problem.INVALID_MKV_DATA,
        ),
        "tracks changed": (
            segment_start() + t + ok + mkv.tracks([mkv.Track(1, "V_OTHER", b"")]),
            Problem.INVALID_MKV_DATA,
        ),
    }
    for name, (data, problem) in cases.items():
        evs = run(data, [97])
        assert isinstance(evs[-1], StreamRejected) and evs[-1].problem is problem, (name, evs[-1:])


def test_producer_tags_travel_with_the_next_fragment() -> None:
    t = video_only_tracks()
    tags = mkv.tags({"CAMERA": "front-door"})
    reserved = mkv.tags({"AWS_KINESISVIDEO_FRAGMENT_NUMBER": "1"})
    cl1 = craft_cluster(1000, [block(1, 0, b"k")])
    cl2 = craft_cluster(2000, [block(1, 0, b"k")])
    cl3 = craft_cluster(3000, [block(1, 0, b"k")])
    evs = run(segment_start() + t + tags + cl1 + reserved + cl2 + cl3, [50])
    ready = [e for e in evs if isinstance(e, FragmentReady)]
    assert [r.timecode for r in ready] == [1000, 3000]
    assert ready[0].tags == tags and ready[1].tags == b""
    assert mkv.read_fragment(mkvstream.assemble(ready[0])).tags == {"CAMERA": "front-door"}
    # A reserved name refuses the fragment it travels with, naming its timecode.
    (rej,) = [e for e in evs if isinstance(e, FragmentRejected)]
    assert (rej.index, rej.timecode) == (1, 2000)
    assert rej.problem is Problem.FRAGMENT_METADATA_LIMIT_REACHED
    assert "AWS_KINESISVIDEO_FRAGMENT_NUMBER" in rej.message
    # Refused Tags that no Cluster follows are reported when the body ends.
    evs = run(segment_start() + t + cl1 + reserved, [50])
    assert isinstance(evs[-1], FragmentRejected) and evs[-1].index is None


def test_end_of_fragment_tag_closes_the_fragment_at_once() -> None:
    # The KVS Producer SDK ends a fragment (at stop and when it rotates its connection) with a
    # Tags element holding AWS_KINESISVIDEO_END_OF_FRAGMENT with an empty value.
    t = video_only_tracks()
    cl1 = craft_cluster(1000, [block(1, 0, b"k"), block(1, 33, b"d", False)], unknown_size=True)
    cl2 = craft_cluster(2000, [block(1, 0, b"k")], unknown_size=True)
    parser = MkvStreamParser(max_fragment_bytes=MB)
    evs = parser.feed(segment_start() + t + cl1)
    assert [type(e) for e in evs] == [FragmentStarted]
    # The fragment is complete as soon as the tag's element header arrives.
    evs = parser.feed(END_OF_FRAGMENT[:12])
    assert [type(e) for e in evs] == [FragmentReady]
    assert evs[0].timecode == 1000 and evs[0].tags == b"" and evs[0].events == ()
    evs = parser.feed(END_OF_FRAGMENT[12:] + cl2 + END_OF_FRAGMENT) + parser.finish()
    assert [type(e) for e in evs] == [FragmentStarted, FragmentReady]
    assert evs[1].timecode == 2000 and evs[1].tags == b""
    # Beside producer tags in the same stretch, the marker is dropped and the tags are kept.
    custom = sdk_tags("CAMERA", "front-door")
    evs = run(segment_start() + t + cl1 + END_OF_FRAGMENT + custom + cl2 + END_OF_FRAGMENT)
    ready = [e for e in evs if isinstance(e, FragmentReady)]
    assert len(ready) == 2 and not any(isinstance(e, FragmentRejected) for e in evs)
    assert mkv.read_fragment(mkvstream.assemble(ready[1])).tags == {"CAMERA": "front-door"}


def test_kvs_event_metadata_becomes_events_of_the_next_fragment() -> None:
    t = video_only_tracks()
    cl1 = craft_cluster(1000, [block(1, 0, b"k")], unknown_size=True)
    cl2 = craft_cluster(2000, [block(1, 0, b"k")], unknown_size=True)
    image = sdk_tags(
        "AWS_KINESISVIDEO_IMAGE_GENERATION",
        siblings=[("AWS_KINESISVIDEO_IMAGE_PREFIX", "door-"), ("zone", "3")],
    )
    notify = sdk_tags("AWS_KINESISVIDEO_NOTIFICATION", siblings=[("reason", "motion")])
    evs = run(segment_start() + t + cl1 + image + notify + END_OF_FRAGMENT + cl2, [29])
    assert not any(isinstance(e, FragmentRejected | StreamRejected) for e in evs)
    ready = [e for e in evs if isinstance(e, FragmentReady)]
    assert ready[0].events == ()
    assert ready[1].events == (
        KvsEvent("IMAGE_GENERATION", "door-", (("zone", "3"),)),
        KvsEvent("NOTIFICATION", None, (("reason", "motion"),)),
    )
    assert ready[1].tags == b""  # events are not stored as tags
    # Other reserved names beside an event are refused like any reserved name.
    bad = sdk_tags(
        "AWS_KINESISVIDEO_NOTIFICATION", siblings=[("AWS_KINESISVIDEO_IMAGE_PREFIX", "x")]
    )
    evs = run(segment_start() + t + cl1 + bad + cl2)
    (rej,) = [e for e in evs if isinstance(e, FragmentRejected)]
    assert rej.timecode == 2000 and rej.problem is Problem.FRAGMENT_METADATA_LIMIT_REACHED
    # At most MAX_KVS_EVENTS events per fragment.
    many = notify * (mkvstream.MAX_KVS_EVENTS + 1)
    evs = run(segment_start() + t + many + cl1)
    (rej,) = [e for e in evs if isinstance(e, FragmentRejected)]
    assert rej.timecode == 1000


def test_ack_lines_are_pinned() -> None:
    # The reference leaves the byte layout UNVERIFIED. Chosen: compact JSON, keys in the order
    # EventType, FragmentTimecode, FragmentNumber, ErrorId, ErrorCode, one object per line. The C
    # producer library's parser needs quoted keys matched case-sensitively, quoted EventType and
    # FragmentNumber, bare integers for FragmentTimecode and ErrorId; the Java SDK reads the same
    # names with Jackson. IDLE carries the event type only.
    assert ack("PERSISTED", timecode=1_700_000_000_000, number=91343852333181432) == (
        b'{"EventType":"PERSISTED","FragmentTimecode":1700000000000,'
        b'"FragmentNumber":"91343852333181432"}\n'
    )
    assert ack("IDLE") == b'{"EventType":"IDLE"}\n'
    assert ack("ERROR", timecode=5, number=7, error=AckError.INVALID_MKV_DATA) == (
        b'{"EventType":"ERROR","FragmentTimecode":5,"FragmentNumber":"7",'
        b'"ErrorId":4006,"ErrorCode":"INVALID_MKV_DATA"}\n'
    )
    assert ack("ERROR", error=AckError.STREAM_DELETED) == (
        b'{"EventType":"ERROR","ErrorId":4008,"ErrorCode":"STREAM_DELETED"}\n'
    )
    for problem in Problem:
        assert AckError.of(problem).code == problem.value


def test_chunk_helpers() -> None:
    assert chunks.seconds(1_700_000_000_123) == "1700000000.123"
    assert chunks.seconds(5) == "0.005"
    assert chunks.seconds(-1500) == "-1.500"
    blob = mkv.write_fragment(
        [mkv.Track(1, mkv.CODEC_H264, b"")], [mkv.Block(1, 10, b"x", True)], timecode=10
    )
    at = chunks.cluster_offset(blob)
    assert ebml.read_header(blob, at).id == mkv.CLUSTER
    with pytest.raises(ValueError):
        chunks.cluster_offset(blob[:at])


def _laced(track: int, relative: int, frames: list[bytes], lacing: str, key: bool = True) -> bytes:
    """A (Simple)Block payload holding ``frames`` in Xiph, EBML or fixed-size lacing."""
    head = bytes([len(frames) - 1])
    if lacing == "xiph":
        for f in frames[:-1]:
            head += b"\xff" * (len(f) // 255) + bytes([len(f) % 255])
    elif lacing == "ebml":
        head += ebml.encode_size(len(frames[0]))
        for prev, cur in zip(frames, frames[1:-1], strict=False):
            delta = len(cur) - len(prev)
            n = 1
            while abs(delta) > (1 << (7 * n - 1)) - 1:
                n += 1
            head += ((1 << (7 * n)) | (delta + (1 << (7 * n - 1)) - 1)).to_bytes(n, "big")
    bits = {"xiph": 0x02, "fixed": 0x04, "ebml": 0x06}[lacing]
    flags = bits | (0x80 if key else 0)
    return (
        bytes([0x80 | track])
        + relative.to_bytes(2, "big", signed=True)
        + bytes([flags])
        + head
        + b"".join(frames)
    )


def _group(payload: bytes, *, reference: bool = False, duration: int | None = None) -> bytes:
    children = [ebml.element(mkv.BLOCK, payload)]
    if reference:
        children.append(ebml.sint(mkv.REFERENCE_BLOCK, -40))
    if duration is not None:
        children.append(ebml.uint(mkv.BLOCK_DURATION, duration))
    return ebml.master(mkv.BLOCK_GROUP, *children)


@pytest.mark.parametrize("scale", [1_000_000, 100_000])
def test_laced_producer_reads_the_same_as_its_stored_fragments(scale: int) -> None:
    """Lacing (Xiph, EBML, fixed), BlockGroups with ReferenceBlock and BlockDuration, and a
    TimecodeScale other than 1 ms: ``read_fragment`` of what the producer sent, of what PutMedia
    stored, and playback's reader all see the same frames."""
    from openkvs.playback import mkv as playback_mkv

    u = 1_000_000 // scale  # timecode units per millisecond
    audio = [bytes([0x30 + i]) * (5 + 40 * (i % 3)) for i in range(15)]
    audio[8:11] = [b"\x21" * 5, b"\x22" * 300, b"\x23" * 7]
    audio[11:14] = [b"\x24" * 9, b"\x25" * 9, b"\x26" * 9]
    tracks = mkv.tracks(
        [
            mkv.Track(1, mkv.CODEC_H264, b"\x01\x64\x00\x1f", width=64, height=64),
            mkv.Track(2, mkv.CODEC_AAC, b"\x11\x90", mkv.TRACK_TYPE_AUDIO, sample_rate=48000.0),
        ]
    )
    simple = mkv.SIMPLE_BLOCK
    a = craft_cluster(
        1000 * u,
        [
            _group(bytes([0x81, 0, 0, 0]) + b"key-a"),
            ebml.element(simple, _laced(2, 0, audio[0:4], "xiph")),
            _group(bytes([0x81]) + (40 * u).to_bytes(2, "big") + b"\x00delta-1", reference=True),
            ebml.element(simple, _laced(2, 80 * u, audio[4:8], "xiph")),
            _group(bytes([0x81]) + (80 * u).to_bytes(2, "big") + b"\x00delta-2", reference=True),
        ],
    )
    b = craft_cluster(
        1160 * u,
        [
            block(1, 0, b"key-b"),
            ebml.element(simple, _laced(2, 0, audio[8:11], "ebml")),
            block(1, 40 * u, b"delta-3", keyframe=False),
            _group(_laced(2, 60 * u, audio[11:14], "fixed"), duration=60 * u),
        ],
        unknown_size=True,
    )
    c = craft_cluster(1300 * u, [block(1, 0, b"key-c"), block(2, 0, audio[14])])
    data = segment_start(scale=scale) + tracks + a + b + c

    evs = run(data)
    ready = [e for e in evs if isinstance(e, FragmentReady)]
    assert [r.timecode_ms for r in ready] == [1000, 1160, 1300]
    assert [r.rebuild for r in ready] == [True, True, scale != 1_000_000]
    stored = [mkvstream.assemble(r) for r in ready]

    def rows(blob: bytes) -> list[tuple[int, int, bytes, bool]]:
        return [(x.track, x.timecode, x.data, x.keyframe) for x in mkv.read_fragment(blob).blocks]

    sent = rows(data)
    assert [r for s in stored for r in rows(s)] == sent
    assert [(t, ms, d, k) for t, ms, d, k in sent if t == 1] == [
        (1, 1000, b"key-a", True),
        (1, 1040, b"delta-1", False),
        (1, 1080, b"delta-2", False),
        (1, 1160, b"key-b", True),
        (1, 1200, b"delta-3", False),
        (1, 1300, b"key-c", True),
    ]
    # Laced frames are spread over the gap to the next block, the previous step, then the
    # BlockDuration.
    assert [(ms, d) for t, ms, d, _ in sent if t == 2] == list(
        zip([1000 + 20 * i for i in range(14)] + [1300], audio, strict=True)
    )

    # Playback: the same frames, keyframes and (for stored fragments) times.
    parsed = playback_mkv.parse_fragment(data)
    for track in (1, 2):
        assert [(f.data, f.key) for f in parsed.frames[track]] == [
            (d, k) for t, _, d, k in sent if t == track
        ]
    assert [f.pts_ns for f in parsed.frames[1]] == [
        (ms - 1000) * 1_000_000 for t, ms, _, _ in sent if t == 1
    ]
    for blob in stored:
        got = playback_mkv.parse_fragment(blob)
        want = rows(blob)
        start = min(ms for t, ms, _, _ in want if t == 1)
        assert [(f.pts_ns, f.data) for n in (1, 2) for f in got.frames[n]] == [
            ((ms - start) * 1_000_000, d) for n in (1, 2) for t, ms, d, _ in want if t == n
        ]
