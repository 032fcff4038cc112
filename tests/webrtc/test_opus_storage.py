"""``storage_audio = "opus"``: a real aiortc camera streams H.264 + an Opus tone through the real
server, in process and in a worker process. The recording keeps the camera's Opus packets byte
for byte (A_OPUS track), and every playback output (GetClip, HLS fMP4 and MPEG-TS, DASH) serves
Opus that FFmpeg decodes back to the camera's tone."""

from __future__ import annotations

import asyncio
import re
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from openkvs.media import opus
from openkvs.playback import silence

from ..mediagen import h264_clip, opus_packets
from ..playback.support import (
    archived,
    dash_url,
    dominant_hz,
    ffmpeg_decode_errors,
    ffprobe_json,
    get,
    hls_url,
    media_playlists,
    on_demand,
    tool,
    track_file,
)
from .harness import (
    Camera,
    fragment_bytes,
    fragments_of,
    sent_video,
    sessions,
    storage_channel,
    stored_video,
    wait_for,
)

pytestmark = pytest.mark.slow

TONE_HZ = 660.0
SECONDS = 4.0
PACKET_S = 0.02
DASH_NS = {"d": "urn:mpeg:dash:schema:mpd:2011"}


def audio_packets(target: Path) -> list[tuple[float, int]]:
    """(pts, size) of every audio packet, in presentation order."""
    data = ffprobe_json(target, "-select_streams", "a", "-show_entries", "packet=pts_time,size")
    return sorted((float(p["pts_time"]), int(p["size"])) for p in data["packets"])


def is_subsequence(part: list[bytes], whole: list[bytes]) -> bool:
    it = iter(whole)
    return all(any(x == y for y in it) for x in part)


