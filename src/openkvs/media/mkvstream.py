"""Incremental Matroska parsing for PutMedia: bytes go in as they arrive, fragments come out.

A PutMedia body is one MKV Segment (usually of unknown size) holding Info, Tracks, optional Tags
and then Clusters, each of which becomes one fragment. ``MkvStreamParser.feed`` takes whatever
bytes the connection delivered and returns events:

- ``FragmentStarted`` when a Cluster's Timecode has been read (the BUFFERING acknowledgement);
- ``FragmentReady`` when a Cluster is complete and valid (RECEIVED; the caller then stores it);
- ``FragmentRejected`` when a Cluster breaks a per-fragment rule; the parser skips the rest of
  it without buffering and carries on with the next Cluster. Producer Tags that cannot be taken
  (a reserved name, too many bytes) refuse the fragment they travel with, the next one;
- ``StreamRejected`` when the stream itself is unusable (malformed EBML, a second Segment, a
  Cluster before Tracks, too many tracks); the parser then ignores all further input.

Producer Tags travel with the next Cluster's fragment. Three reserved tag names of the KVS
Producer SDK are understood, in the layout its PIC library writes (Tags > Tag > SimpleTag, with the
SimpleTags of the same event as siblings in that Tag):

- ``AWS_KINESISVIDEO_END_OF_FRAGMENT`` (empty value) closes the open fragment: a level-1 Tags
  element ends an unknown-size Cluster, so the fragment is complete at once; the tag is dropped;
- ``AWS_KINESISVIDEO_IMAGE_GENERATION`` (with an optional ``AWS_KINESISVIDEO_IMAGE_PREFIX``) and
  ``AWS_KINESISVIDEO_NOTIFICATION``, plus the producer's name/value pairs beside them, become a
  ``KvsEvent`` of the next fragment instead of stored tags.

Any other ``AWS_KINESISVIDEO`` name is refused.

Memory stays bounded: a Cluster's blocks are kept (at most ``max_fragment_bytes``), header
elements (Info, Tracks, Tags) are capped, and everything else is skipped as it streams by.
Unknown-size Clusters end at the next level-1 element or at a clean end of input; a Cluster cut
off by a broken connection is simply never reported.

``assemble`` turns a ``FragmentReady`` into the stored fragment format of ``mkv.py`` (EBML
header, unknown-size Segment, Info, the producer's Tracks, its Tags, one known-size Cluster).
Clusters using lacing or BlockGroups, or a TimecodeScale other than 1 ms, are rewritten as plain
SimpleBlocks in milliseconds so every stored fragment reads the same way.
"""

from __future__ import annotations

import dataclasses
import enum

from . import ebml, mkv
from .mkv import BlockRef
from .mkvblocks import StreamHeader, TrackInfo, fragment_duration, rewrap

MAX_TRACKS = 3
MAX_FRAGMENT_MS = 10_000
MAX_HEADER_ELEMENT_BYTES = 1024 * 1024  # Info, Tracks
MAX_TAGS_BYTES = 64 * 1024  # producer Tags attached to one fragment
MAX_EBML_HEADER_BYTES = 4096
RESERVED_TAG_PREFIX = "AWS_KINESISVIDEO"
END_OF_FRAGMENT_TAG = "AWS_KINESISVIDEO_END_OF_FRAGMENT"
IMAGE_GENERATION_TAG = "AWS_KINESISVIDEO_IMAGE_GENERATION"
IMAGE_PREFIX_TAG = "AWS_KINESISVIDEO_IMAGE_PREFIX"
NOTIFICATION_TAG = "AWS_KINESISVIDEO_NOTIFICATION"
MAX_KVS_EVENTS = 10  # events attached to one fragment


