"""HLS sessions against the real server: URLs from boto3, resources over plain HTTP, every output
checked with ffprobe/ffmpeg (decodes cleanly, tracks and durations as recorded, fragment
boundaries continuous)."""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from openkvs import clock
from openkvs.playback.hls import iso_ms

from ..support import ServerThread
from .media import GeneratedFragment, append, recorded
from .support import (
    create_stream,
    ffmpeg_decode_errors,
    ffprobe_json,
    get,
    hls_url,
    on_demand,
    packet_times,
    resolve,
    uris,
)

FRAME = 1 / 30
AAC_FRAME = 1024 / 48000


def record(
    server: ServerThread, count: int = 6, name: str = "cam", **options: Any
) -> tuple[int, list[GeneratedFragment], list[Any]]:
    create_stream(server, name)
    t0 = clock.now_ms() - 120_000
    frags = recorded(count, t0, **options)
    return t0, frags, append(server, name, frags)


def playlists(master_url: str) -> tuple[str, dict[int | None, tuple[str, str]]]:
    """The master playlist and each media playlist (by TrackNumber) with its URL."""
    master = get(master_url)
    assert master.status_code == 200, master.text
    assert master.headers["Content-Type"] == "application/vnd.apple.mpegurl"
    out: dict[int | None, tuple[str, str]] = {}
    for uri in uris(master.text):
        url = resolve(master_url, uri)
        m = re.search(r"TrackNumber=(\d)", uri)
        media = get(url)
        assert media.status_code == 200, media.text
        out[int(m.group(1)) if m else None] = (url, media.text)
    return master.text, out


def segments(media_url: str, playlist: str) -> list[bytes]:
    out = []
    for uri in uris(playlist):
        r = get(resolve(media_url, uri))
        assert r.status_code == 200, (uri, r.text)
        out.append(r.content)
    return out


def extinf(playlist: str) -> list[float]:
    return [float(x) for x in re.findall(r"#EXTINF:([0-9.]+),", playlist)]


def assert_continuous(times: list[tuple[float, float]], step: float, tolerance: float) -> None:
    starts = [t for t, _ in times]
    gaps = [b - a for a, b in zip(starts, starts[1:], strict=False)]
    assert gaps, "no packets"
    assert max(abs(g - step) for g in gaps) <= tolerance, (min(gaps), max(gaps))


