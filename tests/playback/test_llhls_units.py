"""LL-HLS as pure functions: playlist tags, part lines and numbering, independent flags, the
preload hint, blocking reload decisions (including the 400 case), and the live edge feed."""

from __future__ import annotations

import asyncio

from openkvs.dataplane.liveparts import LiveCutter
from openkvs.media import mkvstream
from openkvs.playback import hls, liveedge, tokens
from openkvs.playback.mkv import Frame, parse_fragment
from openkvs.playback.timeline import Entry, View
from openkvs.records import Fragment

from ..dataplane.mediafiles import clusters, header_part, producer_mkv
from .test_llhls import frame_pieces

T0 = 1_700_000_000_000


def _session() -> tokens.Session:
    return tokens.Session(
        kind=tokens.HLS,
        session_id=b"\x01" * 9,
        stream_id=7,
        stream_tag=tokens.stream_tag("arn:aws:kinesisvideo:us-east-1:0:stream/a/1"),
        mode="LIVE",
        selector="SERVER_TIMESTAMP",
        start_ms=None,
        end_ms=None,
        origin_ms=T0,
        anchor_ms=T0,
        ref_number=100,
        created_ms=T0,
        expires_ms=T0 + 300_000,
        container="FRAGMENTED_MP4",
        discontinuity="ALWAYS",
        display_timestamp=False,
        display_number=False,
        max_results=5,
    )


def _view(count: int, first_seq: int = 4) -> View:
    entries = [
        Entry(
            Fragment(7, 100 + i, T0 + i * 1000, T0 + i * 1000, 1000, 10, "k"),
            T0 + i * 1000,
            first_seq + i,
            1000 + i * 1000,
            1000,
            False,
        )
        for i in range(count)
    ]
    return View(entries, 0, False, 1)


def _ll(parts: list[tuple[int, int, int, bool]], preload: tuple[int, int] | None) -> hls.LowLatency:
    lines = tuple(hls.PartLine(m, f, i, 0.25, ind) for m, f, i, ind in parts)
    return hls.LowLatency(0.334, lines, preload)


def test_ll_playlist_tags_parts_and_preload_hint() -> None:
    view = _view(2)  # segments 4 (fragment 100) and 5 (fragment 101)
    ll = _ll(
        [(5, 101, 0, True), (5, 101, 1, False), (6, 102, 0, True), (6, 102, 1, False)],
        (102, 2),
    )
    text = hls.media_playlist(_session(), "TOK", view, 1, ll)
    lines = text.splitlines()
    assert lines[:6] == [
        "#EXTM3U",
        "#EXT-X-VERSION:7",
        "#EXT-X-TARGETDURATION:1",
        "#EXT-X-MEDIA-SEQUENCE:4",
        "#EXT-X-SERVER-CONTROL:CAN-BLOCK-RELOAD=YES,PART-HOLD-BACK=1.002",
        "#EXT-X-PART-INF:PART-TARGET=0.334",
    ]
    part = "getMP4MediaPart.mp4?FragmentNumber={}&PartNumber={}&SessionToken=TOK&TrackNumber=1"
    seg = "getMP4MediaFragment.mp4?FragmentNumber={}&SessionToken=TOK&TrackNumber=1"
    tail = lines[lines.index(seg.format(100)) + 1 :]
    assert tail == [
        f'#EXT-X-PART:DURATION=0.250,URI="{part.format(101, 0)}",INDEPENDENT=YES',
        f'#EXT-X-PART:DURATION=0.250,URI="{part.format(101, 1)}"',
        "#EXTINF:1.000,",
        seg.format(101),
        f'#EXT-X-PART:DURATION=0.250,URI="{part.format(102, 0)}",INDEPENDENT=YES',
        f'#EXT-X-PART:DURATION=0.250,URI="{part.format(102, 1)}"',
        f'#EXT-X-PRELOAD-HINT:TYPE=PART,URI="{part.format(102, 2)}"',
    ]
    assert hls.last_position(view, ll) == (6, 1)
    # The segment in progress follows a discontinuity: its parts come after the tag, as the
    # segment itself will once it is listed.
    disc = hls.LowLatency(0.334, ll.parts, ll.preload, pending_discontinuity=True)
    lines = hls.media_playlist(_session(), "TOK", view, 1, disc).splitlines()
    at = lines.index(seg.format(101))
    assert lines[at + 1] == "#EXT-X-DISCONTINUITY"
    assert lines[at + 2].startswith("#EXT-X-PART:DURATION=0.250,URI=") and "=102&" in lines[at + 2]


