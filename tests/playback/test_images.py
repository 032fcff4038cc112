"""GetImages: each image compared with the frame FFmpeg decodes at the same timestamp, scaling,
paging, NO_MEDIA / MEDIA_ERROR, and parameter errors."""

from __future__ import annotations

import base64
import re
import subprocess
import threading
import time
from pathlib import Path
from typing import Any

import av
import pytest

from openkvs import clock
from openkvs.playback.images import (
    Encoder,
    ImageOptions,
    decode_ranges,
    iter_frames,
    render,
)
from openkvs.playback.mkv import ParsedFragment, parse_fragment

from ..support import ServerThread
from .media import GeneratedFragment, append, recorded
from .support import create_stream, ffprobe_json, ms, tool


def decode_frames(
    parsed: ParsedFragment, track: int, wanted: set[int], keep: dict[int, Any]
) -> dict[int, Any]:
    """The frames ``iter_frames`` yields as wanted; ``keep`` receives the others (the keyframe
    each run of decoding started from)."""
    out: dict[int, Any] = {}
    for index, frame, is_wanted in iter_frames(parsed, track, wanted):
        (out if is_wanted else keep)[index] = frame
    return out


def images(server: ServerThread, start_ms: int, end_ms: int, **params: Any) -> dict[str, Any]:
    client = server.client(
        "kinesis-video-archived-media", parameter_validation=params.pop("validate", True)
    )
    params.setdefault("Format", "JPEG")
    params.setdefault("ImageSelectorType", "PRODUCER_TIMESTAMP")
    return dict(
        client.get_images(
            StreamName=params.pop("name", "cam"),
            StartTimestamp=ms(start_ms),
            EndTimestamp=ms(end_ms),
            **params,
        )
    )


def reference_frame(tmp_path: Path, frag: GeneratedFragment, offset_ms: float, tag: str) -> Path:
    """FFmpeg's decode of the frame presented nearest to ``offset_ms`` into a fragment (the
    earlier of two equally near), as PNG."""
    pts = frag.frame_pts_ms
    index = min(range(len(pts)), key=lambda i: (abs(pts[i] - offset_ms), pts[i]))
    src = tmp_path / f"{tag}.mkv"
    src.write_bytes(frag.data)
    out = tmp_path / f"{tag}.png"
    subprocess.run(
        [
            tool("ffmpeg"),
            "-nostdin",
            "-v",
            "error",
            "-y",
            "-i",
            str(src),
            "-vf",
            f"select=eq(n\\,{index})",
            "-vsync",
            "0",
            "-frames:v",
            "1",
            str(out),
        ],
        check=True,
        timeout=60,
    )
    return out