@pytest.mark.parametrize("bframes", [0, 2])
def test_on_demand_fmp4_plays_as_recorded(
    server: ServerThread, tmp_path: Path, bframes: int
) -> None:
    t0, frags, _ = record(server, bframes=bframes)
    url = hls_url(
        server,
        "cam",
        PlaybackMode="ON_DEMAND",
        HLSFragmentSelector=on_demand(t0 - 500, t0 + 60_000),
    )
    assert url.startswith(f"{server.http_endpoint}/hls/v1/getHLSMasterPlaylist.m3u8?SessionToken=")
    master, media = playlists(url)
    assert "#EXT-X-VERSION:7" in master and 'CODECS="avc1.' in master and "mp4a.40.2" in master
    assert "RESOLUTION=640x360" in master and "TYPE=AUDIO" in master
    assert set(media) == {1, 2}
    total = sum(f.duration_ms for f in frags) / 1000
    parts: dict[int, list[bytes]] = {}
    for track, (media_url, playlist) in media.items():
        assert "#EXT-X-PLAYLIST-TYPE:VOD" in playlist and playlist.rstrip().endswith("ENDLIST")
        assert "#EXT-X-MEDIA-SEQUENCE:0" in playlist and "#EXT-X-TARGETDURATION:1" in playlist
        assert "#EXT-X-DISCONTINUITY" not in playlist  # PRODUCER_TIMESTAMP: NEVER by default
        assert "#EXT-X-PROGRAM-DATE-TIME" not in playlist
        assert sum(extinf(playlist)) == pytest.approx(total)
        parts[track] = segments(media_url, playlist)
        assert len(parts[track]) == len(frags) + 1  # the init segment first
        path = tmp_path / f"track{track}.mp4"
        path.write_bytes(b"".join(parts[track]))
        assert ffmpeg_decode_errors(path) == ""
        info = ffprobe_json(path, "-show_streams", "-show_format")
        (stream,) = info["streams"]
        if track == 1:
            assert (stream["codec_name"], stream["width"], stream["height"]) == ("h264", 640, 360)
            times = packet_times(path, "v")
            assert len(times) == 30 * len(frags)
            assert_continuous(times, FRAME, 0.002)
            assert times[-1][0] + FRAME == pytest.approx(times[0][0] + total, abs=0.002)
        else:
            assert (stream["codec_name"], stream["sample_rate"]) == ("aac", "48000")
            times = packet_times(path, "a")
            assert len(times) == sum(f.audio_frames for f in frags)  # each frame exactly once
            assert_continuous(times, AAC_FRAME, 0.001)  # stored with millisecond timecodes
    # Each audio segment has sound from the first instant of its video segment: the AAC frame
    # playing across a fragment boundary is served with the later segment.
    # (The session timeline starts 1 s before the first fragment.)
    for i, f in enumerate(frags, start=1):
        audio = tmp_path / "a.mp4"
        audio.write_bytes(parts[2][0] + parts[2][i])
        start = 1 + (f.producer_ts_ms - t0) / 1000
        first = packet_times(audio, "a")[0][0]
        assert start - AAC_FRAME < first <= start + 0.0005
    # The whole session through FFmpeg's own HLS client: both tracks, no decode errors.
    assert ffmpeg_decode_errors(url) == ""
    probed = ffprobe_json(url, "-show_streams", "-show_format")
    assert sorted(s["codec_name"] for s in probed["streams"]) == ["aac", "h264"]
    assert float(probed["format"]["duration"]) == pytest.approx(total, abs=0.1)


def test_mpeg_ts_container(server: ServerThread, tmp_path: Path) -> None:
    t0, frags, _ = record(server, bframes=2)
    url = hls_url(
        server,
        "cam",
        PlaybackMode="ON_DEMAND",
        ContainerFormat="MPEG_TS",
        HLSFragmentSelector=on_demand(t0, t0 + 60_000),
    )
    master, media = playlists(url)
    assert "TYPE=AUDIO" not in master and "#EXT-X-VERSION:3" in master
    ((media_url, playlist),) = media.values()
    assert "#EXT-X-MAP" not in playlist and "getTSFragment.ts?FragmentNumber=" in playlist
    parts = segments(media_url, playlist)
    assert len(parts) == len(frags)
    for i, part in enumerate(parts):
        assert part[0] == 0x47 and len(part) % 188 == 0
        one = tmp_path / f"seg{i}.ts"
        one.write_bytes(part)
        assert ffmpeg_decode_errors(one) == ""  # each segment decodes on its own
    path = tmp_path / "all.ts"
    path.write_bytes(b"".join(parts))
    info = ffprobe_json(path, "-show_streams")
    assert sorted(s["codec_name"] for s in info["streams"]) == ["aac", "h264"]
    times = packet_times(path, "v")
    assert len(times) == 30 * len(frags)
    assert_continuous(times, FRAME, 0.002)
    assert_continuous(packet_times(path, "a"), AAC_FRAME, 0.002)
    assert ffmpeg_decode_errors(url) == ""


