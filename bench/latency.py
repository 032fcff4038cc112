"""Latency: JoinStorageSession → SDP_OFFER at the master; fragment end → listed by ListFragments;
a frame's capture time → its fragment in the LIVE HLS playlist (1 s fragments); a part's first
frame's capture time → the LL-HLS part listed and fetched by a client chaining blocking reloads
(WebRTC storage session, in-process and in a worker process); glass to glass: a frame's capture
time → that frame at the playhead of hls.js in headless Chromium, with and without its
low-latency mode.

The server is a separate process; the masters, pollers and the camera process are its clients.
"""

from __future__ import annotations

import asyncio
import gc
import json
import math
import re
import statistics
import subprocess
import threading
import time
from collections.abc import Callable
from typing import Any

import requests
from tests.signaling.kvs import Client

from . import common
from .common import ROOT, log, read_event, summary_ms
from .media import FPS, LOOP_SECONDS


async def _join_to_offer(srv: Any, arns: list[str], rounds: int) -> list[float]:
    """Masters connected to every channel; sequential joins, each timed until its offer lands."""
    clients = [await Client.connect(srv, arn) for arn in arns]
    kv = srv.client("kinesisvideo")
    endpoint = kv.get_signaling_channel_endpoint(
        ChannelARN=arns[0],
        SingleMasterChannelEndpointConfiguration={"Protocols": ["WEBRTC"], "Role": "MASTER"},
    )["ResourceEndpointList"][0]["ResourceEndpoint"]
    storage = srv.client("kinesis-video-webrtc-storage", endpoint=endpoint)
    storage.join_storage_session(channelArn=arns[0])  # warm the connection pool
    await clients[0].recv(10)
    samples: list[float] = []
    # The client's own garbage collector must not be timed: its full passes (boto3 holds large
    # models) take tens of milliseconds. It is off while the joins are timed.
    gc.collect()
    gc.disable()
    try:
        for _ in range(rounds):
            for arn, client in zip(arns, clients, strict=True):
                t0 = time.perf_counter()
                await asyncio.to_thread(storage.join_storage_session, channelArn=arn)
                while True:
                    msg = await client.recv(10)
                    if msg.get("messageType") == "SDP_OFFER":
                        break
                samples.append(time.perf_counter() - t0)
                # Drain the trickled candidates so the next wait sees only the next offer.
                while True:
                    try:
                        await client.recv(0.05)
                    except TimeoutError:
                        break
    finally:
        gc.enable()
        for c in clients:
            await c.close()
    return samples


def join_latency(quick: bool) -> dict[str, Any]:
    channels, rounds = (5, 2) if quick else (10, 10)
    with common.tmpdir("joinlat-") as tmp, common.server(tmp / "data") as srv:
        arns = common.provision(srv, channels, prefix="join")
        samples = asyncio.run(_join_to_offer(srv, arns, rounds))
    return summary_ms(samples)


_SEGMENT_LINE = re.compile(r"^get\w+\.(?:mp4|ts)\?FragmentNumber=(\d+)", re.M)


def _live_url(am: Any, name: str, give_up: Callable[[], bool], **params: Any) -> str | None:
    """A LIVE HLS session URL, once the stream's first fragment is stored (ResourceNotFound
    before); None if ``give_up()`` first."""
    while True:
        try:
            return str(
                am.get_hls_streaming_session_url(
                    StreamName=name, PlaybackMode="LIVE", Expires=600, **params
                )["HLSStreamingSessionURL"]
            )
        except am.exceptions.ResourceNotFoundException:
            if give_up():
                return None
            time.sleep(0.05)


def _media_url(http: requests.Session, url: str, verify: Any = True) -> str:
    """The (first) media playlist's URL named by a master playlist."""
    master = http.get(url, timeout=10, verify=verify).text
    media_uri = next(line for line in master.splitlines() if line and not line.startswith("#"))
    return url.rsplit("/", 1)[0] + "/" + media_uri


