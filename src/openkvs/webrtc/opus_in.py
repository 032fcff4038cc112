"""A peer's Opus packets (the master's, or a viewer's), decoded in the media pool a batch at a
time.

aiortc decodes each received audio packet in a thread of its own per track and hands every
decoded 20 ms frame back to the event loop with ``run_coroutine_threadsafe``: two thread hops
and GIL hand-offs per packet, which cost a storage session more than the Opus decoding itself.
Here the frame tap delivers the encoded packets on the event loop, and they are decoded in the
session's worker pool ``BATCH`` at a time (one hop per 100 ms), or one at a time while someone
listens live (always, for a viewer's audio). A partial batch waits at most ``BATCH_WAIT``
seconds, so silence suppression (fewer packets) does not hold audio back. A batching job may
carry the next step for its frames (a :class:`PoolStage`: the recording's AAC encoding while
nobody listens live), so they are not handed through the event loop to a second pool job.

Packets that carry no audio are not decoded. Opus DTX packets (a TOC byte and no frame data,
which libopus would only turn into loss concealment or comfort noise) become digital silence of
their duration, in order with the decoded frames; empty payloads are skipped, and the AAC
encoder fills the gap with silence. Digital silence is not AAC-encoded at all (``media.aac``).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
from collections.abc import Callable
from concurrent.futures import Executor
from typing import Any

import av
import numpy as np

from .audio import RATE, TIME_BASE

logger = logging.getLogger(__name__)

BATCH = 5  # 20 ms packets per decoding job
BATCH_WAIT = 0.1  # seconds a partial batch may wait
MAX_PENDING = 250  # packets held while the pool is behind (5 s); older ones are dropped

FramesCallback = Callable[[list[av.AudioFrame]], None]


@dataclasses.dataclass(frozen=True)
class PoolStage:
    """The next step for a batch's decoded frames, run in the decoding job itself (one pool
    job instead of two, no hand-over through the event loop): ``run(frames)`` in the pool, then
    ``done(result, frames)`` on the loop instead of the frames callback, with ``run``'s result
    or the exception it (or the decoding) raised. ``done`` is called once whatever happens."""

    run: Callable[[list[av.AudioFrame]], Any]
    done: Callable[[Any, list[av.AudioFrame]], None]


StageSource = Callable[[], PoolStage | None]

# Samples (at 48 kHz) of one frame for each TOC configuration (RFC 6716 §3.1): SILK 10/20/40/60
# ms, hybrid 10/20 ms, CELT 2.5/5/10/20 ms.
_FRAME_SAMPLES = (480, 960, 1920, 2880) * 3 + (480, 960) * 2 + (120, 240, 480, 960) * 4


def silence_samples(data: bytes) -> int | None:
    """The duration (48 kHz samples) of an Opus DTX packet, or None for a packet with audio to
    decode (or nothing at all: empty). DTX is a packet of at most two bytes whose frames have
    no data (code 0: one frame of at most one byte; code 1: two frames of none), which libopus
    decodes as a lost packet."""
    if not data or len(data) > 2:
        return None
    code = data[0] & 0x03
    if code == 0:
        frames = 1  # one frame of len(data) - 1 bytes: none or one, which libopus ignores
    elif code == 1 and len(data) == 1:
        frames = 2
    else:
        return None
    return frames * _FRAME_SAMPLES[data[0] >> 3]


def silent_frame(samples: int, pts: int, channels: int = 2) -> av.AudioFrame:
    """Digital silence in the decoder's output format (interleaved int16, stereo or mono)."""
    frame = av.AudioFrame.from_ndarray(
        np.zeros((1, samples * channels), dtype=np.int16),
        format="s16",
        layout="stereo" if channels == 2 else "mono",
    )
    frame.sample_rate = RATE
    frame.pts = pts
    frame.time_base = TIME_BASE
    return frame


