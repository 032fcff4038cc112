"""kill -9 of the server during ingest (PutMedia, and a WebRTC storage session), then a restart
on the same data dir: every fragment acknowledged as PERSISTED is still there, at most the one
fragment in flight is lost, none is torn (each comes back through GetMediaForFragmentList,
parses and decodes), and the restarted server takes a new ingest."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from openkvs.media import h264

from ..dataplane.ebmlcheck import split_chunks
from ..dataplane.mediafiles import producer_mkv
from ..mediagen import h264_clip
from ..support import need_tool
from ..webrtc.harness import Camera, wait_for
from ..webrtc.procserver import ProcessServer
from .common import LONG, PacedPut, archived, check_fragments_decode, listed_fragments

pytestmark = pytest.mark.slow

FPS = 30
GOP_S = 0.5  # one fragment per GOP: 15 frames


def _need_ffmpeg() -> None:
    if need_tool("ffmpeg") is None:
        pytest.skip("ffmpeg is not installed")


async def _put_and_kill(srv: ProcessServer, stream: str, persisted_before_kill: int) -> PacedPut:
    data = producer_mkv(seconds=20.0, gop_seconds=GOP_S, fps=FPS)
    put = PacedPut(srv, stream, data)
    await put.open()
    while len(put.numbers("PERSISTED")) < persisted_before_kill:
        assert await put.send_next(0.1), "ran out of clusters before the kill"
    # Land the kill with a fragment on its way: one more cluster, then half of the next.
    await put.send_next(0.0)
    nxt = put.clusters[put.sent]
    await put.producer.send(nxt[: len(nxt) // 2])
    srv.kill9()
    await put.close()
    return put


async def test_kill9_during_putmedia_keeps_every_persisted_fragment(tmp_path: Path) -> None:
    _need_ffmpeg()
    data_dir = tmp_path / "data"
    rounds = 4 if LONG else 1
    persisted: set[str] = set()
    received: set[str] = set()
    for r in range(rounds):
        srv = ProcessServer(data_dir)
        srv.start()
        try:
            if r == 0:
                srv.client("kinesisvideo").create_stream(StreamName="k9", DataRetentionInHours=1)
            put = await _put_and_kill(srv, "k9", persisted_before_kill=4 + 3 * r)
        finally:
            srv.stop()
        persisted |= set(put.numbers("PERSISTED"))
        received |= set(put.numbers("RECEIVED"))
    srv = ProcessServer(data_dir)
    srv.start()
    try:
        listed = listed_fragments(srv, "k9")
        assert persisted <= set(listed), sorted(persisted - set(listed))
        lost = received - set(listed)
        assert len(lost) <= rounds, (sorted(lost), rounds)  # at most one per kill
        frames = check_fragments_decode(srv, "k9", listed, tmp_path)
        assert frames == len(listed) * round(GOP_S * FPS)  # whole fragments only
        print(
            f"\nkill -9 during PutMedia ({rounds} round(s)): {len(received)} fragments received,"
            f" {len(persisted)} persisted-acked, {len(listed)} listed after restart,"
            f" {len(lost)} lost"
        )
        # The restarted server takes a new upload on the same stream.
        again = PacedPut(srv, "k9", producer_mkv(seconds=1.5, gop_seconds=GOP_S, fps=FPS))
        await again.open()
        while await again.send_next(0.0):
            pass
        await again.producer.end()
        await wait_for(lambda: len(again.numbers("PERSISTED")) == 3, 15)
        await again.close()
        assert set(again.numbers("PERSISTED")) <= set(listed_fragments(srv, "k9"))
    finally:
        srv.stop()


def _stored_video(srv: ProcessServer, stream: str, numbers: list[str]) -> list[bytes]:
    am = archived(srv, stream)
    out: list[bytes] = []
    for n in numbers:
        raw = am.get_media_for_fragment_list(StreamName=stream, Fragments=[n])["Payload"].read()
        (chunk,) = split_chunks(raw)
        out += [data for track, _, data in chunk.blocks if track == 1]
    return out


async def test_kill9_during_webrtc_session_loses_at_most_the_fragment_in_flight(
    tmp_path: Path,
) -> None:
    _need_ffmpeg()
    data_dir = tmp_path / "data"
    srv = ProcessServer(data_dir, storage_fragment_duration="0.5")
    srv.start()
    try:
        kv = srv.client("kinesisvideo")
        ch = kv.create_signaling_channel(ChannelName="k9rtc")["ChannelARN"]
        st = kv.create_stream(StreamName="k9rtc-stream", DataRetentionInHours=1)["StreamARN"]
        kv.update_media_storage_configuration(
            ChannelARN=ch, MediaStorageConfiguration={"StreamARN": st, "Status": "ENABLED"}
        )
        cam = Camera(srv, ch, h264_clip(width=640, height=360, seconds=8.0, gop=15), None)  # type: ignore[arg-type]
        await cam.connect()
        await asyncio.to_thread(cam.join)
        track: Any = cam.master.video_track
        await wait_for(lambda: len(track.sent) > (110 if LONG else 70), 40)
        srv.kill9()
        sent = [h264.to_avcc(h264.split_annexb(data)) for data, _ in track.sent]
        await cam.close()
    finally:
        srv.stop()
    srv = ProcessServer(data_dir, storage_fragment_duration="0.5")
    srv.start()
    try:
        listed = listed_fragments(srv, "k9rtc-stream")
        assert listed
        video = _stored_video(srv, "k9rtc-stream", listed)
        assert video == sent[: len(video)]  # a clean prefix of what was sent: nothing torn
        check_fragments_decode(srv, "k9rtc-stream", listed, tmp_path)
        missing = len(sent) - len(video)
        print(
            f"\nkill -9 during a WebRTC session: {len(sent)} frames sent, {len(video)} stored in"
            f" {len(listed)} fragments, {missing} lost (a fragment is {round(0.5 * FPS)})"
        )
        # Lost: the fragment being built at the kill (0.5 s) and what was still in the network.
        assert missing <= round(0.5 * FPS) + 6
    finally:
        srv.stop()
