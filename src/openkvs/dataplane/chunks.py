"""MKV chunks as GetMedia and GetMediaForFragmentList return them.

A chunk is a stored fragment with Matroska Tags spliced in: the fragment number and the server
and producer timestamps in a Tags element just before the Cluster (the AWS parser library reads
them when the Cluster starts), and, for GetMedia, the continuation token and the milliseconds
behind now in a Tags element after the Cluster. An error chunk is an EBML header and a
known-size Segment holding only a Tags element with the error tags.

Timestamps are decimal seconds with millisecond precision (``1700000000.123``).
"""

from __future__ import annotations

from collections.abc import Sequence

from ..media import ebml, mkv
from ..records import Fragment

CONTENT_TYPE = "video/webm"

FRAGMENT_NUMBER = "AWS_KINESISVIDEO_FRAGMENT_NUMBER"
SERVER_TIMESTAMP = "AWS_KINESISVIDEO_SERVER_TIMESTAMP"
PRODUCER_TIMESTAMP = "AWS_KINESISVIDEO_PRODUCER_TIMESTAMP"
MILLIS_BEHIND_NOW = "AWS_KINESISVIDEO_MILLIS_BEHIND_NOW"
CONTINUATION_TOKEN = "AWS_KINESISVIDEO_CONTINUATION_TOKEN"
ERROR_CODE = "AWS_KINESISVIDEO_ERROR_CODE"
ERROR_ID = "AWS_KINESISVIDEO_ERROR_ID"
# GetMediaForFragmentList: the documented names, sent alongside the GetMedia ones.
SERVER_SIDE_TIMESTAMP = "AWS_KINESISVIDEO_SERVER_SIDE_TIMESTAMP"
PRODUCER_SIDE_TIMESTAMP = "AWS_KINESISVIDEO_PRODUCER_SIDE_TIMESTAMP"
EXCEPTION_ERROR_CODE = "AWS_KINESISVIDEO_EXCEPTION_ERROR_CODE"
EXCEPTION_MESSAGE = "AWS_KINESISVIDEO_EXCEPTION_MESSAGE"

Parts = list[bytes | memoryview]
Tags = Sequence[tuple[str, str]]


def seconds(ms: int) -> str:
    """Epoch milliseconds as decimal seconds: 1700000000123 -> "1700000000.123"."""
    sign = "-" if ms < 0 else ""
    ms = abs(ms)
    return f"{sign}{ms // 1000}.{ms % 1000:03d}"


def cluster_offset(blob: bytes) -> int:
    """Offset of the first Cluster in a stored fragment (ValueError if there is none)."""
    head = ebml.read_header(blob, 0)
    if head.id != mkv.EBML_HEADER:
        raise ValueError("fragment does not start with an EBML header")
    seg = ebml.read_header(blob, head.end)
    if seg.id != mkv.SEGMENT:
        raise ValueError("fragment has no Segment")
    pos = seg.data_start
    while pos < len(blob):
        el = ebml.read_header(blob, pos)
        if el.id == mkv.CLUSTER:
            return pos
        if el.size == ebml.UNKNOWN_SIZE:
            raise ValueError(f"unknown-size element 0x{el.id:X} before the Cluster")
        pos = el.end
    raise ValueError("fragment has no Cluster")


def fragment_tags(f: Fragment) -> list[tuple[str, str]]:
    return [
        (FRAGMENT_NUMBER, f.number_str),
        (SERVER_TIMESTAMP, seconds(f.server_ts)),
        (PRODUCER_TIMESTAMP, seconds(f.producer_ts)),
    ]


def chunk(blob: bytes, pre: Tags, post: Tags = ()) -> Parts:
    """The stored fragment ``blob`` with ``pre`` tags before its Cluster and ``post`` after it."""
    at = cluster_offset(blob)
    view = memoryview(blob)
    parts: Parts = [view[:at], mkv.tags(list(pre)), view[at:]]
    if post:
        parts.append(mkv.tags(list(post)))
    return parts


def get_media_chunk(blob: bytes, f: Fragment, *, millis_behind_now: int) -> Parts:
    return chunk(
        blob,
        fragment_tags(f),
        [
            (MILLIS_BEHIND_NOW, str(max(0, millis_behind_now))),
            (CONTINUATION_TOKEN, f.number_str),
        ],
    )


def fragment_list_chunk(blob: bytes, f: Fragment) -> Parts:
    return chunk(
        blob,
        [
            *fragment_tags(f),
            (SERVER_SIDE_TIMESTAMP, seconds(f.server_ts)),
            (PRODUCER_SIDE_TIMESTAMP, seconds(f.producer_ts)),
        ],
    )


def error_chunk(tags: Tags) -> bytes:
    return mkv.ebml_header() + ebml.master(mkv.SEGMENT, mkv.tags(list(tags)))


def get_media_error(number: str, error_id: int, code: str) -> bytes:
    return error_chunk([(FRAGMENT_NUMBER, number), (ERROR_CODE, code), (ERROR_ID, str(error_id))])


def fragment_list_error(number: str, error_id: int, message: str) -> bytes:
    return error_chunk(
        [
            (FRAGMENT_NUMBER, number),
            (EXCEPTION_ERROR_CODE, str(error_id)),
            (EXCEPTION_MESSAGE, message),
        ]
    )
