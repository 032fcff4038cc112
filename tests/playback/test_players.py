"""Real players: hls.js and dash.js (npm, lockfile) in headless Chromium play ON_DEMAND and LIVE
sessions from a customer page on another origin than openkvs. Playback must advance, the video
must have its size, and the players must report no error event at all."""

from __future__ import annotations

import json
import threading
import time
from typing import Any

import pytest

from openkvs import clock

from ..support import ServerThread
from .media import GeneratedFragment, append, recorded
from .support import (
    CustomerPage,
    create_stream,
    dash_url,
    hls_url,
    on_demand,
    player_result,
    start_player,
)

pytestmark = [pytest.mark.browser, pytest.mark.slow]


def check_played(result: dict[str, Any], *, min_advance: float, live: bool) -> None:
    samples = result["samples"]
    assert "fatal" not in result, result.get("fatal")
    assert samples, result
    last = samples[-1]
    details = {
        "errors": last["errors"],
        "events": last["events"][-12:],
        "console": result["console"][-12:],
        "failed": result["failedRequests"][-12:],
        "pageErrors": result["pageErrors"],
    }
    assert last["errors"] == [], json.dumps(details)[:3000]
    problems = {"pageErrors": result["pageErrors"], "failedRequests": result["failedRequests"]}
    assert problems == {"pageErrors": [], "failedRequests": []}, json.dumps(problems)[:3000]
    assert (last["videoWidth"], last["videoHeight"]) == (640, 360), details
    playing = [s["currentTime"] for s in samples if s["currentTime"] > 0]
    assert playing, details
    assert max(playing) - min(playing) >= min_advance, (playing, details)
    assert last["decodedFrames"] > 30 * min_advance, details
    assert all(b >= a for a, b in zip(playing, playing[1:], strict=False)), playing
    kinds = {e["kind"] for e in last["events"]}
    assert "playing" in kinds, details
    if not live:
        assert last["buffered"] and last["buffered"][-1][1] >= 11.5, details


def record_on_demand(server: ServerThread, bframes: int = 2, audio_codec: str = "aac") -> int:
    create_stream(server, "cam")
    t0 = clock.now_ms() - 120_000
    append(server, "cam", recorded(12, t0, bframes=bframes, audio_codec=audio_codec))
    return t0


# hls.js places MPEG-TS video by PTS from the first PTS of the segment, so reordered (B-frame)
# video would start one frame late and hls.js would report the hole; fMP4 carries negative
# composition offsets and has no such start. TS is played without B-frames (as from WebRTC).
@pytest.mark.parametrize(("container", "bframes"), [("FRAGMENTED_MP4", 2), ("MPEG_TS", 0)])
def test_hls_js_plays_on_demand(
    server: ServerThread, customer_page: CustomerPage, container: str, bframes: int
) -> None:
    t0 = record_on_demand(server, bframes)
    url = hls_url(
        server,
        "cam",
        PlaybackMode="ON_DEMAND",
        ContainerFormat=container,
        HLSFragmentSelector=on_demand(t0, t0 + 60_000),
    )
    result = player_result(start_player(customer_page.url("hls", url), 8))
    check_played(result, min_advance=5, live=False)
    assert any(e["detail"] == "vod" for e in result["samples"][-1]["events"])


def test_dash_js_plays_on_demand(server: ServerThread, customer_page: CustomerPage) -> None:
    t0 = record_on_demand(server)
    url = dash_url(
        server, "cam", PlaybackMode="ON_DEMAND", DASHFragmentSelector=on_demand(t0, t0 + 60_000)
    )
    result = player_result(start_player(customer_page.url("dash", url), 8))
    check_played(result, min_advance=5, live=False)


@pytest.mark.parametrize("player", ["hls", "dash"])
def test_players_play_opus_on_demand(
    server: ServerThread, customer_page: CustomerPage, player: str
) -> None:
    """Opus audio (stored as received, ``storage_audio = "opus"``) in fMP4: hls.js and dash.js
    in Chromium take the ``opus`` codec and play without an error."""
    t0 = record_on_demand(server, audio_codec="libopus")
    selector = on_demand(t0, t0 + 60_000)
    if player == "hls":
        url = hls_url(server, "cam", PlaybackMode="ON_DEMAND", HLSFragmentSelector=selector)
    else:
        url = dash_url(server, "cam", PlaybackMode="ON_DEMAND", DASHFragmentSelector=selector)
    result = player_result(start_player(customer_page.url(player, url), 8))
    check_played(result, min_advance=5, live=False)
    # Chromium decoded the Opus track (the count is of encoded bytes: ~10 kB/s here).
    assert result["samples"][-1]["audioDecodedBytes"] > 40_000, result["samples"][-1]


class LiveProducer:
    """Appends each fragment once it has been recorded and uploaded, like a camera would: the
    server timestamp is when its first bytes arrived, it becomes durable a duration later."""

    def __init__(self, server: ServerThread, frags: list[GeneratedFragment]) -> None:
        self.server = server
        self.frags = frags
        self.errors: list[BaseException] = []
        self.appended = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def preroll(self, count: int) -> None:
        append(self.server, "cam", self.frags[:count])
        self.appended = count

    def start(self) -> None:
        self._thread.start()

    def _run(self) -> None:
        try:
            for f in self.frags[self.appended :]:
                due = (f.server_ts_ms + f.duration_ms) / 1000
                while not self._stop.is_set() and time.time() < due:
                    time.sleep(0.02)
                if self._stop.is_set():
                    return
                append(self.server, "cam", [f])
                self.appended += 1
        except BaseException as exc:  # noqa: BLE001 - reported by the test
            self.errors.append(exc)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(10)


def live_stream(server: ServerThread, seconds: int) -> LiveProducer:
    create_stream(server, "cam")
    start = clock.now_ms() - 4_000
    producer = LiveProducer(server, recorded(seconds + 4, start))
    producer.preroll(3)
    return producer


@pytest.mark.parametrize("player", ["hls", "dash"])
def test_players_follow_a_live_session(
    server: ServerThread, customer_page: CustomerPage, player: str
) -> None:
    producer = live_stream(server, 24)
    if player == "hls":
        url = hls_url(server, "cam", PlaybackMode="LIVE")
    else:
        url = dash_url(server, "cam", PlaybackMode="LIVE")
    producer.start()
    try:
        result = player_result(start_player(customer_page.url(player, url), 14), timeout=90)
    finally:
        producer.stop()
    assert producer.errors == []
    check_played(result, min_advance=7, live=True)
    if player == "hls":
        assert any(e["detail"] == "live" for e in result["samples"][-1]["events"])
    else:
        assert any(e["detail"] == "dynamic" for e in result["samples"][-1]["events"])
