"""End to end in a real browser: a camera app written the way KVS customers write it (the official
KVS WebRTC JS SDK and AWS SDK for JavaScript v3 clients, bundled with esbuild), changed only in
endpoint and keys, runs in headless Chromium on another origin than openkvs, records into
openkvs through a WebRTC storage session, and the recording plays back.

One story, in one browser (each participant in its own context, with Chromium's fake camera and
microphone):

1. master A: DescribeSignalingChannel, DescribeMediaStorageConfiguration,
   GetSignalingChannelEndpoint (WSS, HTTPS, WEBRTC), GetIceServerConfig, ConnectAsMaster,
   JoinStorageSession, answers the server's offer with H.264 + Opus and streams for 22 s;
2. a viewer joins with JoinStorageSessionAsViewer, plays the live video and talks into its
   microphone, which the master hears;
3. master B connects to the same channel. Its first offer is dropped on the way (fault
   injection in the app), so it joins again after 6 s like the JS sample; B takes over and records.

Then, from Python: ListFragments shows >= 20 s of contiguous fragments, FFmpeg decodes them,
GetImages shows the camera's picture, and hls.js plays an HLS session in a second Chromium page.
"""

from __future__ import annotations

import base64
import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from ..playback.support import (
    CustomerPage,
    ffmpeg_decode_errors,
    ffprobe_json,
    gray,
    player_result,
    start_player,
)
from ..support import ServerThread, need_tool
from ..webrtc.harness import storage_channel, wait_for
from .browser import AppSite, api_config, browser_ready, build_app, drive

pytestmark = [pytest.mark.browser, pytest.mark.slow]

MASTER_SECONDS = 22
VIEWER_AFTER = 3
VIEWER_SECONDS = 6
TAKEOVER_SECONDS = 6
CONTIGUOUS_GAP_MS = 100  # fragments closer than this count as contiguous


def step_names(page: dict[str, Any]) -> list[str]:
    return [s["name"] for s in page["steps"]]


def step(page: dict[str, Any], name: str) -> dict[str, Any]:
    return next(s for s in page["steps"] if s["name"] == name)


def sample_at(page: dict[str, Any], t: int, *, after: bool) -> dict[str, Any]:
    """The last stats sample at or before ``t``, or the first one at or after it."""
    samples = page["samples"]
    if after:
        return next(s for s in samples if s["t"] >= t)
    return [s for s in samples if s["t"] <= t][-1]


def audio_energy(sample: dict[str, Any]) -> float:
    return float(sample.get("in_audio", {}).get("totalAudioEnergy") or 0.0)


def list_fragments(server: ServerThread, stream: str, start: float) -> list[dict[str, Any]]:
    kv = server.client("kinesisvideo")
    endpoint = kv.get_data_endpoint(StreamName=stream, APIName="LIST_FRAGMENTS")["DataEndpoint"]
    am = server.client("kinesis-video-archived-media", endpoint=endpoint)
    frags: list[dict[str, Any]] = []
    kwargs: dict[str, Any] = {
        "StreamName": stream,
        "FragmentSelector": {
            "FragmentSelectorType": "SERVER_TIMESTAMP",
            "TimestampRange": {"StartTimestamp": start, "EndTimestamp": time.time() + 5},
        },
    }
    while True:
        page = am.list_fragments(**kwargs)
        frags += page["Fragments"]
        if not page.get("NextToken"):
            break
        kwargs = {"StreamName": stream, "NextToken": page["NextToken"]}
    frags.sort(key=lambda f: f["ProducerTimestamp"])
    return frags


def start_ms(f: dict[str, Any]) -> float:
    return float(f["ProducerTimestamp"].timestamp() * 1000)


def runs(frags: list[dict[str, Any]]) -> list[list[dict[str, Any]]]:
    """Split fragments (sorted by producer time) into contiguous runs."""
    out: list[list[dict[str, Any]]] = []
    for f in frags:
        if out:
            prev = out[-1][-1]
            gap = start_ms(f) - (start_ms(prev) + prev["FragmentLengthInMilliseconds"])
            if abs(gap) <= CONTIGUOUS_GAP_MS:
                out[-1].append(f)
                continue
        out.append([f])
    return out


def run_ms(run: list[dict[str, Any]]) -> float:
    return start_ms(run[-1]) + run[-1]["FragmentLengthInMilliseconds"] - start_ms(run[0])


