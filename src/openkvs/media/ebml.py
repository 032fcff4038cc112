"""EBML (the binary format under Matroska): element encoding, and the one reader of vints and
element headers (for whole buffers, and with ``Truncated`` for push parsers).

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

Buffer = bytes | bytearray | memoryview


class Truncated(ValueError):
    """The data ends before the number or element header being read does.

    A push parser waits for more bytes on this one; every other ``ValueError`` from this module
    means bytes that can never be EBML.
    """


def read_vint(
    data: Buffer, pos: int, *, is_id: bool = False, end: int | None = None, unknown: bool = True
) -> tuple[int, int]:
    """Read a vint at ``pos``, bounded by ``end`` (default: the end of ``data``).

    Returns (value, length). IDs (``is_id``) keep their marker bits and are at most 4 bytes. For
    other vints an all-ones value is returned as ``UNKNOWN_SIZE`` (what it means for an element
    size) unless ``unknown`` is False (plain numbers: block track numbers, lace sizes).

    Raises ``Truncated`` when the vint runs past ``end``, ``ValueError`` when its first byte is
    invalid.
    """
    if end is None:
        end = len(data)
    if pos >= end:
        raise Truncated(f"EBML data is truncated at offset {pos}")
    first = data[pos]
    if first == 0:
        raise ValueError(f"invalid EBML length marker at offset {pos}")
    length = 9 - first.bit_length()
    if is_id and length > 4:
        raise ValueError(f"invalid EBML element ID at offset {pos}")
    if pos + length > end:
        raise Truncated(f"EBML data is truncated at offset {pos}")
    raw = first if length == 1 else int.from_bytes(data[pos : pos + length], "big")
    if is_id:
        return raw, length
    mask = (1 << (7 * length)) - 1
    value = raw & mask
    if unknown and value == mask:
        return UNKNOWN_SIZE, length
    return value, length


def read_signed_vint(data: Buffer, pos: int, end: int) -> tuple[int, int]:
    """Read a signed vint (the size differences of EBML lacing); return (value, length)."""
    raw, length = read_vint(data, pos, end=end, unknown=False)
    return raw - ((1 << (7 * length - 1)) - 1), length


def header_at(data: Buffer, pos: int, end: int | None = None) -> tuple[int, int, int]:
    """(id, size, payload offset) of the element whose header starts at ``pos``.

    The tuple form of ``read_header``, for loops over many elements. ``size`` may be
    ``UNKNOWN_SIZE``; the payload itself is not checked against ``end``. Errors are those of
    ``read_vint``.
    """
    if end is None:
        end = len(data)
    # Fast path: a well-formed header that fits; anything else goes through read_vint, which
    # raises the precise error.
    if pos < end:
        first = data[pos]
        if first >= 0x10:
            size_pos = pos + 9 - first.bit_length()
            if size_pos < end:
                s0 = data[size_pos]
                if s0:
                    m = 9 - s0.bit_length()
                    body = size_pos + m
                    if body <= end:
                        eid = first
                        if size_pos > pos + 1:
                            eid = int.from_bytes(data[pos:size_pos], "big")
                        mask = (1 << (7 * m)) - 1
                        size = s0 if m == 1 else int.from_bytes(data[size_pos:body], "big")
                        size &= mask
                        return eid, (UNKNOWN_SIZE if size == mask else size), body
    eid, n = read_vint(data, pos, is_id=True, end=end)
    size, m = read_vint(data, pos + n, end=end)
    return eid, size, pos + n + m


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


def read_header(data: Buffer, pos: int) -> Element:
    eid, size, data_start = header_at(data, pos)
    return Element(eid, pos, data_start, size)


def iter_elements(data: Buffer, start: int = 0, end: int | None = None) -> Iterator[Element]:
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


def uint_at(data: Buffer, start: int, end: int) -> int:
    """The unsigned integer whose payload is ``data[start:end]`` (empty means 0)."""
    if end - start > 8:
        raise ValueError("EBML unsigned integer longer than 8 bytes")
    return int.from_bytes(data[start:end], "big")


def read_uint(data: Buffer, el: Element) -> int:
    return uint_at(data, el.data_start, el.end)


def read_float(data: Buffer, el: Element) -> float:
    raw = bytes(data[el.data_start : el.end])
    if el.size == 4:
        return float(struct.unpack(">f", raw)[0])
    if el.size == 8:
        return float(struct.unpack(">d", raw)[0])
    if el.size == 0:
        return 0.0
    raise ValueError("EBML float must be 4 or 8 bytes")


def read_string(data: Buffer, el: Element) -> str:
    return bytes(data[el.data_start : el.end]).rstrip(b"\x00").decode("utf-8", "replace")


def read_bytes(data: Buffer, el: Element) -> bytes:
    return bytes(data[el.data_start : el.end])