def _poll_list(am: Any, name: str, seen: dict[int, float], stop: threading.Event) -> int:
    polls = 0
    while not stop.is_set():
        now = time.time()
        resp = am.list_fragments(
            StreamName=name,
            MaxResults=1000,
            FragmentSelector={
                "FragmentSelectorType": "SERVER_TIMESTAMP",
                "TimestampRange": {"StartTimestamp": now - 120, "EndTimestamp": now + 60},
            },
        )
        t = time.time()
        polls += 1
        for f in resp["Fragments"]:
            seen.setdefault(int(f["FragmentNumber"]), t)
        time.sleep(0.005)
    return polls


def _poll_hls(srv: Any, name: str, seen: dict[int, float], stop: threading.Event) -> int:
    url = _live_url(srv.client("kinesis-video-archived-media"), name, stop.is_set)
    if url is None:
        return 0
    http = requests.Session()
    media_url = _media_url(http, url, srv.ca)
    polls = 0
    while not stop.is_set():
        body = http.get(media_url, timeout=10, verify=srv.ca).text
        t = time.time()
        polls += 1
        for m in _SEGMENT_LINE.finditer(body):  # not the LL-HLS parts' URIs
            seen.setdefault(int(m.group(1)), t)
        time.sleep(0.02)
    return polls


Follower = Callable[[str, threading.Event], int]


def _follow_one_camera(
    srv: Any, prefix: str, send_seconds: float, followers: dict[str, Follower]
) -> tuple[str, dict[str, Any], dict[str, int], list[dict[str, Any]]]:
    """One camera recorded by a storage session; each follower runs in its own thread from the
    camera's join until it has sent everything (``follower(stream name, stop)`` returns its
    poll count). Returns the stream name, the camera's ``sent`` event, the poll counts and the
    stored fragments' rows."""
    arns = common.provision(srv, 1, prefix=prefix)
    name = common.stream_names(arns)[0]
    cam = common.start_cameras(srv, arns, send_seconds=send_seconds, linger=2.5)
    assert cam.stdout is not None
    stop = threading.Event()
    polls: dict[str, int] = {}

    def follow(key: str, follower: Follower) -> None:
        polls[key] = follower(name, stop)

    threads = [threading.Thread(target=follow, args=item) for item in followers.items()]
    try:
        read_event(cam.stdout, "joined")
        for th in threads:
            th.start()
        sent = read_event(cam.stdout, "sent")["cameras"][0]
        stop.set()
        for th in threads:
            th.join(30)
        read_event(cam.stdout, "done")
        cam.wait(30)
    finally:
        stop.set()
        if cam.poll() is None:
            cam.kill()
            cam.wait()
    rows = common.fragment_rows(srv.data_dir, [name])[name]
    if not rows:
        raise RuntimeError(f"the {prefix} camera stored no fragments")
    return name, sent, polls, rows


def anchor_offset_ms(rows: list[dict[str, Any]], first_frame_wall_s: float) -> float:
    """The server's media clock is anchored at the first frame's arrival; the camera knows when
    it sent (captured) that frame: capture time = media time − this offset."""
    return float(rows[0]["producer_ts"] - first_frame_wall_s * 1000)


def live_latency(quick: bool) -> dict[str, Any]:
    """One camera, 1 s fragments; ListFragments and the LIVE HLS playlist polled side by side."""
    send_seconds = 8.0 if quick else 20.0
    listed: dict[int, float] = {}
    in_hls: dict[int, float] = {}
    with (
        common.tmpdir("livelat-") as tmp,
        common.server(tmp / "data", storage_fragment_duration="1.0") as srv,
    ):
        am = srv.client("kinesis-video-archived-media")
        _, sent, polls, rows = _follow_one_camera(
            srv,
            "live",
            send_seconds,
            {
                "list": lambda name, stop: _poll_list(am, name, listed, stop),
                "hls": lambda name, stop: _poll_hls(srv, name, in_hls, stop),
            },
        )
    offset_ms = anchor_offset_ms(rows, sent["first_video_wall"])
    list_lat: list[float] = []
    frame_lat: list[float] = []
    newest_lat: list[float] = []
    oldest_lat: list[float] = []
    for r in rows[:-1]:  # the last one is flushed when the session ends
        end_ms = r["producer_ts"] + r["duration_ms"]
        if r["number"] in listed:
            list_lat.append(listed[r["number"]] - end_ms / 1000)
        if r["number"] in in_hls:
            t = in_hls[r["number"]]
            n_frames = max(1, round(r["duration_ms"] * FPS / 1000))
            for k in range(n_frames):
                capture_ms = r["producer_ts"] + k * 1000 / FPS - offset_ms
                frame_lat.append(t - capture_ms / 1000)
            oldest_lat.append(t - (r["producer_ts"] - offset_ms) / 1000)
            newest_lat.append(t - (end_ms - 1000 / FPS - offset_ms) / 1000)
    return {
        "fragment_duration_s": 1.0,
        "anchor_offset_ms": round(offset_ms, 1),
        "fragments": len(rows),
        "polls": polls,
        "fragment_end_to_listed": summary_ms(list_lat),
        "capture_to_hls_playlist_per_frame": summary_ms(frame_lat),
        "capture_to_hls_newest_frame": summary_ms(newest_lat),
        "capture_to_hls_oldest_frame": summary_ms(oldest_lat),
    }


