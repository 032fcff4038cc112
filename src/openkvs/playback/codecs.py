"""Codec private data playback needs: AVC decoder configuration (avcC) and AAC
AudioSpecificConfig; RFC 6381 codec strings; AVCC ↔ Annex B and ADTS framing for MPEG-TS.

Pure functions; malformed input raises ``ValueError``.
"""

from __future__ import annotations

import dataclasses

# Matroska names H.264 "V_MPEG4/ISO/AVC"; the KVS documentation writes "V_MPEG/ISO/AVC".
H264_CODEC_IDS = ("V_MPEG4/ISO/AVC", "V_MPEG/ISO/AVC")
AAC_CODEC_ID = "A_AAC"
_START = b"\x00\x00\x00\x01"
_AAC_RATES = (
    96000,
    88200,
    64000,
    48000,
    44100,
    32000,
    24000,
    22050,
    16000,
    12000,
    11025,
    8000,
    7350,
)


@dataclasses.dataclass(frozen=True)
class AvcConfig:
    profile: int
    compat: int
    level: int
    nal_length_size: int
    sps: tuple[bytes, ...]
    pps: tuple[bytes, ...]

    @property
    def codec_string(self) -> str:
        return f"avc1.{self.profile:02x}{self.compat:02x}{self.level:02x}"


@dataclasses.dataclass(frozen=True)
class AacConfig:
    object_type: int
    sample_rate: int
    channels: int
    frame_length: int  # samples per frame (1024, or 960)

    @property
    def codec_string(self) -> str:
        return f"mp4a.40.{self.object_type}"


def parse_avcc(data: bytes) -> AvcConfig:
    if len(data) < 7 or data[0] != 1:
        raise ValueError("AVC codec private data is not an avcC record (version 1)")
    nal_length_size = (data[4] & 3) + 1
    if nal_length_size == 3:
        raise ValueError("avcC NAL length size of 3 bytes is not allowed")
    pos = 5
    sets: list[list[bytes]] = [[], []]
    for which in (0, 1):
        if pos >= len(data):
            raise ValueError("avcC is truncated")
        count = data[pos] & (0x1F if which == 0 else 0xFF)
        pos += 1
        for _ in range(count):
            if pos + 2 > len(data):
                raise ValueError("avcC is truncated")
            n = int.from_bytes(data[pos : pos + 2], "big")
            pos += 2
            if n == 0 or pos + n > len(data):
                raise ValueError("avcC parameter set overruns the record")
            sets[which].append(bytes(data[pos : pos + n]))
            pos += n
    if not sets[0] or not sets[1]:
        raise ValueError("avcC carries no SPS or no PPS")
    return AvcConfig(data[1], data[2], data[3], nal_length_size, tuple(sets[0]), tuple(sets[1]))


def parse_asc(data: bytes) -> AacConfig:
    """Parse an AAC AudioSpecificConfig (the common forms: explicit or indexed rate)."""
    if len(data) < 2:
        raise ValueError("AAC codec private data is shorter than 2 bytes")
    bits = int.from_bytes(data[:8].ljust(8, b"\0"), "big")
    pos = 64

    def take(n: int) -> int:
        nonlocal pos
        pos -= n
        return (bits >> pos) & ((1 << n) - 1)

    aot = take(5)
    if aot == 31:
        aot = 32 + take(6)
    index = take(4)
    if index == 15:
        rate = take(24)
    elif index < len(_AAC_RATES):
        rate = _AAC_RATES[index]
    else:
        raise ValueError(f"reserved AAC sampling frequency index {index}")
    channels = take(4)
    frame_length = 1024
    if aot in (1, 2, 3, 4, 6, 7) and take(1):
        frame_length = 960
    if aot == 0 or rate <= 0:
        raise ValueError("AudioSpecificConfig has no object type or sample rate")
    return AacConfig(aot, rate, channels, frame_length)


def split_avcc(sample: bytes, nal_length_size: int) -> list[bytes]:
    """The NAL units of a length-prefixed (AVCC) access unit."""
    nals: list[bytes] = []
    pos = 0
    n = len(sample)
    while pos < n:
        if pos + nal_length_size > n:
            raise ValueError("truncated NAL length prefix")
        size = int.from_bytes(sample[pos : pos + nal_length_size], "big")
        pos += nal_length_size
        if pos + size > n:
            raise ValueError("NAL unit overruns the access unit")
        nals.append(sample[pos : pos + size])
        pos += size
    return nals


def has_parameter_sets(sample: bytes, nal_length_size: int) -> bool:
    try:
        return any(nal and nal[0] & 0x1F == 7 for nal in split_avcc(sample, nal_length_size))
    except ValueError:
        return False


def with_parameter_sets(sample: bytes, cfg: AvcConfig) -> bytes:
    """Prefix an AVCC keyframe with the SPS/PPS of ``cfg`` unless it carries its own."""
    if has_parameter_sets(sample, cfg.nal_length_size):
        return sample
    n = cfg.nal_length_size
    prefix = b"".join(len(p).to_bytes(n, "big") + p for p in (*cfg.sps, *cfg.pps))
    return prefix + sample


def avcc_to_annexb(sample: bytes, cfg: AvcConfig, *, keyframe: bool) -> bytes:
    """Annex B access unit (for MPEG-TS), with SPS/PPS in front of keyframes."""
    nals = split_avcc(sample, cfg.nal_length_size)
    out = bytearray()
    if keyframe and not any(nal and nal[0] & 0x1F == 7 for nal in nals):
        for ps in (*cfg.sps, *cfg.pps):
            out += _START + ps
    for nal in nals:
        if nal and nal[0] & 0x1F == 9:  # the muxer writes its own access unit delimiters
            continue
        out += _START + nal
    return bytes(out)


def adts_frame(payload: bytes, cfg: AacConfig) -> bytes:
    """One raw AAC frame with an ADTS header (for MPEG-TS)."""
    try:
        index = _AAC_RATES.index(cfg.sample_rate)
    except ValueError as exc:
        raise ValueError(f"sample rate {cfg.sample_rate} has no ADTS index") from exc
    if not 1 <= cfg.object_type <= 4:
        raise ValueError(f"AAC object type {cfg.object_type} cannot be carried in ADTS")
    length = len(payload) + 7
    if length >= 1 << 13:
        raise ValueError("AAC frame too large for ADTS")
    channels = cfg.channels & 7
    header = bytes(
        [
            0xFF,
            0xF1,
            ((cfg.object_type - 1) << 6) | (index << 2) | (channels >> 2),
            ((channels & 3) << 6) | (length >> 11),
            (length >> 3) & 0xFF,
            ((length & 7) << 5) | 0x1F,
            0xFC,
        ]
    )
    return header + payload
