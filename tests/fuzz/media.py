"""Valid inputs for the parser fuzzers to start from (each then mutated by hypothesis)."""

from __future__ import annotations

from openkvs.media import ebml, h264, mkv

# A real 64x64 High-profile SPS and a PPS, as an encoder emits them.
SPS = bytes.fromhex("6764003eacb2084d08000003000800f4240478402124")
PPS = bytes.fromhex("68ebc3cb22c0")
IDR = b"\x65\x88\x84\x00\x33\xff" + bytes(30)
P_FRAME = b"\x41\x9a\x24\x6c\x41\x0f" + bytes(20)


def producer_mkv(timecode_ms: int, clusters: int = 2, *, tags: bool = True) -> bytes:
    """What a live producer sends: EBML header, unknown-size Segment, Info, Tracks (H.264 and
    AAC), producer Tags, and known-size Clusters of SimpleBlocks."""
    info = ebml.master(
        mkv.INFO, ebml.uint(mkv.TIMECODE_SCALE, 1_000_000), ebml.string(mkv.MUXING_APP, "fuzz")
    )
    avcc = h264.avc_decoder_configuration([SPS], [PPS])
    tracks = mkv.tracks(
        [
            mkv.Track(1, mkv.CODEC_H264, avcc, width=64, height=64),
            mkv.Track(
                2,
                "A_AAC",
                b"\x11\x90",
                track_type=mkv.TRACK_TYPE_AUDIO,
                sample_rate=48000.0,
                channels=1,
            ),
        ]
    )
    out = mkv.ebml_header() + ebml.unknown_size_header(mkv.SEGMENT) + info + tracks
    for i in range(clusters):
        if tags:
            out += mkv.tags([("PRODUCER_TAG", f"value-{i}")])
        blocks = b"".join(
            mkv.simple_block(
                1, 33 * k, h264.to_avcc([SPS, PPS, IDR] if k == 0 else [P_FRAME]), k == 0
            )
            + mkv.simple_block(2, 21 * k, b"\x21\x10" + bytes(10), True)
            for k in range(3)
        )
        out += ebml.element(mkv.CLUSTER, ebml.uint(mkv.TIMECODE, timecode_ms + i * 100) + blocks)
    return out