_PART = re.compile(
    r'#EXT-X-PART:DURATION=([0-9.]+),URI="([^"]*FragmentNumber=(\d+)&PartNumber=(\d+)[^"]*)"'
)
_SEGMENT = re.compile(r"^getMP4MediaFragment\.mp4\?FragmentNumber=(\d+)", re.M)


def _follow_parts(
    srv: Any,
    name: str,
    seen: dict[tuple[int, int], tuple[float, float, float]],
    stop: threading.Event,
) -> int:
    """Chain LL-HLS blocking reloads of the LIVE video playlist; fetch each part as soon as it is
    listed. ``seen``: (fragment, part) → (listed, fetched, duration)."""
    am = srv.client("kinesis-video-archived-media")
    url = _live_url(am, name, stop.is_set, ContainerFormat="FRAGMENTED_MP4")
    if url is None:
        return 0
    http = requests.Session()
    base = url.rsplit("/", 1)[0] + "/"
    media_url = _media_url(http, url, srv.ca)
    polls = 0
    query = ""
    while not stop.is_set():
        body = http.get(media_url + query, timeout=10, verify=srv.ca).text
        t = time.time()
        polls += 1
        stored = {int(n) for n in _SEGMENT.findall(body)}
        parts = [
            (int(m.group(3)), int(m.group(4)), float(m.group(1)), m.group(2))
            for m in _PART.finditer(body)
        ]
        for frag, index, duration, uri in parts:
            if (frag, index) not in seen:
                http.get(base + uri, timeout=10, verify=srv.ca).raise_for_status()
                seen[(frag, index)] = (t, time.time(), duration)
        if not parts:
            time.sleep(0.02)
            query = ""
            continue
        seq = int(re.search(r"#EXT-X-MEDIA-SEQUENCE:(\d+)", body).group(1))  # type: ignore[union-attr]
        pending = [p for p in parts if p[0] not in stored]
        part = pending[-1][1] + 1 if pending else 0
        query = f"&_HLS_msn={seq + len(stored)}&_HLS_part={part}"
    return polls


def ll_parts_latency(quick: bool, workers: int = 0) -> dict[str, Any]:
    """One camera (1 s fragments) recorded by a WebRTC storage session; a client follows the
    LIVE playlist's LL-HLS parts. A part's latency is from its first frame's capture to the
    part listed (the blocking reload's answer) and to its media fetched (playable)."""
    send_seconds = 8.0 if quick else 20.0
    seen: dict[tuple[int, int], tuple[float, float, float]] = {}
    with (
        common.tmpdir("llparts-") as tmp,
        common.server(
            tmp / "data", storage_fragment_duration="1.0", webrtc_workers=str(workers)
        ) as srv,
    ):
        _, sent, polls, rows = _follow_one_camera(
            srv,
            "llparts",
            send_seconds,
            {"hls": lambda name, stop: _follow_parts(srv, name, seen, stop)},
        )
    offset_ms = anchor_offset_ms(rows, sent["first_video_wall"])
    # The last fragment's last part waits for the session's end (no next frame cuts it).
    starts = {r["number"]: r["producer_ts"] for r in rows[:-1]}
    listed: list[float] = []
    fetched: list[float] = []
    for (frag, index), (t_listed, t_fetched, _) in seen.items():
        if frag not in starts:
            continue  # withdrawn, or the last one
        into_ms = sum(seen[(frag, i)][2] for i in range(index) if (frag, i) in seen) * 1000
        capture_s = (starts[frag] + into_ms - offset_ms) / 1000
        listed.append(t_listed - capture_s)
        fetched.append(t_fetched - capture_s)
    return {
        "webrtc_workers": workers,
        "fragment_duration_s": 1.0,
        "parts": len(listed),
        "polls": polls,
        "capture_to_part_listed": summary_ms(listed),
        "capture_to_part_fetched": summary_ms(fetched),
    }