def test_display_timestamps_and_server_timestamp_discontinuities(server: ServerThread) -> None:
    t0, frags, stored = record(server, server_delay_ms=(40, 160))
    end = max(f.server_ts_ms for f in frags)
    url = hls_url(
        server,
        "cam",
        PlaybackMode="ON_DEMAND",
        DisplayFragmentTimestamp="ALWAYS",
        HLSFragmentSelector=on_demand(t0, end, "SERVER_TIMESTAMP"),
    )
    _, media = playlists(url)
    playlist = media[1][1]
    dates = re.findall(r"#EXT-X-PROGRAM-DATE-TIME:(\S+)", playlist)
    assert dates == [iso_ms(f.server_ts_ms) for f in frags]
    # SERVER_TIMESTAMP defaults to DiscontinuityMode ALWAYS: one tag before every segment.
    assert playlist.count("#EXT-X-DISCONTINUITY\n") == len(frags)
    # Slots follow the server timeline (jittered arrivals): a fragment lasts until the next one
    # when they are within 50 ms of abutting, else its recorded duration (and a gap follows).
    server_ts = [f.server_ts_ms for f in frags]
    diffs = [(b - a) / 1000 for a, b in zip(server_ts, server_ts[1:], strict=False)]
    close = [abs(d - 1.0) <= 0.05 for d in diffs]
    assert any(close) and not all(close)  # the recording exercises both cases
    expected = [d if c else 1.0 for d, c in zip(diffs, close, strict=True)]
    assert extinf(playlist) == pytest.approx([*expected, 1.0])
    assert [f"FragmentNumber={s.number}&" in playlist for s in stored] == [True] * len(frags)


def test_on_discontinuity_marks_only_gaps(server: ServerThread) -> None:
    create_stream(server, "cam")
    t0 = clock.now_ms() - 120_000
    frags = recorded(6, t0)
    kept = frags[:3] + frags[4:]  # fragment 3 was never recorded
    append(server, "cam", kept)
    url = hls_url(
        server,
        "cam",
        PlaybackMode="ON_DEMAND",
        DiscontinuityMode="ON_DISCONTINUITY",
        HLSFragmentSelector=on_demand(t0, t0 + 60_000),
    )
    _, media = playlists(url)
    lines = media[1][1].splitlines()
    tags = [i for i, line in enumerate(lines) if line == "#EXT-X-DISCONTINUITY"]
    assert len(tags) == 1
    # The tag sits right before the fourth segment (the first after the gap).
    segment_lines = [i for i, line in enumerate(lines) if line.startswith("getMP4MediaFragment")]
    assert segment_lines[2] < tags[0] < segment_lines[3]
    assert extinf(media[1][1]) == [1.0] * 5


def test_max_results_and_producer_timestamp_deduplication(server: ServerThread) -> None:
    t0, frags, stored = record(server)
    # The same producer timestamp again, later: the newer fragment replaces the older one.
    (again,) = append(server, "cam", frags[1:2])
    url = hls_url(
        server,
        "cam",
        PlaybackMode="ON_DEMAND",
        MaxMediaPlaylistFragmentResults=3,
        HLSFragmentSelector=on_demand(t0, t0 + 60_000),
    )
    _, media = playlists(url)
    numbers = [int(n) for n in re.findall(r"FragmentNumber=(\d+)", media[1][1])]
    assert numbers == [stored[0].number, again.number, stored[2].number]


def test_audio_only_stream(server: ServerThread, tmp_path: Path) -> None:
    t0, frags, _ = record(server, count=4, video=False)
    url = hls_url(
        server, "cam", PlaybackMode="ON_DEMAND", HLSFragmentSelector=on_demand(t0, t0 + 60_000)
    )
    master, media = playlists(url)
    assert 'CODECS="mp4a.40.2"' in master and "RESOLUTION" not in master
    assert list(media) == [1]
    assert ffmpeg_decode_errors(url) == ""
    probed = ffprobe_json(url, "-show_streams")
    assert [s["codec_name"] for s in probed["streams"]] == ["aac"]


def _live_media(url: str) -> Callable[[], str]:
    _, media = playlists(url)
    media_url = media[1][0]
    return lambda: get(media_url).text


