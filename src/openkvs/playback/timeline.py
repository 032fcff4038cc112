"""Which fragments a session shows, where each sits on the session timeline, and for how long.

The timeline of a session is the selector timestamp (server or producer) minus the session's
origin (the timestamp of its first fragment) plus ``LEAD_MS``, in milliseconds.

How long a fragment's slot lasts depends on the mode:

- ON_DEMAND (the whole list is known when the playlist is made): until the next fragment starts
  when the two are contiguous (within ``CONTIGUITY_MS``), so contiguous segments abut exactly
  (server timestamps jitter by a few milliseconds); otherwise the fragment's recorded duration,
  and a gap follows.
- LIVE and LIVE_REPLAY: the fragment's recorded duration, always. A live segment is published
  while it is the newest one, before its successor exists, and a published segment never
  changes (RFC 8216 6.2.1): neither its duration nor its media may depend on a fragment that
  comes later. Contiguous segments then abut within ``CONTIGUITY_MS`` instead of exactly (a
  PutMedia fragment's duration runs to the end of its last frame of any track, so its last
  video frame may last up to an audio frame longer; a WebRTC recording's runs to the next
  keyframe). The audio of a live segment is cut at the fragment's own end too (see
  ``service.own_end_ns``).

Playlists and segment requests compute the same slots from the same rule.

- ON_DEMAND: the first ``max_results`` fragments in ``[start, end]`` by timestamp.
- LIVE_REPLAY: the same order from ``start``, released at playback speed (a fragment is listed
  once ``anchor + elapsed`` reaches its timestamp), up to ``end`` if given.
- LIVE: fragments in ingestion order from the newest ones at creation; a fragment whose
  timestamp is not newer than the newest listed one is skipped (gaps are never back-filled).

With PRODUCER_TIMESTAMP, fragments sharing a timestamp are de-duplicated (the highest fragment
number wins); the same is applied to SERVER_TIMESTAMP, where it only happens with broken clocks.
LIVE and LIVE_REPLAY keep a per-session cursor (``Cursor``) so a playlist refresh only reads new
fragments; losing a cursor (eviction, restart) rebuilds it from the session's origin.
"""

from __future__ import annotations

import asyncio
import dataclasses
import math
from collections import deque
from collections.abc import Sequence
from typing import Protocol

from ..records import Fragment, Stream
from .tokens import Session

CONTIGUITY_MS = 50
# The session timeline starts this long before its first fragment, so that media placed slightly
# before a fragment's start (the audio frame it shares with the previous fragment) stays at a
# non-negative time.
LEAD_MS = 1000
PAGE = 1000
DEFAULT_DURATION_MS = 1000


class FragmentSource(Protocol):
    """The part of the fragment store playback reads (``control.fragments.FragmentStore``)."""

    async def list_fragments(
        self,
        stream: Stream,
        *,
        timestamp_type: str | None = None,
        start_ms: int | None = None,
        end_ms: int | None = None,
        after_number: int | None = None,
        limit: int = 1000,
    ) -> list[Fragment]: ...

    async def get(self, stream: Stream, numbers: Sequence[int]) -> list[Fragment]: ...

    async def last(self, stream: Stream, count: int) -> list[Fragment]: ...

    async def read(self, fragment: Fragment) -> bytes: ...


def ts_of(fragment: Fragment, selector: str) -> int:
    return fragment.producer_ts if selector == "PRODUCER_TIMESTAMP" else fragment.server_ts


def media_ms(session: Session, ts: int) -> int:
    """Where timestamp ``ts`` sits on the session timeline."""
    return ts - session.origin_ms + LEAD_MS


def timestamp_at(session: Session, media: int) -> int:
    return media + session.origin_ms - LEAD_MS


def contiguous(prev_ts: int, prev_duration: int, ts: int) -> bool:
    return prev_duration > 0 and abs(ts - (prev_ts + prev_duration)) <= CONTIGUITY_MS


def settled(session: Session) -> bool:
    """Whether a fragment's slot may depend on its successor (ON_DEMAND only: see the module
    docstring); a LIVE or LIVE_REPLAY segment is decided by its own fragment."""
    return session.mode == "ON_DEMAND"


def slot_ms(ts: int, duration_ms: int, next_ts: int | None) -> int:
    """How long a fragment's slot lasts on the timeline (see the module docstring); ``next_ts``
    is None when the successor is unknown or, in a live session, not to be used."""
    if next_ts is not None and (duration_ms <= 0 or contiguous(ts, duration_ms, next_ts)):
        return max(1, next_ts - ts)
    return duration_ms if duration_ms > 0 else DEFAULT_DURATION_MS


@dataclasses.dataclass(frozen=True)
class Entry:
    fragment: Fragment
    ts_ms: int  # selector timestamp
    seq: int  # position in the session (media sequence number)
    start_ms: int  # on the session timeline
    duration_ms: int
    discontinuity: bool


@dataclasses.dataclass(frozen=True)
class View:
    entries: list[Entry]
    discontinuity_sequence: int
    ended: bool
    target_duration: int  # whole seconds

    @property
    def first_seq(self) -> int:
        return self.entries[0].seq if self.entries else 0


async def select(
    source: FragmentSource,
    stream: Stream,
    selector: str,
    start_ms: int | None,
    end_ms: int | None,
    limit: int,
) -> list[Fragment]:
    """Fragments stamped within ``[start, end]``, ascending, de-duplicated, at most ``limit``."""
    out: list[Fragment] = []
    cursor = start_ms
    while len(out) < limit:
        rows = await source.list_fragments(
            stream, timestamp_type=selector, start_ms=cursor, end_ms=end_ms, limit=PAGE
        )
        full = len(rows) == PAGE
        if full:
            last_ts = ts_of(rows[-1], selector)
            complete = [r for r in rows if ts_of(r, selector) != last_ts]
            if not complete:  # a whole page shares one timestamp: keep its newest, move on
                _add(out, max(rows, key=lambda r: r.number), selector)
                cursor = last_ts + 1
                continue
            rows = complete
            cursor = last_ts
        for r in rows:
            _add(out, r, selector)
        if not full:
            break
    return out[:limit]