def test_plain_playlist_is_unchanged_without_ll() -> None:
    view = _view(2)
    plain = hls.media_playlist(_session(), "TOK", view, 1)
    assert plain == hls.media_playlist(_session(), "TOK", view, 1, None)
    assert "EXT-X-PART" not in plain
    assert "SERVER-CONTROL" not in plain
    assert "PRELOAD-HINT" not in plain


def test_blocking_reload_decisions() -> None:
    view = _view(2)  # last full segment 5; segment 6 in progress with parts 0 and 1
    ll = _ll([(6, 102, 0, True), (6, 102, 1, False)], (102, 2))
    ready = hls.blocking_ready
    assert ready(view, ll, 5, None)
    assert ready(view, ll, 4, 3)  # an older segment: all its parts exist
    assert ready(view, ll, 6, 0)
    assert ready(view, ll, 6, 1)
    assert not ready(view, ll, 6, 2)  # the next part: wait for it
    assert not ready(view, ll, 6, None)  # the whole segment 6: wait for it
    assert not ready(view, ll, 7, 0)
    assert not hls.too_far(view, 7)  # last + 2 is still answered (blocking)
    assert hls.too_far(view, 8)  # beyond last + 2: 400
    nothing = _ll([], None)
    assert hls.last_position(view, nothing) == (5, None)
    assert not ready(view, nothing, 6, 0)


def _part(index: int, key: bool = False) -> liveedge.Part:
    frames = {1: (Frame(index * 250_000_000, b"x", key),)}
    return liveedge.Part(index, frames, index * 250_000_000, (index + 1) * 250_000_000, key, T0)


def test_live_edge_publish_finish_abandon_and_bounds() -> None:
    async def run() -> None:
        edge = liveedge.LiveEdge()
        assert not edge.watched(7)
        edge.watch(7)
        assert edge.watched(7) and not edge.watched(8)
        await edge.begin(7, 100, server_ts=T0, producer_ts=T0)
        v0 = edge.version(7)
        await edge.publish(7, 100, _part(0, True), last=False)
        await edge.publish(7, 100, _part(2), last=False)  # out of order: ignored
        frag = edge.fragment(7, 100)
        assert frag is not None and [p.index for p in frag.parts] == [0]
        assert edge.version(7) > v0
        assert frag.parts[0].duration_s == 0.25
        await edge.publish(7, 100, _part(1), last=True)
        assert frag.done and len(frag.parts) == 2
        await edge.publish(7, 100, _part(2), last=False)  # after the last part: ignored
        assert len(frag.parts) == 2
        # A new fragment replaces an unfinished one; an abandoned one is withdrawn.
        await edge.begin(7, 101, server_ts=T0 + 1000, producer_ts=T0 + 1000)
        await edge.publish(7, 101, _part(0, True), last=False)
        await edge.begin(7, 102, server_ts=T0 + 2000, producer_ts=T0 + 2000)
        assert edge.fragment(7, 101) is None
        assert edge.fragment(7, 100) is not None
        await edge.abandon(7, 102)
        assert edge.fragment(7, 102) is None
        for n in range(103, 110):  # only the last KEEP_DONE stored fragments stay
            await edge.begin(7, n, server_ts=T0, producer_ts=T0)
            await edge.finish(7, n)
        edge_7 = edge.edge(7)
        assert edge_7 is not None and len(edge_7.fragments) == liveedge.KEEP_DONE
        for n in range(liveedge.MAX_PARTS + 5):
            await edge.begin(7, 200, server_ts=T0, producer_ts=T0) if n == 0 else None
            await edge.publish(7, 200, _part(n), last=False)
        f200 = edge.fragment(7, 200)
        assert f200 is not None and len(f200.parts) == liveedge.MAX_PARTS
        # wait() returns at once after a change, and within its bound otherwise.
        version = edge.version(7)
        loop = asyncio.get_running_loop()
        t = loop.time()
        await edge.wait(7, version, 0.2)
        assert 0.15 <= loop.time() - t < 1.0
        waiter = asyncio.ensure_future(edge.wait(7, version, 5.0))
        await asyncio.sleep(0.05)
        await edge.finish(7, 200)
        await asyncio.wait_for(waiter, 1.0)

    asyncio.run(run())