def test_live_window_slides_over_new_fragments(server: ServerThread) -> None:
    create_stream(server, "cam")
    now = clock.now_ms()
    frags = recorded(12, now - 8_000)
    for f in frags[:8]:
        append(server, "cam", [f])
    url = hls_url(server, "cam", MaxMediaPlaylistFragmentResults=4)
    fetch = _live_media(url)

    def state(playlist: str) -> tuple[int, list[int]]:
        assert "#EXT-X-ENDLIST" not in playlist and "PLAYLIST-TYPE" not in playlist
        seq = int(re.search(r"#EXT-X-MEDIA-SEQUENCE:(\d+)", playlist).group(1))  # type: ignore[union-attr]
        return seq, [int(n) for n in re.findall(r"FragmentNumber=(\d+)", playlist)]

    seq, numbers = state(fetch())
    stored = server.call(
        server.services.fragments.list_fragments(server.services.control.get_stream(name="cam"))
    )
    assert seq == 0 and numbers == [s.number for s in stored[-4:]]
    added = append(server, "cam", frags[8:10])
    seq2, numbers2 = state(fetch())
    assert seq2 == 2 and numbers2 == numbers[2:] + [a.number for a in added]
    # A fragment older than the newest listed one is not back-filled.
    append(server, "cam", frags[3:4])
    assert state(fetch()) == (seq2, numbers2)
    # DiscontinuityMode ALWAYS (SERVER_TIMESTAMP default): the sequence keeps counting.
    playlist = fetch()
    assert "#EXT-X-DISCONTINUITY-SEQUENCE:2" in playlist
    newest = append(server, "cam", frags[10:11])[0]
    seq3, numbers3 = state(fetch())
    assert seq3 == 3 and numbers3[-1] == newest.number


def test_live_replay_releases_fragments_at_playback_speed(
    server: ServerThread, monkeypatch: pytest.MonkeyPatch
) -> None:
    t0, frags, stored = record(server, count=10)
    now = clock.now_ms()
    url = hls_url(
        server,
        "cam",
        PlaybackMode="LIVE_REPLAY",
        MaxMediaPlaylistFragmentResults=3,
        HLSFragmentSelector=on_demand(t0, t0 + 9_000),
    )
    fetch = _live_media(url)
    first = fetch()
    numbers = [int(n) for n in re.findall(r"FragmentNumber=(\d+)", first)]
    assert numbers == [s.number for s in stored[:3]] and "#EXT-X-ENDLIST" not in first
    monkeypatch.setattr(clock, "now_ms", lambda: now + 2_500)
    later = fetch()
    numbers = [int(n) for n in re.findall(r"FragmentNumber=(\d+)", later)]
    assert numbers == [s.number for s in stored[2:5]]
    assert "#EXT-X-MEDIA-SEQUENCE:2" in later
    monkeypatch.setattr(clock, "now_ms", lambda: now + 60_000)
    done = fetch()
    assert [int(n) for n in re.findall(r"FragmentNumber=(\d+)", done)] == [
        s.number for s in stored[7:10]
    ]
    assert done.rstrip().endswith("#EXT-X-ENDLIST")


def test_sessions_survive_restarts_and_cursor_eviction(
    make_server: Callable[..., ServerThread], monkeypatch: pytest.MonkeyPatch
) -> None:
    server = make_server(playback_live_sessions=1)
    t0, _, stored = record(server, count=10)
    now = clock.now_ms()
    monkeypatch.setattr(clock, "now_ms", lambda: now)
    selector = on_demand(t0, t0 + 60_000)
    urls = [
        hls_url(
            server,
            "cam",
            PlaybackMode="LIVE_REPLAY",
            MaxMediaPlaylistFragmentResults=n,
            HLSFragmentSelector=selector,
        )
        for n in (2, 3)
    ]
    fetchers = [_live_media(u) for u in urls]
    monkeypatch.setattr(clock, "now_ms", lambda: now + 4_000)
    expected = [f() for f in fetchers]
    # Released so far: up to 4 s past the newest fragment first listed (the 2nd or the 3rd).
    assert all("#EXT-X-MEDIA-SEQUENCE:4\n" in e for e in expected)
    # Only one cursor is kept: every fetch evicts the other session's, which is rebuilt.
    for _ in range(2):
        assert [f() for f in fetchers] == expected
    # Session tokens and playlists outlive a restart (the signing key is in the data dir).
    server.restart()
    assert [f() for f in fetchers] == expected
    numbers = [[int(n) for n in re.findall(r"FragmentNumber=(\d+)", e)] for e in expected]
    assert numbers == [[s.number for s in stored[4:6]], [s.number for s in stored[4:7]]]