def _add(out: list[Fragment], f: Fragment, selector: str) -> None:
    if out and ts_of(out[-1], selector) == ts_of(f, selector):
        if f.number > out[-1].number:
            out[-1] = f
        return
    out.append(f)


async def lookahead(
    source: FragmentSource, stream: Stream, session: Session, fragment: Fragment
) -> Fragment | None:
    """The fragment that follows ``fragment`` in ``session`` (for the length of its slot)."""
    ts = ts_of(fragment, session.selector)
    if session.mode == "LIVE":
        rows = await source.list_fragments(stream, after_number=fragment.number, limit=16)
        return next((r for r in rows if ts_of(r, session.selector) > ts), None)
    rows = await source.list_fragments(
        stream,
        timestamp_type=session.selector,
        start_ms=ts + 1,
        end_ms=session.end_ms,
        limit=1,
    )
    return rows[0] if rows else None


def in_session(session: Session, fragment: Fragment) -> bool:
    ts = ts_of(fragment, session.selector)
    if ts < session.origin_ms:
        return False
    if session.end_ms is not None and ts > session.end_ms:
        return False
    return not (session.mode == "LIVE" and fragment.number < session.ref_number)


def discontinuity(session: Session, prev: tuple[int, int] | None, ts: int) -> bool:
    if session.discontinuity == "ALWAYS":
        return True
    if session.discontinuity == "NEVER" or prev is None:
        return False
    return not contiguous(prev[0], prev[1], ts)


def _entries(
    session: Session,
    items: Sequence[tuple[Fragment, int, int, bool]],
    after: Fragment | None,
) -> list[Entry]:
    """Entries for ``(fragment, ts, seq, discontinuity)`` items; ``after`` follows the last."""
    out = []
    for i, (f, ts, seq, disc) in enumerate(items):
        nxt = items[i + 1][1] if i + 1 < len(items) else None
        if nxt is None and after is not None:
            nxt = ts_of(after, session.selector)
        if not settled(session):
            nxt = None
        out.append(Entry(f, ts, seq, media_ms(session, ts), slot_ms(ts, f.duration_ms, nxt), disc))
    return out


def _target(entries: Sequence[Entry], floor: int = 1) -> int:
    longest = max((e.duration_ms for e in entries), default=1000)
    return max(floor, math.ceil(longest / 1000))


async def on_demand_view(source: FragmentSource, stream: Stream, session: Session) -> View:
    frags = await select(
        source,
        stream,
        session.selector,
        session.origin_ms,
        session.end_ms,
        session.max_results + 1,
    )
    after = frags[session.max_results] if len(frags) > session.max_results else None
    frags = frags[: session.max_results]
    items = []
    prev: tuple[int, int] | None = None
    for seq, f in enumerate(frags):
        ts = ts_of(f, session.selector)
        items.append((f, ts, seq, discontinuity(session, prev, ts)))
        prev = (ts, f.duration_ms)
    entries = _entries(session, items, after)
    return View(entries, 0, True, _target(entries))


@dataclasses.dataclass(frozen=True)
class _Item:
    fragment: Fragment
    ts: int
    seq: int
    discontinuity: bool
    discontinuities_before: int


class Cursor:
    """The growing list of a LIVE or LIVE_REPLAY session; only its newest window is kept."""

    def __init__(self, session: Session) -> None:
        self.session = session
        self.items: deque[_Item] = deque(maxlen=session.max_results)
        self.count = 0
        self.discontinuities = 0
        self.last: _Item | None = None
        self.after_number = session.ref_number - 1
        self.target = 1
        self.lock = asyncio.Lock()

    def _push(self, f: Fragment, ts: int) -> None:
        prev = (self.last.ts, self.last.fragment.duration_ms) if self.last else None
        disc = discontinuity(self.session, prev, ts)
        item = _Item(f, ts, self.count, disc, self.discontinuities)
        self.discontinuities += int(disc)
        self.count += 1
        self.items.append(item)
        self.last = item

    async def refresh(self, source: FragmentSource, stream: Stream, now_ms: int) -> View:
        """Read what is new; return the current window."""
        s = self.session
        ended = False
        if s.mode == "LIVE":
            while True:
                rows = await source.list_fragments(
                    stream, after_number=self.after_number, limit=PAGE
                )
                for f in rows:
                    self.after_number = f.number
                    ts = ts_of(f, s.selector)
                    if ts < s.origin_ms or (self.last is not None and ts <= self.last.ts):
                        continue
                    self._push(f, ts)
                if len(rows) < PAGE:
                    break
        else:
            bound = s.anchor_ms + max(0, now_ms - s.created_ms)
            if s.end_ms is not None:
                ended = bound >= s.end_ms
                bound = min(bound, s.end_ms)
            while True:
                start = s.origin_ms if self.last is None else self.last.ts + 1
                if start > bound:
                    break
                page = await select(source, stream, s.selector, start, bound, PAGE)
                for f in page:
                    self._push(f, ts_of(f, s.selector))
                if len(page) < PAGE:
                    break
        items = [(i.fragment, i.ts, i.seq, i.discontinuity) for i in self.items]
        entries = _entries(s, items, None)  # a live slot never looks at the successor
        self.target = max(self.target, _target(entries))
        first_disc = self.items[0].discontinuities_before if self.items else 0
        return View(entries, first_disc, ended, self.target)