def psnr(a: Path, b: Path) -> float:
    out = subprocess.run(
        [
            tool("ffmpeg"),
            "-nostdin",
            "-i",
            str(a),
            "-i",
            str(b),
            "-lavfi",
            "[0:v]format=rgb24[x];[1:v]format=rgb24[y];[x][y]psnr",
            "-f",
            "null",
            "-",
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    value = re.search(r"average:(inf|[0-9.]+)", out.stderr)
    assert value is not None, out.stderr
    return float("inf") if value.group(1) == "inf" else float(value.group(1))


def save(tmp_path: Path, image: dict[str, Any], name: str) -> Path:
    path = tmp_path / name
    path.write_bytes(base64.b64decode(image["ImageContent"]))
    return path


def size(path: Path) -> tuple[int, int]:
    (stream,) = ffprobe_json(path, "-show_streams")["streams"]
    return int(stream["width"]), int(stream["height"])


@pytest.fixture
def stream(server: ServerThread) -> tuple[int, list[GeneratedFragment]]:
    create_stream(server, "cam")
    t0 = clock.now_ms() - 120_000
    frags = recorded(6, t0, bframes=2)
    append(server, "cam", frags)
    return t0, frags


def test_jpeg_matches_ffmpeg_decode(
    server: ServerThread, stream: tuple[int, list[GeneratedFragment]], tmp_path: Path
) -> None:
    t0, frags = stream
    # Mid-GOP frames (decoded from their keyframe forward), in three fragments.
    result = images(server, t0 + 1500, t0 + 3700, SamplingInterval=1100)
    assert [i["TimeStamp"].timestamp() for i in result["Images"]] == [
        ms(t0 + 1500),
        ms(t0 + 2600),
        ms(t0 + 3700),
    ]
    assert "NextToken" not in result
    for i, (image, (frag, offset)) in enumerate(
        zip(result["Images"], [(frags[1], 500), (frags[2], 600), (frags[3], 700)], strict=True)
    ):
        assert "Error" not in image
        ours = save(tmp_path, image, f"ours{i}.jpg")
        assert ours.read_bytes()[:2] == b"\xff\xd8" and size(ours) == (640, 360)
        right = psnr(ours, reference_frame(tmp_path, frag, offset, f"ref{i}"))
        assert right > 30, right
        # A frame 10 frames away is clearly worse: the comparison can tell frames apart.
        wrong = psnr(ours, reference_frame(tmp_path, frag, offset - 333.4, f"wrong{i}"))
        assert wrong < right - 3, (right, wrong)


def test_a_time_just_before_a_fragment_shows_its_first_frame(
    server: ServerThread, stream: tuple[int, list[GeneratedFragment]], tmp_path: Path
) -> None:
    """A sampling time a few ms before a fragment starts is nearer to that fragment's first
    frame (its keyframe) than to the previous fragment's last frame: that keyframe is shown."""
    t0, frags = stream
    before, after = frags[1], frags[2]
    start = after.producer_ts_ms
    gap = start - (before.producer_ts_ms + max(before.frame_pts_ms))
    assert gap > 10, gap  # the previous frame is more than 10 ms before the fragment's start
    result = images(server, start - 4, start - 4 + 2500, SamplingInterval=1000)["Images"]
    assert len(result) == 3 and all("Error" not in i for i in result)
    ours = save(tmp_path, result[0], "boundary.jpg")
    right = psnr(ours, reference_frame(tmp_path, after, 0, "first"))
    wrong = psnr(ours, reference_frame(tmp_path, before, max(before.frame_pts_ms), "last"))
    assert right > 30 and wrong < right - 3, (right, wrong)
    # Nearer to the previous frame (by more than half a frame): that one is still shown.
    (late,) = images(server, start - gap + 4, start - gap + 4)["Images"]
    ours = save(tmp_path, late, "late.jpg")
    right = psnr(ours, reference_frame(tmp_path, before, max(before.frame_pts_ms), "last2"))
    assert right > 30, right


def test_png_and_scaling(
    server: ServerThread, stream: tuple[int, list[GeneratedFragment]], tmp_path: Path
) -> None:
    t0, frags = stream
    (png,) = images(server, t0 + 2300, t0 + 2300, Format="PNG")["Images"]
    ours = save(tmp_path, png, "ours.png")
    assert ours.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert psnr(ours, reference_frame(tmp_path, frags[2], 300, "ref")) > 35
    for params, expected in (
        ({"WidthPixels": 320}, (320, 180)),
        ({"HeightPixels": 90}, (160, 90)),
        ({"WidthPixels": 100, "HeightPixels": 100}, (100, 100)),
    ):
        (image,) = images(server, t0 + 2300, t0 + 2300, **params)["Images"]
        assert size(save(tmp_path, image, "scaled.jpg")) == expected
    # A lower JPEGQuality gives a smaller image of the same frame.
    (low,) = images(server, t0 + 2300, t0 + 2300, FormatConfig={"JPEGQuality": "10"})["Images"]
    (high,) = images(server, t0 + 2300, t0 + 2300, FormatConfig={"JPEGQuality": "95"})["Images"]
    assert len(low["ImageContent"]) < len(high["ImageContent"]) / 2


def test_paging(server: ServerThread, stream: tuple[int, list[GeneratedFragment]]) -> None:
    t0, _ = stream
    first = images(server, t0, t0 + 5800, SamplingInterval=200)
    assert len(first["Images"]) == 25 and first["NextToken"]
    rest = images(server, t0, t0 + 5800, SamplingInterval=200, NextToken=first["NextToken"])
    assert len(rest["Images"]) == 5 and "NextToken" not in rest
    stamps = [round(i["TimeStamp"].timestamp() * 1000) for i in first["Images"] + rest["Images"]]
    assert stamps == [t0 + 200 * k for k in range(30)]
    assert all("ImageContent" in i for i in first["Images"] + rest["Images"])
    # MaxResults caps the whole answer; pages stay at most 25.
    capped = images(server, t0, t0 + 5800, SamplingInterval=200, MaxResults=10)
    assert len(capped["Images"]) == 10 and "NextToken" not in capped
    paginator = server.client("kinesis-video-archived-media").get_paginator("get_images")
    pages = list(
        paginator.paginate(
            StreamName="cam",
            ImageSelectorType="PRODUCER_TIMESTAMP",
            StartTimestamp=ms(t0),
            EndTimestamp=ms(t0 + 5800),
            SamplingInterval=200,
            Format="JPEG",
            WidthPixels=64,
        )
    )
    assert [len(p["Images"]) for p in pages] == [25, 5]
    # A NextToken is bound to the request it came from.
    client = server.client("kinesis-video-archived-media")
    with pytest.raises(client.exceptions.InvalidArgumentException, match="NextToken"):
        images(server, t0, t0 + 5000, SamplingInterval=200, NextToken=first["NextToken"])
    with pytest.raises(client.exceptions.InvalidArgumentException, match="NextToken"):
        images(server, t0, t0 + 5800, SamplingInterval=200, NextToken="AAAAAAAA")


def test_no_media_and_sampling_wider_than_range(
    server: ServerThread, stream: tuple[int, list[GeneratedFragment]]
) -> None:
    t0, _ = stream
    result = images(server, t0 - 1200, t0 + 400, SamplingInterval=400)
    kinds = [i.get("Error", "IMAGE") for i in result["Images"]]
    assert kinds == ["NO_MEDIA", "NO_MEDIA", "NO_MEDIA", "IMAGE", "IMAGE"]
    after = images(server, t0 + 5600, t0 + 7600, SamplingInterval=1000)["Images"]
    assert [i.get("Error", "IMAGE") for i in after] == ["IMAGE", "NO_MEDIA", "NO_MEDIA"]
    nothing = images(server, t0 - 60_000, t0 - 50_000, SamplingInterval=5000)["Images"]
    assert [i["Error"] for i in nothing] == ["NO_MEDIA"] * 3
    # A sampling interval longer than the range: the StartTimestamp image only.
    (only,) = images(server, t0 + 1000, t0 + 2000, SamplingInterval=60_000)["Images"]
    assert only["TimeStamp"].timestamp() == ms(t0 + 1000) and "ImageContent" in only


def test_server_timestamps_select_the_same_frames(
    server: ServerThread, stream: tuple[int, list[GeneratedFragment]]
) -> None:
    _, frags = stream
    f = frags[4]
    by_producer = images(server, f.producer_ts_ms + 400, f.producer_ts_ms + 400)["Images"]
    by_server = images(
        server,
        f.server_ts_ms + 400,
        f.server_ts_ms + 400,
        ImageSelectorType="SERVER_TIMESTAMP",
    )["Images"]
    assert by_server[0]["ImageContent"] == by_producer[0]["ImageContent"]
    other = images(server, f.producer_ts_ms + 100, f.producer_ts_ms + 100)["Images"]
    assert other[0]["ImageContent"] != by_producer[0]["ImageContent"]


def test_audio_only_is_media_error(server: ServerThread) -> None:
    create_stream(server, "voice")
    t0 = clock.now_ms() - 60_000
    append(server, "voice", recorded(2, t0, video=False))
    result = images(server, t0, t0 + 1500, SamplingInterval=500, name="voice")
    assert [i["Error"] for i in result["Images"]] == ["MEDIA_ERROR"] * 4


def test_parameter_errors(
    server: ServerThread, stream: tuple[int, list[GeneratedFragment]]
) -> None:
    t0, _ = stream
    create_stream(server, "no-retention", retention=0)
    client = server.client("kinesis-video-archived-media")
    bad = client.exceptions.InvalidArgumentException
    cases: list[tuple[int, int, dict[str, Any], str]] = [
        (t0, t0 + 1000, {"SamplingInterval": 100}, "SamplingInterval"),
        (t0, t0 + 301_000, {}, "300 seconds"),
        (t0 + 1000, t0, {}, "earlier"),
        (t0, t0 + 1000, {"FormatConfig": {"JPEGQuality": "0"}}, "JPEGQuality"),
        (t0, t0 + 1000, {"FormatConfig": {"JPEGQuality": "abc"}}, "JPEGQuality"),
        (t0, t0 + 1000, {"WidthPixels": 0, "validate": False}, "widthPixels"),
        (t0, t0 + 1000, {"MaxResults": 10_000, "validate": False}, "maxResults"),
        (t0, t0 + 1000, {"Format": "GIF", "validate": False}, "format"),
    ]
    for start, end, params, message in cases:
        with pytest.raises(bad, match=message):
            images(server, start, end, **params)
    with pytest.raises(client.exceptions.NoDataRetentionException):
        images(server, t0, t0 + 1000, name="no-retention")
    with pytest.raises(client.exceptions.ResourceNotFoundException):
        images(server, t0, t0 + 1000, name="missing")


def test_decoding_runs_off_the_event_loop(
    server: ServerThread, stream: tuple[int, list[GeneratedFragment]]
) -> None:
    """While GetImages decodes and encodes, the server keeps answering other requests."""
    t0, _ = stream
    kv = server.client("kinesisvideo")
    kv.describe_stream(StreamName="cam")
    done: list[float] = []

    def work() -> None:
        started = time.monotonic()
        for _ in range(3):
            assert len(images(server, t0, t0 + 4800, SamplingInterval=200)["Images"]) == 25
            server.services.playback.images.clear()
            server.services.playback.frames.clear()
        done.append(time.monotonic() - started)

    thread = threading.Thread(target=work)
    thread.start()
    latencies = []
    while thread.is_alive():
        started = time.monotonic()
        kv.describe_stream(StreamName="cam")
        latencies.append(time.monotonic() - started)
        time.sleep(0.02)
    thread.join()
    assert done and len(latencies) >= 3
    assert max(latencies) < 1.0, latencies


def fresh_decode(parsed: ParsedFragment, track: int, index: int) -> Any:
    """The frame at decode-order ``index``, from a new decoder fed every packet from its keyframe."""
    frames = parsed.frames[track]
    k = index
    while k > 0 and not frames[k].key:
        k -= 1
    ctx: Any = av.CodecContext.create("h264", "r")
    ctx.extradata = parsed.tracks[track].codec_private
    decoded: list[Any] = []
    for i in range(k, index + 1):
        packet = av.Packet(frames[i].data)
        packet.pts = packet.dts = i
        decoded += ctx.decode(packet)
    decoded += ctx.decode(None)
    (frame,) = [f for f in decoded if f.pts == index]
    return frame


def test_one_decoder_per_fragment_gives_the_frames_a_fresh_decode_gives() -> None:
    """Several keyframe runs through one decoder, skipping unwanted non-reference B-frames,
    decode exactly the pictures a fresh decoder per frame does."""
    first, second = (parse_fragment(f.data) for f in recorded(2, 0, bframes=2))
    track = first.video()
    assert track is not None
    n = len(first.frames[track.number])
    # Two GOPs in one fragment: the second fragment's frames follow the first's.
    merged = ParsedFragment(
        tracks=first.tracks,
        frames={track.number: first.frames[track.number] + second.frames[track.number]},
    )
    frames = merged.frames[track.number]
    assert frames[n].key and sum(f.key for f in frames) == 2
    wanted = {0, 5, n - 1, n, n + 7}
    assert decode_ranges(frames, wanted) == [(0, n - 1), (n, n + 7)]
    keep: dict[int, Any] = {}
    ours = decode_frames(merged, track.number, wanted, keep)
    assert set(ours) == wanted
    for index in wanted:
        reference = fresh_decode(merged, track.number, index)
        for a, b in zip(ours[index].planes, reference.planes, strict=True):
            assert bytes(a) == bytes(b), index
    # The keyframe a run started from is kept for the frame cache when it was not wanted.
    assert set(keep) == set()
    keep = {}
    decode_frames(merged, track.number, {n + 3}, keep)
    assert set(keep) == {n}
    # Images from the shared encoder equal images encoded one by one.
    options = ImageOptions("JPEG", quality=70, width=320)
    batch = render(merged, track.number, wanted, options)
    for index in wanted:
        assert batch[index] == Encoder(options).encode(ours[index])
        assert (batch[index] or b"")[:2] == b"\xff\xd8"


def test_decoded_frames_are_cached(
    server: ServerThread, stream: tuple[int, list[GeneratedFragment]], tmp_path: Path
) -> None:
    """Another format or size of an already decoded frame is encoded from the frame cache."""
    t0, frags = stream
    playback = server.services.playback
    (jpeg,) = images(server, t0 + 2500, t0 + 2500)["Images"]
    hits, decoded = playback.frames.hits, playback.images_decoded
    assert len(playback.frames) >= 1
    (png,) = images(server, t0 + 2500, t0 + 2500, Format="PNG", WidthPixels=320)["Images"]
    assert playback.frames.hits == hits + 1 and playback.images_decoded == decoded + 1
    assert size(save(tmp_path, png, "cached.png")) == (320, 180)
    # The frame cache empty, the same image is decoded again, identical.
    playback.images.clear()
    playback.frames.clear()
    (again,) = images(server, t0 + 2500, t0 + 2500)["Images"]
    assert again["ImageContent"] == jpeg["ImageContent"]
    assert playback.images_decoded == decoded + 2
    playback.images.clear()
    playback.frames.clear()
    (fresh,) = images(server, t0 + 2500, t0 + 2500, Format="PNG", WidthPixels=320)["Images"]
    assert fresh["ImageContent"] == png["ImageContent"]
    # And it is the frame shown at that time.
    ours = save(tmp_path, again, "again.jpg")
    assert psnr(ours, reference_frame(tmp_path, frags[2], 500, "ref")) > 30
