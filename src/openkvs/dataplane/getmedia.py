"""GetMedia and GetMediaForFragmentList: stored fragments streamed back as tagged MKV chunks.

GetMedia resolves its StartSelector to a position in fragment-number order, sends every stored
fragment from there, then stays open and sends each new fragment as soon as it is durable (the
fragment store's ``changed`` event), until the client leaves, the stream is deleted or the server
shuts down. GetMediaForFragmentList sends the requested fragments in the requested order and
ends.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from collections.abc import Sequence

from aiohttp import web

from .. import clock
from ..control.fragments import FragmentMissing, FragmentStore
from ..errors import InvalidArgumentException
from ..records import Fragment, Stream
from . import chunks
from .plane import DataPlane

logger = logging.getLogger(__name__)

BATCH = 50  # fragments listed per query while catching up
# How far before a start timestamp to look for the fragment that contains it.
CONTAINING_LOOKBACK_MS = 60_000
IDLE_CHECK_SECONDS = 0.5  # how often an idle live tail checks for a departed client
_TS_COLUMN = {"SERVER_TIMESTAMP": "server_ts", "PRODUCER_TIMESTAMP": "producer_ts"}


@dataclasses.dataclass(frozen=True)
class Start:
    """Where a GetMedia begins: after ``after_number``, in fragment-number order."""

    after_number: int
    # Until the first chunk is sent, skip fragments whose timestamp is before this (a start
    # timestamp later than every stored fragment waits for a live one that reaches it).
    min_ts: tuple[str, int] | None = None
    # A FRAGMENT_NUMBER selector naming a fragment the stream does not have.
    missing: str | None = None


def fragment_ts(f: Fragment, selector: str) -> int:
    return f.server_ts if selector == "SERVER_TIMESTAMP" else f.producer_ts


async def resolve_start(
    fragments: FragmentStore, stream: Stream, selector: dict[str, object], start_ms: int | None
) -> Start:
    """Turn a validated StartSelector into a :class:`Start` (InvalidArgument if incomplete)."""
    kind = selector["StartSelectorType"]
    if kind == "EARLIEST":
        return Start(0)
    if kind == "NOW":
        last = await fragments.last(stream, 1)
        return Start(last[0].number if last else 0)
    if kind == "FRAGMENT_NUMBER":
        raw = selector.get("AfterFragmentNumber")
        if not isinstance(raw, str):
            raise InvalidArgumentException(
                "AfterFragmentNumber is required when StartSelectorType is FRAGMENT_NUMBER."
            )
        number = int(raw)
        found = await fragments.get(stream, [number]) if number < 2**63 else []
        if not found:
            return Start(number, missing=raw)
        return Start(number)
    if kind == "CONTINUATION_TOKEN":
        token = selector.get("ContinuationToken")
        if not isinstance(token, str):
            raise InvalidArgumentException(
                "ContinuationToken is required when StartSelectorType is CONTINUATION_TOKEN."
            )
        if not token.isdigit() or len(token) > 19 or int(token) >= 2**63:
            raise InvalidArgumentException("ContinuationToken is invalid.")
        return Start(int(token))
    assert kind in _TS_COLUMN
    if start_ms is None:
        raise InvalidArgumentException(
            f"StartTimestamp is required when StartSelectorType is {kind}."
        )
    kind = str(kind)
    # The fragment containing the timestamp, else the first one at or after it.
    before = await fragments.list_fragments(
        stream,
        timestamp_type=kind,
        start_ms=start_ms - CONTAINING_LOOKBACK_MS,
        end_ms=start_ms,
        limit=1000,
    )
    # Fragments may overlap (a fast upload gets close server timestamps): take the earliest
    # one that contains the timestamp, so nothing from the requested time on is skipped.
    containing = [f for f in before if fragment_ts(f, kind) + f.duration_ms > start_ms]
    if containing:
        return Start(min(f.number for f in containing) - 1)
    after = await fragments.list_fragments(stream, timestamp_type=kind, start_ms=start_ms, limit=1)
    if after:
        return Start(after[0].number - 1)
    last = await fragments.last(stream, 1)
    return Start(last[0].number if last else 0, min_ts=(kind, start_ms))


def _client_gone(request: web.Request) -> bool:
    transport = request.transport
    return transport is None or transport.is_closing()


async def _write(response: web.StreamResponse, parts: Sequence[bytes | memoryview]) -> bool:
    try:
        for part in parts:
            await response.write(part)
    except (ConnectionError, RuntimeError):
        return False
    return True


async def stream_get_media(
    plane: DataPlane,
    request: web.Request,
    response: web.StreamResponse,
    stream: Stream,
    start: Start,
) -> None:
    """Send chunks from ``start`` on, then follow the stream live until the client leaves."""
    prefix = f"getmedia[{stream.name}]"
    fragments = plane.fragments
    if start.missing is not None:
        await _write(
            response,
            [chunks.get_media_error(start.missing, 4000, "Requested fragment is not found.")],
        )
        return
    cursor = start.after_number
    min_ts = start.min_ts
    sent = 0
    while not plane.closing.is_set() and not _client_gone(request):
        if plane.control.stream_by_id(stream.id) is None:
            logger.info("%s stream deleted, ending", prefix)
            return
        changed = fragments.changed(stream.id)  # taken before listing: no append is missed
        batch = await fragments.list_fragments(stream, after_number=cursor, limit=BATCH)
        if not batch:
            try:
                await asyncio.wait_for(changed.wait(), timeout=IDLE_CHECK_SECONDS)
            except TimeoutError:
                pass
            continue
        for f in batch:
            cursor = f.number
            if min_ts is not None:
                if fragment_ts(f, min_ts[0]) < min_ts[1]:
                    continue
                min_ts = None
            try:
                blob = await fragments.read(f)
                parts = chunks.get_media_chunk(
                    blob, f, millis_behind_now=clock.now_ms() - f.server_ts
                )
            except FragmentMissing:
                logger.debug("%s fragment %d expired while reading", prefix, f.number)
                continue
            except Exception:  # noqa: BLE001 - reported to the client as an error chunk
                logger.exception("%s reading fragment %d failed", prefix, f.number)
                await _write(
                    response, [chunks.get_media_error(f.number_str, 5000, "Internal error.")]
                )
                return
            if not await _write(response, parts):
                return
            sent += 1
            if plane.closing.is_set():
                break
    logger.debug("%s ended after %d chunks", prefix, sent)


async def stream_fragment_list(
    plane: DataPlane,
    response: web.StreamResponse,
    stream: Stream,
    fragments: Sequence[Fragment],
) -> None:
    """Send one chunk per fragment, in order; an unreadable fragment gets an error chunk."""
    prefix = f"getmediaforfragmentlist[{stream.name}]"
    for f in fragments:
        try:
            blob = await plane.fragments.read(f)
            parts = chunks.fragment_list_chunk(blob, f)
        except FragmentMissing:
            parts = [chunks.fragment_list_error(f.number_str, 4000, "Fragment not found.")]
        except Exception:  # noqa: BLE001 - reported to the client as an error chunk
            logger.exception("%s reading fragment %d failed", prefix, f.number)
            parts = [chunks.fragment_list_error(f.number_str, 5000, "Internal error.")]
        if not await _write(response, parts):
            return
