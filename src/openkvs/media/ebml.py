"""EBML (the binary format under Matroska): element encoding and a reader for whole buffers.

Element IDs are given with their length-marker bits included (``0x1A45DFA3``), as in the
Matroska specification. Sizes are variable-length integers; ``UNKNOWN_SIZE`` marks an element
whose end is found by the start of a sibling (live streams).
"""

from __future__ import annotations

import dataclasses
import struct
from collections.abc import Iterator

UNKNOWN_SIZE = -1
_UNKNOWN_8 = b"\x01\xff\xff\xff\xff\xff\xff\xff"


def encode_id(element_id: int) -> bytes:
    n = (element_id.bit_length() + 7) // 8
    return element_id.to_bytes(max(n, 1), "big")


def encode_size(size: int, length: int | None = None) -> bytes:
    """Encode ``size`` as an EBML vint (minimal length unless ``length`` is given)."""
    if size == UNKNOWN_SIZE:
        return _UNKNOWN_8
    if length is None:
        length = 1
        while size >= (1 << (7 * length)) - 1:
            length += 1
    if length > 8 or size >= (1 << (7 * length)) - 1:
        raise ValueError(f"size {size} does not fit in {length} bytes")
    return ((1 << (7 * length)) | size).to_bytes(length, "big")


def element(element_id: int, payload: bytes) -> bytes:
    return encode_id(element_id) + encode_size(len(payload)) + payload


def uint(element_id: int, value: int) -> bytes:
    n = max(1, (value.bit_length() + 7) // 8)
    return element(element_id, value.to_bytes(n, "big"))


def sint(element_id: int, value: int) -> bytes:
    n = 1
    while not -(1 << (8 * n - 1)) <= value < (1 << (8 * n - 1)):
        n += 1
    return element(element_id, value.to_bytes(n, "big", signed=True))


def float64(element_id: int, value: float) -> bytes:
    return element(element_id, struct.pack(">d", value))


def string(element_id: int, value: str) -> bytes:
    return element(element_id, value.encode("utf-8"))


def master(element_id: int, *children: bytes) -> bytes:
    return element(element_id, b"".join(children))


def unknown_size_header(element_id: int) -> bytes:
    return encode_id(element_id) + _UNKNOWN_8


# -- reading -----------------------------------------------------------------------------------


def read_vint(data: bytes | memoryview, pos: int, *, is_id: bool = False) -> tuple[int, int]:
    """Read a vint at ``pos``; return (value, length). IDs keep their marker bits.

    Raises ``ValueError`` if the data is truncated or the first byte is invalid. For sizes, an
    all-ones value is returned as ``UNKNOWN_SIZE``.
    """
    if pos >= len(data):
        raise ValueError("EBML data is truncated")
    first = data[pos]
    if first == 0:
        raise ValueError("invalid EBML vint (first byte is zero)")
    length = 8 - first.bit_length() + 1
    if is_id and length > 4:
        raise ValueError("invalid EBML element ID length")
    if pos + length > len(data):
        raise ValueError("EBML data is truncated")
    raw = int.from_bytes(data[pos : pos + length], "big")
    if is_id:
        return raw, length
    value = raw & ((1 << (7 * length)) - 1)
    if value == (1 << (7 * length)) - 1:
        return UNKNOWN_SIZE, length
    return value, length


@dataclasses.dataclass(frozen=True)
class Element:
    id: int
    start: int  # offset of the ID
    data_start: int  # offset of the payload
    size: int  # payload size, or UNKNOWN_SIZE

    @property
    def end(self) -> int:
        if self.size == UNKNOWN_SIZE:
            raise ValueError("element has unknown size")
        return self.data_start + self.size


def read_header(data: bytes | memoryview, pos: int) -> Element:
    eid, n = read_vint(data, pos, is_id=True)
    size, m = read_vint(data, pos + n)
    return Element(eid, pos, pos + n + m, size)


def iter_elements(
    data: bytes | memoryview, start: int = 0, end: int | None = None
) -> Iterator[Element]:
    """Iterate over sibling elements in ``data[start:end]`` (known sizes only)."""
    end = len(data) if end is None else end
    pos = start
    while pos < end:
        el = read_header(data, pos)
        if el.size == UNKNOWN_SIZE:
            raise ValueError(f"unexpected unknown-size element 0x{el.id:X}")
        if el.end > end:
            raise ValueError(f"element 0x{el.id:X} overruns its parent")
        yield el
        pos = el.end


def read_uint(data: bytes | memoryview, el: Element) -> int:
    if el.size > 8:
        raise ValueError("EBML unsigned integer longer than 8 bytes")
    return int.from_bytes(data[el.data_start : el.end], "big")


def read_float(data: bytes | memoryview, el: Element) -> float:
    raw = bytes(data[el.data_start : el.end])
    if el.size == 4:
        return float(struct.unpack(">f", raw)[0])
    if el.size == 8:
        return float(struct.unpack(">d", raw)[0])
    if el.size == 0:
        return 0.0
    raise ValueError("EBML float must be 4 or 8 bytes")


def read_string(data: bytes | memoryview, el: Element) -> str:
    return bytes(data[el.data_start : el.end]).rstrip(b"\x00").decode("utf-8", "replace")


def read_bytes(data: bytes | memoryview, el: Element) -> bytes:
    return bytes(data[el.data_start : el.end])
