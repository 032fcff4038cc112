"""Records one master peer's media into a stream: H.264 as received, Opus → AAC (digital
silence is not encoded: see ``media.aac``) or Opus as received (``storage_audio = "opus"``),
fragments.

Called on the event loop with encoded video access units (from the tap), audio packet arrivals
(from the tap) and either the decoded audio frames (from ``OpusIn``) or the Opus packets
themselves; AAC encoding, MKV serialisation and storage run in worker threads (the AAC encoding,
while the encoder is free, in the Opus decoding job itself: :meth:`Recorder.audio_stage`). The
fragment writer keeps fragments in order and is bounded. Each fragment's number is reserved as
it opens (in order), so that, given a live edge (``live``), the fragment being recorded is
published as LL-HLS parts under it (``liveparts``).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import dataclasses
import logging
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import av

from .. import clock
from ..control.fragments import is_disk_full
from ..media import opus
from ..media.aac import AacEncoder, is_dual_mono
from ..media.fragmenter import FragmentData, Fragmenter
from ..media.timeline import SessionClock
from ..playback.livecut import PartSink
from ..records import Fragment, Stream
from .liveparts import RecorderParts
from .opus_in import PoolStage
from .seams import FragmentSink

logger = logging.getLogger(__name__)

MAX_PENDING_FRAGMENTS = 64
MAX_PENDING_AUDIO = 250  # decoded 20 ms frames held while the encoder is behind (5 s)
AAC_FRAME_MS = 1024 * 1000 / 48000
# How far (in video time) a closed fragment waits for its audio. Audio normally trails video by
# ~200 ms (aiortc's jitter buffer, 100 ms Opus batches, AAC's look-ahead), but a busy loop
# (another peer joining, its DTLS handshake) delays it by most of a second; a fragment emitted
# before its audio arrived loses that audio for good, which players see as a hole. Fragments
# are emitted as soon as the audio has caught up, so this only costs latency while audio is
# stalled.
AUDIO_GRACE_MS = 2000
KEYFRAME_REQUEST_INTERVAL = 0.5


@dataclasses.dataclass
class RecorderStats:
    video_frames: int = 0
    video_bytes: int = 0
    keyframes: int = 0
    audio_frames: int = 0
    aac_frames: int = 0
    aac_encoded_frames: int = 0  # run through the encoder (the rest were silence)
    aac_silent_frames: int = 0  # digital silence: the pre-encoded silent frame, no encoding
    opus_frames: int = 0  # Opus packets stored as received (storage_audio = "opus")
    fragments: int = 0
    fragment_bytes: int = 0
    dropped_video: int = 0
    dropped_audio: int = 0
    dropped_fragments: int = 0
    store_errors: int = 0
    keyframe_requests: int = 0
    last_keyframe_ms: float | None = None
    keyframe_interval_ms: float | None = None
    last_media_at: float = 0.0
    first_fragment_at: float | None = None

    def as_dict(self) -> dict[str, object]:
        return dataclasses.asdict(self)


class Recorder:
    def __init__(
        self,
        stream: Stream,
        fragments: FragmentSink,
        pool: ThreadPoolExecutor,
        *,
        target_ms: int,
        request_keyframe: Callable[[], bool],
        log_prefix: str = "",
        on_fragment: Callable[[Fragment, FragmentData], None] | None = None,
        on_disk_full: Callable[[BaseException], None] | None = None,
        live: PartSink | None = None,
        opus_channels: int | None = None,
    ) -> None:
        """``opus_channels``: store the Opus packets given to :meth:`on_opus` as received, in
        an A_OPUS track of that many channels; None: AAC from :meth:`on_audio`."""
        self.stream = stream
        self.fragments = fragments
        self.stats = RecorderStats(last_media_at=clock.monotonic())
        self.clock = SessionClock()
        self._pool = pool
        self._fragmenter = Fragmenter(target_ms=target_ms, audio_grace_ms=AUDIO_GRACE_MS)
        self._request_keyframe = request_keyframe
        self._last_key_request = 0.0
        self._prefix = log_prefix
        self._on_fragment = on_fragment
        self._on_disk_full = on_disk_full
        self._queue: collections.deque[FragmentData] = collections.deque()
        self._wake = asyncio.Event()
        self._writer: asyncio.Task[None] | None = None
        self._audio_batch: list[av.AudioFrame] = []
        self._audio_busy = False
        self._audio_task: asyncio.Task[None] | None = None
        self._stage_running: asyncio.Future[None] | None = None  # encoding in a decoding job
        self._aac: AacEncoder | None = None
        self._audio_next_ms: float | None = None  # where the next audio frame may start
        self._opus_channels = opus_channels
        if opus_channels is not None:
            self._fragmenter.set_opus_config(opus_channels)
        self._closed = False
        self.written: list[Fragment] = []
        # Each fragment's number is reserved when it opens (in order), so that its LL-HLS parts
        # carry it while it is recorded; the writer stores it under that number.
        self._numbers: dict[int, asyncio.Future[int]] = {}  # by fragment serial
        self._last_number: asyncio.Future[int] | None = None
        self._open_serial: int | None = None
        self.parts = (
            None if live is None else RecorderParts(live, stream.id, pool, log_prefix=log_prefix)
        )

    def start(self) -> None:
        self._writer = asyncio.create_task(self._write_loop(), name=f"recorder {self.stream.name}")
        if self.parts is not None:
            self.parts.start()

    # -- media in (event loop) -----------------------------------------------------------------

    def on_video(self, annexb: bytes, rtp_ts: int) -> None:
        if self._closed:
            return
        now_ms = float(clock.now_ms())
        self.stats.last_media_at = clock.monotonic()
        ms = self.clock.video_ms(rtp_ts, now_ms)
        before_key = self._fragmenter.stats.keyframes
        ready = self._fragmenter.video(ms, annexb)
        self.stats.video_frames += 1
        self.stats.video_bytes += len(annexb)
        if self._fragmenter.stats.keyframes != before_key:
            self.stats.keyframes += 1
            if self.stats.last_keyframe_ms is not None:
                self.stats.keyframe_interval_ms = ms - self.stats.last_keyframe_ms
            self.stats.last_keyframe_ms = ms
        if not self._fragmenter.started or self._fragmenter.waiting_for_keyframe:
            self._ask_keyframe()
        serial = self._fragmenter.open_serial
        if serial != self._open_serial:
            if self.parts is not None:
                self.parts.closed(self._fragmenter, ready)
            self._open_serial = serial
            if serial is not None:
                number = self._numbers[serial] = self._reserve()
                if self.parts is not None:
                    start_ms = self._fragmenter.video_times(serial)[0]
                    self.parts.opened(serial, start_ms, number)
        if self.parts is not None:
            self.parts.video(self._fragmenter, ready)
        self._enqueue(ready)

    def _reserve(self) -> asyncio.Future[int]:
        """The number of the fragment that opens now: reserved after the previous one's."""
        previous = self._last_number

        async def reserve() -> int:
            if previous is not None:
                await asyncio.wait([previous])
            return await self.fragments.next_number(self.stream.id)

        task = asyncio.ensure_future(reserve())
        task.add_done_callback(lambda t: t.cancelled() or t.exception())  # retrieved
        self._last_number = task
        while len(self._numbers) > 2 * MAX_PENDING_FRAGMENTS:  # bounded (normally a few)
            self._numbers.pop(next(iter(self._numbers)))
        return task

    def on_sender_report(self, kind: str, ntp_seconds: float, rtp_ts: int) -> None:
        track = self.clock.video if kind == "video" else self.clock.audio
        taken = track.sender_report(ntp_seconds * 1000.0, rtp_ts, float(clock.now_ms()))
        if not taken and track.refused_reports == 1 and track.report_offset_ms is not None:
            logger.info(
                "%sthe sender's %s reports are %+.0f ms off the RTP timestamps of its packets: "
                "they are not used for lip sync",
                self._prefix,
                kind,
                track.report_offset_ms,
            )

    def audio_arrived(self, rtp_ts: int) -> None:
        """An encoded audio packet arrived (it is decoded later, in a batch): anchor the audio
        clock at the arrival of the first one, watch the audio clock's drift against video, and
        count it as media for the session's timeout."""
        if self._closed:
            return
        self.stats.last_media_at = clock.monotonic()
        drift = self.clock.drift
        steps = drift.steps
        self.clock.audio_arrival(rtp_ts, float(clock.now_ms()))
        if drift.steps != steps and (drift.steps <= 3 or drift.steps % 100 == 0):  # not each
            logger.info(
                "%sthe sender's audio clock parts from its video: audio moved by %+.0f ms in all "
                "(%d steps)",
                self._prefix,
                drift.correction,
                drift.steps,
            )

    def set_opus_channels(self, channels: int) -> None:
        """The channel count of the stored Opus (from the answer, before any media)."""
        if self._opus_channels is not None and channels != self._opus_channels:
            self._opus_channels = channels
            self._fragmenter.set_opus_config(channels)

    def on_opus(self, data: bytes, rtp_ts: int) -> None:
        """An Opus packet (after :meth:`audio_arrived`), stored as received: timed from its
        RTP timestamp the way AAC frames are from theirs. A gap in the packets (discontinuous
        transmission) stays a gap: Opus decoders need no filler."""
        if self._closed or not data or self._opus_channels is None:
            return
        try:
            samples = opus.packet_samples(data)
        except ValueError:
            self.stats.dropped_audio += 1
            return
        ms = self._monotonic_audio_ms(
            self.clock.audio_ms(rtp_ts, float(clock.now_ms())), samples * 1000 / opus.RATE
        )
        if ms is None:
            self.stats.dropped_audio += 1
            return
        self.stats.opus_frames += 1
        self._enqueue(self._fragmenter.audio(ms, data))

    def on_audio(self, frames: list[av.AudioFrame]) -> None:
        """Decoded audio (whose packets went through :meth:`audio_arrived`), as ``OpusIn``
        delivers it: already batched, so it is encoded at once, or taken along by the encoding
        job that is running."""
        if self._closed or not frames:
            return
        self.stats.audio_frames += len(frames)
        self._audio_batch += frames
        excess = len(self._audio_batch) - MAX_PENDING_AUDIO
        if excess > 0:
            del self._audio_batch[:excess]
            self.stats.dropped_audio += excess
        if not self._audio_busy:
            self._audio_busy = True
            self._audio_task = asyncio.create_task(self._encode_pending())

    async def _encode_pending(self) -> None:
        """One job at a time on the encoder; each takes all that has arrived."""
        try:
            while self._audio_batch and not self._closed:
                batch, self._audio_batch = self._audio_batch, []
                await self._encode_audio(batch)
        finally:
            self._audio_busy = False

    async def _encode_audio(self, batch: list[av.AudioFrame], *, final: bool = False) -> None:
        loop = asyncio.get_running_loop()
        try:
            if self._aac is None:
                if not batch:
                    return
                channels = 1 if is_dual_mono(batch) else 2
                self._aac = await loop.run_in_executor(self._pool, AacEncoder, channels)
                asc = self._aac.audio_specific_config
                self._fragmenter.set_audio_config(asc, 48000, channels)
            encoder = self._aac

            def encode() -> list[tuple[bytes, int]]:
                return encoder.encode(batch) + (encoder.flush() if final else [])

            packets = await loop.run_in_executor(self._pool, encode)
            self.stats.aac_encoded_frames = encoder.encoded_frames
            self.stats.aac_silent_frames = encoder.silent_frames
        except Exception:  # noqa: BLE001 - audio trouble must not stop video recording
            logger.exception("%sAAC encoding failed", self._prefix)
            self.stats.dropped_audio += len(batch)
            packets = []
        self._store_aac(packets)

    def audio_stage(self) -> PoolStage | None:
        """AAC encoding as the next step of an Opus decoding job (``OpusIn``), when the encoder
        is free: it exists (the first batch chose its channels), no job of ours is running and
        no decoded audio waits. The encoder is ours until the stage's ``done``."""
        if self._closed or self._aac is None or self._audio_busy or self._audio_batch:
            return None
        self._audio_busy = True
        self._stage_running = asyncio.get_running_loop().create_future()
        return PoolStage(run=self._aac.encode, done=self._stage_done)

    def _stage_done(self, result: object, frames: list[av.AudioFrame]) -> None:
        try:
            self.stats.audio_frames += len(frames)
            if isinstance(result, BaseException):
                logger.error("%sAAC encoding failed: %r", self._prefix, result)
                self.stats.dropped_audio += len(frames)
            elif isinstance(result, list) and not self._closed:
                if self._aac is not None:
                    self.stats.aac_encoded_frames = self._aac.encoded_frames
                    self.stats.aac_silent_frames = self._aac.silent_frames
                self._store_aac(result)
        finally:
            if self._stage_running is not None and not self._stage_running.done():
                self._stage_running.set_result(None)
            self._stage_running = None
            self._audio_busy = False
            if self._audio_batch and not self._closed:
                self._audio_busy = True
                self._audio_task = asyncio.create_task(self._encode_pending())

    def _store_aac(self, packets: list[tuple[bytes, int]]) -> None:
        now_ms = float(clock.now_ms())  # only if the clock was never anchored (it was, on arrival)
        for data, pts in packets:
            ms = self._monotonic_audio_ms(self.clock.audio_ms(pts, now_ms), AAC_FRAME_MS)
            if ms is None:
                self.stats.dropped_audio += 1
                continue
            self.stats.aac_frames += 1
            self._enqueue(self._fragmenter.audio(ms, data))

    def _monotonic_audio_ms(self, ms: float, frame_ms: float) -> float | None:
        """Keep the recorded audio in order. The media clock can step back: when sender reports
        move audio from its arrival time onto the sender's lip-sync timeline (browsers capture
        audio ~100 ms ahead of its arrival), or by a millisecond of report jitter. A frame that
        would overlap the previous one by up to half a frame is moved just after it; a larger
        overlap is dropped until the clock has caught up (None)."""
        start = self._audio_next_ms
        if start is not None and ms < start:
            if start - ms > frame_ms / 2:
                return None
            ms = start
        self._audio_next_ms = ms + frame_ms
        return ms

    def _ask_keyframe(self) -> None:
        now = clock.monotonic()
        if now - self._last_key_request >= KEYFRAME_REQUEST_INTERVAL:
            self._last_key_request = now
            if self._request_keyframe():
                self.stats.keyframe_requests += 1

    # -- fragments out ---------------------------------------------------------------------

    def _enqueue(self, ready: list[FragmentData]) -> None:
        for frag in ready:
            if len(self._queue) >= MAX_PENDING_FRAGMENTS:
                self.stats.dropped_fragments += 1
                logger.error("%sstore is not keeping up; dropping a fragment", self._prefix)
                self._numbers.pop(frag.serial, None)
                if self.parts is not None:
                    self.parts.stored(frag.serial, None)
                continue
            self._queue.append(frag)
            self._wake.set()

    async def _write_loop(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            await self._wake.wait()
            self._wake.clear()
            while self._queue:
                frag = self._queue.popleft()
                reserved = self._numbers.pop(frag.serial, None)
                try:
                    data = await loop.run_in_executor(self._pool, frag.to_mkv)
                    stored = await self.fragments.append(
                        self.stream,
                        data,
                        producer_ts_ms=frag.start_ms,
                        server_ts_ms=frag.start_ms,
                        duration_ms=frag.duration_ms,
                        number=await self._number(reserved),
                    )
                except Exception as exc:  # noqa: BLE001
                    if self.parts is not None:
                        self.parts.stored(frag.serial, None)
                    self.stats.store_errors += 1
                    if is_disk_full(exc) and self._on_disk_full is not None:
                        logger.error("%sfailed to store a fragment: %s", self._prefix, exc)
                        self._on_disk_full(exc)
                    else:
                        logger.exception("%sfailed to store a fragment", self._prefix)
                    continue
                if self.parts is not None:
                    self.parts.stored(frag.serial, data)
                self.stats.fragments += 1
                self.stats.fragment_bytes += len(data)
                if self.stats.first_fragment_at is None:
                    self.stats.first_fragment_at = clock.monotonic()
                self.written.append(stored)
                del self.written[:-16]
                if self._on_fragment is not None:
                    self._on_fragment(stored, frag)
            if self._closed:
                return

    async def _number(self, reserved: asyncio.Future[int] | None) -> int | None:
        """The fragment's reserved number; None (one is taken as it is stored) if it could not
        be reserved."""
        if reserved is None:
            return None
        try:
            return await reserved
        except Exception as exc:  # noqa: BLE001 - the store may be back by now
            logger.warning("%scould not reserve a fragment number: %s", self._prefix, exc)
            return None

    async def close(self) -> None:
        """Flush the partial last fragment (kept) and wait until everything is stored."""
        if self._closed:
            return
        # Audio arriving while we wait may start another encoding job: wait for each one, so the
        # final encode and flush below never share the encoder with a job still running.
        while True:
            running: asyncio.Future[None] | None = self._stage_running
            if running is None and self._audio_task is not None and not self._audio_task.done():
                running = self._audio_task
            if running is None:
                break
            with contextlib.suppress(Exception):
                await running
        self._closed = True
        # The audio that arrived before the hang-up is recorded too: the frames not encoded yet,
        # and what the AAC encoder holds back for its look-ahead.
        batch, self._audio_batch = self._audio_batch, []
        with contextlib.suppress(Exception):
            await self._encode_audio(batch, final=True)
        ready = self._fragmenter.flush()
        if self.parts is not None:
            self.parts.closed(self._fragmenter, ready)
        self._enqueue(ready)
        fs = self._fragmenter.stats
        self.stats.dropped_video = fs.dropped_video
        self.stats.dropped_audio += fs.dropped_audio
        self._wake.set()
        if self._writer is not None:
            with contextlib.suppress(asyncio.CancelledError):
                await self._writer
        if self.parts is not None:
            await self.parts.close()
