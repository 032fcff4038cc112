"""LL-HLS parts of a WebRTC recording: an aiortc camera joins through real signaling and
JoinStorageSession while a client follows the LIVE playlist with blocking reloads
(_HLS_msn/_HLS_part). Parts are listed and served before their fragment is stored, their H.264
samples are exactly the stored fragment's, in-process and with a worker process; ffprobe reads a
part and the playlist; hls.js in low-latency mode plays the recording in Chromium."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from openkvs.media import mkv

from ..mediagen import h264_clip, opus_packets
from ..playback.support import (
    CustomerPage,
    customer_page,
    ffprobe_json,
    follow_parts,
    get,
    live_hls_url,
    packets,
    player_result,
    resolve,
    segment_numbers,
    start_player,
    uris,
)
from .harness import Camera, fragment_bytes, fragments_of, storage_channel

pytestmark = pytest.mark.slow
__all__ = ["customer_page"]  # the fixture, for the browser test

SECONDS = 8.0


@pytest.mark.parametrize("workers", [0, 1])
async def test_webrtc_recording_parts_are_the_stored_fragments_frames(
    make_server: Any, tmp_path: Path, workers: int
) -> None:
    srv = make_server(webrtc_workers=workers, storage_fragment_duration=1.0)
    name = f"llrtc{workers}"
    ch, _ = storage_channel(srv, name)
    stream_name = f"{name}-stream"
    video = h264_clip(width=320, height=240, seconds=SECONDS)
    cam = Camera(srv, ch, video, opus_packets(SECONDS))
    await cam.connect()
    await asyncio.to_thread(cam.join)
    until = asyncio.Event()
    client = asyncio.ensure_future(follow_parts(srv, stream_name, until.is_set))
    await cam.master.wait_sent()
    await asyncio.sleep(1.5)  # the last fragments arrive and are stored
    until.set()
    followed = await asyncio.wait_for(client, 60)
    await cam.close()
    media_url, seen = followed.media_url, followed.seen
    init = followed.init_segment()
    fetched = {key: content for key, (_, content) in followed.fetched.items()}

    stored = {f.number: f for f in fragments_of(srv, stream_name)}
    listed = segment_numbers(get(media_url).text)
    compared = 0
    for frag in sorted({f for f, _ in seen}):
        indices = sorted(i for f, i in seen if f == frag)
        if frag not in stored or frag not in listed or indices != list(range(len(indices))):
            continue
        # Each fragment's first part was listed (and served) before the fragment was stored.
        assert (frag, 0) in followed.pending, frag
        from_parts = [p for i in indices for p in packets(init, fetched[(frag, i)])]
        segment = get(
            resolve(
                media_url,
                f"getMP4MediaFragment.mp4?FragmentNumber={frag}&{media_url.split('?', 1)[1]}",
            )
        ).content
        assert from_parts == packets(init, segment), frag
        # Byte for byte the H.264 samples the stored fragment holds.
        blocks = mkv.read_fragment(fragment_bytes(srv, stored[frag])).blocks
        assert [data for _, data in from_parts] == [b.data for b in blocks if b.track == 1]
        assert 2 <= len(indices) <= 6, indices
        assert all(followed.durations[(frag, i)] <= 0.334 for i in indices[:-1])
        compared += 1
    assert compared >= 3, (compared, sorted(seen), sorted(stored))

    # ffprobe decodes a part (an independent one, behind the init segment), and reads the LL
    # playlist (its segments).
    key = min(k for k in fetched if k[1] == 0 and k[0] in stored)
    path = tmp_path / "part.mp4"
    path.write_bytes(init + fetched[key])
    probe = ffprobe_json(path, "-show_streams", "-count_frames")
    stream = probe["streams"][0]
    assert stream["codec_name"] == "h264" and (stream["width"], stream["height"]) == (320, 240)
    assert int(stream["nb_read_frames"]) == len(packets(init, fetched[key]))
    probe = ffprobe_json(media_url, "-show_streams")
    assert probe["streams"][0]["codec_name"] == "h264"


@pytest.mark.browser
@pytest.mark.parametrize("low_latency", [True, False])
async def test_hls_js_plays_a_webrtc_recording_with_and_without_low_latency_mode(
    make_server: Any, customer_page: CustomerPage, low_latency: bool
) -> None:
    """hls.js in low-latency mode plays the parts; without it (a player that ignores the LL-HLS
    tags) it plays the same playlist's whole segments, as before parts existed."""
    srv = make_server(storage_fragment_duration=1.0)
    ch, _ = storage_channel(srv, "llrtc-player")
    # 24 s of 640x360 video (a 4 s clip sent six times, timestamps running on).
    cam = Camera(srv, ch, h264_clip(width=640, height=360, seconds=4.0), None, loops=6)
    await cam.connect()
    await asyncio.to_thread(cam.join)
    try:
        url = await live_hls_url(srv, "llrtc-player-stream")
        # Parts start with the fragment after the first LIVE playlist request: the player starts
        # once they are listed (hls.js picks its distance to the live edge at its first load).
        master = (await asyncio.to_thread(get, url)).text
        media_url = resolve(url, next(u for u in uris(master) if "TrackNumber=1" in u))
        async with asyncio.timeout(15):
            while "#EXT-X-PART:" not in (await asyncio.to_thread(get, media_url)).text:
                await asyncio.sleep(0.1)
        player = start_player(customer_page.url("hls", url, ll=low_latency), 14)
        result = await asyncio.to_thread(player_result, player, 90)
    finally:
        await cam.close()
    samples = result["samples"]
    last = samples[-1]
    assert "fatal" not in result, result.get("fatal")
    # A blocking playlist reload still waiting when the page closes (or one hls.js gives up for
    # a newer one) is aborted by the browser; every other request succeeded.
    failed = [
        r
        for r in result["failedRequests"]
        if not r.endswith("getHLSMediaPlaylist.m3u8 net::ERR_ABORTED")
    ]
    assert result["pageErrors"] == [] and failed == [], result
    # As for PutMedia's parts (tests/playback/test_llhls.py): hls.js's non-fatal stalls at a
    # 1 s live edge on a loaded machine are bounded by the progress checks below.
    assert all(not e.get("fatal") for e in last["errors"]), last["errors"]
    others = [e for e in last["errors"] if e.get("details") != "bufferStalledError"]
    assert len(others) <= 3, last["errors"]
    assert (last["videoWidth"], last["videoHeight"]) == (640, 360), last
    playing = [s["currentTime"] for s in samples if s["currentTime"] > 0]
    assert playing and max(playing) - min(playing) >= 7, playing
    assert all(b >= a for a, b in zip(playing, playing[1:], strict=False)), playing
    assert last["decodedFrames"] > 30 * 7, last
    if low_latency:
        assert last["parts"] >= 10, last  # hls.js loaded parts (EXT-X-PART), not only segments
    else:
        assert last["parts"] == 0, last
