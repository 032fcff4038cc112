"""PutMedia: one long-lived chunked upload of MKV, one fragment per Cluster, acks as it goes.

Per fragment the producer sees ``BUFFERING`` (its Cluster Timecode has arrived and a fragment
number is assigned), ``RECEIVED`` (the whole Cluster parsed), then ``PERSISTED`` once the fragment
is durable and visible (only for streams with data retention), or one ``ERROR`` instead.
``IDLE`` acks are sent every ``putmedia_idle_ack_interval`` seconds without data, and the request
is closed after ``putmedia_idle_timeout`` seconds without data.

Errors that concern one fragment (too large, too long, out of order, track mismatch, missing
frames, producer-timestamp or storage failures) drop that fragment only and the connection goes
on with the next Cluster. Errors that make the rest of the body unusable (malformed MKV, a second
Segment, too many tracks, the stream deleted) are acknowledged and end the request. A fragment is
stored only when complete: a connection that breaks mid-Cluster leaves nothing of that Cluster.
Every ack but IDLE names the fragment's timecode (and number once assigned).

A producer that reconnects after losing acks (the KVS Producer SDK rolls back to the first
fragment it has no PERSISTED ack for) may send again fragments an earlier connection stored: a
fragment whose producer timestamp matches one of the stream's last ``RESEND_WINDOW`` fragments
from before this connection is acknowledged with that fragment's number and not stored twice.

While a stream's LIVE HLS playlist is followed, the Cluster being received is also published as
LL-HLS parts (``liveparts.LiveCutter``, ``playback.liveedge``): the same frames the stored
fragment will hold, withdrawn if the fragment is dropped.
"""

from __future__ import annotations

import asyncio
import dataclasses
import decimal
import logging
import re
from collections.abc import Mapping

from aiohttp import web

from .. import clock
from ..control.fragments import is_disk_full
from ..errors import InvalidArgumentException, ResourceNotFoundException
from ..media import mkvstream
from ..media.mkv import to_ms
from ..records import Fragment, Stream
from .acks import AckError, ack
from .events import FragmentEvent
from .liveparts import LiveCutter
from .plane import DataPlane, WriterSlot

logger = logging.getLogger(__name__)

_NAME = re.compile(r"[a-zA-Z0-9_.-]{1,256}")
_ARN = re.compile(r"arn:aws:kinesisvideo:[a-z0-9-]+:[0-9]+:[a-z]+/[a-zA-Z0-9_.-]+/[0-9]+")
_TIMESTAMP = re.compile(r"[0-9]{1,12}(\.[0-9]{1,9})?")
MAX_PRODUCER_TS_MS = 10**13  # year 2286; anything later is not a timestamp
RESEND_WINDOW = 16  # a stream's last fragments a new connection may send again


@dataclasses.dataclass(frozen=True)
class PutMediaRequest:
    stream_name: str | None
    stream_arn: str | None
    timecode_type: str  # ABSOLUTE | RELATIVE
    producer_start_ms: int | None

    @classmethod
    def from_headers(cls, headers: Mapping[str, str]) -> PutMediaRequest:
        """Validate the PutMedia request headers (InvalidArgumentException on any problem)."""
        get = headers.get
        name = get("x-amzn-stream-name")
        arn = get("x-amzn-stream-arn")
        if (name is None) == (arn is None):
            raise InvalidArgumentException(
                "Specify exactly one of the x-amzn-stream-name and x-amzn-stream-arn headers."
            )
        if name is not None and not _NAME.fullmatch(name):
            raise InvalidArgumentException(
                "x-amzn-stream-name must match [a-zA-Z0-9_.-]+ and be 1 to 256 characters."
            )
        if arn is not None and (len(arn) > 1024 or not _ARN.fullmatch(arn)):
            raise InvalidArgumentException("x-amzn-stream-arn is not a valid stream ARN.")
        ttype = get("x-amzn-fragment-timecode-type")
        if ttype not in ("ABSOLUTE", "RELATIVE"):
            raise InvalidArgumentException(
                "x-amzn-fragment-timecode-type must be ABSOLUTE or RELATIVE."
            )
        raw_start = get("x-amzn-producer-start-timestamp")
        start_ms: int | None = None
        if raw_start is not None:
            if not _TIMESTAMP.fullmatch(raw_start.strip()):
                raise InvalidArgumentException(
                    "x-amzn-producer-start-timestamp must be epoch seconds, e.g. 1700000000.123."
                )
            start_ms = int(decimal.Decimal(raw_start.strip()) * 1000)
        if ttype == "RELATIVE" and start_ms is None:
            raise InvalidArgumentException(
                "x-amzn-producer-start-timestamp is required with RELATIVE fragment timecodes."
            )
        return cls(name, arn, ttype, start_ms)


