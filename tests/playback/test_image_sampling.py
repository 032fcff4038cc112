"""GetImages decodes only what its images need: the images are the ones a decode of every frame
gives for the same timestamps (keyframes only, mid-GOP, every frame, with and without B-frames),
a job keeps decoded frames within its budget, and one request has at most as many fragments in
the worker pool at once as the pool has workers."""

from __future__ import annotations

import asyncio
import dataclasses
import threading
from fractions import Fraction
from typing import Any

import av
import pytest

from openkvs import clock
from openkvs.playback import images as images_module
from openkvs.playback.images import (
    Encoder,
    ImageOptions,
    decode_ranges,
    frame_bytes,
    pick_frames,
    render,
)
from openkvs.playback.mkv import ParsedFragment, parse_fragment

from ..support import ServerThread
from .media import append, recorded
from .support import create_stream, ms

MS = 1_000_000  # ns


def two_gops(bframes: int) -> tuple[ParsedFragment, int]:
    """One fragment of two 1 s GOPs (the second GOP's times follow the first's)."""
    frags = recorded(2, 0, bframes=bframes)
    first, second = (parse_fragment(f.data) for f in frags)
    track = first.video()
    assert track is not None
    shift = frags[0].duration_ms * MS
    frames = first.frames[track.number] + [
        dataclasses.replace(f, pts_ns=f.pts_ns + shift) for f in second.frames[track.number]
    ]
    return ParsedFragment(tracks=first.tracks, frames={track.number: frames}), track.number


def decode_everything(parsed: ParsedFragment, track: int) -> dict[int, Any]:
    """Every frame of the fragment, by decode-order index: one decoder fed every packet."""
    ctx: Any = av.CodecContext.create("h264", "r")
    ctx.extradata = parsed.tracks[track].codec_private
    out: dict[int, Any] = {}
    for i, frame in enumerate(parsed.frames[track]):
        packet = av.Packet(frame.data)
        packet.pts = packet.dts = i
        packet.time_base = Fraction(1, 90_000)
        for f in ctx.decode(packet):
            out[int(f.pts)] = f
    for f in ctx.decode(None):
        out[int(f.pts)] = f
    assert len(out) == len(parsed.frames[track])
    return out


def shown_at(parsed: ParsedFragment, track: int, offset_ns: int) -> int:
    """Decode-order index of the frame presented nearest to ``offset_ns`` (the earlier of two
    equally near)."""
    frames = parsed.frames[track]
    return min(
        range(len(frames)), key=lambda i: (abs(frames[i].pts_ns - offset_ns), frames[i].pts_ns)
    )


@pytest.mark.parametrize("bframes", [0, 2])
def test_sampled_images_equal_a_decode_of_every_frame(bframes: int) -> None:
    parsed, track = two_gops(bframes)
    frames = parsed.frames[track]
    keys = [i for i, f in enumerate(frames) if f.key]
    assert len(keys) == 2
    end_ns = max(f.pts_ns for f in frames)
    everything = decode_everything(parsed, track)
    patterns = {
        # Sampling at the GOP starts (an interval of one GOP): keyframes only.
        "keyframes": [frames[k].pts_ns for k in keys],
        # Mid-GOP, between two frames' times and on one, in both GOPs.
        "mid-GOP": [510 * MS, 1_000 * MS + 333 * MS + 1, 1_000 * MS + 700 * MS],
        # Just before the second GOP's keyframe, nearer to it than to the frame before it.
        "before-keyframe": [frames[keys[1]].pts_ns - 5 * MS],
        # Every 40 ms: every GOP's frames, B-frames included, and past the last frame.
        "dense": list(range(0, end_ns + 100 * MS, 40 * MS)),
    }
    options = ImageOptions("JPEG", quality=75)
    for name, offsets in patterns.items():
        picks = pick_frames(parsed, track, offsets)
        assert picks == [shown_at(parsed, track, t) for t in offsets], name
        wanted = set(picks)
        if name == "keyframes":
            # Nothing decoded but the keyframes themselves.
            assert picks == keys and decode_ranges(frames, wanted) == [(k, k) for k in keys]
        if name == "before-keyframe":
            # The keyframe is shown, and nothing of the first GOP is decoded for it.
            assert picks == [keys[1]] and decode_ranges(frames, wanted) == [(keys[1], keys[1])]
        if name == "mid-GOP":
            # Each GOP's decoding stops at its last wanted frame.
            assert [last for _, last in decode_ranges(frames, wanted)] == [
                max(p for p in picks if p < keys[1]),
                max(picks),
            ]
            assert max(picks) < len(frames) - 1
        ours = render(parsed, track, wanted, options)
        for p in picks:
            assert ours[p] == Encoder(options).encode(everything[p]), (name, p)
    # PNG, scaled: the same frames, pixel for pixel.
    png = ImageOptions("PNG", width=320)
    picks = pick_frames(parsed, track, patterns["mid-GOP"])
    ours = render(parsed, track, set(picks), png)
    for p in picks:
        assert ours[p] == Encoder(png).encode(everything[p]), p


