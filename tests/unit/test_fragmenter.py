from __future__ import annotations

from openkvs.media import h264, mkv
from openkvs.media.fragmenter import Fragmenter

from ..mediagen import h264_clip


def test_cuts_at_keyframes_after_target_and_waits_for_audio() -> None:
    clip = h264_clip(seconds=3.0, gop=15)  # keyframe every 0.5 s
    f = Fragmenter(target_ms=1000, audio_grace_ms=700)
    f.set_audio_config(b"\x11\x90", 48000, 2)
    base = 1_000_000
    out = []
    for fr in clip:
        out += f.video(base + fr.pts_ms, fr.data)
    # Closed fragments wait for audio until 700 ms of video past their end: 2000 still waits.
    assert [o.start_ms - base for o in out] == [0, 1000]
    out += f.audio(base + 2990, b"aac")
    out += f.flush()
    starts = [o.start_ms - base for o in out]
    assert starts == [0, 1000, 2000]
    assert all(o.blocks[0].keyframe for o in out)
    assert sum(o.video_frames for o in out) == len(clip)
    assert out[-1].audio_frames == 1
    data = out[0].to_mkv()
    parsed = mkv.read_fragment(data)
    assert parsed.tracks[0].width == 640 and parsed.tracks[1].codec_id == "A_AAC"


def test_drops_until_first_keyframe_and_splits_on_new_sps() -> None:
    small = h264_clip(width=320, height=240, seconds=1.0)
    big = h264_clip(width=640, height=360, seconds=1.0)
    f = Fragmenter(target_ms=5000)
    out = []
    for fr in small[1:]:
        out += f.video(fr.pts_ms, fr.data)
    assert f.stats.dropped_video == 29 and not f.started
    for fr in small:
        out += f.video(2000 + fr.pts_ms, fr.data)
    for fr in big:
        out += f.video(3000 + fr.pts_ms, fr.data)
    out += f.flush()
    assert [o.tracks[0].width for o in out] == [320, 640]
    sps = [n for n in h264.split_annexb(big[0].data) if h264.nal_type(n) == h264.NAL_SPS]
    assert h264.parse_avc_decoder_configuration(out[1].tracks[0].codec_private)[0] == sps