@dataclasses.dataclass
class _Current:
    index: int
    timecode: int
    number: int
    server_ts: int
    stored: Fragment | None = None  # the same fragment, stored by an earlier connection


class PutMediaSession:
    """Serve one PutMedia request after its headers were validated and the 200 was prepared."""

    def __init__(
        self,
        plane: DataPlane,
        stream: Stream,
        request: web.Request,
        response: web.StreamResponse,
        spec: PutMediaRequest,
        slot: WriterSlot | None = None,
    ) -> None:
        self.plane = plane
        self.slot = slot
        self.stream = stream
        self.request = request
        self.response = response
        self.spec = spec
        self.parser = mkvstream.MkvStreamParser(
            max_fragment_bytes=plane.settings.putmedia_max_fragment_bytes
        )
        self.persisted = 0
        self._current: _Current | None = None
        # Fragments stored by earlier connections, by producer timestamp: a producer that
        # reconnects after losing acks sends again what it has no PERSISTED ack for.
        self._earlier: dict[int, Fragment] = {}
        self._finished = False  # stop reading: fatal error, idle, shutdown or client gone
        self._client_gone = False
        self._prefix = f"putmedia[{stream.name}]"
        self._live = LiveCutter(plane.live, stream.id)

    async def run(self) -> None:
        settings = self.plane.settings
        content = self.request.content
        closing = self.plane.closing
        last_data = last_ack = clock.monotonic()
        try:
            try:
                recent = await self.plane.fragments.last(self.stream, RESEND_WINDOW)
            except Exception:  # noqa: BLE001 - without them, fragments sent again are stored again
                logger.exception("%s cannot read the stream's last fragments", self._prefix)
                recent = []
            self._earlier = {f.producer_ts: f for f in recent}
            while not self._finished:
                wait = min(settings.putmedia_idle_ack_interval, 1.0)
                try:
                    chunk = await asyncio.wait_for(content.readany(), timeout=wait)
                except TimeoutError:
                    now = clock.monotonic()
                    if closing.is_set():
                        logger.info("%s server shutting down", self._prefix)
                        break
                    if self.slot is not None and self.slot.taken_over.is_set():
                        logger.info("%s a new connection takes over the stream", self._prefix)
                        break
                    if now - last_data >= settings.putmedia_idle_timeout:
                        logger.info("%s no data for %.0f s, closing", self._prefix, now - last_data)
                        break
                    if now - last_ack >= settings.putmedia_idle_ack_interval:
                        await self._send(ack("IDLE"))
                        last_ack = now
                    continue
                except asyncio.CancelledError:
                    raise
                except Exception as exc:  # noqa: BLE001 - any transport failure ends the upload
                    logger.info("%s connection broke: %s", self._prefix, exc or type(exc).__name__)
                    self._client_gone = True
                    await self._error(AckError.STREAM_READ_ERROR)
                    break
                if not chunk:
                    await self._handle(self.parser.finish())
                    break
                last_data = last_ack = clock.monotonic()
                if self.slot is not None:
                    self.slot.last_data = last_data
                self.plane.ingested_bytes += len(chunk)
                await self._handle(self.parser.feed(chunk))
                if not self._finished:
                    await self._live.progress(self.parser)
                if closing.is_set():
                    break
                if self.slot is not None and self.slot.lease_lost:
                    # Not a fragment more: another node may hold the stream's writer lease now.
                    logger.warning("%s lost the stream's writer lease, ending", self._prefix)
                    break
        finally:
            await self._live.abandon()
            await self._close()

    async def _close(self) -> None:
        eof = self.request.content.is_eof()
        if not self._client_gone:
            try:
                await self.response.write_eof()
            except (ConnectionError, RuntimeError):
                self._client_gone = True
        if not eof:
            # The producer may still be sending: drop the connection rather than drain it
            # (aiohttp would otherwise read and discard the rest of the body for a while).
            self.request.protocol.force_close()
        logger.debug("%s closed after %d persisted fragments", self._prefix, self.persisted)

    async def _send(self, line: bytes) -> None:
        if self._client_gone:
            return
        try:
            await self.response.write(line)
        except (ConnectionError, RuntimeError):
            # The producer went away; its acks cannot be delivered. Finish what was received.
            self._client_gone = True
            self._finished = True

    async def _error(self, error: AckError, *, fatal: bool = False) -> None:
        cur = self._current
        await self._live.abandon()
        self._current = None
        await self._send(
            ack(
                "ERROR",
                timecode=None if cur is None else cur.timecode,
                number=None if cur is None else cur.number,
                error=error,
            )
        )
        if fatal:
            self._finished = True

    async def _handle(self, events: list[mkvstream.Event]) -> None:
        for ev in events:
            if isinstance(ev, mkvstream.FragmentStarted):
                assert self.parser.header is not None
                ts = self._producer_ts(to_ms(ev.timecode, self.parser.header.timecode_scale))
                earlier = self._earlier.pop(ts, None)
                if earlier is None:
                    number = await self.plane.fragments.next_number(self.stream.id)
                else:
                    number = earlier.number
                self._current = _Current(ev.index, ev.timecode, number, clock.now_ms(), earlier)
                await self._send(
                    ack("BUFFERING", timecode=ev.timecode, number=self._current.number)
                )
                if earlier is None:
                    await self._live.begin(ev.index, number, self._current.server_ts, ts)
            elif isinstance(ev, mkvstream.FragmentReady):
                await self._store(ev)
            elif isinstance(ev, mkvstream.FragmentRejected):
                logger.debug("%s fragment rejected: %s", self._prefix, ev.message)
                if self._current is not None and self._current.index == ev.index:
                    await self._error(AckError.of(ev.problem))
                else:
                    # Refused Tags that no Cluster followed: there is no fragment to name.
                    await self._send(
                        ack("ERROR", timecode=ev.timecode, error=AckError.of(ev.problem))
                    )
            else:
                logger.info("%s stream rejected: %s", self._prefix, ev.message)
                await self._error(AckError.of(ev.problem), fatal=True)
            if self._finished:
                return

    def _producer_ts(self, timecode_ms: int) -> int:
        if self.spec.timecode_type == "RELATIVE":
            assert self.spec.producer_start_ms is not None
            return self.spec.producer_start_ms + timecode_ms
        return timecode_ms

    async def _store(self, ev: mkvstream.FragmentReady) -> None:
        cur = self._current
        if cur is None or cur.index != ev.index:  # pragma: no cover - parser guarantees order
            number = await self.plane.fragments.next_number(self.stream.id)
            cur = _Current(ev.index, ev.timecode, number, clock.now_ms())
        self._current = cur
        await self._send(ack("RECEIVED", timecode=ev.timecode, number=cur.number))
        producer_ts = self._producer_ts(ev.timecode_ms)
        if cur.stored is not None:
            # Sent again on a new connection (its PERSISTED ack was lost with the old one):
            # acknowledged as the fragment already stored, not stored twice.
            logger.info(
                "%s fragment at producer time %d is stored already as %d",
                self._prefix,
                producer_ts,
                cur.number,
            )
            self._current = None
            await self._ack_persisted(ev.timecode, cur.number)
            return
        if not 0 <= producer_ts < MAX_PRODUCER_TS_MS:
            await self._error(AckError.INVALID_PRODUCER_TIMESTAMP)
            return
        try:
            data = await asyncio.to_thread(mkvstream.assemble, ev)
        except ValueError as exc:
            logger.debug("%s cannot rewrite fragment: %s", self._prefix, exc)
            await self._error(AckError.INVALID_MKV_DATA)
            return
        if len(data) > self.plane.settings.putmedia_max_fragment_bytes:
            await self._error(AckError.MAX_FRAGMENT_SIZE_REACHED)
            return
        await self._live.complete(data, ev.duration_ms)
        try:
            await self.plane.fragments.append(
                self.stream,
                data,
                producer_ts_ms=producer_ts,
                server_ts_ms=cur.server_ts,
                duration_ms=ev.duration_ms,
                number=cur.number,
            )
        except ResourceNotFoundException:
            logger.info("%s stream was deleted", self._prefix)
            await self._error(AckError.STREAM_DELETED, fatal=True)
            return
        except Exception as exc:  # noqa: BLE001 - a storage failure loses this fragment only
            if not is_disk_full(exc):
                logger.exception("%s storing fragment %d failed", self._prefix, cur.number)
                await self._error(AckError.ARCHIVAL_ERROR)
                return
            # Out of space: every later fragment would fail too, so the upload ends here.
            logger.error(
                "%s storing fragment %d failed, the disk is full: %s; ending the upload",
                self._prefix,
                cur.number,
                exc,
            )
            await self._error(AckError.ARCHIVAL_ERROR, fatal=True)
            return
        self.persisted += 1
        self._current = None
        await self._live.stored()
        for event in ev.events:
            self.plane.events.publish(
                FragmentEvent(
                    stream_id=self.stream.id,
                    stream_name=self.stream.name,
                    stream_arn=self.stream.arn,
                    fragment_number=cur.number,
                    producer_ts_ms=producer_ts,
                    server_ts_ms=cur.server_ts,
                    duration_ms=ev.duration_ms,
                    event=event,
                )
            )
        await self._ack_persisted(ev.timecode, cur.number)

    async def _ack_persisted(self, timecode: int, number: int) -> None:
        # PERSISTED means durable; streams without retention keep nothing to acknowledge.
        current = self.plane.control.stream_by_id(self.stream.id)
        if current is not None and current.retention_hours > 0:
            await self._send(ack("PERSISTED", timecode=timecode, number=number))
