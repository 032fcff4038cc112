"""OpusIn: the master's Opus packets decoded in the worker pool, in batches."""

from __future__ import annotations

import asyncio
from concurrent.futures import ThreadPoolExecutor

import av

from openkvs.webrtc import opus_in
from openkvs.webrtc.opus_in import OpusIn

from ..mediagen import opus_packets
from .harness import wait_for

PACKETS = opus_packets(1.0)  # 50 packets of 20 ms


def pts_of(batches: list[list[av.AudioFrame]]) -> list[int]:
    return [int(f.pts) for batch in batches for f in batch]


async def test_batches_of_five_in_order_then_the_rest_after_the_wait() -> None:
    pool = ThreadPoolExecutor(1)
    got: list[list[av.AudioFrame]] = []
    decoder = OpusIn(pool, got.append)
    try:
        for i, p in enumerate(PACKETS[:12]):
            decoder.add(p.data, 1000 + i * 960)
            await asyncio.sleep(0)
        # Full batches are decoded without waiting for the timer (a running job takes along what
        # came meanwhile), in order, with one 20 ms frame per packet.
        await wait_for(lambda: len(pts_of(got)) >= 10, opus_in.BATCH_WAIT * 0.9, 0.005)
        done = pts_of(got)
        assert len(done) >= 10 and done == [1000 + i * 960 for i in range(len(done))]
        assert all(f.samples == 960 and f.sample_rate == 48000 for b in got for f in b)
        # A partial batch waits for the timer, and not for ever.
        await wait_for(lambda: len(pts_of(got)) == 12, opus_in.BATCH_WAIT + 2.0, 0.01)
        assert pts_of(got) == [1000 + i * 960 for i in range(12)]
    finally:
        await decoder.close()
        pool.shutdown()


async def test_live_listeners_get_every_packet_at_once_and_close_flushes() -> None:
    pool = ThreadPoolExecutor(1)
    got: list[list[av.AudioFrame]] = []
    live = True
    decoder = OpusIn(pool, got.append, live=lambda: live)
    try:
        decoder.add(PACKETS[0].data, 0)
        await wait_for(lambda: got, opus_in.BATCH_WAIT * 0.9, 0.005)  # no batching: no timer
        assert pts_of(got) == [0]
        live = False
        for i in range(1, 4):
            decoder.add(PACKETS[i].data, i * 960)
        await decoder.close()  # the session ends: what arrived is decoded, nothing later
        assert pts_of(got) == [0, 960, 1920, 2880]
        decoder.add(PACKETS[4].data, 4 * 960)
        await asyncio.sleep(opus_in.BATCH_WAIT + 0.05)
        assert pts_of(got) == [0, 960, 1920, 2880]
    finally:
        pool.shutdown()


async def test_garbage_packets_are_counted_not_fatal() -> None:
    pool = ThreadPoolExecutor(1)
    got: list[list[av.AudioFrame]] = []
    decoder = OpusIn(pool, got.append)
    try:
        for i, data in enumerate([PACKETS[0].data, b"\xff" * 3, b"", PACKETS[1].data, b"\x00"]):
            decoder.add(data, i * 960)
        await decoder.close()
        # The good packets decode, also after the corrupt and the empty ones.
        assert [t for t in pts_of(got) if t in (0, 3 * 960)] == [0, 3 * 960]
        assert 960 not in pts_of(got) and 2 * 960 not in pts_of(got)
        assert decoder.packets == 5 and decoder.empty == 1 and decoder.dropped == 0
        assert decoder.decode_errors >= 1
    finally:
        pool.shutdown()