class OpusIn:
    def __init__(
        self,
        pool: Executor,
        on_frames: FramesCallback,
        live: Callable[[], bool] = lambda: False,
        stage: StageSource | None = None,
    ) -> None:
        self._pool = pool
        self._on_frames = on_frames
        self._live = live  # True while somebody listens live: decode without batching
        # Asked before each batching job: a stage for its frames, or None (frames callback).
        self._stage = stage
        # libopus through PyAV, with the output aiortc's decoder gives (the mixer and the AAC
        # encoder take it): 48 kHz interleaved int16 stereo, pts = the packet's RTP timestamp;
        # mono for a mono source (see _decode_sync).
        self._decoder = _decoder(2)
        self._channels: int | None = None  # decided on the first packets with audio
        self._batch: list[tuple[bytes, int]] = []
        self._task: asyncio.Task[None] | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._closed = False
        self.packets = 0
        self.empty = 0  # packets with nothing to decode, empty or DTX: silence (not lost audio)
        self.dropped = 0  # packets lost here: the pool fell behind, or a decoding job failed
        self.decode_errors = 0

    def add(self, data: bytes, timestamp: int) -> None:
        """One Opus packet (its unwrapped RTP timestamp); called on the event loop."""
        if self._closed:
            return
        self.packets += 1
        if not data:
            # Nothing to decode; and FFmpeg would take an empty packet as the end of the stream
            # and decode nothing more. The gap is silence to the AAC encoder.
            self.empty += 1
            return
        if len(self._batch) >= MAX_PENDING:
            del self._batch[0]
            self.dropped += 1
        self._batch.append((data, timestamp))
        self._schedule()

    def _schedule(self) -> None:
        """Decode now if the batch is full (or someone listens live), else within BATCH_WAIT."""
        if len(self._batch) >= (1 if self._live() else BATCH):
            self._kick()
        elif self._timer is None:
            self._timer = asyncio.get_running_loop().call_later(BATCH_WAIT, self._kick)

    def _kick(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._task is not None or not self._batch:
            return  # the running job picks the batch up when it is done
        batch, self._batch = self._batch, []
        stage = None if self._stage is None or self._live() else self._stage()
        self._task = asyncio.ensure_future(self._decode(batch, stage))

    async def _decode(self, batch: list[tuple[bytes, int]], stage: PoolStage | None = None) -> None:
        result: Any = asyncio.CancelledError()
        frames: list[av.AudioFrame] = []
        try:
            frames, silent, result = await asyncio.get_running_loop().run_in_executor(
                self._pool, self._job, batch, stage
            )
            self.empty += silent  # counted here, on the loop, like every other counter
        except Exception as exc:  # noqa: BLE001 - audio trouble must not stop the session
            logger.exception("Opus decoding failed")
            self.dropped += len(batch)
            frames, result = [], exc
        finally:
            self._task = None
            if stage is not None:
                try:
                    stage.done(result, frames)
                except Exception:  # noqa: BLE001
                    logger.exception("audio stage failed")
        if stage is None and frames:
            try:
                self._on_frames(frames)
            except Exception:  # noqa: BLE001
                logger.exception("audio frame callback failed")
        if self._batch and not self._closed:
            self._schedule()

    def _job(
        self, batch: list[tuple[bytes, int]], stage: PoolStage | None
    ) -> tuple[list[av.AudioFrame], int, Any]:
        frames, silent = self._decode_sync(batch)
        result: Any = None
        if stage is not None and frames:
            try:
                result = stage.run(frames)
            except Exception as exc:  # noqa: BLE001 - handed to the stage's done()
                result = exc
        return frames, silent, result

    def _decode_sync(self, batch: list[tuple[bytes, int]]) -> tuple[list[av.AudioFrame], int]:
        """In the pool; one job at a time, so the decoder's state is never shared. Returns the
        frames and how many packets were DTX silence.

        The first packets with audio decide the output's channels: a source whose stereo
        decoding is dual mono (a mono source, or a stereo-coded one carrying the same signal
        twice; and while silent, one whose packets are mono-coded) is decoded to mono from then
        on, which costs libopus less, and the AAC encoder takes its one channel as it is. The
        switch is made only if a fresh mono decoder gives exactly the stereo decoding's first
        channel for those packets; the stream then goes on from the mono decoder's state."""
        out, silent, errors, decoded = _decode_all(self._decoder, batch, self._channels or 2)
        if self._channels is None and decoded:
            self._channels = 2
            if _mono_source(out, batch):
                mono = _decoder(1)
                mono_out, _, mono_errors, _ = _decode_all(mono, batch, 1)
                if mono_errors == errors and _same_first_channel(out, mono_out):
                    self._decoder, self._channels, out = mono, 1, mono_out
        self.decode_errors += errors
        return out, silent

    async def close(self) -> None:
        """Decode what has arrived (the session is ending), then take no more packets."""
        if self._closed:
            return
        self._closed = True
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._task is not None:
            with contextlib.suppress(Exception):
                await self._task
        if self._batch:
            batch, self._batch = self._batch, []
            await self._decode(batch)


def _decoder(channels: int) -> av.AudioCodecContext:
    decoder = av.CodecContext.create("libopus", "r")
    decoder.format = "s16"
    decoder.layout = "stereo" if channels == 2 else "mono"
    decoder.sample_rate = RATE
    return decoder


def _decode_all(
    decoder: av.AudioCodecContext, batch: list[tuple[bytes, int]], channels: int
) -> tuple[list[av.AudioFrame], int, int, int]:
    """(frames, DTX packets, corrupt packets, packets decoded) of a batch, in order."""
    out: list[av.AudioFrame] = []
    silent = errors = decoded = 0
    for data, timestamp in batch:
        silence = silence_samples(data)
        if silence is not None:
            silent += 1
            out.append(silent_frame(silence, timestamp, channels))
            continue
        packet = av.Packet(data)
        packet.pts = timestamp
        packet.time_base = TIME_BASE
        try:
            out += decoder.decode(packet)
            decoded += 1
        except av.FFmpegError:
            errors += 1  # a corrupt packet: the decoder carries on
    return out, silent, errors, decoded


def _mono_source(frames: list[av.AudioFrame], batch: list[tuple[bytes, int]]) -> bool:
    """Whether stereo-decoded ``frames`` are dual mono: with sound, or (digital silence) with
    every audio packet of ``batch`` mono-coded (the TOC's stereo flag clear)."""
    sound = False
    for frame in frames:
        arr = frame.to_ndarray()[0]
        left, right = arr[0::2], arr[1::2]
        if not np.array_equal(left, right):
            return False
        sound = sound or bool(np.any(left))
    return sound or all(not data[0] & 0x04 for data, _ in batch if data)


def _same_first_channel(stereo: list[av.AudioFrame], mono: list[av.AudioFrame]) -> bool:
    if len(stereo) != len(mono):
        return False
    for s, m in zip(stereo, mono, strict=True):
        if s.pts != m.pts or not np.array_equal(s.to_ndarray()[0, 0::2], m.to_ndarray()[0]):
            return False
    return True