@pytest.mark.parametrize("workers", [0, 1])
async def test_opus_is_stored_as_received_and_played_back(
    make_server: Any, tmp_path: Path, workers: int
) -> None:
    tool("ffprobe")
    srv = make_server(storage_fragment_duration=1.0, storage_audio="opus", webrtc_workers=workers)
    ch, _ = storage_channel(srv, "op")
    packets = opus_packets(SECONDS, freq=TONE_HZ)
    cam = Camera(srv, ch, h264_clip(width=320, height=240, seconds=SECONDS), packets)
    await cam.connect()
    await asyncio.to_thread(cam.join)
    await cam.master.wait_sent()
    await asyncio.sleep(0.5)
    await cam.close()
    await wait_for(lambda: not sessions(srv).masters, 15)
    assert workers == 0 or sessions(srv).ended  # the worker reported its session's end

    # Stored: H.264 and Opus byte for byte; an A_OPUS track with its OpusHead.
    frags = fragments_of(srv, "op-stream")
    assert len(frags) >= 3
    video, _, parsed = stored_video(srv, frags)
    assert video == sent_video(cam)
    audio_track = cam.master.audio_track
    assert audio_track is not None
    sent_audio = [data for data, _ in audio_track.sent]
    stored_audio = [b.data for p in parsed for b in p.blocks if b.track == 2]
    # Every stored packet is one the camera sent, in order; none is lost but the few before the
    # first keyframe (no fragment to hold them yet) and those the audio timeline overlaps when
    # sender reports move it onto the sender's lip sync (as with AAC).
    assert is_subsequence(stored_audio, sent_audio)
    assert len(stored_audio) >= len(sent_audio) - 15, (len(stored_audio), len(sent_audio))
    for p in parsed:
        track = p.track(2)
        assert track is not None and track.codec_id == "A_OPUS"
        assert track.codec_private == opus.opus_head(2).to_bytes()
        assert (track.sample_rate, track.channels) == (48000.0, 2)
        assert (track.codec_delay_ns, track.seek_pre_roll_ns) == (0, 80_000_000)
    # Block times follow the RTP timestamps: 20 ms apart across fragment boundaries too (a
    # step of the timeline when sender reports arrive aside).
    times = [b.timecode for p in parsed for b in p.blocks if b.track == 2]
    steps = [b - a for a, b in zip(times, times[1:], strict=False)]
    assert min(steps) >= 15 and max(steps) <= 45, (min(steps), max(steps))
    assert sum(19 <= s <= 21 for s in steps) >= 0.9 * len(steps), steps
    # A stored fragment alone is an MKV FFmpeg decodes as Opus.
    one = tmp_path / "frag.mkv"
    one.write_bytes(fragment_bytes(srv, frags[1]))
    assert ffmpeg_decode_errors(one) == ""
    (a,) = ffprobe_json(one, "-show_streams", "-select_streams", "a")["streams"]
    assert (a["codec_name"], a["sample_rate"], a["channels"]) == ("opus", "48000", 2)

    start = frags[0].producer_ts
    end = frags[-1].producer_ts + frags[-1].duration_ms
    span_s = (times[-1] - times[0]) / 1000 + PACKET_S  # the recorded audio's extent
    packets_s = len(stored_audio) * PACKET_S  # what the packets hold

    # GetClip: one MP4 whose audio is the camera's tone, as long as what was sent.
    clip = archived(srv).get_clip(
        StreamName="op-stream",
        ClipFragmentSelector={
            "FragmentSelectorType": "PRODUCER_TIMESTAMP",
            "TimestampRange": {"StartTimestamp": start / 1000, "EndTimestamp": end / 1000},
        },
    )
    path = tmp_path / "clip.mp4"
    path.write_bytes(clip["Payload"].read())
    assert ffmpeg_decode_errors(path) == ""
    streams = ffprobe_json(path, "-show_streams")["streams"]
    (a,) = [s for s in streams if s["codec_type"] == "audio"]
    assert (a["codec_name"], a["sample_rate"], a["channels"]) == ("opus", "48000", 2)
    assert int(a["nb_frames"]) == len(stored_audio)
    assert float(a["duration"]) == pytest.approx(span_s, abs=PACKET_S)
    hz, decoded_s = dominant_hz(path)
    assert hz == pytest.approx(TONE_HZ, abs=3)
    assert packets_s - PACKET_S <= decoded_s <= span_s + PACKET_S

    # HLS ON_DEMAND, fMP4: CODECS says opus; the audio track's segments decode to the tone.
    url = hls_url(
        srv,
        "op-stream",
        PlaybackMode="ON_DEMAND",
        HLSFragmentSelector=on_demand(start - 500, end + 1000),
    )
    master, media = media_playlists(url)
    assert re.search(r'CODECS="avc1\.[0-9a-f]{6},opus"', master), master
    assert 'CHANNELS="2"' in master
    track = track_file(tmp_path / "hls-audio.mp4", *media[2])
    assert ffmpeg_decode_errors(track) == ""
    (a,) = ffprobe_json(track, "-show_streams")["streams"]
    assert (a["codec_name"], a["sample_rate"]) == ("opus", "48000")
    # Each stored packet exactly once, at its stored time; where a segment's audio starts after
    # its video, silent packets cover the head (``fmp4.cover_start``).
    served = audio_packets(track)
    silent = len(silence.opus_frame(2) or b"")
    real = [(t, n) for t, n in served if n != silent]
    assert [n for _, n in real] == [len(d) for d in stored_audio]
    assert len(served) - len(real) <= 2 * len(frags)
    # Spaced as stored, but for a segment's first packet when it starts less than a packet
    # after the segment: moved back onto the segment's start (``fmp4.cover_start``).
    gaps = [b - a for (a, _), (b, _) in zip(real, real[1:], strict=False)]
    off = [abs(g - s / 1000) for g, s in zip(gaps, steps, strict=True)]
    assert max(off) < PACKET_S
    assert sum(o > 0.0015 for o in off) <= 2 * len(frags), off
    assert dominant_hz(track)[0] == pytest.approx(TONE_HZ, abs=3)
    probed = ffprobe_json(url, "-show_streams")  # FFmpeg's own HLS client: both tracks
    assert sorted(s["codec_name"] for s in probed["streams"]) == ["h264", "opus"]

    # HLS LIVE: the newest fragments, Opus too.
    live = hls_url(srv, "op-stream", PlaybackMode="LIVE")
    master, media = media_playlists(live)
    assert ",opus" in master
    track = track_file(tmp_path / "live-audio.mp4", *media[2])
    (a,) = ffprobe_json(track, "-show_streams")["streams"]
    assert a["codec_name"] == "opus"
    assert ffmpeg_decode_errors(track) == ""

    # HLS with MPEG-TS segments: Opus in TS, which FFmpeg decodes to the tone.
    ts_url = hls_url(
        srv,
        "op-stream",
        PlaybackMode="ON_DEMAND",
        ContainerFormat="MPEG_TS",
        HLSFragmentSelector=on_demand(start - 500, end + 1000),
    )
    master, media = media_playlists(ts_url)
    assert ",opus" in master
    ts = track_file(tmp_path / "all.ts", *media[0])
    kinds = {s["codec_type"]: s["codec_name"] for s in ffprobe_json(ts, "-show_streams")["streams"]}
    assert kinds == {"video": "h264", "audio": "opus"}
    assert dominant_hz(ts)[0] == pytest.approx(TONE_HZ, abs=3)

    # DASH: codecs="opus" at 48 kHz, and the audio decodes to the tone.
    mpd_url = dash_url(
        srv,
        "op-stream",
        PlaybackMode="ON_DEMAND",
        DASHFragmentSelector=on_demand(start - 500, end + 1000),
    )
    r = get(mpd_url)
    assert r.status_code == 200, r.text
    mpd = ET.fromstring(r.text)
    (audio_set,) = [
        s for s in mpd.iterfind(".//d:AdaptationSet", DASH_NS) if s.get("contentType") == "audio"
    ]
    rep = audio_set.find("d:Representation", DASH_NS)
    assert rep is not None
    assert (rep.get("codecs"), rep.get("audioSamplingRate")) == ("opus", "48000")
    probed = ffprobe_json(mpd_url, "-show_streams")
    assert sorted(s["codec_name"] for s in probed["streams"]) == ["h264", "opus"]
    assert dominant_hz(mpd_url)[0] == pytest.approx(TONE_HZ, abs=3)


