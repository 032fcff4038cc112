"""A published LIVE segment never changes (RFC 8216 6.2.1), and consecutive LIVE audio segments
neither overlap nor leave a gap (with server timestamps, no gap beyond the fragments' arrival
jitter).

A PutMedia producer sends H.264 + AAC with millisecond timecodes (AAC frames straddle every
keyframe, as a camera's do) one cluster at a time. Each fragment's segments (media bytes and
EXTINF, video and audio) are read while it is the newest fragment of the LIVE playlist, then
again once later fragments are stored: both must be identical. The audio a live client got at
the edge then plays seamlessly (ffprobe's packet times), and every audio segment covers its
video's first instant.
"""

from __future__ import annotations

import asyncio
import math
import re
import tempfile
import time
from pathlib import Path

from ..dataplane.mediafiles import clusters, header_part, producer_mkv
from ..dataplane.producer import Producer
from ..support import ServerThread
from .support import create_stream, get, hls_url, packet_times, resolve, uris

SEGMENT_RE = re.compile(r"#EXTINF:([0-9.]+),\n(getMP4MediaFragment\.mp4\?FragmentNumber=(\d+)\S*)")
TRACKS = (1, 2)  # video, audio


def segments(playlist: str) -> list[tuple[int, str, str]]:
    """(fragment number, EXTINF, URI) of every segment of a media playlist."""
    return [(int(m.group(3)), m.group(1), m.group(2)) for m in SEGMENT_RE.finditer(playlist)]


def probe(init: bytes, media: bytes, stream: str) -> list[tuple[float, float]]:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "segment.mp4"
        path.write_bytes(init + media)
        return packet_times(path, stream)


SELECTORS = ("SERVER_TIMESTAMP", "PRODUCER_TIMESTAMP")


def test_live_segments_never_change_and_audio_abuts(server: ServerThread) -> None:
    name = "livesegs"
    create_stream(server, name)
    seconds = 7
    data = producer_mkv(seconds, start_ms=int(time.time() * 1000), audio=True, fps=30)
    # Seen as the newest segment: (selector, track, fragment) -> (EXTINF, bytes).
    edge: dict[tuple[str, int, int], tuple[str, bytes]] = {}
    media_urls: dict[tuple[str, int], str] = {}

    async def open_sessions() -> None:
        for selector in SELECTORS:
            url = await asyncio.to_thread(
                hls_url,
                server,
                name,
                PlaybackMode="LIVE",
                ContainerFormat="FRAGMENTED_MP4",
                MaxMediaPlaylistFragmentResults=20,
                HLSFragmentSelector={"FragmentSelectorType": selector},
            )
            master = (await asyncio.to_thread(get, url)).text
            for track in TRACKS:
                media_urls[(selector, track)] = resolve(
                    url, next(u for u in uris(master) if f"TrackNumber={track}" in u)
                )

    async def follow() -> None:
        for (selector, track), url in media_urls.items():
            text = (await asyncio.to_thread(get, url)).text
            number, extinf, uri = segments(text)[-1]
            if (selector, track, number) not in edge:
                got = await asyncio.to_thread(get, resolve(url, uri))
                assert got.status_code == 200, got.text
                edge[(selector, track, number)] = (extinf, got.content)

    async def run() -> None:
        producer = Producer(server, stream_name=name)
        await producer.connect()
        assert await producer.read_head() == 200
        await producer.send(header_part(data))
        persisted = 0
        wall0 = time.time()
        for k, cluster in enumerate(clusters(data)):
            # At a camera's pace (server timestamps follow), a GOP once it is encoded.
            await asyncio.sleep(max(0.0, wall0 + k - time.time()))
            await producer.send(cluster, piece=1 << 20)
            # A whole cluster is a whole fragment: it stays the newest until the next is sent.
            while persisted < k + 1:
                ack = await producer.ack(timeout=30)
                assert ack is not None
                persisted += ack.get("EventType") == "PERSISTED"
            if not media_urls:
                await open_sessions()
            await follow()
        await producer.end()
        await producer.acks_until_end(timeout=30)
        await producer.close()

    asyncio.run(run())
    for selector in SELECTORS:
        check_session(selector, media_urls, edge, seconds)


def check_session(
    selector: str,
    media_urls: dict[tuple[str, int], str],
    edge: dict[tuple[str, int, int], tuple[str, bytes]],
    seconds: int,
) -> None:
    numbers = sorted({n for s, _, n in edge if s == selector})
    assert len(numbers) >= seconds - 2, numbers
    assert all((selector, t, n) in edge for t in TRACKS for n in numbers)

    # Once later fragments exist, every segment is served exactly as it was at the edge.
    inits = {}
    for track in TRACKS:
        url = media_urls[(selector, track)]
        text = get(url).text
        init_uri = re.search(r'#EXT-X-MAP:URI="([^"]+)"', text)
        assert init_uri is not None
        inits[track] = get(resolve(url, init_uri.group(1))).content
        later = {n: (extinf, uri) for n, extinf, uri in segments(text)}
        assert set(numbers) <= set(later), (numbers, sorted(later))
        for n in numbers:
            extinf, uri = later[n]
            first_extinf, first_bytes = edge[(selector, track, n)]
            assert extinf == first_extinf, (selector, track, n, first_extinf, extinf)
            content = get(resolve(url, uri)).content
            assert content == first_bytes, (selector, track, n)

    # The audio a client followed at the edge plays seamlessly: consecutive segments neither
    # overlap nor leave a gap (within the millisecond rounding of the producer's timecodes).
    audio = [probe(inits[2], edge[(selector, 2, n)][1], "a") for n in numbers]
    video = [probe(inits[1], edge[(selector, 1, n)][1], "v") for n in numbers]
    assert all(audio) and all(video)
    # Server timestamps are arrival times: a fragment that arrives late (a loaded machine)
    # starts that much later on the timeline, which leaves a hole of up to the arrival jitter
    # before its audio, never an overlap.
    hole = 0.0015 if selector == "PRODUCER_TIMESTAMP" else 0.05
    for i in range(1, len(numbers)):
        prev_end = audio[i - 1][-1][0] + audio[i - 1][-1][1]
        start = audio[i][0][0]
        assert -0.0015 <= start - prev_end <= hole, (selector, numbers[i], prev_end, start)
        if selector == "PRODUCER_TIMESTAMP":
            # Placed by the producer's own clock, each audio segment covers its video's start
            # (the frame playing at the keyframe opens the next segment).
            assert start <= video[i][0][0] + 0.0015, (numbers[i], start, video[i][0][0])
    for packets in audio:
        for (pts, duration), (nxt, _) in zip(packets, packets[1:], strict=False):
            if math.isnan(duration):  # ffprobe leaves a segment's first one out
                continue
            assert abs(pts + duration - nxt) <= 0.0015, (selector, pts, duration, nxt)
