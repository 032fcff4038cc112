"""H.264 bitstream helpers: Annex B / AVCC framing, NAL types, SPS parsing, avcC records.

Pure functions over bytes. Parsers raise ``ValueError`` with a precise message on malformed input.
"""

from __future__ import annotations

import dataclasses
import re

NAL_SLICE = 1
NAL_IDR = 5
NAL_SEI = 6
NAL_SPS = 7
NAL_PPS = 8
NAL_AUD = 9

_START = re.compile(b"\x00\x00\x01")

# profile_idc values whose SPS carries chroma_format_idc and friends.
_HIGH_PROFILES = {100, 110, 122, 244, 44, 83, 86, 118, 128, 138, 139, 134, 135}


def split_annexb(data: bytes) -> list[bytes]:
    """Split an Annex B byte stream into NAL units (start codes and trailing zeros removed)."""
    nals: list[bytes] = []
    starts = [m.end() for m in _START.finditer(data)]
    if not starts:
        return [data] if data else []
    for i, begin in enumerate(starts):
        end = starts[i + 1] - 3 if i + 1 < len(starts) else len(data)
        nal = data[begin:end].rstrip(b"\x00") if i + 1 < len(starts) else data[begin:end]
        if nal:
            nals.append(nal)
    return nals


def split_avcc(data: bytes, length_size: int = 4) -> list[bytes]:
    """Split length-prefixed (AVCC) data into NAL units."""
    nals = []
    i = 0
    while i < len(data):
        if i + length_size > len(data):
            raise ValueError("AVCC data is truncated")
        n = int.from_bytes(data[i : i + length_size], "big")
        i += length_size
        if n == 0 or i + n > len(data):
            raise ValueError("AVCC NAL length is out of range")
        nals.append(data[i : i + n])
        i += n
    return nals


def to_avcc(nals: list[bytes]) -> bytes:
    return b"".join(len(n).to_bytes(4, "big") + n for n in nals)


def to_annexb(nals: list[bytes]) -> bytes:
    return b"".join(b"\x00\x00\x00\x01" + n for n in nals)


def nal_type(nal: bytes) -> int:
    return nal[0] & 0x1F if nal else 0


def is_keyframe(nals: list[bytes]) -> bool:
    return any(nal_type(n) == NAL_IDR for n in nals)


def annexb_has_idr(data: bytes) -> bool:
    """True if an Annex B access unit contains an IDR slice (cheap scan, no splitting)."""
    for m in _START.finditer(data):
        i = m.end()
        if i < len(data) and data[i] & 0x1F == NAL_IDR:
            return True
    return False


def unescape(rbsp: bytes) -> bytes:
    """Remove emulation-prevention bytes (00 00 03 → 00 00)."""
    return rbsp.replace(b"\x00\x00\x03", b"\x00\x00") if b"\x00\x00\x03" in rbsp else rbsp


class BitReader:
    def __init__(self, data: bytes) -> None:
        self._data = data
        self._pos = 0

    def bit(self) -> int:
        byte = self._pos >> 3
        if byte >= len(self._data):
            raise ValueError("SPS is truncated")
        value = (self._data[byte] >> (7 - (self._pos & 7))) & 1
        self._pos += 1
        return value

    def bits(self, n: int) -> int:
        value = 0
        for _ in range(n):
            value = (value << 1) | self.bit()
        return value

    def ue(self) -> int:
        zeros = 0
        while self.bit() == 0:
            zeros += 1
            if zeros > 31:
                raise ValueError("SPS has an invalid Exp-Golomb code")
        return (1 << zeros) - 1 + self.bits(zeros)

    def se(self) -> int:
        k = self.ue()
        return (k + 1) // 2 if k & 1 else -(k // 2)


@dataclasses.dataclass(frozen=True)
class Sps:
    profile_idc: int
    constraint_flags: int
    level_idc: int
    width: int
    height: int
    raw: bytes
    chroma_format_idc: int = 1
    bit_depth_luma: int = 8
    bit_depth_chroma: int = 8

    @property
    def profile_name(self) -> str:
        return profile_name(self.profile_idc, self.constraint_flags)

    @property
    def codec_string(self) -> str:
        """RFC 6381 codec string, e.g. ``avc1.64001f``."""
        return f"avc1.{self.profile_idc:02x}{self.constraint_flags:02x}{self.level_idc:02x}"


def profile_name(profile_idc: int, constraint_flags: int) -> str:
    c1 = bool(constraint_flags & 0x40)
    c4 = bool(constraint_flags & 0x08)
    c5 = bool(constraint_flags & 0x04)
    if profile_idc == 66:
        return "constrained-baseline" if c1 else "baseline"
    if profile_idc == 77:
        return "main"
    if profile_idc == 88:
        return "extended"
    if profile_idc == 100:
        if c4 and c5:
            return "constrained-high"
        if c4:
            return "progressive-high"
        return "high"
    return {110: "high-10", 122: "high-4:2:2", 244: "high-4:4:4"}.get(
        profile_idc, f"profile-{profile_idc}"
    )