def fetch_fragments(
    server: ServerThread, stream: str, frags: list[dict[str, Any]], directory: Path
) -> list[Path]:
    """Each fragment as its own MKV file, read with GetMediaForFragmentList (which, like AWS,
    returns one MKV segment per fragment)."""
    am = server.client("kinesis-video-archived-media")
    directory.mkdir(parents=True, exist_ok=True)
    paths = []
    for f in frags:
        payload = am.get_media_for_fragment_list(
            StreamName=stream, Fragments=[f["FragmentNumber"]]
        )["Payload"]
        path = directory / f"{f['FragmentNumber']}.mkv"
        path.write_bytes(payload.read())
        paths.append(path)
    return paths


def decode_all(paths: list[Path]) -> tuple[int, list[int]]:
    """ffprobe every fragment (H.264 + AAC) and decode it with FFmpeg without a single error;
    return the number of video frames and each fragment's number of audio frames."""
    video_frames = 0
    audio_frames: list[int] = []
    for path in paths:
        streams = ffprobe_json(path, "-count_frames", "-show_streams")["streams"]
        video = next(s for s in streams if s["codec_type"] == "video")
        audio = next(s for s in streams if s["codec_type"] == "audio")
        assert video["codec_name"] == "h264" and video["width"] > 0, (path, video)
        assert audio["codec_name"] == "aac" and int(audio["sample_rate"]) == 48000, (path, audio)
        video_frames += int(video["nb_read_frames"])
        audio_frames.append(int(audio.get("nb_read_frames", 0)))
        # The output keeps the input's millisecond time base: a live camera's frames are not
        # evenly spaced (Chromium sends a late frame and the next one 16 ms later), which
        # FFmpeg's default 1/frame-rate output time base would fold onto one tick.
        assert ffmpeg_decode_errors(path, output=("-enc_time_base", "-1")) == "", path
    # Only a session's last fragment may lack audio: a hang-up just after a keyframe leaves a
    # few video frames whose audio was still on its way.
    assert all(n > 0 for n in audio_frames[:-1]), audio_frames
    return video_frames, audio_frames


def test_browser_master_viewer_takeover_and_playback(
    make_server: Callable[..., ServerThread], tmp_path: Path
) -> None:
    browser_ready()
    for tool in ("ffprobe", "ffmpeg"):
        if need_tool(tool) is None:
            pytest.skip(f"{tool} is not installed")
    server = make_server()
    channel_arn, _ = storage_channel(server, "browser-cam")
    stream = "browser-cam-stream"
    site = AppSite(build_app(tmp_path / "site"))
    began = time.time() - 1
    try:
        result = drive(
            {
                "app": site.url,
                "api": api_config(server, "browser-cam"),
                "viewerId": "viewer-e2e-1",
                "masterSeconds": MASTER_SECONDS,
                "viewerAfter": VIEWER_AFTER,
                "viewerSeconds": VIEWER_SECONDS,
                "takeoverSeconds": TAKEOVER_SECONDS,
            }
        )
    finally:
        site.close()
    assert "fatal" not in result, result.get("fatal")
    assert result["pageErrors"] == [] and result["failedRequests"] == [], result
    pages, marks = result["pages"], result["marks"]
    a, v, b = pages["A"], pages["V"], pages["B"]
    for label, page in pages.items():
        assert page["fatal"] is None and page["errors"] == [], (label, page["errors"])
        assert page["statusResponses"] == [], (label, page["statusResponses"])

    # Let the ended sessions flush their last fragments.
    manager: Any = server.services.sessions
    server.call(wait_for(lambda: not (manager.masters or manager.viewers), 15, 0.2))
    ended = list(manager.ended)

    check_customer_flow(server, a)
    check_viewer(v, a, marks)
    frags = list_fragments(server, stream, began)
    audio_frames = check_recording(server, stream, frags, a, tmp_path)
    check_takeover(server, stream, frags, a, b, marks, ended, tmp_path)
    longest = max(runs(frags), key=run_ms)
    check_images(server, stream, longest)
    # HLS lists every fragment in the audio playlist too, so a last fragment without audio
    # would be an empty audio segment (hls.js: "Found no media"): play up to the last one with.
    last_with_audio = max(i for i, n in enumerate(audio_frames) if n > 0)
    check_hls(server, stream, longest[: last_with_audio + 1])


