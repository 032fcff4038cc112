"""MKV the way producers send it, made with PyAV (libx264 + FFmpeg's AAC encoder and Matroska
muxer), cached per test session; plus small EBML rewrites that mimic other producers."""

from __future__ import annotations

import fractions
import functools
import io
from typing import Any

import av
import numpy as np

from openkvs.media import ebml, mkv


class _Sink(io.RawIOBase):
    """A non-seekable output, so FFmpeg writes a live stream (unknown-size Segment)."""

    def __init__(self) -> None:
        self.data = bytearray()

    def writable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return False

    def write(self, b: Any) -> int:
        self.data += b
        return len(b)


@functools.cache
def producer_mkv(
    seconds: float = 3.0,
    *,
    start_ms: int = 1_700_000_000_000,
    gop_seconds: float = 1.0,
    width: int = 320,
    height: int = 240,
    fps: int = 30,
    audio: bool = True,
    live: bool = True,
    audio_codec: str = "aac",
) -> bytes:
    """H.264 (+ a 440 Hz tone in AAC, or Opus with ``audio_codec="libopus"``) in MKV, one Cluster
    per GOP, timecodes starting at ``start_ms``.

    ``live`` writes to a non-seekable sink (unknown-size Segment, as a camera streams it);
    otherwise to a file (known sizes, SeekHead, Cues).
    """
    sink: Any = _Sink() if live else io.BytesIO()
    out = av.open(
        sink,
        "w",
        format="matroska",
        options={"cluster_size_limit": "8000000", "cluster_time_limit": "20000"},
    )
    gop = max(1, round(gop_seconds * fps))
    v = out.add_stream("libx264", rate=fps)
    v.width, v.height, v.pix_fmt = width, height, "yuv420p"
    v.options = {
        "preset": "veryfast",
        "x264-params": f"keyint={gop}:min-keyint={gop}:scenecut=0:bframes=0",
    }
    a = out.add_stream(audio_codec, rate=48000) if audio else None
    if a is not None:
        a.layout = "stereo"
    frame = 960 if audio_codec == "libopus" else 1024
    rng = np.random.default_rng(7)
    n_video = round(seconds * fps)
    # Audio runs a little past the last video frame so the last cluster has both tracks.
    n_audio = int((seconds + 0.1) * 48000 / frame) + 1 if audio else 0
    t = np.arange(frame) / 48000
    vbase = start_ms * fps // 1000
    abase = start_ms * 48
    vi = ai = 0
    while vi < n_video or ai < n_audio:
        if vi < n_video and (ai >= n_audio or vi / fps <= ai * frame / 48000):
            img = np.full((height, width, 3), (vi * 3) % 255, np.uint8)
            x = (vi * 4) % max(1, width - 20)
            img[:, x : x + 20] = 255
            img += rng.integers(0, 16, img.shape, dtype=np.uint8)
            vf = av.VideoFrame.from_ndarray(img, format="rgb24")
            vf.pts = vbase + vi
            vf.time_base = fractions.Fraction(1, fps)
            for pkt in v.encode(vf):
                out.mux(pkt)
            vi += 1
        else:
            assert a is not None
            s = (0.3 * np.sin(2 * np.pi * 440 * (t + ai * frame / 48000))).astype(np.float32)
            if audio_codec == "libopus":  # takes interleaved samples
                af = av.AudioFrame.from_ndarray(
                    np.stack([s, s], axis=1).reshape(1, -1), format="flt", layout="stereo"
                )
            else:
                af = av.AudioFrame.from_ndarray(np.stack([s, s]), format="fltp", layout="stereo")
            af.sample_rate = 48000
            af.pts = abase + ai * frame
            af.time_base = fractions.Fraction(1, 48000)
            for pkt in a.encode(af):
                out.mux(pkt)
            ai += 1
    for pkt in v.encode(None):
        out.mux(pkt)
    if a is not None:
        for pkt in a.encode(None):
            out.mux(pkt)
    out.close()
    return bytes(sink.data) if live else sink.getvalue()


def top_level(data: bytes) -> list[ebml.Element]:
    """The Segment's children (level 1), following unknown-size Clusters."""
    head = ebml.read_header(data, 0)
    seg = ebml.read_header(data, head.end)
    out = []
    pos = seg.data_start
    end = len(data) if seg.size == ebml.UNKNOWN_SIZE else seg.end
    while pos < end:
        el = ebml.read_header(data, pos)
        out.append(el)
        if el.size != ebml.UNKNOWN_SIZE:
            pos = el.end
            continue
        pos = el.data_start
        while pos < end:
            c = ebml.read_header(data, pos)
            if c.id in mkv.LEVEL1 or c.id == mkv.EBML_HEADER:
                break
            pos = c.end
    return out