def test_cut_index_at_frame_boundaries() -> None:
    times = [0, 33, 67, 100, 133, 167, 200, 233, 267, 300]
    assert liveedge.cut_index(times, 0) == 8  # first frame >= 250 ms after frame 0
    assert liveedge.cut_index(times, 8) is None  # not 250 ms of frames yet
    assert liveedge.cut_index(times, 10) is None


def test_cutter_parts_are_the_stored_frames_and_are_withdrawn_when_they_differ() -> None:
    data = producer_mkv(3.0, audio=True)
    pieces = [header_part(data)] + [p for c in clusters(data) for p in frame_pieces(c)]

    async def run() -> None:
        edge = liveedge.LiveEdge()
        edge.watch(1)
        cutter = LiveCutter(edge, 1)
        parser = mkvstream.MkvStreamParser(max_fragment_bytes=50_000_000)
        stored: dict[int, bytes] = {}
        parts_before: dict[int, int] = {}  # parts listed before the fragment was complete

        async def handle(events: list[mkvstream.Event]) -> None:
            for ev in events:
                if isinstance(ev, mkvstream.FragmentStarted):
                    await cutter.begin(ev.index, 100 + ev.index, T0, T0)
                elif isinstance(ev, mkvstream.FragmentReady):
                    frag = edge.fragment(1, 100 + ev.index)
                    parts_before[100 + ev.index] = len(frag.parts) if frag else 0
                    blob = mkvstream.assemble(ev)
                    stored[100 + ev.index] = blob
                    await cutter.complete(blob, ev.duration_ms)
                    await cutter.stored()
                else:
                    raise AssertionError(ev)

        for piece in pieces:
            await handle(parser.feed(piece))
            await cutter.progress(parser)
        await handle(parser.finish())
        assert len(stored) == 3
        for number, blob in stored.items():
            frag = edge.fragment(1, number)
            assert frag is not None and frag.done
            assert parts_before[number] >= 2  # listed while the fragment was arriving
            whole = parse_fragment(blob)
            for track, frames in whole.frames.items():
                joined = [f for p in frag.parts for f in p.frames.get(track, ())]
                assert joined == frames, (number, track)
            assert [p.independent for p in frag.parts] == [True] + [False] * (len(frag.parts) - 1)
            assert all(0.2 <= p.duration_s <= liveedge.PART_TARGET_S for p in frag.parts[:-1])
            # Parts abut: each starts where the previous one ends (the frame that cut it).
            assert frag.parts[0].start_ns == 0
            for a, b in zip(frag.parts, frag.parts[1:], strict=False):
                assert a.end_ns == b.start_ns, [(p.start_ns, p.end_ns) for p in frag.parts]

        # A fragment whose stored form differs from its parts has them withdrawn.
        parser = mkvstream.MkvStreamParser(max_fragment_bytes=50_000_000)
        cutter = LiveCutter(edge, 1)
        await handle(parser.feed(pieces[0]))
        for piece in pieces[1:40]:
            await handle(parser.feed(piece))
            await cutter.progress(parser)
        frag = edge.fragment(1, 100)
        assert frag is not None and frag.parts and not frag.done
        await cutter.complete(stored[101], 1000)
        assert edge.fragment(1, 100) is None
        # And an abandoned one (not stored) too.
        cutter = LiveCutter(edge, 1)
        await cutter.begin(0, 200, T0, T0)
        await cutter.abandon()
        assert edge.fragment(1, 200) is None

    asyncio.run(run())