def check_customer_flow(server: ServerThread, a: dict[str, Any]) -> None:
    assert step_names(a) == [
        "DescribeSignalingChannel",
        "DescribeMediaStorageConfiguration",
        "GetSignalingChannelEndpoint",
        "GetIceServerConfig",
        "getUserMedia",
        "answered",
        "connected",
    ], a["steps"]
    assert step(a, "DescribeMediaStorageConfiguration")["detail"]["ingest"] is True
    endpoints = step(a, "GetSignalingChannelEndpoint")["detail"]
    assert endpoints == {
        "WSS": f"wss://127.0.0.1:{server.port}",
        "HTTPS": f"https://127.0.0.1:{server.port}",
        "WEBRTC": f"https://127.0.0.1:{server.port}",
    }
    # One JoinStorageSession, answered at once, then exactly one offer without a sender.
    (join,) = a["joins"]
    assert join["status"] == 200 and join["ms"] < 2000, join
    (offer,) = a["offers"]
    assert offer["senderClientId"] is None
    assert offer["t"] - join["t"] < 3000
    assert "H264/90000" in offer["sdp"] and "opus/48000" in offer["sdp"]
    answer = offer["answer"]
    video_section, audio_section = sections(answer, "video"), sections(answer, "audio")
    assert "a=sendonly" in video_section and "H264/90000" in video_section
    assert "VP8" not in video_section and "VP9" not in video_section
    assert "a=sendrecv" in audio_section and "opus/48000" in audio_section
    assert a["candidatesSent"] > 0 and a["candidatesAdded"] > 0
    # The camera really sent H.264 and Opus for the whole time.
    last = [s for s in a["samples"] if "out_video" in s][-1]
    assert last["out_video"]["codec"].startswith("video/H264"), last
    assert last["out_audio"]["codec"].startswith("audio/opus"), last
    assert last["out_video"]["framesEncoded"] > 15 * MASTER_SECONDS * 0.8, last


def sections(sdp: str, kind: str) -> str:
    parts = sdp.split("\r\nm=")
    return "\r\n".join(p for p in parts if p.startswith(kind))


def check_viewer(v: dict[str, Any], a: dict[str, Any], marks: dict[str, int]) -> None:
    assert step_names(v)[-2:] == ["answered", "connected"], v["steps"]
    (join,) = v["joins"]
    assert join["status"] == 200
    (offer,) = v["offers"]
    assert offer["senderClientId"] is None
    assert "a=recvonly" in sections(offer["answer"], "video")  # viewers send no video
    video = v["video"]
    assert video is not None, "the viewer never got a video track"
    assert video["width"] > 0 and video["height"] > 0, video
    shown_s = (video["last"]["t"] - video["first"]["t"]) / 1000
    assert shown_s >= VIEWER_SECONDS - 2, video
    # Frames kept coming (requestVideoFrameCallback) and the media clock advanced with them.
    assert video["frames"] >= 8 * shown_s, video
    assert video["last"]["mediaTime"] - video["first"]["mediaTime"] >= shown_s - 1.5, video
    assert video["last"]["presentedFrames"] - video["first"]["presentedFrames"] >= 8 * shown_s

    # The viewer's microphone (Chromium's fake one beeps twice a second) reaches the master:
    # the master hears nothing before the viewer joins, and sound while it is there.
    before = audio_energy(sample_at(a, marks["viewerStart"], after=False))
    during = audio_energy(sample_at(a, marks["viewerStop"] + 1000, after=True))
    assert before < 0.01, before
    assert during - before > 0.2, (before, during)


def check_recording(
    server: ServerThread,
    stream: str,
    frags: list[dict[str, Any]],
    a: dict[str, Any],
    tmp_path: Path,
) -> list[int]:
    assert frags, "nothing was recorded"
    longest = max(runs(frags), key=run_ms)
    assert run_ms(longest) >= 20_000, [
        (start_ms(f), f["FragmentLengthInMilliseconds"]) for f in frags
    ]
    # It is A's recording: it starts when A connected.
    assert abs(start_ms(longest[0]) - a["connectedAt"]) < 3000
    paths = fetch_fragments(server, stream, longest, tmp_path / "a")
    video_frames, audio_frames = decode_all(paths)
    seconds = run_ms(longest) / 1000
    assert video_frames >= 10 * seconds, video_frames  # the fake camera sends ~20 fps
    assert sum(audio_frames) >= 0.9 * seconds * 48000 / 1024, audio_frames
    return audio_frames