def clusters(data: bytes) -> list[bytes]:
    """Each Cluster element of ``data`` (as bytes)."""
    els = top_level(data)
    out = []
    for i, el in enumerate(els):
        if el.id != mkv.CLUSTER:
            continue
        end = (
            el.end
            if el.size != ebml.UNKNOWN_SIZE
            else (els[i + 1].start if i + 1 < len(els) else len(data))
        )
        out.append(data[el.start : end])
    return out


def header_part(data: bytes) -> bytes:
    """Everything before the first Cluster (EBML header, Segment start, Info, Tracks, ...)."""
    first = next(el for el in top_level(data) if el.id == mkv.CLUSTER)
    return data[: first.start]


def unknown_size_clusters(data: bytes) -> bytes:
    """Rewrite every Cluster with an unknown size, as the KVS producer SDKs send them."""
    out = bytearray()
    pos = 0
    for el in top_level(data):
        if el.id != mkv.CLUSTER:
            continue
        out += data[pos : el.start]
        out += ebml.unknown_size_header(mkv.CLUSTER)
        pos = el.data_start
    out += data[pos:]
    # The rewritten Clusters have no end marker but the next Cluster; a known-size Segment
    # would now be wrong, so make it unknown-size too.
    head = ebml.read_header(bytes(out), 0)
    seg = ebml.read_header(bytes(out), head.end)
    return bytes(out[: seg.start] + ebml.unknown_size_header(mkv.SEGMENT) + out[seg.data_start :])


def tracks_element(data: bytes) -> bytes:
    el = next(e for e in top_level(data) if e.id == mkv.TRACKS)
    return data[el.start : el.end]


def cluster_timecode(data: bytes, cluster: bytes) -> int:
    """The Timecode of ``cluster`` (a Cluster of ``data``)."""
    return mkv.read_fragment(header_part(data) + cluster).cluster_timecode


def segment_start(scale: int = 1_000_000) -> bytes:
    """EBML header, unknown-size Segment and Info, as a live producer starts."""
    info = ebml.master(
        mkv.INFO, ebml.uint(mkv.TIMECODE_SCALE, scale), ebml.string(mkv.MUXING_APP, "test")
    )
    return mkv.ebml_header() + ebml.unknown_size_header(mkv.SEGMENT) + info


def craft_cluster(timecode: int, children: list[bytes], *, unknown_size: bool = False) -> bytes:
    body = ebml.uint(mkv.TIMECODE, timecode) + b"".join(children)
    if unknown_size:
        return ebml.unknown_size_header(mkv.CLUSTER) + body
    return ebml.element(mkv.CLUSTER, body)


def block(track: int, relative: int, data: bytes, keyframe: bool = True) -> bytes:
    return mkv.simple_block(track, relative, data, keyframe)


def video_only_tracks() -> bytes:
    return mkv.tracks(
        [mkv.Track(1, mkv.CODEC_H264, b"\x01\x64\x00\x1f\xff\xe0\x00", width=64, height=64)]
    )


def _sized(element_id: int, payload: bytes) -> bytes:
    """An element with the 8-byte size field the KVS Producer SDK (PIC mkvgen) writes."""
    return ebml.encode_id(element_id) + ebml.encode_size(len(payload), 8) + payload


def sdk_tags(name: str, value: str = "", siblings: list[tuple[str, str]] | None = None) -> bytes:
    """Tags as PIC's mkvgenGenerateTagsChain writes them: Tags > Tag > SimpleTag (no Targets),
    the SimpleTags of the same event (MKV_TREE_SIMPLE) as siblings in the Tag."""

    def simple(n: str, v: str) -> bytes:
        return _sized(
            mkv.SIMPLE_TAG, _sized(mkv.TAG_NAME, n.encode()) + _sized(mkv.TAG_STRING, v.encode())
        )

    tag = simple(name, value) + b"".join(simple(n, v) for n, v in siblings or [])
    return _sized(mkv.TAGS, _sized(mkv.TAG, tag))


END_OF_FRAGMENT = sdk_tags("AWS_KINESISVIDEO_END_OF_FRAGMENT")
