"""DASH sessions: the manifest, its init and media segments, checked with ffprobe/ffmpeg."""

from __future__ import annotations

import datetime as dt
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

import pytest

from openkvs import clock

from ..support import ServerThread
from .media import append, recorded
from .support import (
    archived,
    create_stream,
    dash_url,
    ffmpeg_decode_errors,
    ffprobe_json,
    get,
    on_demand,
    packet_times,
    resolve,
)

NS = {"d": "urn:mpeg:dash:schema:mpd:2011", "kvs": "https://kinesisvideo.amazonaws.com/ns/dash"}
KVS = "{https://kinesisvideo.amazonaws.com/ns/dash}"


def manifest(url: str) -> ET.Element:
    r = get(url)
    assert r.status_code == 200, r.text
    assert r.headers["Content-Type"] == "application/dash+xml"
    return ET.fromstring(r.text)


def timeline(mpd: ET.Element, content: str) -> tuple[ET.Element, list[ET.Element]]:
    sets = [a for a in mpd.iterfind(".//d:AdaptationSet", NS) if a.get("contentType") == content]
    (adaptation,) = sets
    template = adaptation.find(".//d:SegmentTemplate", NS)
    assert template is not None
    return template, list(template.iterfind(".//d:S", NS))


def fetch_track(url: str, template: ET.Element, entries: list[ET.Element]) -> bytes:
    init = get(resolve(url, template.get("initialization", "")))
    assert init.status_code == 200 and init.headers["Content-Type"] == "video/mp4"
    out = [init.content]
    for s in entries:
        media = template.get("media", "").replace("$Time$", s.get("t", ""))
        r = get(resolve(url, media))
        assert r.status_code == 200, r.text
        out.append(r.content)
    return b"".join(out)


def test_on_demand_manifest_and_segments(server: ServerThread, tmp_path: Path) -> None:
    create_stream(server, "cam")
    t0 = clock.now_ms() - 120_000
    frags = recorded(6, t0, bframes=2)
    stored = append(server, "cam", frags)
    url = dash_url(
        server,
        "cam",
        PlaybackMode="ON_DEMAND",
        DisplayFragmentNumber="ALWAYS",
        DisplayFragmentTimestamp="ALWAYS",
        DASHFragmentSelector=on_demand(t0, t0 + 60_000),
    )
    assert url.startswith(f"{server.http_endpoint}/dash/v1/getDASHManifest.mpd?SessionToken=")
    mpd = manifest(url)
    assert mpd.get("type") == "static" and mpd.get("mediaPresentationDuration") == "PT6.000S"
    total = 0
    for content, step, count in (("video", 1 / 30, 30 * 6), ("audio", 1024 / 48000, None)):
        template, entries = timeline(mpd, content)
        # The session timeline starts 1 s before the first fragment, which presentationTimeOffset
        # maps to presentation time 0.
        assert template.get("presentationTimeOffset") == "1000"
        assert [int(s.get("t", "-1")) for s in entries] == [1000 + i * 1000 for i in range(6)]
        assert [int(s.get("d", "0")) for s in entries] == [1000] * 6
        assert [int(s.get(KVS + "fn", "0")) for s in entries] == [s.number for s in stored]
        assert [int(s.get(KVS + "ts", "0")) for s in entries] == [f.producer_ts_ms for f in frags]
        path = tmp_path / f"{content}.mp4"
        path.write_bytes(fetch_track(url, template, entries))
        assert ffmpeg_decode_errors(path) == ""
        times = packet_times(path, content[0])
        if count is not None:
            assert len(times) == count
        else:
            assert len(times) == sum(f.audio_frames for f in frags)
        starts = [t for t, _ in times]
        gaps = [b - a for a, b in zip(starts, starts[1:], strict=False)]
        assert max(abs(g - step) for g in gaps) < 0.001
        total += len(times)
    video = next(mpd.iterfind(".//d:Representation", NS))
    assert (video.get("width"), video.get("height")) == ("640", "360")
    assert (video.get("codecs") or "").startswith("avc1.")
    # FFmpeg's own DASH client plays the manifest.
    assert ffmpeg_decode_errors(url) == ""
    probed = ffprobe_json(url, "-show_streams")
    assert sorted(s["codec_name"] for s in probed["streams"]) == ["aac", "h264"]


def test_attributes_absent_by_default_and_media_by_fragment_number(server: ServerThread) -> None:
    create_stream(server, "cam")
    t0 = clock.now_ms() - 120_000
    stored = append(server, "cam", recorded(3, t0))
    url = dash_url(
        server, "cam", PlaybackMode="ON_DEMAND", DASHFragmentSelector=on_demand(t0, t0 + 9000)
    )
    mpd = manifest(url)
    template, entries = timeline(mpd, "video")
    assert all(KVS + "fn" not in s.attrib and KVS + "ts" not in s.attrib for s in entries)
    by_time = get(resolve(url, template.get("media", "").replace("$Time$", "2000")))
    by_number = get(
        resolve(
            url,
            template.get("media", "").replace("Time=$Time$", f"FragmentNumber={stored[1].number}"),
        )
    )
    assert by_time.status_code == by_number.status_code == 200
    assert by_time.content == by_number.content
    missing = get(resolve(url, template.get("media", "").replace("$Time$", "1500")))
    assert missing.status_code == 404
    assert missing.headers["x-amzn-ErrorType"] == "ResourceNotFoundException"


def test_live_manifest_is_dynamic_and_slides(server: ServerThread) -> None:
    create_stream(server, "cam")
    now = clock.now_ms()
    frags = recorded(8, now - 6_000)
    append(server, "cam", frags[:6])
    url = dash_url(server, "cam", MaxManifestFragmentResults=3)
    mpd = manifest(url)
    assert mpd.get("type") == "dynamic" and mpd.get("minimumUpdatePeriod") == "PT1S"
    ast = dt.datetime.fromisoformat(mpd.get("availabilityStartTime", "").replace("Z", "+00:00"))
    # Media time 1000 is the server timestamp of the first fragment of the session.
    assert round(ast.timestamp() * 1000) == frags[3].server_ts_ms - 1000
    _, entries = timeline(mpd, "video")
    assert len(entries) == 3 and entries[0].get("t") == "1000"
    append(server, "cam", frags[6:8])
    _, entries = timeline(manifest(url), "video")
    starts = [int(s.get("t", "0")) for s in entries]
    assert starts == [f.server_ts_ms - frags[3].server_ts_ms + 1000 for f in frags[5:8]]
    assert mpd.find("d:UTCTiming", NS) is not None


def test_audio_only_stream_is_unsupported_for_dash(server: ServerThread) -> None:
    create_stream(server, "cam")
    t0 = clock.now_ms() - 60_000
    append(server, "cam", recorded(2, t0, video=False))
    client: Any = archived(server)
    with pytest.raises(client.exceptions.UnsupportedStreamMediaTypeException):
        client.get_dash_streaming_session_url(
            StreamName="cam",
            PlaybackMode="ON_DEMAND",
            DASHFragmentSelector=on_demand(t0, t0 + 9000),
        )
