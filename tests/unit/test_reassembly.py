from __future__ import annotations

from openkvs.webrtc.reassembly import FrameAssembler

IDR = b"\x00\x00\x00\x01\x65"
P = b"\x00\x00\x00\x01\x41"


def packets(
    frames: list[tuple[int, bytes, int]], seq0: int = 100
) -> list[tuple[int, int, bool, bytes, bytes]]:
    """frames: (ts, first-nal-bytes, n packets) → RTP-ish packets (seq, ts, marker, payload, data)."""
    out = []
    seq = seq0
    for ts, nal, n in frames:
        for i in range(n):
            fu_start = i == 0
            payload = bytes([28, 0x80 if fu_start else 0x00]) if n > 1 else nal[4:5]
            data = nal + bytes([i]) if i == 0 else bytes([i])
            out.append((seq & 0xFFFF, ts, i == n - 1, payload, data))
            seq += 1
    return out


def feed(
    a: FrameAssembler, pkts: list[tuple[int, int, bool, bytes, bytes]], now: float = 0.0
) -> list[tuple[bytes, int, bool]]:
    out = []
    for p in pkts:
        _, frames = a.add(*p, now)
        out += frames
    return out


def test_in_order_frames_complete_at_marker() -> None:
    a = FrameAssembler()
    pk = packets([(1000, IDR, 3), (4000, P, 2), (7000, P, 1)])
    frames = feed(a, pk)
    assert [f[1] for f in frames] == [1000, 4000, 7000]  # the last one too: no one-frame delay
    assert frames[0][2] and not frames[1][2]


def test_reordering_and_retransmission() -> None:
    a = FrameAssembler()
    pk = packets([(1000, IDR, 4), (4000, P, 2)])
    order = [pk[0], pk[2], pk[1], pk[3], pk[5], pk[4]]
    frames = feed(a, order)
    assert [f[1] for f in frames] == [1000, 4000]
    assert frames[0][0] == IDR + b"\x00" + b"\x01\x02\x03"


def test_sequence_wrap() -> None:
    a = FrameAssembler()
    pk = packets([(1000, IDR, 3), (4000, P, 3)], seq0=65534)
    assert [f[1] for f in feed(a, pk)] == [1000, 4000]


def test_unrecovered_gap_skips_to_next_keyframe() -> None:
    a = FrameAssembler(gap_timeout=0.5)
    pk = packets([(1000, IDR, 2), (4000, P, 3), (7000, P, 1), (10000, IDR, 2), (13000, P, 1)])
    lost = pk[3]  # middle of the first P frame
    got = feed(a, [p for p in pk[:5] if p is not lost], now=0.0)
    assert [f[1] for f in got] == [1000]
    pli, frames = a.add(*pk[5], 1.0)  # no progress for more than gap_timeout
    assert pli
    # The broken P frame and the P frame after it (which references it) are dropped.
    got += frames
    got += feed(a, pk[6:], now=1.0)
    assert [f[1] for f in got] == [1000, 10000, 13000]
    assert a.stats.gaps_skipped == 1


def test_joining_mid_frame_drops_until_keyframe() -> None:
    a = FrameAssembler()
    pk = packets([(1000, P, 3), (4000, P, 1), (7000, IDR, 2)])
    frames = feed(a, pk[1:])
    assert [f[1] for f in frames] == [7000]


def test_duplicates_ignored() -> None:
    a = FrameAssembler()
    pk = packets([(1000, IDR, 2)])
    frames = feed(a, [pk[0], pk[0], pk[1], pk[1]])
    assert len(frames) == 1 and a.stats.duplicates == 2


def test_frames_completed_by_a_late_packet_count_as_recovered() -> None:
    a = FrameAssembler()
    pk = packets([(1000, IDR, 3), (4000, P, 2), (7000, P, 1)])
    # pk[1] is lost and comes back (a retransmission) after the later frames arrived.
    frames = feed(a, [pk[0], pk[2], pk[3], pk[4], pk[5], pk[1]])
    assert [f[1] for f in frames] == [1000, 4000, 7000]
    assert a.stats.late_packets == 1
    assert a.stats.recovered_frames == 3  # the first frame, and the two waiting behind it
    in_order = FrameAssembler()
    feed(in_order, pk)
    assert in_order.stats.late_packets == 0 and in_order.stats.recovered_frames == 0