def _skip_scaling_list(r: BitReader, size: int) -> None:
    last, nxt = 8, 8
    for _ in range(size):
        if nxt != 0:
            nxt = (last + r.se() + 256) % 256
        last = nxt if nxt != 0 else last


def parse_sps(nal: bytes) -> Sps:
    """Parse an SPS NAL unit (with its one-byte header) far enough to get profile and size."""
    if len(nal) < 4 or nal_type(nal) != NAL_SPS:
        raise ValueError("not an SPS NAL unit")
    r = BitReader(unescape(nal[1:]))
    profile_idc = r.bits(8)
    constraint = r.bits(8)
    level_idc = r.bits(8)
    r.ue()  # seq_parameter_set_id
    chroma_format_idc = 1
    depth_luma = depth_chroma = 8
    if profile_idc in _HIGH_PROFILES:
        chroma_format_idc = r.ue()
        if chroma_format_idc > 3:
            raise ValueError("SPS has an invalid chroma_format_idc")
        if chroma_format_idc == 3:
            r.bit()  # separate_colour_plane_flag
        depth_luma = r.ue() + 8
        depth_chroma = r.ue() + 8
        if depth_luma > 14 or depth_chroma > 14:
            raise ValueError("SPS has an invalid bit depth")
        r.bit()  # qpprime_y_zero_transform_bypass_flag
        if r.bit():  # seq_scaling_matrix_present_flag
            for i in range(8 if chroma_format_idc != 3 else 12):
                if r.bit():
                    _skip_scaling_list(r, 16 if i < 6 else 64)
    r.ue()  # log2_max_frame_num_minus4
    poc_type = r.ue()
    if poc_type == 0:
        r.ue()
    elif poc_type == 1:
        r.bit()
        r.se()
        r.se()
        cycle = r.ue()
        if cycle > 255:
            raise ValueError("SPS has too many ref frames in POC cycle")
        for _ in range(cycle):
            r.se()
    r.ue()  # max_num_ref_frames
    r.bit()  # gaps_in_frame_num_value_allowed_flag
    width_mbs = r.ue() + 1
    height_map_units = r.ue() + 1
    frame_mbs_only = r.bit()
    if not frame_mbs_only:
        r.bit()  # mb_adaptive_frame_field_flag
    r.bit()  # direct_8x8_inference_flag
    width = width_mbs * 16
    height = height_map_units * 16 * (2 - frame_mbs_only)
    if r.bit():  # frame_cropping_flag
        left, right, top, bottom = r.ue(), r.ue(), r.ue(), r.ue()
        sub_w = 1 if chroma_format_idc == 3 else 2
        sub_h = 2 if chroma_format_idc == 1 else 1
        crop_x = sub_w if chroma_format_idc else 1
        crop_y = (sub_h if chroma_format_idc else 1) * (2 - frame_mbs_only)
        width -= (left + right) * crop_x
        height -= (top + bottom) * crop_y
    if width <= 0 or height <= 0 or width > 16384 or height > 16384:
        raise ValueError(f"SPS gives an impossible size {width}x{height}")
    return Sps(
        profile_idc,
        constraint,
        level_idc,
        width,
        height,
        bytes(nal),
        chroma_format_idc,
        depth_luma,
        depth_chroma,
    )


def avc_decoder_configuration(sps: list[bytes], pps: list[bytes]) -> bytes:
    """Build an AVCDecoderConfigurationRecord (the avcC box body / MKV CodecPrivate)."""
    if not sps or not pps:
        raise ValueError("an avcC record needs at least one SPS and one PPS")
    first = sps[0]
    out = bytearray([1, first[1], first[2], first[3], 0xFF, 0xE0 | len(sps)])
    for s in sps:
        out += len(s).to_bytes(2, "big") + s
    out.append(len(pps))
    for p in pps:
        out += len(p).to_bytes(2, "big") + p
    if first[1] in _HIGH_PROFILES:
        info = parse_sps(first)
        out += bytes(
            [
                0xFC | (info.chroma_format_idc & 3),
                0xF8 | ((info.bit_depth_luma - 8) & 7),
                0xF8 | ((info.bit_depth_chroma - 8) & 7),
                0,
            ]
        )
    return bytes(out)


def parse_avc_decoder_configuration(record: bytes) -> tuple[list[bytes], list[bytes]]:
    """Return (SPS list, PPS list) from an avcC record."""
    if len(record) < 7 or record[0] != 1:
        raise ValueError("not an AVCDecoderConfigurationRecord")
    i = 5
    n_sps = record[i] & 0x1F
    i += 1
    sps, pps = [], []
    for _ in range(n_sps):
        n = int.from_bytes(record[i : i + 2], "big")
        sps.append(record[i + 2 : i + 2 + n])
        i += 2 + n
    if i >= len(record):
        raise ValueError("avcC record is truncated")
    n_pps = record[i]
    i += 1
    for _ in range(n_pps):
        n = int.from_bytes(record[i : i + 2], "big")
        pps.append(record[i + 2 : i + 2 + n])
        i += 2 + n
    if i > len(record) or any(not x for x in sps + pps):
        raise ValueError("avcC record is truncated")
    return sps, pps
