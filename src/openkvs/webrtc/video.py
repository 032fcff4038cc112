"""Forward the master's H.264 to viewers as it arrives, without decoding or re-encoding."""

from __future__ import annotations

import asyncio
import collections
import fractions
from typing import Any

import av
from aiortc import MediaStreamTrack
from aiortc.mediastreams import MediaStreamError

from ..media import h264

TIME_BASE = fractions.Fraction(1, 90000)
MAX_QUEUE = 90  # frames (~3 s at 30 fps)
SENT_HISTORY = 64  # frames handed to the sender whose capture times are kept


class VideoRelayTrack(MediaStreamTrack):
    """A video track fed with access units; hands aiortc pre-encoded packets (no encoder).

    Output timestamps run continuously across master replacements. A viewer that falls behind
    loses frames up to the next keyframe, never more than ``MAX_QUEUE`` frames of memory.
    Each frame may carry its capture time (the master's clock, from its sender reports), which
    :meth:`capture_time` gives for the frames most recently handed to the sender.
    """

    kind = "video"

    def __init__(self) -> None:
        super().__init__()
        self._queue: asyncio.Queue[tuple[Any, int, float | None]] = asyncio.Queue(MAX_QUEUE)
        # (output timestamp modulo 2**32, capture time) of the frames recv() returned, newest last
        self._sent: collections.deque[tuple[int, float | None]] = collections.deque(
            maxlen=SENT_HISTORY
        )
        self._need_keyframe = True
        self._last_in: int | None = None
        self._out = 0
        self.frames_in = 0
        self.frames_dropped = 0

    @property
    def waiting_for_keyframe(self) -> bool:
        return self._need_keyframe

    def restart(self) -> None:
        """A new master: wait for its first keyframe and splice its timeline on."""
        self._need_keyframe = True
        self._last_in = None

    def push(self, annexb: bytes, rtp_ts: int, captured: float | None = None) -> None:
        """Queue an access unit with its (unwrapped) RTP timestamp and its capture time (Unix
        seconds in the master's clock), if known."""
        self.frames_in += 1
        key = h264.annexb_has_idr(annexb)
        if self._need_keyframe and not key:
            self.frames_dropped += 1
            return
        if self._queue.full():
            self.frames_dropped += 1 + self._queue.qsize()
            while not self._queue.empty():
                self._queue.get_nowait()
            self._need_keyframe = True
            if not key:
                return
        self._need_keyframe = False
        if self._last_in is None:
            step = 3000 if self._out else 0
        else:
            step = rtp_ts - self._last_in
            if step <= 0 or step > 90000:
                step = 3000
        self._last_in = rtp_ts
        self._out += step
        packet = av.Packet(annexb)
        packet.pts = self._out
        packet.dts = self._out
        packet.time_base = TIME_BASE
        self._queue.put_nowait((packet, self._out, captured))

    async def recv(self) -> Any:
        if self.readyState != "live":
            raise MediaStreamError
        packet, out, captured = await self._queue.get()
        self._sent.append((out & 0xFFFFFFFF, captured))
        return packet

    def capture_time(self, timestamp: int) -> float | None:
        """The capture time of a frame recently handed to the sender, by its output timestamp
        (modulo 2**32); None if unknown."""
        for ts, captured in reversed(self._sent):
            if ts == timestamp:
                return captured
        return None