def check_takeover(
    server: ServerThread,
    stream: str,
    frags: list[dict[str, Any]],
    a: dict[str, Any],
    b: dict[str, Any],
    marks: dict[str, int],
    ended: list[dict[str, Any]],
    tmp_path: Path,
) -> None:
    # B's first offer was lost; its app joined again after 6 s, got a new offer and connected.
    assert step_names(b)[-5:] == [
        "getUserMedia",
        "offer dropped",
        "no offer in time, joining again",
        "answered",
        "connected",
    ], b["steps"]
    first, second = b["joins"][:2]
    assert first["status"] == 200 and second["status"] == 200 and len(b["joins"]) == 2
    assert 6000 <= second["t"] - first["t"] < 8000
    assert [o.get("dropped", False) for o in b["offers"]] == [True, False]
    assert all(o["senderClientId"] is None for o in b["offers"])

    # A was replaced: its signaling connection was closed once B connected, and its session
    # ended after streaming for longer than MASTER_SECONDS.
    b_open = next(e["t"] for e in b["signaling"] if e["event"] == "open")
    a_close = [e["t"] for e in a["signaling"] if e["event"] == "close"]
    assert a_close and a_close[0] >= b_open - 100, (a["signaling"], b_open)
    masters = [s for s in ended if s["role"] == "master"]
    assert len(masters) == 3, ended
    session_a, session_b1, session_b2 = masters
    assert session_a["connected_seconds"] >= 20, session_a
    assert "signaling connection closed" in session_a["end_reason"], session_a
    assert session_b1["end_reason"] == "replaced by a newer JoinStorageSession", session_b1
    assert session_b1["connected_seconds"] == 0 and session_b1["fragments"] == 0
    assert session_b2["connected_seconds"] >= TAKEOVER_SECONDS - 1, session_b2
    assert session_b2["store_errors"] == 0 and session_a["store_errors"] == 0

    # The recording continues from B.
    after = [f for f in frags if start_ms(f) >= b["connectedAt"] - 1000]
    assert sum(f["FragmentLengthInMilliseconds"] for f in after) >= (TAKEOVER_SECONDS - 2) * 1000
    video_frames, _ = decode_all(fetch_fragments(server, stream, after, tmp_path / "b"))
    assert video_frames >= 10 * (TAKEOVER_SECONDS - 2)


def check_images(server: ServerThread, stream: str, run: list[dict[str, Any]]) -> None:
    am = server.client("kinesis-video-archived-media")
    first = run[0]["ProducerTimestamp"]
    last = run[-1]["ProducerTimestamp"]
    images = am.get_images(
        StreamName=stream,
        ImageSelectorType="PRODUCER_TIMESTAMP",
        StartTimestamp=first,
        EndTimestamp=last,
        SamplingInterval=3000,
        Format="JPEG",
    )["Images"]
    pictures = [gray(base64.b64decode(i["ImageContent"])) for i in images if "ImageContent" in i]
    assert len(pictures) >= 5, [i.get("Error") for i in images]
    # Chromium's fake camera draws a moving pattern: far from a flat frame (variance 0), and
    # different from one image to the next.
    variances = [float(p.var()) for p in pictures]
    assert min(variances) > 100, variances
    assert len({p.tobytes() for p in pictures}) == len(pictures)


def check_hls(server: ServerThread, stream: str, run: list[dict[str, Any]]) -> None:
    am = server.client("kinesis-video-archived-media", endpoint=server.http_endpoint)
    url = am.get_hls_streaming_session_url(
        StreamName=stream,
        PlaybackMode="ON_DEMAND",
        HLSFragmentSelector={
            "FragmentSelectorType": "PRODUCER_TIMESTAMP",
            "TimestampRange": {
                "StartTimestamp": run[0]["ProducerTimestamp"],
                "EndTimestamp": run[-1]["ProducerTimestamp"],
            },
        },
    )["HLSStreamingSessionURL"]
    page = CustomerPage()
    try:
        played = player_result(start_player(page.url("hls", url), 8))
    finally:
        page.close()
    assert "fatal" not in played, played.get("fatal")
    samples = played["samples"]
    assert samples, played
    last = samples[-1]
    assert last["errors"] == [], json.dumps({"errors": last["errors"], "url": url})
    assert played["pageErrors"] == [] and played["failedRequests"] == [], played
    assert last["videoWidth"] > 0 and last["videoHeight"] > 0, last
    times = [s["currentTime"] for s in samples if s["currentTime"] > 0]
    assert times and max(times) - min(times) >= 4, times
