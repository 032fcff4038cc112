"""Reassemble H.264 access units from depayloaded RTP packets (pure; no asyncio, no aiortc).

A frame is the run of consecutive sequence numbers sharing one RTP timestamp; it is complete at
its marker bit (RFC 6184: the last packet of an access unit), or when the next packet in sequence
carries a new timestamp (senders that forget the marker). Each packet costs O(1), frames are
emitted as soon as they complete, and several may complete at once when a retransmission fills a
gap. A hole that keeps any frame from completing for ``gap_timeout`` (NACK/RTX had their chance) is
skipped: the frame it broke is dropped and, since the following frames reference what was lost,
frames are dropped until the next keyframe, and a keyframe is requested.
"""

from __future__ import annotations

import dataclasses

from ..media import h264

FU_A = 28


def starts_nal(payload: bytes) -> bool:
    """False for an FU-A fragment that continues a NAL unit begun in an earlier packet."""
    if len(payload) >= 2 and payload[0] & 0x1F == FU_A:
        return bool(payload[1] & 0x80)
    return True


@dataclasses.dataclass(slots=True)
class _Packet:
    ts: int  # 32-bit
    marker: bool
    start: bool  # first packet of a NAL unit (not an FU-A continuation)
    data: bytes


@dataclasses.dataclass
class AssemblerStats:
    packets: int = 0
    duplicates: int = 0
    frames: int = 0
    dropped_frames: int = 0
    gaps_skipped: int = 0
    overflow: int = 0
    late_packets: int = 0  # filled a hole behind the newest packet (retransmitted or reordered)
    recovered_frames: int = 0  # frames that a late packet completed


class FrameAssembler:
    def __init__(self, capacity: int = 8192, gap_timeout: float = 1.0) -> None:
        self.capacity = capacity
        self.gap_timeout = gap_timeout
        self.stats = AssemblerStats()
        self._packets: dict[int, _Packet] = {}
        self._next: int | None = None  # first sequence number not yet emitted or skipped
        self._highest: int | None = None
        self._need_keyframe = True  # until the first complete keyframe
        self._last_progress = 0.0  # when a frame was last emitted or skipped
        # Every sequence number in [_next, _scan) is present, carries the head frame's timestamp
        # and no marker: scanning resumes here, so a frame of n packets costs O(n), not O(n²).
        self._scan = 0

    def _extend(self, seq16: int) -> int:
        highest = self._highest
        if highest is None:
            return seq16 + (1 << 16)  # head-room so early reordering never goes negative
        diff = (seq16 - highest) & 0xFFFF
        return highest + diff if diff < 0x8000 else highest + diff - 0x10000

    def add(
        self, seq16: int, ts: int, marker: bool, payload: bytes, data: bytes, now: float
    ) -> tuple[bool, list[tuple[bytes, int, bool]]]:
        """Add one packet; return (request keyframe?, completed frames as (data, ts, keyframe))."""
        self.stats.packets += 1
        seq = self._extend(seq16)
        late = self._highest is not None and seq < self._highest
        if self._highest is None or seq > self._highest:
            self._highest = seq
        if self._next is None:
            self._next = self._scan = seq
        if seq < self._next or seq in self._packets:
            self.stats.duplicates += 1
            return False, []
        if not self._packets:
            self._last_progress = now
        self._packets[seq] = _Packet(ts, marker, starts_nal(payload), data)
        pli = False
        if len(self._packets) > self.capacity:
            self.stats.overflow += 1
            pli |= self._skip_gap()
        out: list[tuple[bytes, int, bool]] = []
        while True:
            frame = self._take_frame()
            if frame is None:
                if self._packets and now - self._last_progress > self.gap_timeout:
                    pli |= self._skip_gap()
                    self._last_progress = now
                    continue
                break
            self._last_progress = now
            out.extend(frame)
        if late:
            self.stats.late_packets += 1
            self.stats.recovered_frames += len(out)
        return pli, out

    def _take_frame(self) -> list[tuple[bytes, int, bool]] | None:
        """Emit the frame at ``_next`` if complete; None if it is not (yet)."""
        assert self._next is not None
        packets = self._packets
        first = packets.get(self._next)
        if first is None:
            return None
        seq = max(self._scan, self._next)
        while True:
            p = packets.get(seq)
            if p is None:
                self._scan = seq
                return None  # a hole inside the frame, or its end not here yet
            if p.ts != first.ts:
                break  # the next frame began: ours ended at seq - 1 without a marker
            seq += 1
            if p.marker:
                break
        parts = [packets.pop(s) for s in range(self._next, seq)]
        self._next = self._scan = seq
        data = b"".join(p.data for p in parts)
        if not first.start:
            # The frame's beginning was never seen (we joined mid-frame): unusable.
            self.stats.dropped_frames += 1
            self._need_keyframe = True
            return []
        key = h264.annexb_has_idr(data)
        if self._need_keyframe and not key:
            self.stats.dropped_frames += 1
            return []
        self._need_keyframe = False
        self.stats.frames += 1
        return [(data, first.ts, key)]

    def _skip_gap(self) -> bool:
        """Give up on the frame blocked at the head: drop its packets, resume at the next frame."""
        if not self._packets:
            return False
        later = sorted(self._packets)
        ts0 = self._packets[later[0]].ts
        for s in later:
            if self._packets[s].ts != ts0:
                self._next = s
                break
            del self._packets[s]
        else:
            self._next = (self._highest or later[-1]) + 1
        self._scan = self._next
        self.stats.gaps_skipped += 1
        self.stats.dropped_frames += 1
        self._need_keyframe = True
        return True
