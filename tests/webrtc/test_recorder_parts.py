"""The real Recorder and FragmentStore publishing LL-HLS parts to a live edge, fed video and
audio the way a storage session does (audio encoded behind video, sometimes stalled): the parts
carry the video and the AAC frames encoded so far, and are exactly the stored fragment's frames,
audio included; parts of a fragment stored differently are withdrawn; an unwatched stream gets
none."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

from openkvs.media import mkv
from openkvs.media.fragmenter import FragmentData, Fragmenter
from openkvs.playback import liveedge
from openkvs.playback.mkv import parse_fragment
from openkvs.records import Fragment, Stream
from openkvs.webrtc.liveparts import RecorderParts
from openkvs.webrtc.recorder import Recorder

from ..e2e.test_server_fixes import tone_frame
from ..mediagen import h264_clip
from ..support import ServerThread


class Store:
    """The server's fragment store, noting how many parts each fragment had listed when it was
    stored; ``alter`` changes what is stored."""

    def __init__(
        self,
        server: ServerThread,
        edge: liveedge.LiveEdge,
        alter: Callable[[int, bytes], bytes] | None = None,
    ) -> None:
        self.store = server.services.fragments
        self.edge = edge
        self.alter = alter
        self.parts_before: dict[int, int] = {}

    async def next_number(self, stream_id: int) -> int:
        return await self.store.next_number(stream_id)

    async def append(
        self,
        stream: Stream,
        data: bytes,
        *,
        producer_ts_ms: int,
        server_ts_ms: int | None = None,
        duration_ms: int,
        number: int | None = None,
    ) -> Fragment:
        assert number is not None  # reserved when the fragment opened
        frag = self.edge.fragment(stream.id, number)
        self.parts_before[number] = len(frag.parts) if frag is not None else 0
        if self.alter is not None:
            data = self.alter(number, data)
        return await self.store.append(
            stream,
            data,
            producer_ts_ms=producer_ts_ms,
            server_ts_ms=server_ts_ms,
            duration_ms=duration_ms,
            number=number,
        )


def feed(
    server: ServerThread,
    stream_name: str,
    edge: liveedge.LiveEdge,
    *,
    watch: bool = True,
    audio_stall: tuple[int, int] | None = None,
    alter: Callable[[int, bytes], bytes] | None = None,
) -> tuple[list[Fragment], dict[int, int]]:
    """3 s of H.264 (keyframe every 0.5 s) and 20 ms audio frames delivered in media order
    (``audio_stall=(first, last)``: those audio frames come in one burst after ``last``).
    Returns the stored fragments and how many parts each had before it was stored."""
    kv = server.client("kinesisvideo")
    kv.create_stream(StreamName=stream_name, DataRetentionInHours=1)
    stream = server.services.control.get_stream(name=stream_name)
    if watch:
        edge.watch(stream.id)
    video = h264_clip(width=320, height=180, seconds=3.0, gop=15, noise=2.0)
    pool = ThreadPoolExecutor(2)
    sink = Store(server, edge, alter)

    async def run() -> None:
        recorder = Recorder(
            stream,
            sink,
            pool,
            target_ms=1000,
            request_keyframe=lambda: False,
            live=edge,
        )
        recorder.start()
        frames = iter(video)
        next_video = next(frames, None)
        held = []
        for i in range(150):
            now_ms = i * 20
            while next_video is not None and next_video.pts_ms <= now_ms:
                recorder.on_video(next_video.data, int(round(next_video.pts_ms * 90)))
                next_video = next(frames, None)
            frame = tone_frame(i * 960)
            if audio_stall is not None and audio_stall[0] <= i <= audio_stall[1]:
                held.append(frame)
            else:
                recorder.audio_arrived(int(frame.pts))
                recorder.on_audio([frame])
            if audio_stall is not None and i == audio_stall[1]:
                for late in held:
                    recorder.audio_arrived(int(late.pts))
                    recorder.on_audio([late])
                    await asyncio.sleep(0.002)
            await asyncio.sleep(0.02)  # real time: parts are cut as frames arrive
        await asyncio.sleep(0.3)
        await recorder.close()

    try:
        server.call(run())
    finally:
        pool.shutdown()
    fragments = server.call(server.services.fragments.list_fragments(stream, limit=100))
    return fragments, sink.parts_before


def check_parts(server: ServerThread, edge: liveedge.LiveEdge, frag: Fragment) -> int:
    """The fragment's parts are its video frames, and its first audio frames (those encoded by
    the time its video closed: audio for its end may come after); returns how many audio frames
    they hold."""
    live = edge.fragment(frag.stream_id, frag.number)
    assert live is not None and live.done, frag.number
    whole = parse_fragment(server.call(server.services.fragments.read(frag)))
    assert set(whole.frames) == {1, 2}
    for track, frames in whole.frames.items():
        joined = [f for p in live.parts for f in p.frames.get(track, ())]
        if track == 1:
            assert joined == frames, frag.number
        else:
            assert joined == frames[: len(joined)] and len(joined) >= len(frames) // 2, (
                frag.number,
                len(joined),
                len(frames),
            )
    assert [p.independent for p in live.parts] == [True] + [False] * (len(live.parts) - 1)
    assert all(0.2 <= p.duration_s <= liveedge.PART_TARGET_S for p in live.parts[:-1])
    for a, b in zip(live.parts, live.parts[1:], strict=False):
        assert a.end_ns == b.start_ns
    return sum(len(p.frames.get(2, ())) for p in live.parts)


def test_parts_hold_the_encoded_audio_and_equal_the_stored_fragment(
    make_server: Callable[..., ServerThread],
) -> None:
    server = make_server()
    for name, stall in (("rec-parts", None), ("rec-parts-stall", (40, 70))):
        edge = liveedge.LiveEdge()
        fragments, before = feed(server, name, edge, audio_stall=stall)
        assert len(fragments) >= 3, name
        # Numbers were reserved as each fragment opened, in order.
        numbers = [f.number for f in fragments]
        assert numbers == sorted(numbers)
        kept = [f for f in fragments if edge.fragment(f.stream_id, f.number) is not None]
        assert len(kept) >= min(len(fragments), liveedge.KEEP_DONE)
        audio = sum(check_parts(server, edge, f) for f in kept)
        assert audio > 30, (name, audio)
        assert all(before[f.number] >= 1 for f in kept), before  # listed before stored


async def drive(
    parts: RecorderParts,
    edge: liveedge.LiveEdge,
    *,
    seconds: float = 3.0,
    pace_s: float = 0.01,
    alter: Callable[[int, bytes], bytes] = lambda _, data: data,
) -> dict[int, int]:
    """Drive ``parts`` as the recorder does (stream 5, video with AAC frames 100 ms behind);
    returns how many parts each fragment had listed when it was stored."""
    video = h264_clip(width=160, height=120, seconds=seconds, gop=15, noise=2.0)
    loop = asyncio.get_running_loop()
    fragmenter = Fragmenter(target_ms=1000)
    fragmenter.set_audio_config(b"\x11\x90", 48000, 2)  # AAC-LC, 48 kHz, stereo
    numbers: dict[int, int] = {}
    listed: dict[int, int] = {}
    serial = None

    def store(done: list[FragmentData]) -> None:
        for frag in done:
            number = numbers[frag.serial]
            live = edge.fragment(5, number)
            listed[number] = len(live.parts) if live is not None else 0
            parts.stored(frag.serial, alter(number, frag.to_mkv()))

    for v in video:
        out = fragmenter.video(v.pts_ms, v.data)
        if fragmenter.open_serial != serial:
            parts.closed(fragmenter, out)
            serial = fragmenter.open_serial
            assert serial is not None
            numbers[serial] = 100 + serial
            future: asyncio.Future[int] = loop.create_future()
            future.set_result(numbers[serial])
            parts.opened(serial, fragmenter.video_times(serial)[0], future)
        parts.video(fragmenter, out)
        out += fragmenter.audio(v.pts_ms - 100, b"\x21\x00" * 20)
        await asyncio.sleep(pace_s)
        store(out)
    last = fragmenter.flush()
    parts.closed(fragmenter, last)
    store(last)
    return listed


def test_parts_of_a_fragment_stored_differently_are_withdrawn() -> None:
    """Every other fragment is stored without its first audio frame (which a part showed): its
    parts are withdrawn."""

    def alter(number: int, data: bytes) -> bytes:
        if number % 2:
            return data
        old = mkv.read_fragment(data)
        first = min(i for i, b in enumerate(old.blocks) if b.track == 2)
        blocks = [b for i, b in enumerate(old.blocks) if i != first]
        return mkv.write_fragment(old.tracks, blocks, timecode=old.cluster_timecode)

    async def run() -> tuple[liveedge.LiveEdge, dict[int, int]]:
        edge = liveedge.LiveEdge()
        edge.watch(5)
        with ThreadPoolExecutor(1) as pool:
            parts = RecorderParts(edge, 5, pool)
            parts.start()
            listed = await drive(parts, edge, alter=alter)
            await parts.close()
        return edge, listed

    edge, listed = asyncio.run(run())
    assert len(listed) >= 3
    for number, before in listed.items():
        assert before >= 1, listed  # parts were listed before each fragment was stored
        live = edge.fragment(5, number)
        if number % 2 == 0:
            assert live is None, number
        elif number >= max(listed) - 1:  # the edge keeps the last few
            assert live is not None and live.done and live.parts, number


class StuckEdge(liveedge.LiveEdge):
    """A live edge whose first part is taken only once ``release`` is set."""

    def __init__(self) -> None:
        super().__init__()
        self.release = asyncio.Event()

    async def publish(
        self, stream_id: int, number: int, part: liveedge.Part, *, last: bool
    ) -> None:
        await self.release.wait()
        await super().publish(stream_id, number, part, last=last)


def test_parts_that_fall_behind_are_bounded_and_withdrawn() -> None:
    async def run() -> tuple[StuckEdge, RecorderParts, dict[int, int]]:
        edge = StuckEdge()
        edge.watch(5)
        with ThreadPoolExecutor(1) as pool:
            parts = RecorderParts(edge, 5, pool)
            parts.start()
            listed = await drive(parts, edge, seconds=8.0, pace_s=0.0)
            assert parts.skipped > 0  # the steps waiting were bounded
            edge.release.set()
            await parts.close()
        return edge, parts, listed

    edge, parts, listed = asyncio.run(run())
    assert len(listed) >= 7 and set(listed.values()) == {0}
    stream = edge.edge(5)
    assert stream is not None
    # What was dropped was withdrawn: the fragments left are complete (and stored).
    assert all(f.done for f in stream.fragments.values())


def test_unwatched_stream_gets_no_parts(make_server: Callable[..., ServerThread]) -> None:
    server = make_server()
    edge = liveedge.LiveEdge()
    fragments, before = feed(server, "rec-unwatched", edge, watch=False)
    assert len(fragments) >= 3
    assert edge.parts_published == 0 and set(before.values()) == {0}
    assert edge.edge(fragments[0].stream_id) is None
