"""Reading GetMedia payloads the way a live consumer must: element by element, never asking for
more bytes than the chunk being read still holds (a live tail has no end to wait for)."""

from __future__ import annotations

from collections.abc import Callable

from .ebmlcheck import CLUSTER, EBML, SEGMENT, TAGS, UNKNOWN


class Ended(Exception):
    """The response ended."""


def read_chunk(read: Callable[[int], bytes]) -> bytes:
    """One GetMedia chunk: EBML header, Segment, ..., Cluster, trailing Tags (or an error chunk)."""
    buf = bytearray()

    def take(n: int) -> bytes:
        out = b""
        while len(out) < n:
            data = read(n - len(out))
            if not data:
                raise Ended
            out += data
        buf.extend(out)
        return out

    def vint(keep_marker: bool) -> int:
        first = take(1)[0]
        length = 9 - first.bit_length()
        rest = take(length - 1)
        value = int.from_bytes(bytes([first]) + rest, "big")
        if keep_marker:
            return value
        value &= (1 << (7 * length)) - 1
        return UNKNOWN if value == (1 << (7 * length)) - 1 else value

    def header() -> tuple[int, int]:
        return vint(True), vint(False)

    eid, size = header()
    assert eid == EBML
    take(size)
    eid, size = header()
    assert eid == SEGMENT
    if size != UNKNOWN:  # an error chunk: a known-size Segment of tags
        take(size)
        return bytes(buf)
    seen_cluster = False
    while True:
        eid, size = header()
        assert size != UNKNOWN
        take(size)
        if eid == CLUSTER:
            seen_cluster = True
        elif eid == TAGS and seen_cluster:
            return bytes(buf)
