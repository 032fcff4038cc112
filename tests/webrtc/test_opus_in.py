"""OpusIn: the master's Opus packets decoded in the worker pool, in batches."""

from __future__ import annotations

import asyncio
import threading
from concurrent.futures import ThreadPoolExecutor

import av
import numpy as np
import pytest

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
        # The good packets decode, also after the corrupt and the empty ones; the last (a TOC
        # byte alone: DTX) is 10 ms of silence.
        assert pts_of(got) == [0, 3 * 960, 4 * 960]
        assert [f.samples for b in got for f in b][-1] == 480
        assert decoder.packets == 5 and decoder.empty == 2 and decoder.dropped == 0
        assert decoder.decode_errors >= 1
    finally:
        pool.shutdown()


@pytest.mark.parametrize(
    ("data", "samples"),
    [
        (b"", None),  # nothing: skipped, not a frame
        (b"\x00", 480),  # SILK NB 10 ms, code 0, no frame data
        (b"\x08", 960),  # SILK NB 20 ms
        (b"\x18", 2880),  # SILK NB 60 ms
        (b"\x78", 960),  # hybrid FB 20 ms
        (b"\xf8", 960),  # CELT FB 20 ms
        (b"\xf8\x00", 960),  # one frame of one byte: libopus conceals it like a lost one
        (b"\xf9", 1920),  # code 1: two frames of no data
        (b"\x80", 120),  # CELT NB 2.5 ms
        (b"\xf9\x00", None),  # code 1 with data
        (b"\xfa\x00", None),  # code 2
        (b"\xfb\x02", None),  # code 3
        (b"\xf8\xff\xfe", None),  # three bytes: audio
    ],
)
def test_dtx_packets_are_silence_of_their_duration(data: bytes, samples: int | None) -> None:
    assert opus_in.silence_samples(data) == samples


async def test_dtx_is_silence_in_order_and_not_decoded() -> None:
    """A browser's DTX (a TOC byte every 400 ms while silent) between real packets: digital
    silence of the packet's duration at its time, in order; the real packets still decode."""
    pool = ThreadPoolExecutor(1)
    got: list[list[av.AudioFrame]] = []
    decoder = OpusIn(pool, got.append)
    dtx = bytes([PACKETS[0].data[0] & 0xFC])  # the same configuration, no frame data
    try:
        stream = [(PACKETS[0].data, 0), (dtx, 960), (dtx, 960 * 21), (PACKETS[1].data, 960 * 41)]
        for data, ts in stream:
            decoder.add(data, ts)
        await decoder.close()
        frames = [f for b in got for f in b]
        assert [int(f.pts) for f in frames] == [ts for _, ts in stream]
        assert not np.any(frames[1].to_ndarray()) and not np.any(frames[2].to_ndarray())
        assert frames[1].samples == 960 and frames[1].format.name == "s16"
        assert np.any(frames[3].to_ndarray())
        assert decoder.empty == 2 and decoder.decode_errors == 0
    finally:
        pool.shutdown()


def stereo_decoding(packets: list[bytes]) -> list[np.ndarray]:
    """Each packet's samples as a fresh stereo libopus decoder gives them: (2, n) int16."""
    dec = opus_in._decoder(2)
    out = []
    for data in packets:
        for frame in dec.decode(av.Packet(data)):
            out.append(frame.to_ndarray()[0].reshape(-1, 2).T)
    return out


def two_tone_packets(n: int) -> list[bytes]:
    """20 ms Opus packets of a true stereo signal: 440 Hz left, 1 kHz right."""
    enc = av.CodecContext.create("libopus", "w")
    enc.sample_rate = 48000
    enc.layout = "stereo"
    enc.format = "s16"
    t = np.arange(n * 960) / 48000
    pcm = np.stack([np.sin(2 * np.pi * 440 * t), np.sin(2 * np.pi * 1000 * t)]) * 9000
    out = []
    for i in range(n):
        frame = av.AudioFrame.from_ndarray(
            pcm[:, i * 960 : (i + 1) * 960].T.reshape(1, -1).astype(np.int16),
            format="s16",
            layout="stereo",
        )
        frame.sample_rate = 48000
        frame.pts = i * 960
        out += [bytes(p) for p in enc.encode(frame)]
    return out