class Problem(enum.Enum):
    """Why a fragment or the stream was refused; values are the PutMedia ack error codes."""

    MAX_FRAGMENT_SIZE_REACHED = "MAX_FRAGMENT_SIZE_REACHED"
    MAX_FRAGMENT_DURATION_REACHED = "MAX_FRAGMENT_DURATION_REACHED"
    FRAGMENT_TIMECODE_LESSER_THAN_PREVIOUS = "FRAGMENT_TIMECODE_LESSER_THAN_PREVIOUS"
    INVALID_MKV_DATA = "INVALID_MKV_DATA"
    # A body that starts inside a stream: a producer resuming an upload mid-fragment.
    STREAM_READ_ERROR = "STREAM_READ_ERROR"
    FRAGMENT_METADATA_LIMIT_REACHED = "FRAGMENT_METADATA_LIMIT_REACHED"
    TRACK_NUMBER_MISMATCH = "TRACK_NUMBER_MISMATCH"
    FRAMES_MISSING_FOR_TRACK = "FRAMES_MISSING_FOR_TRACK"
    MORE_THAN_ALLOWED_TRACKS_FOUND = "MORE_THAN_ALLOWED_TRACKS_FOUND"


# Elements a body that resumes inside a stream starts with: a Cluster, or a Cluster's children.
_RESUMED_STREAM_ELEMENTS = frozenset({mkv.CLUSTER, 0xA3, 0xA0, 0xE7, 0xA7, 0xAB})


@dataclasses.dataclass(frozen=True)
class KvsEvent:
    """A KVS event the producer attached to a fragment (``putKinesisVideoEventMetadata``)."""

    kind: str  # "IMAGE_GENERATION" | "NOTIFICATION"
    image_prefix: str | None
    metadata: tuple[tuple[str, str], ...]  # the producer's name/value pairs of the event


@dataclasses.dataclass(frozen=True)
class FragmentStarted:
    index: int
    timecode: int  # the Cluster Timecode as sent (producer's timecode units)


@dataclasses.dataclass(frozen=True)
class FragmentReady:
    index: int
    timecode: int
    timecode_ms: int
    header: StreamHeader
    body: bytearray  # the cluster's block elements as received
    blocks: tuple[BlockRef, ...]
    tags: bytes  # producer Tags elements sent before this cluster
    events: tuple[KvsEvent, ...]  # KVS events sent before this cluster
    rebuild: bool  # True when the cluster must be rewritten as SimpleBlocks in ms
    first_ms: int
    last_ms: int
    duration_ms: int


@dataclasses.dataclass(frozen=True)
class FragmentRejected:
    index: int | None  # None only for refused Tags that no Cluster followed
    problem: Problem
    message: str
    timecode: int | None = None  # the Cluster Timecode as sent, when it was read


@dataclasses.dataclass(frozen=True)
class StreamRejected:
    problem: Problem
    message: str


Event = FragmentStarted | FragmentReady | FragmentRejected | StreamRejected


class _Fatal(Exception):
    def __init__(self, problem: Problem, message: str) -> None:
        super().__init__(message)
        self.problem = problem
        self.message = message


class _Reject(Exception):
    def __init__(self, problem: Problem, message: str) -> None:
        super().__init__(message)
        self.problem = problem
        self.message = message


class _State(enum.Enum):
    TOP = "top"
    SEGMENT = "segment"
    CLUSTER = "cluster"
    DEAD = "dead"


class _Op(enum.Enum):
    COLLECT = "collect"  # gather the payload into a small buffer, then call ``done``
    COPY = "copy"  # append the payload to the cluster body, then call ``done``
    SKIP = "skip"  # discard the payload


@dataclasses.dataclass
class _Pending:
    op: _Op
    remaining: int
    element_id: int = 0
    data: bytearray = dataclasses.field(default_factory=bytearray)
    body_start: int = 0


def _read_tracks(data: bytes) -> tuple[TrackInfo, ...]:
    tracks: list[TrackInfo] = []
    for entry in ebml.iter_elements(data):
        if entry.id != mkv.TRACK_ENTRY:
            continue
        t = mkv.read_track(data, entry)
        if not 0 < t.number < 127:
            raise ValueError(f"track number {t.number} is outside 1..126")
        if not t.codec_id:
            raise ValueError(f"track {t.number} has no CodecID")
        tracks.append(TrackInfo(t.number, t.codec_id, t.track_type, t.default_duration_ns))
    if len({t.number for t in tracks}) != len(tracks):
        raise ValueError("two tracks share a track number")
    return tuple(tracks)


def _is_reserved(name: str) -> bool:
    return name.upper().startswith(RESERVED_TAG_PREFIX)


