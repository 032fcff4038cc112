"""Opus as stored and served without decoding: packet durations (RFC 6716 §3.1), the OpusHead
that Matroska's A_OPUS CodecPrivate holds (RFC 7845 §5.1) and the ``dOps`` box of Opus in
ISO BMFF (both carry the same fields: OpusHead little-endian, ``dOps`` big-endian).

Pure functions; malformed input raises ``ValueError``.
"""

from __future__ import annotations

import dataclasses
import struct

CODEC_ID = "A_OPUS"  # Matroska
RATE = 48000  # Opus packets are timed at 48 kHz whatever the input rate was
# Matroska's codec mapping for Opus: a decoder starting at a seek point needs 80 ms of preceding
# packets to converge (SeekPreRoll, in ns).
SEEK_PRE_ROLL_NS = 80_000_000

# Samples (at 48 kHz) of one frame for each TOC configuration (RFC 6716 §3.1): SILK 10/20/40/60
# ms, hybrid 10/20 ms, CELT 2.5/5/10/20 ms.
FRAME_SAMPLES = (480, 960, 1920, 2880) * 3 + (480, 960) * 2 + (120, 240, 480, 960) * 4
MAX_PACKET_SAMPLES = 5760  # 120 ms


def packet_samples(packet: bytes) -> int:
    """The duration of an Opus packet in 48 kHz samples, from its TOC byte (and frame count
    byte, code 3). Raises ``ValueError`` for an empty or malformed packet."""
    if not packet:
        raise ValueError("empty Opus packet")
    toc = packet[0]
    code = toc & 0x03
    if code == 0:
        frames = 1
    elif code in (1, 2):
        frames = 2
    else:
        if len(packet) < 2:
            raise ValueError("Opus code 3 packet without its frame count")
        frames = packet[1] & 0x3F
        if frames == 0:
            raise ValueError("Opus code 3 packet with no frames")
    samples = frames * FRAME_SAMPLES[toc >> 3]
    if samples > MAX_PACKET_SAMPLES:
        raise ValueError(f"Opus packet of {samples} samples is longer than 120 ms")
    return samples


@dataclasses.dataclass(frozen=True)
class OpusHead:
    channels: int
    pre_skip: int = 0
    input_rate: int = RATE
    gain: int = 0  # Q7.8 dB
    family: int = 0  # channel mapping family
    mapping: bytes = b""  # stream count, coupled count, channel mapping (family != 0)

    def to_bytes(self) -> bytes:
        """The OpusHead packet (RFC 7845 §5.1): Matroska's A_OPUS CodecPrivate."""
        return (
            b"OpusHead"
            + struct.pack(
                "<BBHIhB", 1, self.channels, self.pre_skip, self.input_rate, self.gain, self.family
            )
            + self.mapping
        )

    def dops(self) -> bytes:
        """The payload of an ISO BMFF ``dOps`` box (Opus in ISO BMFF §4.3.2): version 0."""
        return (
            struct.pack(
                ">BBHIhB", 0, self.channels, self.pre_skip, self.input_rate, self.gain, self.family
            )
            + self.mapping
        )


def opus_head(channels: int, pre_skip: int = 0) -> OpusHead:
    """The header of a mono or stereo stream (mapping family 0)."""
    if channels not in (1, 2):
        raise ValueError(f"channel mapping family 0 has 1 or 2 channels, not {channels}")
    return OpusHead(channels, pre_skip)


def parse_opus_head(data: bytes) -> OpusHead:
    """An OpusHead packet (Matroska's A_OPUS CodecPrivate)."""
    if len(data) < 19 or data[:8] != b"OpusHead":
        raise ValueError("Opus codec private data is not an OpusHead packet")
    version, channels, pre_skip, rate, gain, family = struct.unpack("<BBHIhB", data[8:19])
    if version >> 4 != 0:
        raise ValueError(f"OpusHead version {version} is not supported")
    if channels == 0:
        raise ValueError("OpusHead has no channels")
    mapping = b""
    if family == 0:
        if channels > 2:
            raise ValueError("OpusHead mapping family 0 has more than 2 channels")
    else:
        mapping = bytes(data[19 : 21 + channels])
        if len(mapping) != 2 + channels:
            raise ValueError("OpusHead channel mapping table is truncated")
    return OpusHead(channels, pre_skip, rate, gain, family, mapping)
