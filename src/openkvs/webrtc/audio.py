"""A channel's audio: the master's and viewers' decoded Opus, mixed for whoever listens.

Each participant's 48 kHz stereo PCM is pushed in; every listener (the master, each viewer, and
the recording) gets its own bounded queue per source, so a listener hears everyone but itself.
Tracks made by :meth:`ChannelAudio.track_for` hand mixed frames to aiortc, which encodes Opus.
"""

from __future__ import annotations

import asyncio
import collections
import fractions
from typing import Any

import av
import numpy as np
from aiortc import MediaStreamTrack
from aiortc.mediastreams import MediaStreamError

RATE = 48000
FRAME = 960  # 20 ms
MAX_QUEUED = RATE // 2  # samples per (listener, source): half a second
TIME_BASE = fractions.Fraction(1, RATE)
RECORDING = "\x00recording"
MASTER = "master"


def to_pcm(frame: av.AudioFrame) -> np.ndarray:
    """Interleaved int16 stereo samples, shape (n, 2)."""
    arr: Any = frame.to_ndarray()
    channels = len(frame.layout.channels)
    if frame.format.name == "s16":
        pcm = arr.reshape(-1, channels)
    elif frame.format.name == "s16p":
        pcm = arr.T
    elif frame.format.name in ("flt", "fltp"):
        f = arr.reshape(-1, channels) if frame.format.name == "flt" else arr.T
        pcm = np.clip(f * 32767, -32768, 32767).astype(np.int16)
    else:
        raise ValueError(f"unsupported audio format {frame.format.name}")
    if channels == 1:
        pcm = np.repeat(pcm, 2, axis=1)
    out: np.ndarray = pcm[:, :2].astype(np.int16, copy=False)
    return out


def to_frame(pcm: np.ndarray, pts: int) -> av.AudioFrame:
    frame = av.AudioFrame.from_ndarray(
        np.ascontiguousarray(pcm, dtype=np.int16).reshape(1, -1), format="s16", layout="stereo"
    )
    frame.sample_rate = RATE
    frame.pts = pts
    frame.time_base = TIME_BASE
    return frame


class _Listener:
    def __init__(self) -> None:
        self.queues: dict[str, collections.deque[np.ndarray]] = {}
        self.sizes: dict[str, int] = {}
        self.ready = asyncio.Event()

    def add(self, source: str, pcm: np.ndarray) -> None:
        q = self.queues.setdefault(source, collections.deque())
        q.append(pcm)
        size = self.sizes.get(source, 0) + len(pcm)
        while size > MAX_QUEUED and q:
            size -= len(q.popleft())
        self.sizes[source] = size
        self.ready.set()

    def has_frame(self) -> bool:
        return any(n >= FRAME for n in self.sizes.values())

    def take(self, source: str, n: int) -> np.ndarray | None:
        q = self.queues.get(source)
        if not q or self.sizes.get(source, 0) <= 0:
            return None
        parts: list[np.ndarray] = []
        need = n
        while need > 0 and q:
            head = q[0]
            if len(head) <= need:
                parts.append(q.popleft())
                need -= len(head)
            else:
                parts.append(head[:need])
                q[0] = head[need:]
                need = 0
        got = np.concatenate(parts) if len(parts) > 1 else parts[0]
        self.sizes[source] -= len(got)
        if len(got) < n:
            got = np.vstack([got, np.zeros((n - len(got), 2), dtype=np.int16)])
        return got

    def mix(self, n: int, base: np.ndarray | None = None) -> np.ndarray | None:
        total = None if base is None else base.astype(np.int32)
        for source in list(self.queues):
            part = self.take(source, n)
            if part is None:
                continue
            total = part.astype(np.int32) if total is None else total + part
        if total is None:
            return None
        return np.clip(total, -32768, 32767).astype(np.int16)


class ChannelAudio:
    def __init__(self, *, recording: bool = True) -> None:
        """``recording``: the recording takes the viewers' audio (mixed into the master's by
        :meth:`recording_mix`); False when the recording keeps the master's Opus as received."""
        self._listeners: dict[str, _Listener] = {RECORDING: _Listener()} if recording else {}
        self._recording_sources: set[str] = set()

    def push(self, source: str, frame: av.AudioFrame, *, to_recording: bool = True) -> None:
        targets = [
            listener
            for name, listener in self._listeners.items()
            if name != source and (name != RECORDING or to_recording)
        ]
        if not targets:
            return  # nobody listens (a master alone): skip the conversion
        pcm = to_pcm(frame)
        for listener in targets:
            listener.add(source, pcm)

    def recording_mix(self, master_frame: av.AudioFrame) -> av.AudioFrame:
        """The master's frame with the viewers' concurrent audio mixed in (for the recording)."""
        listener = self._listeners.get(RECORDING)
        if listener is None or not any(listener.sizes.values()):
            return master_frame
        pcm = to_pcm(master_frame)
        mixed = listener.mix(len(pcm), base=pcm)
        assert mixed is not None
        out = to_frame(mixed, int(master_frame.pts or 0))
        out.time_base = master_frame.time_base or TIME_BASE
        return out

    def track_for(self, name: str) -> MixTrack:
        listener = self._listeners.setdefault(name, _Listener())
        return MixTrack(listener)

    def remove(self, name: str) -> None:
        self._listeners.pop(name, None)
        for listener in self._listeners.values():
            listener.queues.pop(name, None)
            listener.sizes.pop(name, None)

    @property
    def idle(self) -> bool:
        """Nobody listens but the master, and no viewer audio waits to be mixed into the
        recording: the master's decoded audio goes to the recording as it is."""
        return self.viewers == 0 and not any(self._listeners[RECORDING].sizes.values())

    @property
    def viewers(self) -> int:
        """Listeners other than the master (and the recording)."""
        return sum(1 for name in self._listeners if name not in (RECORDING, MASTER))


class MixTrack(MediaStreamTrack):
    """Mixed audio for one listener; blocks while nobody else is talking."""

    kind = "audio"

    def __init__(self, listener: _Listener) -> None:
        super().__init__()
        self._listener = listener
        self._pts = 0

    async def recv(self) -> av.AudioFrame:
        while True:
            if self.readyState != "live":
                raise MediaStreamError
            if self._listener.has_frame():
                break
            self._listener.ready.clear()
            await self._listener.ready.wait()
        mixed = self._listener.mix(FRAME)
        assert mixed is not None
        frame = to_frame(mixed, self._pts)
        self._pts += FRAME
        return frame
