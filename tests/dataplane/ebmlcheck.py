"""An EBML reader for the tests, independent of openkvs.media: splits a GetMedia payload into
chunks and reports, for each, the tags before and after its Cluster and the Cluster's blocks."""

from __future__ import annotations

import dataclasses

EBML, SEGMENT, CLUSTER, TAGS, TAG, SIMPLE_TAG = (
    0x1A45DFA3,
    0x18538067,
    0x1F43B675,
    0x1254C367,
    0x7373,
    0x67C8,
)
TAG_NAME, TAG_STRING, TIMECODE, SIMPLE_BLOCK, TRACKS = 0x45A3, 0x4487, 0xE7, 0xA3, 0x1654AE6B
UNKNOWN = -1


def vint(data: bytes, pos: int, keep_marker: bool) -> tuple[int, int]:
    first = data[pos]
    length = 1
    while length <= 8 and not first & (0x80 >> (length - 1)):
        length += 1
    if length > 8:
        raise ValueError(f"bad vint at {pos}")
    value = int.from_bytes(data[pos : pos + length], "big")
    if keep_marker:
        return value, length
    value &= (1 << (7 * length)) - 1
    return (UNKNOWN if value == (1 << (7 * length)) - 1 else value), length


def element(data: bytes, pos: int) -> tuple[int, int, int]:
    """(id, payload start, payload size) of the element at ``pos``."""
    eid, n = vint(data, pos, True)
    size, m = vint(data, pos + n, False)
    return eid, pos + n + m, size


def simple_tags(data: bytes, start: int, end: int) -> list[tuple[str, str]]:
    out = []
    pos = start
    while pos < end:
        eid, ds, size = element(data, pos)
        if eid == TAG:
            p = ds
            while p < ds + size:
                sid, sds, ssize = element(data, p)
                if sid == SIMPLE_TAG:
                    name = value = None
                    q = sds
                    while q < sds + ssize:
                        fid, fds, fsize = element(data, q)
                        if fid == TAG_NAME:
                            name = data[fds : fds + fsize].decode()
                        elif fid == TAG_STRING:
                            value = data[fds : fds + fsize].decode()
                        q = fds + fsize
                    assert name is not None and value is not None
                    out.append((name, value))
                p = sds + ssize
        pos = ds + size
    return out


@dataclasses.dataclass
class Chunk:
    start: int
    end: int
    before: dict[str, str]  # tags between the Segment start and the Cluster
    after: dict[str, str]  # tags after the Cluster
    tracks: bytes
    cluster_timecode: int | None
    blocks: list[tuple[int, int, bytes]]  # (track, absolute timecode, frame data)
    raw: bytes = b""


def split_chunks(payload: bytes) -> list[Chunk]:
    """Walk a GetMedia / GetMediaForFragmentList payload chunk by chunk."""
    chunks: list[Chunk] = []
    pos = 0
    while pos < len(payload):
        eid, ds, size = element(payload, pos)
        assert eid == EBML, f"expected an EBML header at {pos}, got 0x{eid:X}"
        start = pos
        pos = ds + size
        sid, sds, ssize = element(payload, pos)
        assert sid == SEGMENT
        seg_end = len(payload) if ssize == UNKNOWN else sds + ssize
        chunk = Chunk(start, 0, {}, {}, b"", None, [])
        pos = sds
        while pos < seg_end:
            eid, ds, size = element(payload, pos)
            if eid == EBML:
                break
            assert size != UNKNOWN, "only the Segment may have an unknown size"
            if eid == TAGS:
                target = chunk.before if chunk.cluster_timecode is None else chunk.after
                target.update(simple_tags(payload, ds, ds + size))
            elif eid == TRACKS:
                chunk.tracks = payload[pos : ds + size]
            elif eid == CLUSTER:
                p = ds
                tc = 0
                while p < ds + size:
                    cid, cds, csize = element(payload, p)
                    if cid == TIMECODE:
                        tc = int.from_bytes(payload[cds : cds + csize], "big")
                        chunk.cluster_timecode = tc
                    elif cid == SIMPLE_BLOCK:
                        track, n = vint(payload, cds, False)
                        rel = int.from_bytes(payload[cds + n : cds + n + 2], "big", signed=True)
                        chunk.blocks.append((track, tc + rel, payload[cds + n + 3 : cds + csize]))
                    p = cds + csize
            pos = ds + size
        chunk.end = pos
        chunk.raw = payload[start:pos]
        chunks.append(chunk)
    return chunks