def test_a_render_keeps_decoded_frames_within_its_budget() -> None:
    parsed, track = two_gops(2)
    frames = parsed.frames[track]
    everything = decode_everything(parsed, track)
    one = frame_bytes(everything[0])
    wanted = {5, 12, len(frames) - 3}
    options = ImageOptions("JPEG", width=160)
    expected = {p: Encoder(options).encode(everything[p]) for p in wanted}
    for budget, most in ((0, 0), (one, 1), (2 * one, 2), (100 * one, 5)):
        keep: dict[int, Any] = {}
        assert render(parsed, track, wanted, options, None, keep, budget) == expected
        assert len(keep) <= most and sum(frame_bytes(f) for f in keep.values()) <= budget
        # What is kept: wanted frames and the keyframes decoding started from, as decoded.
        assert set(keep) <= wanted | {0, frames.index(next(f for f in frames[1:] if f.key))}
        for index, frame in keep.items():
            for a, b in zip(frame.planes, everything[index].planes, strict=True):
                assert bytes(a) == bytes(b), index
    # Frames already decoded (from the frame cache) are encoded, not decoded again.
    keep = {}
    cached = {5: everything[5]}
    assert render(parsed, track, {5}, options, cached, keep, 100 * one) == {5: expected[5]}
    assert keep == {}


def test_one_request_has_at_most_one_fragment_per_worker_in_the_pool(
    make_server: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    server: ServerThread = make_server(playback_workers=2)
    create_stream(server, "cam")
    t0 = clock.now_ms() - 120_000
    append(server, "cam", recorded(6, t0))
    playback = server.services.playback
    real_run = playback.run
    lock = threading.Lock()
    busy = 0
    most = 0
    together = asyncio.Event()

    async def run(fn: Any, *args: Any) -> Any:
        nonlocal busy, most
        if fn is not images_module.render:
            return await real_run(fn, *args)
        with lock:
            busy += 1
            most = max(most, busy)
        try:
            if busy >= 2:
                together.set()
            # Fragments go side by side: a second one arrives while the first is in the pool.
            await asyncio.wait_for(together.wait(), 10)
            return await real_run(fn, *args)
        finally:
            with lock:
                busy -= 1

    monkeypatch.setattr(playback, "run", run)
    client = server.client("kinesis-video-archived-media")
    result = client.get_images(
        StreamName="cam",
        ImageSelectorType="PRODUCER_TIMESTAMP",
        StartTimestamp=ms(t0),
        EndTimestamp=ms(t0 + 5800),
        SamplingInterval=500,
        Format="JPEG",
        WidthPixels=64,
    )
    assert len(result["Images"]) == 12
    assert all("ImageContent" in i for i in result["Images"])
    assert most == 2