# page name → (hls.js lowLatencyMode, maxLiveSyncPlaybackRate or None for hls.js's default, 1:
# a player that starts behind its target latency stays there).
GLASS_PLAYERS: dict[str, tuple[bool, float | None]] = {
    "ll": (True, None),
    "ll_catch_up": (True, 1.5),
    "plain": (False, None),
}


def glass_player(
    page: dict[str, Any], offset_ms: float, warmup_s: float, measure_s: float
) -> dict[str, Any]:
    """One page's samples → its figures. Latency = Date.now() − (the playhead's program date time
    − the anchor offset): the program date time is the server's media clock, anchored at the first
    frame's arrival, so the offset takes it back to the camera's capture clock. Samples count
    from ``warmup_s`` after the first 'playing' event for ``measure_s`` (less if the page was
    closed first: ``window_s`` says)."""
    first = page.get("firstPlaying")
    if first is None:
        return {"error": "never played", "errors": page.get("errors", [])[:5]}
    start = first + warmup_s * 1000
    end = min(start + measure_s * 1000, max((s["now"] for s in page["samples"]), default=0))
    window = [s for s in page["samples"] if start <= s["now"] <= end]
    lat = [(s["now"] - s["pdt"] + offset_ms) / 1000 for s in window if s["pdt"] is not None]
    hls_lat = [s["hlsLatency"] for s in window if s["hlsLatency"] is not None]
    target = [s["targetLatency"] for s in window if s.get("targetLatency") is not None]
    ahead = [s["buffered"] for s in window]
    stalls = [e for e in page["events"] if e["kind"] == "waiting" and start <= e["now"] <= end]
    return {
        "first_frame_s": round((first - page["opened"]) / 1000, 2),
        "window_s": round(max(0.0, end - start) / 1000, 1),
        "capture_to_playhead": summary_ms(lat),
        "hls_js_latency": summary_ms(hls_lat),
        "hls_js_target_latency_ms": round(statistics.median(target) * 1000) if target else None,
        "buffer_ahead": summary_ms(ahead),
        "stalls": len(stalls),
        "samples_without_date": sum(1 for s in window if s["pdt"] is None),
        "errors": sorted({e.get("details") or e.get("source", "?") for e in page["errors"]}),
    }