def _simple_tags(data: bytes, tag: ebml.Element) -> list[tuple[str, str]]:
    pairs: list[tuple[str, str]] = []
    for st in ebml.iter_elements(data, tag.data_start, tag.end):
        if st.id != mkv.SIMPLE_TAG:
            continue
        name, value = "", ""
        for f in ebml.iter_elements(data, st.data_start, st.end):
            if f.id == mkv.TAG_NAME:
                name = ebml.read_string(data, f)
            elif f.id == mkv.TAG_STRING:
                value = ebml.read_string(data, f)
        pairs.append((name, value))
    return pairs


@dataclasses.dataclass
class SortedTags:
    kept: bytes  # a Tags element of the Tag elements to store with the fragment (or empty)
    events: list[KvsEvent]
    end_of_fragment: bool
    refused: str | None  # a reserved tag name that is not understood


def sort_tags(element: bytes) -> SortedTags:
    """Split one Tags element into stored tags, KVS events and the end-of-fragment marker.

    ValueError on malformed EBML."""
    body_start = ebml.read_header(element, 0).data_start
    kept: list[bytes] = []
    events: list[KvsEvent] = []
    eofr = False
    refused: str | None = None
    for tag in ebml.iter_elements(element, body_start):
        if tag.id != mkv.TAG:
            kept.append(element[tag.start : tag.end])
            continue
        pairs = _simple_tags(element, tag)
        first = pairs[0][0].upper() if pairs else ""
        rest = pairs[1:]
        if first == END_OF_FRAGMENT_TAG:
            eofr = True
            continue
        if first in (IMAGE_GENERATION_TAG, NOTIFICATION_TAG):
            prefix = next((v for n, v in rest if n.upper() == IMAGE_PREFIX_TAG), None)
            allowed = (IMAGE_PREFIX_TAG,) if first == IMAGE_GENERATION_TAG else ()
            bad = [n for n, _ in rest if _is_reserved(n) and n.upper() not in allowed]
            if bad:
                refused = refused or bad[0]
                continue
            events.append(
                KvsEvent(
                    first.removeprefix(RESERVED_TAG_PREFIX + "_"),
                    prefix,
                    tuple((n, v) for n, v in rest if not _is_reserved(n)),
                )
            )
            continue
        bad = [n for n, _ in pairs if _is_reserved(n)]
        if bad:
            refused = refused or bad[0]
            continue
        kept.append(element[tag.start : tag.end])
    blob = b"".join(kept)
    if len(blob) == len(element) - body_start:
        return SortedTags(element, events, eofr, refused)  # all kept: the bytes as sent
    return SortedTags(ebml.element(mkv.TAGS, blob) if blob else b"", events, eofr, refused)


