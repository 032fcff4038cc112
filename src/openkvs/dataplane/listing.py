"""ListFragments: pages of fragment metadata by timestamp range, with keyset NextTokens.

With a FragmentSelector, fragments are listed in (timestamp, fragment number) order and a page
is one index range scan of ``(stream_id, <timestamp>, number)``; the NextToken records where the
page ended, so every page costs the same however deep it is. Without a selector, all fragments
are listed in fragment-number order. Tokens are base64 JSON and name their stream.
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import json
import math
from decimal import ROUND_CEILING, ROUND_FLOOR, Decimal
from typing import Any

from .. import safejson
from ..control.fragments import FragmentStore
from ..errors import InvalidArgumentException
from ..records import Fragment, Stream

DEFAULT_MAX_RESULTS = 1000
_TYPES = ("SERVER_TIMESTAMP", "PRODUCER_TIMESTAMP")


def to_ms(seconds: float, *, up: bool) -> int:
    """Epoch seconds (as parsed from JSON) to whole milliseconds, rounding up or down exactly."""
    if not math.isfinite(seconds):
        raise InvalidArgumentException("Timestamps must be finite numbers.")
    value = Decimal(repr(seconds)) * 1000
    return int(value.to_integral_value(ROUND_CEILING if up else ROUND_FLOOR))


@dataclasses.dataclass(frozen=True)
class Cursor:
    stream_id: int
    selector: str | None  # SERVER_TIMESTAMP | PRODUCER_TIMESTAMP | None (number order)
    start_ms: int | None
    end_ms: int | None
    last_ts: int | None
    last_number: int
    same_ts: int  # fragments already returned whose timestamp equals last_ts

    def encode(self) -> str:
        payload = {
            "v": 1,
            "s": self.stream_id,
            "t": self.selector,
            "a": self.start_ms,
            "b": self.end_ms,
            "k": self.last_ts,
            "n": self.last_number,
            "c": self.same_ts,
        }
        return base64.b64encode(json.dumps(payload, separators=(",", ":")).encode()).decode()

    @classmethod
    def decode(cls, token: str, stream: Stream) -> Cursor:
        bad = InvalidArgumentException("NextToken is invalid or expired.")
        try:
            data: Any = safejson.loads(base64.b64decode(token.encode(), validate=True))
        except (ValueError, binascii.Error) as exc:
            raise bad from exc
        if not isinstance(data, dict) or data.get("v") != 1:
            raise bad

        def int_or_none(key: str) -> int | None:
            value = data.get(key)
            if value is None:
                return None
            if isinstance(value, bool) or not isinstance(value, int) or abs(value) >= 2**62:
                raise bad
            return value

        selector = data.get("t")
        if selector is not None and selector not in _TYPES:
            raise bad
        stream_id, number, same = int_or_none("s"), int_or_none("n"), int_or_none("c")
        if stream_id is None or number is None or same is None or same < 0:
            raise bad
        cursor = cls(
            stream_id=stream_id,
            selector=selector,
            start_ms=int_or_none("a"),
            end_ms=int_or_none("b"),
            last_ts=int_or_none("k"),
            last_number=number,
            same_ts=same,
        )
        if cursor.stream_id != stream.id:
            raise InvalidArgumentException("NextToken belongs to another stream.")
        if selector is not None and cursor.last_ts is None:
            raise bad
        return cursor


def _ts(f: Fragment, selector: str) -> int:
    return f.server_ts if selector == "SERVER_TIMESTAMP" else f.producer_ts


async def list_page(
    fragments: FragmentStore,
    stream: Stream,
    *,
    selector: str | None,
    start_ms: int | None,
    end_ms: int | None,
    max_results: int,
    token: str | None,
) -> tuple[list[Fragment], str | None]:
    """One page of fragments and the NextToken for the next one (None when done)."""
    cursor = Cursor.decode(token, stream) if token else None
    if cursor is not None:
        selector, start_ms, end_ms = cursor.selector, cursor.start_ms, cursor.end_ms
    if start_ms is not None and end_ms is not None and start_ms > end_ms:
        raise InvalidArgumentException("StartTimestamp must not be later than EndTimestamp.")
    if selector is None:
        rows = await fragments.list_fragments(
            stream,
            after_number=cursor.last_number if cursor else None,
            limit=max_results + 1,
        )
        page = rows[:max_results]
        if len(rows) <= max_results or not page:
            return page, None
        nxt = Cursor(stream.id, None, None, None, None, page[-1].number, 0)
        return page, nxt.encode()
    skip = cursor.same_ts if cursor else 0
    rows = await fragments.list_fragments(
        stream,
        timestamp_type=selector,
        start_ms=cursor.last_ts if cursor else start_ms,
        end_ms=end_ms,
        limit=max_results + skip + 1,
    )
    if cursor is not None:
        assert cursor.last_ts is not None
        after = (cursor.last_ts, cursor.last_number)
        rows = [f for f in rows if (_ts(f, selector), f.number) > after]
    page = rows[:max_results]
    if len(rows) <= max_results or not page:
        return page, None
    last_ts = _ts(page[-1], selector)
    same = sum(1 for f in page if _ts(f, selector) == last_ts)
    if cursor is not None and cursor.last_ts == last_ts:
        same += cursor.same_ts
    nxt = Cursor(stream.id, selector, start_ms, end_ms, last_ts, page[-1].number, same)
    return page, nxt.encode()


def fragment_info(f: Fragment) -> dict[str, Any]:
    return {
        "FragmentNumber": f.number_str,
        "FragmentSizeInBytes": f.size,
        "ProducerTimestamp": f.producer_ts / 1000.0,
        "ServerTimestamp": f.server_ts / 1000.0,
        "FragmentLengthInMilliseconds": f.duration_ms,
    }