def glass_latency(
    quick: bool, warmup_s: float = 3.0, measure_s: float | None = None
) -> dict[str, Any]:
    """One camera (1 s fragments) recorded by a WebRTC storage session; headless Chromium plays
    its LIVE HLS (fMP4) with hls.js, lowLatencyMode on and off, in two pages side by side."""
    from tests.playback.support import CustomerPage, browser_missing

    reason = browser_missing()
    if reason is not None:
        raise RuntimeError(reason)
    if measure_s is None:
        measure_s = 6.0 if quick else 20.0
    # Start-up (first fragment, first parts, Chromium, the players' first frames) takes a few
    # seconds; the camera sends whole loops, past the end of the players' window.
    # The camera is stopped once the players are done.
    send_seconds = LOOP_SECONDS * math.ceil((warmup_s + measure_s + 40) / LOOP_SECONDS)
    site = CustomerPage()
    try:
        with (
            common.tmpdir("glass-") as tmp,
            common.server(tmp / "data", storage_fragment_duration="1.0") as srv,
        ):
            arns = common.provision(srv, 1, prefix="glass")
            name = common.stream_names(arns)[0]
            cam = common.start_cameras(srv, arns, send_seconds=send_seconds, linger=0.5)
            assert cam.stdout is not None
            player: subprocess.Popen[str] | None = None
            try:
                read_event(cam.stdout, "joined")
                first_wall = read_event(cam.stdout, "first_frame")["walls"][0]
                am = srv.client(
                    "kinesis-video-archived-media", endpoint=f"http://127.0.0.1:{srv.http_port}"
                )
                stop_at = time.monotonic() + 20
                # On the plain HTTP port (the player needs no CA), with program date times on
                # the producer timestamps.
                urls: dict[str, str] = {}
                for k in GLASS_PLAYERS:
                    url = _live_url(
                        am,
                        name,
                        lambda: time.monotonic() > stop_at,
                        ContainerFormat="FRAGMENTED_MP4",
                        DisplayFragmentTimestamp="ALWAYS",
                        HLSFragmentSelector={"FragmentSelectorType": "PRODUCER_TIMESTAMP"},
                    )
                    if url is None:
                        raise RuntimeError("the glass-to-glass camera stored no first fragment")
                    urls[k] = url
                # Parts start with the fragment after the first LIVE playlist request; hls.js
                # picks its distance to the live edge at its first load, so it starts once the
                # playlist lists parts.
                http = requests.Session()
                media_url = _media_url(http, urls["ll"])
                while "#EXT-X-PART:" not in http.get(media_url, timeout=10).text:
                    if time.monotonic() > stop_at:
                        raise RuntimeError("the LIVE playlist listed no LL-HLS part")
                    time.sleep(0.05)
                cfg = {
                    "pages": {
                        k: site.url("hls", urls[k], ll=ll) + (f"&rate={rate}" if rate else "")
                        for k, (ll, rate) in GLASS_PLAYERS.items()
                    },
                    "warmup": warmup_s,
                    "measure": measure_s,
                    "deadline": warmup_s + measure_s + 30,
                }
                player = subprocess.Popen(
                    ["node", str(ROOT / "bench" / "glass.js"), json.dumps(cfg)],
                    cwd=ROOT,
                    stdout=subprocess.PIPE,
                    stderr=subprocess.PIPE,
                    text=True,
                )
                out, err = player.communicate(timeout=cfg["deadline"] + 60)
                if player.returncode != 0:
                    raise RuntimeError(f"glass.js failed: {err[-2000:]}")
                result = json.loads(out)
                if "fatal" in result:
                    raise RuntimeError(f"glass.js: {result['fatal']}")
                ended = cam.poll() is not None
            finally:
                if player is not None and player.poll() is None:
                    player.kill()
                    player.communicate()
                if cam.poll() is None:
                    cam.kill()
                    cam.wait()
                cam.stdout.close()
            if ended:
                raise RuntimeError("the camera stopped before the players were done")
            rows = common.fragment_rows(srv.data_dir, [name])[name]
    finally:
        site.close()
    if not rows:
        raise RuntimeError("the glass-to-glass camera stored no fragments")
    offset_ms = anchor_offset_ms(rows, first_wall)
    return {
        "fragment_duration_s": 1.0,
        "anchor_offset_ms": round(offset_ms, 1),
        "warmup_s": warmup_s,
        "measure_s": measure_s,
        "sample_interval_ms": 100,
        "page_errors": result["pageErrors"][:5],
        **{
            k: glass_player(result["pages"][k], offset_ms, warmup_s, measure_s)
            for k in GLASS_PLAYERS
        },
    }


def run(quick: bool) -> dict[str, Any]:
    log("latency: JoinStorageSession -> SDP_OFFER")
    join = join_latency(quick)
    log(f"latency: join->offer p50 {join['p50_ms']} ms p99 {join['p99_ms']} ms; live next")
    live = live_latency(quick)
    log("latency: LL-HLS parts of a WebRTC recording (in-process, then one worker process)")
    parts = [ll_parts_latency(quick, workers) for workers in (0, 1)]
    log("latency: glass to glass in headless Chromium (hls.js, low-latency mode on and off)")
    try:
        glass = glass_latency(quick)
    except Exception as exc:  # noqa: BLE001 - no browser must not hide the other figures
        glass = {"error": f"{type(exc).__name__}: {exc}"}
    return {"join_to_offer": join, **live, "ll_hls_parts": parts, "glass_to_glass": glass}