class MkvStreamParser:
    """Push parser for one PutMedia body. Not thread-safe; one instance per connection."""

    def __init__(
        self,
        *,
        max_fragment_bytes: int,
        max_fragment_ms: int = MAX_FRAGMENT_MS,
        max_tracks: int = MAX_TRACKS,
    ) -> None:
        self.max_fragment_bytes = max_fragment_bytes
        self.max_fragment_ms = max_fragment_ms
        self.max_tracks = max_tracks
        self.header: StreamHeader | None = None
        self._buf = bytearray()
        self._off = 0  # absolute stream offset of self._buf[0]
        self._state = _State.TOP
        self._pending: _Pending | None = None
        self._ebml_seen = False
        self._segments = 0
        self._seg_end: int | None = None
        self._clusters = 0
        self._prev_tc_ms: int | None = None
        self._tags = bytearray()  # producer Tags waiting for the next cluster
        self._kvs_events: list[KvsEvent] = []  # KVS events waiting for the next cluster
        self._tag_problem: tuple[Problem, str] | None = None  # refuses the next cluster
        self._scale = 1_000_000
        self._events: list[Event] = []
        self._reset_cluster()

    # -- public ------

    @property
    def dead(self) -> bool:
        return self._state is _State.DEAD

    @property
    def buffered_bytes(self) -> int:
        """Bytes held for the cluster in progress (bounded by ``max_fragment_bytes``)."""
        return len(self._body) + len(self._buf)

    def feed(self, data: bytes | bytearray | memoryview) -> list[Event]:
        if self._state is _State.DEAD or not data:
            return []
        self._buf += data
        self._events = []
        try:
            self._run()
        except _Fatal as exc:
            self._die(exc.problem, exc.message)
        return self._events

    def finish(self) -> list[Event]:
        """The body ended cleanly: complete an open unknown-size cluster, or flag truncation."""
        if self._state is _State.DEAD:
            return []
        self._events = []
        pos = self._off
        try:
            if self._pending is not None or self._buf:
                raise _Fatal(Problem.INVALID_MKV_DATA, "the MKV stream ends inside an element")
            if self._state is _State.CLUSTER:
                if self._cl_end is not None and pos < self._cl_end:
                    raise _Fatal(Problem.INVALID_MKV_DATA, "the MKV stream ends inside a Cluster")
                self._end_cluster()
            if self._seg_end is not None and pos < self._seg_end:
                raise _Fatal(Problem.INVALID_MKV_DATA, "the MKV stream ends inside its Segment")
            if self._tag_problem is not None:
                problem, message = self._tag_problem
                self._tag_problem = None
                self._events.append(FragmentRejected(None, problem, message))
        except _Fatal as exc:
            self._die(exc.problem, exc.message)
        self._state = _State.DEAD
        return self._events

    # -- machinery ------

    def _die(self, problem: Problem, message: str) -> None:
        self._events.append(StreamRejected(problem, message))
        self._state = _State.DEAD
        self._pending = None
        self._buf = bytearray()
        self._reset_cluster()

    def _reset_cluster(self) -> None:
        self._cl_index = -1
        self._cl_end: int | None = None
        self._cl_tc: int | None = None
        self._cl_ms = 0
        self._cl_rejected = False
        self._cl_rebuild = False
        self._cl_tags = b""
        self._cl_events: tuple[KvsEvent, ...] = ()
        self._cl_tag_problem: tuple[Problem, str] | None = None
        self._cl_budget = 0
        self._body = bytearray()
        self._blocks: list[BlockRef] = []
        self._block_ends: list[int] = []  # where each block element ends in ``_body``

    def _run(self) -> None:
        buf = self._buf
        i = 0
        try:
            while self._state is not _State.DEAD:
                p = self._pending
                if p is not None:
                    take = min(p.remaining, len(buf) - i)
                    if take:
                        if p.op is _Op.COPY:
                            with memoryview(buf) as mv:
                                self._body += mv[i : i + take]
                        elif p.op is _Op.COLLECT:
                            with memoryview(buf) as mv:
                                p.data += mv[i : i + take]
                        i += take
                        p.remaining -= take
                    if p.remaining:
                        break
                    self._pending = None
                    self._done(p)
                    continue
                pos = self._off + i
                if self._state is _State.CLUSTER and (
                    (self._cl_end is not None and pos >= self._cl_end)
                    or (self._seg_end is not None and pos >= self._seg_end)
                ):
                    self._end_cluster()
                    continue
                if self._state is _State.SEGMENT and self._seg_end is not None:
                    if pos >= self._seg_end:
                        self._state = _State.TOP
                        continue
                if i >= len(buf):
                    break
                try:
                    eid, size, payload = ebml.header_at(buf, i)
                except ebml.Truncated:
                    break  # wait for the rest of the header
                except ValueError as exc:
                    raise _Fatal(
                        Problem.INVALID_MKV_DATA,
                        f"invalid EBML element header at byte {self._off + i} of the stream",
                    ) from exc
                hlen = payload - i
                if self._state is _State.TOP:
                    consumed = self._top(eid, size, hlen, pos)
                elif self._state is _State.SEGMENT:
                    consumed = self._segment(eid, size, hlen, pos)
                else:
                    consumed = self._cluster_child(eid, size, hlen, pos, buf, i)
                i += consumed
        finally:
            if i:
                del buf[:i]
                self._off += i

    def _expect(self, op: _Op, size: int, eid: int = 0) -> None:
        if size == 0 and op is not _Op.SKIP:
            self._done(_Pending(op, 0, eid, body_start=len(self._body)))
        elif size:
            self._pending = _Pending(op, size, eid, body_start=len(self._body))

    def _check_inside_segment(self, pos: int, hlen: int, size: int) -> None:
        if self._seg_end is not None and pos + hlen + max(size, 0) > self._seg_end:
            raise _Fatal(Problem.INVALID_MKV_DATA, "an element overruns its Segment")

    def _top(self, eid: int, size: int, hlen: int, pos: int) -> int:
        if eid == mkv.EBML_HEADER:
            if self._segments:
                raise _Fatal(Problem.INVALID_MKV_DATA, "the stream has more than one MKV segment")
            if size == ebml.UNKNOWN_SIZE or size > MAX_EBML_HEADER_BYTES:
                raise _Fatal(Problem.INVALID_MKV_DATA, "invalid EBML header size")
            self._expect(_Op.COLLECT, size, eid)
            return hlen
        if eid == mkv.SEGMENT:
            if not self._ebml_seen:
                raise _Fatal(Problem.INVALID_MKV_DATA, "Segment without an EBML header")
            if self._segments:
                raise _Fatal(Problem.INVALID_MKV_DATA, "the stream has more than one MKV segment")
            self._segments = 1
            self._seg_end = None if size == ebml.UNKNOWN_SIZE else pos + hlen + size
            self._state = _State.SEGMENT
            return hlen
        if eid == mkv.VOID and size != ebml.UNKNOWN_SIZE:
            self._expect(_Op.SKIP, size)
            return hlen
        if eid == mkv.TAGS and not self._segments and 0 <= size <= MAX_EBML_HEADER_BYTES:
            # The KVS Producer SDK ends a stream on a connection of its own when it has nothing
            # left to send: the whole body is its END_OF_FRAGMENT Tags. Nothing to store.
            self._expect(_Op.SKIP, size)
            return hlen
        if not self._ebml_seen and pos == 0 and eid in _RESUMED_STREAM_ELEMENTS:
            # The KVS Producer SDK can resume on a new connection from inside the fragment that
            # a broken connection was sending. STREAM_READ_ERROR is retriable for it: it rolls
            # back and sends the whole fragment again with a header. INVALID_MKV_DATA is not: it
            # would skip the rest of that fragment, a hole in the recording.
            raise _Fatal(
                Problem.STREAM_READ_ERROR,
                f"the body starts inside a stream (element 0x{eid:X}): send the fragment again "
                "from its start, after an EBML header and Segment",
            )
        raise _Fatal(
            Problem.INVALID_MKV_DATA,
            f"expected an EBML header or Segment, found element 0x{eid:X}",
        )

    def _segment(self, eid: int, size: int, hlen: int, pos: int) -> int:
        if eid in (mkv.EBML_HEADER, mkv.SEGMENT):
            raise _Fatal(Problem.INVALID_MKV_DATA, "the stream has more than one MKV segment")
        if eid == mkv.CLUSTER:
            if self.header is None:
                raise _Fatal(Problem.INVALID_MKV_DATA, "a Cluster arrived before the Tracks")
            self._check_inside_segment(pos, hlen, size)
            self._start_cluster(None if size == ebml.UNKNOWN_SIZE else pos + hlen + size)
            return hlen
        if size == ebml.UNKNOWN_SIZE:
            raise _Fatal(Problem.INVALID_MKV_DATA, f"element 0x{eid:X} has an unknown size")
        self._check_inside_segment(pos, hlen, size)
        if eid in (mkv.INFO, mkv.TRACKS):
            if size > MAX_HEADER_ELEMENT_BYTES:
                raise _Fatal(Problem.INVALID_MKV_DATA, f"element 0x{eid:X} is too large")
            self._expect(_Op.COLLECT, size, eid)
        elif eid == mkv.TAGS:
            if len(self._tags) + hlen + size > MAX_TAGS_BYTES:
                self._tag_problem = self._tag_problem or (
                    Problem.FRAGMENT_METADATA_LIMIT_REACHED,
                    f"producer Tags exceed {MAX_TAGS_BYTES} bytes per fragment",
                )
                self._expect(_Op.SKIP, size)
            else:
                p = _Pending(_Op.COLLECT, size, eid)
                p.data += ebml.encode_id(eid) + ebml.encode_size(size)
                if size:
                    self._pending = p
                else:
                    self._done(p)
        else:
            self._expect(_Op.SKIP, size)
        return hlen

    def _start_cluster(self, end: int | None) -> None:
        assert self.header is not None
        self._reset_cluster()
        self._state = _State.CLUSTER
        self._clusters += 1
        self._cl_index = self._clusters - 1
        self._cl_end = end
        self._cl_tags = bytes(self._tags)
        self._tags = bytearray()
        self._cl_events = tuple(self._kvs_events)
        self._kvs_events = []
        self._cl_tag_problem = self._tag_problem
        self._tag_problem = None
        overhead = 512 + len(self.header.tracks_element) + len(self._cl_tags)
        self._cl_budget = self.max_fragment_bytes - overhead

    def _cluster_child(
        self, eid: int, size: int, hlen: int, pos: int, buf: bytearray, i: int
    ) -> int:
        if self._cl_end is None and eid in mkv.END_OF_CLUSTER:
            self._end_cluster()
            return 0
        if size == ebml.UNKNOWN_SIZE:
            raise _Fatal(Problem.INVALID_MKV_DATA, f"Cluster child 0x{eid:X} has an unknown size")
        if self._cl_end is not None and pos + hlen + size > self._cl_end:
            raise _Fatal(Problem.INVALID_MKV_DATA, f"element 0x{eid:X} overruns its Cluster")
        self._check_inside_segment(pos, hlen, size)
        if self._cl_rejected:
            if self._cl_end is not None:
                self._expect(_Op.SKIP, self._cl_end - pos - hlen)
            else:
                self._expect(_Op.SKIP, size)
            return hlen
        if eid == mkv.TIMECODE:
            if size > 8:
                raise _Fatal(Problem.INVALID_MKV_DATA, "Cluster Timecode is longer than 8 bytes")
            self._expect(_Op.COLLECT, size, eid)
        elif eid in (mkv.SIMPLE_BLOCK, mkv.BLOCK_GROUP):
            if self._cl_tc is None:
                raise _Fatal(Problem.INVALID_MKV_DATA, "a block precedes the Cluster Timecode")
            if len(self._body) + hlen + size > self._cl_budget:
                self._reject(
                    Problem.MAX_FRAGMENT_SIZE_REACHED,
                    f"the fragment exceeds {self.max_fragment_bytes} bytes",
                )
                if self._cl_end is not None:
                    self._expect(_Op.SKIP, self._cl_end - pos - hlen)
                else:
                    self._expect(_Op.SKIP, size)
                return hlen
            with memoryview(buf) as mv:
                self._body += mv[i : i + hlen]
            self._expect(_Op.COPY, size, eid)
        else:
            self._expect(_Op.SKIP, size)  # Void, CRC-32, Position, PrevSize, ...
        return hlen

    def _reject(self, problem: Problem, message: str) -> None:
        self._events.append(FragmentRejected(self._cl_index, problem, message, self._cl_tc))
        self._cl_rejected = True
        self._body = bytearray()
        self._blocks = []
        self._block_ends = []

    def _to_ms(self, units: int) -> int:
        assert self.header is not None
        return mkv.to_ms(units, self.header.timecode_scale)

    def _done(self, p: _Pending) -> None:
        eid = p.element_id
        data = bytes(p.data)
        if p.op is _Op.SKIP:
            return
        if p.op is _Op.COPY:
            try:
                self._block_done(eid, p.body_start)
            except _Reject as exc:
                self._reject(exc.problem, exc.message)
            return
        if eid == mkv.EBML_HEADER:
            self._ebml_header(data)
        elif eid == mkv.INFO:
            self._info(data)
        elif eid == mkv.TRACKS:
            self._tracks(data)
        elif eid == mkv.TAGS:
            self._producer_tags(data)
        elif eid == mkv.TIMECODE:
            if self._cl_tc is None:
                self._cl_tc = int.from_bytes(data, "big")
                self._cl_ms = self._to_ms(self._cl_tc)
                self._events.append(FragmentStarted(self._cl_index, self._cl_tc))
                if self._cl_tag_problem is not None:
                    self._reject(*self._cl_tag_problem)

    def _ebml_header(self, data: bytes) -> None:
        try:
            doc_type = next(
                (
                    ebml.read_string(data, e)
                    for e in ebml.iter_elements(data)
                    if e.id == mkv.DOC_TYPE
                ),
                "matroska",
            )
        except ValueError as exc:
            raise _Fatal(Problem.INVALID_MKV_DATA, f"invalid EBML header: {exc}") from exc
        if doc_type not in ("matroska", "webm"):
            raise _Fatal(Problem.INVALID_MKV_DATA, f"unsupported DocType {doc_type[:40]!r}")
        self._ebml_seen = True

    def _info(self, data: bytes) -> None:
        scale = 1_000_000
        try:
            for e in ebml.iter_elements(data):
                if e.id == mkv.TIMECODE_SCALE:
                    scale = ebml.read_uint(data, e)
        except ValueError as exc:
            raise _Fatal(Problem.INVALID_MKV_DATA, f"invalid Info: {exc}") from exc
        if scale <= 0:
            raise _Fatal(Problem.INVALID_MKV_DATA, "TimecodeScale must be positive")
        if self._clusters and scale != self._scale:
            raise _Fatal(Problem.INVALID_MKV_DATA, "TimecodeScale changed mid-stream")
        self._scale = scale
        if self.header is not None:
            self.header = dataclasses.replace(self.header, timecode_scale=scale)

    def _tracks(self, data: bytes) -> None:
        try:
            tracks = _read_tracks(data)
        except ValueError as exc:
            raise _Fatal(Problem.INVALID_MKV_DATA, f"invalid Tracks: {exc}") from exc
        if not tracks:
            raise _Fatal(Problem.INVALID_MKV_DATA, "Tracks holds no TrackEntry")
        if len(tracks) > self.max_tracks:
            raise _Fatal(
                Problem.MORE_THAN_ALLOWED_TRACKS_FOUND,
                f"{len(tracks)} tracks found; at most {self.max_tracks} are allowed",
            )
        element = ebml.element(mkv.TRACKS, data)
        if self.header is not None and self._clusters:
            if element != self.header.tracks_element:
                raise _Fatal(Problem.INVALID_MKV_DATA, "Tracks changed mid-stream")
            return
        self.header = StreamHeader(tracks, element, self._scale)

    def _producer_tags(self, data: bytes) -> None:
        try:
            sorted_tags = sort_tags(data)
        except ValueError as exc:
            raise _Fatal(Problem.INVALID_MKV_DATA, f"invalid Tags: {exc}") from exc
        if sorted_tags.refused is not None:
            self._tag_problem = self._tag_problem or (
                Problem.FRAGMENT_METADATA_LIMIT_REACHED,
                f"tag name {sorted_tags.refused[:60]!r} uses the reserved prefix "
                f"{RESERVED_TAG_PREFIX}",
            )
            return
        if len(self._kvs_events) + len(sorted_tags.events) > MAX_KVS_EVENTS:
            self._tag_problem = self._tag_problem or (
                Problem.FRAGMENT_METADATA_LIMIT_REACHED,
                f"more than {MAX_KVS_EVENTS} KVS events for one fragment",
            )
            return
        self._kvs_events += sorted_tags.events
        self._tags += sorted_tags.kept

    def _block_done(self, eid: int, start: int) -> None:
        """Parse the block element just copied into ``self._body[start:]``."""
        try:
            block = mkv.read_block_element(self._body, eid, start, len(self._body))
        except ValueError as exc:
            what = "BlockGroup" if eid == mkv.BLOCK_GROUP else "block"
            raise _Fatal(Problem.INVALID_MKV_DATA, f"invalid {what}: {exc}") from exc
        if block is None:
            raise _Fatal(Problem.INVALID_MKV_DATA, "BlockGroup without a Block")
        track, relative, keyframe, laced, frames, duration = block
        if laced or eid == mkv.BLOCK_GROUP:
            self._cl_rebuild = True
        assert self.header is not None and self._cl_tc is not None
        if self.header.track(track) is None:
            raise _Reject(
                Problem.TRACK_NUMBER_MISMATCH,
                f"a block of track {track} matches no track of the MKV header",
            )
        ms = self._to_ms(self._cl_tc + relative)
        if ms - self._cl_ms > self.max_fragment_ms:
            raise _Reject(
                Problem.MAX_FRAGMENT_DURATION_REACHED,
                f"the fragment spans more than {self.max_fragment_ms} ms",
            )
        self._blocks.append(
            BlockRef(
                track, ms, keyframe, frames, None if duration is None else self._to_ms(duration)
            )
        )
        self._block_ends.append(len(self._body))

    def in_progress(self) -> tuple[int, int, list[BlockRef]] | None:
        """(index, timecode in ms, blocks so far) of the cluster being received, while it is
        accepted so far; None between clusters or once it was rejected."""
        if self._state is not _State.CLUSTER or self._cl_rejected or self._cl_tc is None:
            return None
        return self._cl_index, self._cl_ms, self._blocks

    def snapshot(self, count: int) -> FragmentReady | None:
        """The cluster being received as if it ended after its first ``count`` blocks (the
        same bytes and timing its stored fragment will have for them)."""
        header = self.header
        current = self.in_progress()
        if current is None or header is None or not 0 < count <= len(self._blocks):
            return None
        assert self._cl_tc is not None
        blocks = self._blocks[:count]
        return FragmentReady(
            index=self._cl_index,
            timecode=self._cl_tc,
            timecode_ms=self._cl_ms,
            header=header,
            body=bytearray(self._body[: self._block_ends[count - 1]]),
            blocks=tuple(blocks),
            tags=self._cl_tags,
            events=(),
            rebuild=self._cl_rebuild or header.timecode_scale != 1_000_000,
            first_ms=min(b.ms for b in blocks),
            last_ms=max(b.ms for b in blocks),
            duration_ms=fragment_duration(header, blocks, self._cl_ms),
        )

    def _end_cluster(self) -> None:
        index = self._cl_index
        rejected = self._cl_rejected
        tc = self._cl_tc
        blocks = self._blocks
        header = self.header
        self._state = _State.SEGMENT
        if rejected:
            self._reset_cluster()
            return
        if tc is None:
            self._reset_cluster()
            raise _Fatal(Problem.INVALID_MKV_DATA, "a Cluster has no Timecode")
        assert header is not None
        missing = sorted({t.number for t in header.tracks} - {b.track for b in blocks})
        if missing:
            self._events.append(
                FragmentRejected(
                    index,
                    Problem.FRAMES_MISSING_FOR_TRACK,
                    f"the fragment has no frames for track {missing[0]}",
                    tc,
                )
            )
            self._reset_cluster()
            return
        first_ms = min(b.ms for b in blocks)
        last_ms = max(b.ms for b in blocks)
        # Fragments must come in timecode order. (Frames may overlap the previous fragment by a
        # little: FFmpeg's muxer starts a Cluster with audio queued just before the keyframe.)
        if self._prev_tc_ms is not None and self._cl_ms < self._prev_tc_ms:
            self._events.append(
                FragmentRejected(
                    index,
                    Problem.FRAGMENT_TIMECODE_LESSER_THAN_PREVIOUS,
                    f"the fragment timecode {self._cl_ms} ms is lower than the previous "
                    f"fragment's {self._prev_tc_ms} ms",
                    tc,
                )
            )
            self._reset_cluster()
            return
        self._prev_tc_ms = self._cl_ms
        rebuild = self._cl_rebuild or header.timecode_scale != 1_000_000
        self._events.append(
            FragmentReady(
                index=index,
                timecode=tc,
                timecode_ms=self._cl_ms,
                header=header,
                body=self._body,
                blocks=tuple(blocks),
                tags=self._cl_tags,
                events=self._cl_events,
                rebuild=rebuild,
                first_ms=first_ms,
                last_ms=last_ms,
                duration_ms=fragment_duration(header, blocks, self._cl_ms),
            )
        )
        self._reset_cluster()


def assemble(ready: FragmentReady) -> bytes:
    """The stored fragment for ``ready``: self-contained MKV with one known-size Cluster."""
    return rewrap(
        ready.header,
        ready.body,
        ready.blocks,
        timecode_ms=ready.timecode_ms,
        duration_ms=ready.duration_ms,
        tags=ready.tags,
        rebuild=ready.rebuild,
    )


__all__ = [
    "BlockRef",
    "Event",
    "FragmentReady",
    "FragmentRejected",
    "FragmentStarted",
    "KvsEvent",
    "MkvStreamParser",
    "Problem",
    "StreamHeader",
    "StreamRejected",
    "TrackInfo",
    "assemble",
]
