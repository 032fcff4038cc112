"""A PutMedia producer that sends Opus (an MKV written by FFmpeg with libopus: OpusHead with
pre-skip, CodecDelay, SeekPreRoll): GetMedia returns it as stored, and GetClip, HLS and DASH
serve Opus that decodes to the producer's 440 Hz tone."""

from __future__ import annotations

import re
import struct
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from openkvs import clock
from openkvs.media import mkv, opus

from ..dataplane.mediafiles import producer_mkv
from ..dataplane.producer import put_media
from ..support import ServerThread
from .support import (
    archived,
    create_stream,
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


def _dops(init: bytes) -> bytes:
    """The payload of the dOps box in an init segment."""
    at = init.index(b"dOps")
    size = struct.unpack(">I", init[at - 4 : at])[0]
    return init[at + 4 : at - 4 + size]


async def test_putmedia_opus_plays_back(server: ServerThread, tmp_path: Path) -> None:
    tool("ffprobe")
    create_stream(server, "op")
    t0 = clock.now_ms() - 60_000
    data = producer_mkv(3.0, start_ms=t0, audio_codec="libopus")
    status, acks = await put_media(server, data, stream_name="op")
    assert status == 200 and [a["EventType"] for a in acks].count("PERSISTED") == 3
    sent = mkv.read_fragment(data)
    sent_track = sent.track(2)
    assert sent_track is not None and sent_track.codec_id == "A_OPUS"

    # GetMedia: the stored fragments, Opus packets and track header as the producer sent them.
    kv = server.client("kinesisvideo")
    ep = kv.get_data_endpoint(StreamName="op", APIName="GET_MEDIA")["DataEndpoint"]
    media = server.client("kinesis-video-media", endpoint=ep, read_timeout=20)
    payload = media.get_media(StreamName="op", StartSelector={"StartSelectorType": "EARLIEST"})
    got = tmp_path / "getmedia.mkv"
    stream = payload["Payload"]
    body = b""
    while body.count(b"\x1a\x45\xdf\xa3") < 3 or body.count(b"A_OPUS") < 3:
        chunk = stream.read(65536)
        if not chunk:
            break
        body += chunk
    stream.close()
    got.write_bytes(body)
    fragment = mkv.read_fragment(body)
    track = fragment.track(2)
    assert track is not None
    assert (track.codec_id, track.codec_private) == ("A_OPUS", sent_track.codec_private)
    assert (track.codec_delay_ns, track.seek_pre_roll_ns) == (6_500_000, 80_000_000)
    stored = [b.data for b in fragment.blocks if b.track == 2]
    sent_audio = [b.data for b in sent.blocks if b.track == 2]
    assert stored and stored == sent_audio[: len(stored)]
    head = opus.parse_opus_head(sent_track.codec_private)
    assert head.pre_skip == 312

    # GetClip: Opus, the tone, every packet the producer sent (its audio runs 0.1 s past the
    # video).
    sent_s = len(sent_audio) * 0.02
    clip = archived(server).get_clip(
        StreamName="op",
        ClipFragmentSelector={
            "FragmentSelectorType": "PRODUCER_TIMESTAMP",
            "TimestampRange": {
                "StartTimestamp": (t0 - 1000) / 1000,
                "EndTimestamp": (t0 + 5000) / 1000,
            },
        },
    )
    path = tmp_path / "clip.mp4"
    path.write_bytes(clip["Payload"].read())
    assert ffmpeg_decode_errors(path) == ""
    streams = {s["codec_type"]: s for s in ffprobe_json(path, "-show_streams")["streams"]}
    assert (streams["audio"]["codec_name"], streams["audio"]["channels"]) == ("opus", 2)
    assert int(streams["audio"]["nb_frames"]) == len(sent_audio)
    assert float(streams["audio"]["duration"]) == pytest.approx(sent_s, abs=0.02)
    hz, seconds = dominant_hz(path)
    assert hz == pytest.approx(440, abs=3) and seconds == pytest.approx(sent_s, abs=0.02)

    # HLS fMP4: CODECS opus, dOps from the producer's OpusHead, the tone.
    url = hls_url(
        server,
        "op",
        PlaybackMode="ON_DEMAND",
        HLSFragmentSelector=on_demand(t0 - 1000, t0 + 10_000),
    )
    master, playlists = media_playlists(url)
    assert re.search(r'CODECS="avc1\.[0-9a-f]{6},opus"', master), master
    track_path = track_file(tmp_path / "audio.mp4", *playlists[2])
    assert _dops(track_path.read_bytes()) == head.dops()
    assert ffmpeg_decode_errors(track_path) == ""
    assert dominant_hz(track_path)[0] == pytest.approx(440, abs=3)

    # DASH: codecs="opus".
    mpd = ET.fromstring(
        get(
            dash_url(
                server,
                "op",
                PlaybackMode="ON_DEMAND",
                DASHFragmentSelector=on_demand(t0 - 1000, t0 + 10_000),
            )
        ).text
    )
    ns = {"d": "urn:mpeg:dash:schema:mpd:2011"}
    codecs = sorted(r.get("codecs") or "" for r in mpd.iterfind(".//d:Representation", ns))
    assert codecs[1] == "opus" and codecs[0].startswith("avc1.")
