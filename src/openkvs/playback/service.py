"""The playback subsystem: sessions, playlists/manifests and segments, built on the fragment store.

``PlaybackService`` owns the worker pool (remuxing, decoding and encoding never run on the
event loop), the bounded caches (parsed fragments, segments, images), the session-token signer
and the cursors of LIVE/LIVE_REPLAY sessions. ``start()``/``stop()`` are called by the app's
lifecycle. The wire layers (``api/playback.py`` for the JSON operations, ``playback/routes.py``
for the GET resources) call it with already-validated arguments.
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import logging
from collections import OrderedDict
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, ClassVar, TypeVar

from .. import clock
from ..config import Settings
from ..control.fragments import FragmentMissing
from ..control.resources import ControlPlane
from ..errors import (
    ClientLimitExceededException,
    InvalidArgumentException,
    InvalidCodecPrivateDataException,
    InvalidMediaFrameException,
    MissingCodecPrivateDataException,
    ResourceNotFoundException,
    ServiceError,
    UnsupportedStreamMediaTypeException,
)
from ..media import opus
from ..records import Fragment, Stream
from . import dash, hls, silence
from .cache import ByteLRU
from .fmp4 import (
    InvalidCodecPrivate,
    MissingCodecPrivate,
    TrackSpec,
    UnsupportedCodec,
    audio_samples,
    cover_start,
    drop_before,
    init_segment,
    media_segment,
    meet,
    track_spec,
    video_samples,
)
from .images import frame_bytes
from .liveedge import PART_TARGET_S, LiveEdge, LiveFragment
from .mkv import Frame, ParsedFragment, Track, parse_fragment
from .timeline import (
    Cursor,
    FragmentSource,
    View,
    discontinuity,
    in_session,
    lookahead,
    media_ms,
    on_demand_view,
    select,
    settled,
    slot_ms,
    timestamp_at,
    ts_of,
)
from .tokens import (
    DASH,
    HLS,
    ExpiredToken,
    InvalidToken,
    Session,
    TokenSigner,
    new_session_id,
    shared_key,
    stream_tag,
)
from .ts import ts_segment

logger = logging.getLogger(__name__)
T = TypeVar("T")

LIVE_WINDOW_MS = 30_000
LOOKBEHIND_MS = 20_000
LOOKBEHIND_ROWS = 256
QUEUE_PER_WORKER = 32
LIVE_TARGET_S = 2  # bounds a blocking playlist reload to three times this
BLOCK_POLL_S = 0.5  # a blocking reload also looks at the store this often (other writers)
PART_WAIT_S = 3.0


class SessionNotAuthorized(ServiceError):
    """A missing, forged, altered or expired session token on a GET resource."""

    code = "NotAuthorizedException"
    status = 403


def map_codec_error(exc: ValueError) -> ServiceError:
    if isinstance(exc, UnsupportedCodec):
        return UnsupportedStreamMediaTypeException(str(exc))
    if isinstance(exc, MissingCodecPrivate):
        return MissingCodecPrivateDataException(str(exc))
    if isinstance(exc, InvalidCodecPrivate):
        return InvalidCodecPrivateDataException(str(exc))
    return InvalidMediaFrameException(f"The stored media could not be parsed: {exc}")


def stream_tracks(
    parsed: ParsedFragment, *, audio_only_ok: bool
) -> tuple[TrackSpec | None, TrackSpec | None]:
    """The (video, audio) output tracks of a fragment. Raises a ServiceError when unusable."""
    video = parsed.video()
    audio = parsed.audio()
    try:
        vspec = track_spec(video) if video is not None else None
        aspec = None
        if audio is not None:
            try:
                aspec = track_spec(audio)
            except UnsupportedCodec:
                if vspec is None:
                    raise
                logger.debug("ignoring audio track with codec %s", audio.codec_id)
    except ValueError as exc:
        raise map_codec_error(exc) from exc
    if vspec is None and (aspec is None or not audio_only_ok):
        raise UnsupportedStreamMediaTypeException(
            "The stream has no H.264 video track (track 1 must be V_MPEG/ISO/AVC)."
        )
    return vspec, aspec


def bandwidth(fragment: Fragment, parsed: ParsedFragment, track: Track | None) -> int:
    seconds = max(fragment.duration_ms, 1) / 1000
    if track is None:
        return int(fragment.size * 8 / seconds)
    size = sum(len(f.data) for f in parsed.frames.get(track.number, []))
    return int(size * 8 / seconds * 1.1) + 1


class PlaybackService:
    NOT_STARTED: ClassVar[str] = "playback service is not started"

    def __init__(
        self,
        settings: Settings,
        control: ControlPlane,
        fragments: FragmentSource,
        live: LiveEdge | None = None,
    ) -> None:
        self.live = live if live is not None else LiveEdge()
        self.settings = settings
        self.control = control
        self.fragments = fragments
        budget = max(0, settings.playback_cache_mb) * 1024 * 1024
        self.parsed: ByteLRU[tuple[int, int], ParsedFragment] = ByteLRU(
            budget // 4, lambda p: p.size
        )
        self.segments: ByteLRU[tuple[Any, ...], bytes] = ByteLRU(budget // 2, len)
        self.images: ByteLRU[tuple[Any, ...], bytes] = ByteLRU(budget // 8, len)
        # Decoded frames (GetImages): another size, format or quality of a frame skips decoding.
        self.frames: ByteLRU[tuple[Any, ...], Any] = ByteLRU(budget // 8, frame_bytes)
        self._cursors: OrderedDict[str, Cursor] = OrderedDict()
        self._pool: ThreadPoolExecutor | None = None
        self.images_decoded = 0  # GetImages images decoded (not from the cache), for metrics
        self._queued = 0
        self._signer: TokenSigner | None = None

    # -- lifecycle -----------------------------------------------------------------------------

    async def start(self) -> None:
        key = await shared_key(self.control.secret)
        self._signer = TokenSigner(key)
        self._pool = ThreadPoolExecutor(
            max(1, self.settings.playback_workers), thread_name_prefix="openkvs-playback"
        )

    async def stop(self) -> None:
        for cache in (self.parsed, self.segments, self.images, self.frames):
            cache.cancel_pending()
            cache.clear()
        self._cursors.clear()
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)
            self._pool = None

    @property
    def signer(self) -> TokenSigner:
        if self._signer is None:
            raise RuntimeError(self.NOT_STARTED)
        return self._signer

    async def run(self, fn: Callable[..., T], *args: Any) -> T:
        """Run ``fn`` in the worker pool; refuse work when the queue is full."""
        if self._pool is None:
            raise RuntimeError(self.NOT_STARTED)
        limit = max(1, self.settings.playback_workers) * QUEUE_PER_WORKER
        if self._queued >= limit:
            raise ClientLimitExceededException(
                "Too many playback requests are being processed; try again later."
            )
        self._queued += 1
        try:
            return await asyncio.get_running_loop().run_in_executor(self._pool, fn, *args)
        finally:
            self._queued -= 1

    # -- fragments -------------------------------------------------------------------------------

    async def read(self, fragment: Fragment) -> bytes:
        try:
            return await self.fragments.read(fragment)
        except FragmentMissing as exc:
            raise ResourceNotFoundException(
                f"Fragment {fragment.number} is no longer available."
            ) from exc

    async def parse(self, stream: Stream, fragment: Fragment) -> ParsedFragment:
        async def make() -> ParsedFragment:
            data = await self.read(fragment)
            try:
                return await self.run(parse_fragment, data)
            except ValueError as exc:
                raise InvalidMediaFrameException(
                    f"Fragment {fragment.number} could not be parsed: {exc}"
                ) from exc

        return await self.parsed.get_or_create((stream.id, fragment.number), make)

    # -- sessions --------------------------------------------------------------------------------

    async def create_session(
        self,
        *,
        kind: int,
        stream: Stream,
        mode: str,
        selector: str,
        start_ms: int | None,
        end_ms: int | None,
        container: str,
        discontinuity: str,
        display_timestamp: bool,
        display_number: bool,
        max_results: int,
        expires_s: int,
    ) -> str:
        now = clock.now_ms()
        if mode == "LIVE":
            window = await self.fragments.last(stream, max_results)
            if not window or window[-1].server_ts < now - LIVE_WINDOW_MS:
                raise ResourceNotFoundException(
                    "No fragments were ingested into the stream in the last 30 seconds."
                )
            ref = window[0]
            anchor = ts_of(window[-1], selector)
        else:
            first = await select(self.fragments, stream, selector, start_ms, end_ms, max_results)
            if not first:
                raise ResourceNotFoundException(
                    "No fragments found in the stream for the requested timestamp range."
                )
            ref = first[0]
            anchor = ts_of(first[-1], selector)
        parsed = await self.parse(stream, ref)
        stream_tracks(parsed, audio_only_ok=kind == HLS)
        session = Session(
            kind=kind,
            session_id=new_session_id(),
            stream_id=stream.id,
            stream_tag=stream_tag(stream.arn),
            mode=mode,
            selector=selector,
            start_ms=start_ms,
            end_ms=end_ms,
            origin_ms=ts_of(ref, selector),
            anchor_ms=anchor,
            ref_number=ref.number,
            created_ms=now,
            expires_ms=now + expires_s * 1000,
            container=container,
            discontinuity=discontinuity,
            display_timestamp=display_timestamp,
            display_number=display_number,
            max_results=max_results,
        )
        return self.signer.issue(session)

    def open_session(self, token: str | None, kind: int) -> tuple[Session, Stream]:
        if not token:
            raise SessionNotAuthorized("The SessionToken parameter is missing.")
        try:
            session = self.signer.verify(token, clock.now_ms())
        except ExpiredToken as exc:
            raise SessionNotAuthorized("The streaming session has expired.") from exc
        except InvalidToken as exc:
            raise SessionNotAuthorized("The session token is not valid.") from exc
        if session.kind != kind:
            other = "HLS" if session.kind == HLS else "DASH"
            raise SessionNotAuthorized(f"The session token belongs to an {other} session.")
        stream = self.control.stream_by_id(session.stream_id)
        if stream is None or stream_tag(stream.arn) != session.stream_tag:
            raise ResourceNotFoundException("The stream of this streaming session was deleted.")
        return session, stream

    def _cursor(self, session: Session) -> Cursor:
        cursor = self._cursors.get(session.key)
        if cursor is not None:
            self._cursors.move_to_end(session.key)
            return cursor
        cursor = self._cursors[session.key] = Cursor(session)
        now = clock.now_ms()
        for key in [k for k, c in self._cursors.items() if c.session.expires_ms <= now]:
            del self._cursors[key]
        while len(self._cursors) > max(1, self.settings.playback_live_sessions):
            self._cursors.popitem(last=False)
        return cursor

    async def view(self, session: Session, stream: Stream) -> View:
        if session.mode == "ON_DEMAND":
            return await on_demand_view(self.fragments, stream, session)
        cursor = self._cursor(session)
        async with cursor.lock:
            return await cursor.refresh(self.fragments, stream, clock.now_ms())

    async def reference(self, session: Session, stream: Stream) -> tuple[Fragment, ParsedFragment]:
        """The fragment whose tracks describe the session (its first one, or its oldest left)."""
        found = await self.fragments.get(stream, [session.ref_number])
        if not found:
            view = await self.view(session, stream)
            if not view.entries:
                raise ResourceNotFoundException("The fragments of this session have expired.")
            found = [view.entries[0].fragment]
        return found[0], await self.parse(stream, found[0])

    async def fragment_by_number(self, session: Session, stream: Stream, number: int) -> Fragment:
        found = await self.fragments.get(stream, [number])
        if not found or not in_session(session, found[0]):
            raise ResourceNotFoundException(
                f"Fragment {number} is not part of this streaming session."
            )
        return found[0]

    async def fragment_at(self, session: Session, stream: Stream, time_ms: int) -> Fragment:
        ts = timestamp_at(session, time_ms)
        rows = await self.fragments.list_fragments(
            stream, timestamp_type=session.selector, start_ms=ts, end_ms=ts, limit=64
        )
        rows = [r for r in rows if in_session(session, r)]
        if not rows:
            raise ResourceNotFoundException(f"No fragment of this session starts at {time_ms}.")
        pick = min if session.mode == "LIVE" else max
        return pick(rows, key=lambda r: r.number)

    async def slot(
        self, session: Session, stream: Stream, fragment: Fragment
    ) -> tuple[int, int, bool]:
        """(start, length) of the fragment's slot on the timeline, and whether the next
        fragment follows it without a gap (always False in a live session, whose segments do
        not depend on their successor: see ``timeline``)."""
        ts = ts_of(fragment, session.selector)
        if not settled(session):
            return media_ms(session, ts), slot_ms(ts, fragment.duration_ms, None), False
        nxt = await lookahead(self.fragments, stream, session, fragment)
        next_ts = ts_of(nxt, session.selector) if nxt is not None else None
        length = slot_ms(ts, fragment.duration_ms, next_ts)
        abuts = next_ts is not None and length == next_ts - ts
        return media_ms(session, ts), length, abuts

    # -- resources -------------------------------------------------------------------------------

    async def hls_master(self, session: Session, stream: Stream, token: str) -> str:
        ref, parsed = await self.reference(session, stream)
        video, audio = stream_tracks(parsed, audio_only_ok=True)
        return hls.master_playlist(session, token, video, audio, bandwidth(ref, parsed, None))

    async def output_track(
        self, session: Session, stream: Stream, track: int, *, audio_only_ok: bool
    ) -> TrackSpec:
        _, parsed = await self.reference(session, stream)
        video, audio = stream_tracks(parsed, audio_only_ok=audio_only_ok)
        for spec in (video, audio):
            if spec is not None and spec.track_id == track:
                return spec
        raise ResourceNotFoundException(f"This session has no track {track}.")

    async def hls_media(
        self,
        session: Session,
        stream: Stream,
        token: str,
        track: int | None,
        msn: int | None = None,
        part: int | None = None,
    ) -> str:
        """The media playlist; LIVE fMP4 video playlists of a stream written on this server
        (PutMedia, WebRTC storage sessions) carry LL-HLS parts, and a blocking reload
        (``msn``/``part``) waits, at most three target durations, until the playlist holds that
        segment or part."""
        if part is not None and msn is None:
            raise InvalidArgumentException("The _HLS_part parameter requires _HLS_msn.")
        spec = None
        if session.container != "MPEG_TS":
            assert track is not None
            spec = await self.output_track(session, stream, track, audio_only_ok=True)
        low_latency = session.mode == "LIVE" and spec is not None and spec.is_video
        # The audio rendition lists no parts, but answers blocking reloads: a player cannot
        # play past the end of its audio, so polling for it every target duration would hold
        # the player further behind its video's parts.
        audio_blocking = session.mode == "LIVE" and spec is not None and not spec.is_video
        if low_latency:
            self.live.watch(stream.id)
        deadline = clock.monotonic() + 3 * max(1, LIVE_TARGET_S)
        first = True
        while True:
            version = self.live.version(stream.id)
            view = await self.view(session, stream)
            ll = self._low_latency(session, view) if low_latency else None
            if audio_blocking and view.entries:
                ll = hls.LowLatency(PART_TARGET_S, (), None, blocking_only=True)
            if ll is None or msn is None:
                return hls.media_playlist(session, token, view, track, ll)
            if first and hls.too_far(view, msn):
                raise InvalidArgumentException(
                    f"_HLS_msn={msn} is more than two segments after the last one."
                )
            first = False
            left = deadline - clock.monotonic()
            if hls.blocking_ready(view, ll, msn, part) or left <= 0:
                return hls.media_playlist(session, token, view, track, ll)
            await self.live.wait(stream.id, version, min(left, BLOCK_POLL_S))

    def _low_latency(self, session: Session, view: View) -> hls.LowLatency | None:
        edge = self.live.edge(session.stream_id)
        if edge is None or not view.entries:
            return None
        seqs = {e.fragment.number: e.seq for e in view.entries}
        last = view.entries[-1]
        parts: list[hls.PartLine] = []
        preload = None
        pending: LiveFragment | None = None
        for frag in list(edge.fragments.values()):
            msn = seqs.get(frag.number)
            if msn is None:
                ts = ts_of_live(frag, session.selector)
                if pending is not None or frag.number <= last.fragment.number or ts <= last.ts_ms:
                    continue
                pending, msn = frag, last.seq + 1
                if not frag.done:
                    preload = (frag.number, len(frag.parts))
            parts.extend(
                hls.PartLine(msn, frag.number, p.index, p.duration_s, p.independent)
                for p in frag.parts
            )
        disc = False
        if pending is not None:
            ts = ts_of_live(pending, session.selector)
            disc = discontinuity(session, (last.ts_ms, last.fragment.duration_ms), ts)
        return hls.LowLatency(PART_TARGET_S, tuple(parts), preload, disc)

    async def part(
        self, session: Session, stream: Stream, number: int, index: int, track: int
    ) -> bytes:
        """One part of a fragment being written (or just stored); a request for the next part
        (the preload hint) waits for it, at most ``PART_WAIT_S``."""
        if session.mode != "LIVE":
            raise ResourceNotFoundException("Only LIVE sessions have parts.")
        spec = await self.output_track(session, stream, track, audio_only_ok=True)
        deadline = clock.monotonic() + PART_WAIT_S
        while True:
            version = self.live.version(stream.id)
            frag = self.live.fragment(stream.id, number)
            if frag is None:
                raise ResourceNotFoundException(f"Fragment {number} has no parts here.")
            if index < len(frag.parts):
                break
            left = deadline - clock.monotonic()
            if frag.done or left <= 0 or index > len(frag.parts) + 1:
                raise ResourceNotFoundException(f"Fragment {number} has no part {index}.")
            await self.live.wait(stream.id, version, left)
        found = frag.parts[index]
        ts = ts_of_live(frag, session.selector)
        if ts < session.origin_ms or number < session.ref_number:
            raise ResourceNotFoundException(f"Fragment {number} is not part of this session.")
        frames = list(found.frames.get(spec.track_id, ()))
        start = media_ms(session, ts) * 90
        if not spec.is_video or not frames:
            raise ResourceNotFoundException(f"Part {index} has no frames of track {track}.")
        try:
            samples = video_samples(
                spec, frames, start, start + (found.end_ns * 90 + 500_000) // 1_000_000
            )
            return media_segment(spec, samples, (media_ms(session, ts) + 1 + index) & 0xFFFFFFFF)
        except ValueError as exc:
            raise map_codec_error(exc) from exc

    async def dash_manifest(self, session: Session, stream: Stream, token: str) -> str:
        ref, parsed = await self.reference(session, stream)
        video, audio = stream_tracks(parsed, audio_only_ok=False)
        tracks: list[tuple[TrackSpec, int]] = []
        for spec in (video, audio):
            if spec is not None:
                track = parsed.tracks.get(spec.track_id)
                tracks.append((spec, bandwidth(ref, parsed, track)))
        view = await self.view(session, stream)
        now = clock.now_ms()
        if session.mode == "LIVE_REPLAY":
            start = session.created_ms + timestamp_at(session, 0) - session.anchor_ms
        else:
            start = timestamp_at(session, 0)
        return dash.manifest(session, token, view, tracks, now_ms=now, availability_start_ms=start)

    async def init(self, session: Session, stream: Stream, track: int) -> bytes:
        spec = await self.output_track(session, stream, track, audio_only_ok=session.kind == HLS)
        return init_segment(spec)

    async def media(
        self, session: Session, stream: Stream, fragment: Fragment, track: int
    ) -> bytes:
        spec = await self.output_track(session, stream, track, audio_only_ok=session.kind == HLS)
        start, duration, abuts = await self.slot(session, stream, fragment)
        previous = None if spec.is_video else await self.previous(session, stream, fragment)
        live = not settled(session)
        key = ("mp4", stream.id, fragment.number, track, start, duration, abuts, previous, live)

        async def make() -> bytes:
            parsed = await self.parse(stream, fragment)
            lead: list[Frame] = []
            seam: Frame | None = None
            if previous is not None:
                before = await self.parse(stream, previous)
                prev_ts = ts_of(previous, session.selector)
                gap_ns = (ts_of(fragment, session.selector) - prev_ts) * 1_000_000
                if live:
                    prev_end = own_end_ns(before, slot_ms(prev_ts, previous.duration_ms, None))
                    lead = overhang(before, track, prev_end, gap_ns)
                    seam = last_kept(before, track, prev_end, gap_ns)
                else:
                    lead = straddling(before, track, gap_ns)
            cut: Cut | None
            if live:  # the frames ending after its own end go to the next segment
                cut = Cut(own_end_ns(parsed, duration), whole=True)
            else:  # the frame playing at the next fragment's start goes there
                cut = Cut(duration * 1_000_000, whole=False) if abuts else None
            return await self.run(_render_mp4, parsed, track, start, duration, lead, cut, seam)

        return await self._segment(key, make)

    async def previous(
        self, session: Session, stream: Stream, fragment: Fragment
    ) -> Fragment | None:
        """The fragment just before ``fragment`` when the two abut on the timeline (both
        exist whenever ``fragment``'s segment is listed, in every mode).

        An AAC frame that straddles a fragment boundary is stored in the earlier fragment, so
        an audio segment starts up to one frame after its video; repeating that frame at the
        head of the next audio segment leaves no hole for a player that starts there.
        """
        ts = ts_of(fragment, session.selector)
        rows = await self.fragments.list_fragments(
            stream,
            timestamp_type=session.selector,
            start_ms=ts - LOOKBEHIND_MS,
            end_ms=ts - 1,
            limit=LOOKBEHIND_ROWS,
        )
        if not rows or len(rows) == LOOKBEHIND_ROWS:
            return None
        prev = rows[-1]
        prev_ts = ts_of(prev, session.selector)
        if slot_ms(prev_ts, prev.duration_ms, ts) != ts - prev_ts:
            return None
        return prev

    async def ts(self, session: Session, stream: Stream, fragment: Fragment) -> bytes:
        start, duration, _ = await self.slot(session, stream, fragment)
        key = ("ts", stream.id, fragment.number, start, duration)

        async def make() -> bytes:
            parsed = await self.parse(stream, fragment)
            return await self.run(_render_ts, parsed, start, duration)

        return await self._segment(key, make)

    async def _segment(self, key: tuple[Any, ...], make: Callable[[], Any]) -> bytes:
        try:
            return await self.segments.get_or_create(key, make)
        except LookupError as exc:
            raise ResourceNotFoundException(str(exc.args[0] if exc.args else exc)) from exc
        except ServiceError:
            raise
        except ValueError as exc:
            raise map_codec_error(exc) from exc


def ts_of_live(fragment: LiveFragment, selector: str) -> int:
    return fragment.producer_ts if selector == "PRODUCER_TIMESTAMP" else fragment.server_ts


@dataclasses.dataclass(frozen=True)
class Cut:
    """Where an audio segment's own frames stop: those playing at ``at_ns`` (relative to the
    fragment's start) are left to the next segment, and with ``whole`` also those starting
    later."""

    at_ns: int
    whole: bool

    def keeps(self, frame: Frame, length_ns: int) -> bool:
        if self.whole:
            return frame.pts_ns + length_ns <= self.at_ns
        return not frame.pts_ns < self.at_ns < frame.pts_ns + length_ns


def _render_mp4(
    parsed: ParsedFragment,
    track: int,
    start_ms: int,
    duration_ms: int,
    lead: list[Frame],
    cut: Cut | None,
    seam: Frame | None = None,
) -> bytes:
    """One fMP4 media segment of ``track``. Audio: ``lead`` frames (lent by the previous
    fragment) come first, ``cut`` leaves this fragment's last frames to the next segment, and
    ``seam`` (the last frame of the previous segment, timed like ``lead``) is where this
    segment's audio begins; without it, the audio covers the segment's first instant."""
    info = parsed.tracks.get(track)
    if info is None:
        raise LookupError(f"This fragment has no track {track}.")
    spec = track_spec(info)
    frames = parsed.frames.get(track, [])
    if spec.is_video:
        samples = video_samples(spec, frames, start_ms * 90, (start_ms + duration_ms) * 90)
    else:
        # Without a sample rate no frame is known to overhang (``overhang`` lends none either).
        if cut is not None and (info.sample_rate or not cut.whole):
            frames = [f for f in frames if cut.keeps(f, _frame_ns(info, f))]
        samples = drop_before(
            audio_samples(spec, lead + frames, start_ms), 0, spec.timescale // 1000
        )
        if spec.opus is not None:
            make_silence = functools.partial(silence.opus_frame, spec.channels)
        else:
            assert spec.aac is not None  # track_spec sets it for every other audio track
            make_silence = functools.partial(silence.aac_frame, spec.aac)
        if seam is not None:
            base = start_ms * 1_000_000 + seam.pts_ns
            samples = meet(spec, samples, _ticks(base, spec) + spec.frame_ticks(seam.data))
        else:
            samples = cover_start(spec, samples, start_ms, make_silence)
    return media_segment(spec, samples, (start_ms + 1) & 0xFFFFFFFF)


def _frame_ns(track: Track, frame: Frame) -> int:
    """How long one stored audio frame plays: an Opus packet's own duration, else an AAC
    frame's 1024 samples."""
    if track.codec_id == opus.CODEC_ID:
        try:
            return opus.packet_samples(frame.data) * 1_000_000_000 // opus.RATE
        except ValueError:
            return 0
    return 1024 * 1_000_000_000 // max(1, track.sample_rate)


def straddling(parsed: ParsedFragment, track: int, at_ns: int) -> list[Frame]:
    """The audio frames of ``parsed`` still playing ``at_ns`` after its start, re-timed
    relative to that instant (the start of the next fragment).

    An AAC frame is stored with the fragment it starts in, so the audio of a fragment begins up
    to one frame after its video. Each such frame is served with the segment of the fragment it
    ends in instead: every audio segment then covers its slot from the first instant (players
    starting there see no hole) and no frame is served twice when fragments abut.
    """
    info = parsed.tracks.get(track)
    if info is None or not info.is_audio or not info.sample_rate:
        return []
    return [
        Frame(f.pts_ns - at_ns, f.data, f.key)
        for f in parsed.frames.get(track, [])
        if f.pts_ns < at_ns < f.pts_ns + _frame_ns(info, f)
    ]


def own_end_ns(parsed: ParsedFragment, slot_ms: int) -> int:
    """Where a fragment's own media ends, relative to its start, judged from the fragment alone
    (a live segment must not wait for its successor): the end of its last video frame (the
    track's DefaultDuration, else the interval before it), within its slot; the end of its slot
    when it has no video.

    A PutMedia fragment's recorded duration runs to the end of its last audio frame, which
    plays past the next keyframe; its video ends where the next fragment starts."""
    limit = slot_ms * 1_000_000
    video = parsed.video()
    if video is None:
        return limit
    pts = sorted(f.pts_ns for f in parsed.frames.get(video.number, []))
    if not pts:
        return limit
    if video.default_duration_ns > 0:
        step = video.default_duration_ns
    else:
        step = pts[-1] - pts[-2] if len(pts) > 1 else 0
    return min(limit, pts[-1] + step)


def overhang(parsed: ParsedFragment, track: int, end_ns: int, at_ns: int) -> list[Frame]:
    """The audio frames of ``parsed`` still playing at its own end ``end_ns`` (``own_end_ns``)
    or starting after it, re-timed relative to ``at_ns`` after its start (the start of the next
    fragment), which keeps them at their place on the timeline.

    They are exactly the frames a live segment of ``parsed`` leaves out (``Cut(end_ns,
    whole=True)``), whatever the successor's timestamp: every frame is served once, in one
    segment that never changes, and the next segment's audio begins where this one's ends
    (``last_kept``), close to its first instant."""
    info = parsed.tracks.get(track)
    if info is None or not info.is_audio or not info.sample_rate:
        return []
    return [
        Frame(f.pts_ns - at_ns, f.data, f.key)
        for f in parsed.frames.get(track, [])
        if f.pts_ns + _frame_ns(info, f) > end_ns
    ]


def last_kept(parsed: ParsedFragment, track: int, end_ns: int, at_ns: int) -> Frame | None:
    """The last audio frame a live segment of ``parsed`` keeps (the one before its
    ``overhang``), re-timed like it: where that segment's audio ends."""
    info = parsed.tracks.get(track)
    if info is None or not info.is_audio or not info.sample_rate:
        return None
    kept = [f for f in parsed.frames.get(track, []) if f.pts_ns + _frame_ns(info, f) <= end_ns]
    if not kept:
        return None
    last = max(kept, key=lambda f: f.pts_ns)
    return Frame(last.pts_ns - at_ns, last.data, last.key)


def _ticks(ns: int, spec: TrackSpec) -> int:
    return (ns * spec.timescale + 500_000_000) // 1_000_000_000


def _render_ts(parsed: ParsedFragment, start_ms: int, duration_ms: int) -> bytes:
    video, audio = stream_tracks(parsed, audio_only_ok=True)
    v = (video, parsed.frames.get(video.track_id, [])) if video is not None else None
    a = (audio, parsed.frames.get(audio.track_id, [])) if audio is not None else None
    if v is None and a is None:
        raise InvalidArgumentException("The fragment has no playable track.")
    return ts_segment(v, a, start_ms, duration_ms)


__all__ = ["DASH", "HLS", "PlaybackService", "SessionNotAuthorized"]