async def test_opus_storage_with_a_viewer(make_server: Any) -> None:
    """The master's Opus is decoded only while a viewer listens to it live; the recording keeps
    the master's packets as sent (the viewer's voice is not mixed in)."""
    srv = make_server(storage_fragment_duration=1.0, storage_audio="opus")
    ch, _ = storage_channel(srv, "opv")
    cam = Camera(
        srv, ch, h264_clip(width=320, height=240, seconds=6.0), opus_packets(6.0, freq=TONE_HZ)
    )
    await cam.connect()
    await asyncio.to_thread(cam.join)
    audio_track = cam.master.audio_track
    assert audio_track is not None
    await wait_for(lambda: len(audio_track.sent) > 50, 20)

    def master_stats() -> dict[str, Any]:
        (stats,) = [s for s in sessions(srv).stats() if s["role"] == "master"]
        return stats

    alone = master_stats()
    assert alone["opus_frames"] > 25 and alone["opus_packets"] == 0  # stored, none decoded
    viewer = Camera(srv, ch, None, opus_packets(3.0, freq=440.0), client_id="talker")
    await viewer.connect()
    await asyncio.to_thread(viewer.join)
    await wait_for(lambda: len(viewer.master.received_audio) >= 100, 30)
    await wait_for(lambda: len(cam.master.received_audio) >= 25, 20)  # the master hears it
    assert master_stats()["opus_packets"] > 0  # decoded for the viewer
    # What the viewer hears of the master is the master's tone.
    pcm = np.concatenate([f.to_ndarray().reshape(-1) for f in viewer.master.received_audio[-50:]])
    spectrum = np.abs(np.fft.rfft(pcm[::2].astype(np.float64)))  # one channel of s16 stereo
    assert float(np.argmax(spectrum)) * 48000 / len(pcm[::2]) == pytest.approx(TONE_HZ, abs=25)
    await viewer.close()
    await cam.master.wait_sent()
    await cam.close()
    await wait_for(lambda: not sessions(srv).masters and not sessions(srv).viewers, 15)
    _, _, parsed = stored_video(srv, fragments_of(srv, "opv-stream"))
    stored = [b.data for p in parsed for b in p.blocks if b.track == 2]
    sent = [data for data, _ in audio_track.sent]
    assert is_subsequence(stored, sent) and len(stored) >= len(sent) - 15