@pytest.mark.parametrize("source", ["dual mono, stereo-coded", "mono-coded", "stereo"])
async def test_a_mono_source_is_decoded_to_mono_with_the_same_samples(source: str) -> None:
    if source == "stereo":
        packets = two_tone_packets(30)
    else:
        packets = [p.data for p in opus_packets(1.0, channels=1 if "mono-coded" in source else 2)]
        assert bool(packets[0][0] & 0x04) == ("stereo-coded" in source)  # the TOC's flag
    packets = packets[:30]
    dtx = bytes([packets[0][0] & 0xFC])
    pool = ThreadPoolExecutor(1)
    got: list[list[av.AudioFrame]] = []
    decoder = OpusIn(pool, got.append)
    try:
        decoder.add(dtx, 0)  # silence first: not a reason to decide
        for i, data in enumerate(packets):
            decoder.add(data, (i + 1) * 960)
        await decoder.close()
    finally:
        pool.shutdown()
    frames = [f for b in got for f in b]
    assert [int(f.pts) for f in frames] == [i * 960 for i in range(31)]
    want = stereo_decoding(packets)
    channels = 2 if source == "stereo" else 1
    assert {len(f.layout.channels) for f in frames} == {channels}
    assert not np.any(frames[0].to_ndarray())
    for frame, stereo in zip(frames[1:], want, strict=True):
        samples = frame.to_ndarray()[0].reshape(-1, channels).T
        assert np.array_equal(samples, stereo[:channels])
    if source == "stereo":
        assert not np.array_equal(want[10][0], want[10][1])


async def test_a_stage_runs_in_the_decoding_job_and_is_done_on_the_loop() -> None:
    """With a stage, a batch's frames go through ``run`` in the pool job that decoded them and
    its result to ``done`` on the loop (not to the frames callback); without one (or while
    somebody listens live), the frames callback as before. ``done`` also hears of failures."""
    pool = ThreadPoolExecutor(1)
    got: list[list[av.AudioFrame]] = []
    ran: list[tuple[str, int]] = []
    done: list[tuple[object, list[int]]] = []
    offer = True
    fail = False
    loop_thread = threading.get_ident()

    def run(frames: list[av.AudioFrame]) -> int:
        ran.append((threading.current_thread().name, threading.get_ident()))
        if fail:
            raise RuntimeError("encoder broke")
        return sum(f.samples for f in frames)

    def stage() -> opus_in.PoolStage | None:
        return (
            opus_in.PoolStage(
                run=run, done=lambda r, frames: done.append((r, [int(f.pts) for f in frames]))
            )
            if offer
            else None
        )

    decoder = OpusIn(pool, got.append, stage=stage)
    try:
        for i in range(5):
            decoder.add(PACKETS[i].data, i * 960)
        await wait_for(lambda: done, 2.0, 0.005)
        assert done == [(5 * 960, [i * 960 for i in range(5)])] and not got
        assert ran and ran[0][1] != loop_thread  # in the pool
        fail = True
        for i in range(5, 10):
            decoder.add(PACKETS[i].data, i * 960)
        await wait_for(lambda: len(done) == 2, 2.0, 0.005)
        assert isinstance(done[1][0], RuntimeError) and done[1][1] == [
            i * 960 for i in range(5, 10)
        ]
        offer = False
        for i in range(10, 15):
            decoder.add(PACKETS[i].data, i * 960)
        await decoder.close()
        assert pts_of(got) == [i * 960 for i in range(10, 15)] and len(done) == 2
    finally:
        pool.shutdown()
