"""SIGTERM during a WebRTC ingest: the server drains and exits 0 in time, and the recording keeps
everything the camera sent up to the signal except at most its last 2 seconds."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest

from openkvs.app import build_services
from openkvs.config import Settings
from openkvs.media import h264, mkv

from ..mediagen import h264_clip, opus_packets
from ..support import need_tool
from ..webrtc.harness import Camera, wait_for
from ..webrtc.procserver import ProcessServer

pytestmark = pytest.mark.slow

FPS = 30


async def _stored_video(data_dir: Path, stream_name: str) -> tuple[list[bytes], list[Path]]:
    settings = Settings.load({}, None, {"data_dir": data_dir})
    services = build_services(settings)
    await services.control.start()
    await services.fragments.start()
    video: list[bytes] = []
    files: list[Path] = []
    try:
        stream = services.control.get_stream(name=stream_name)
        for i, f in enumerate(await services.fragments.list_fragments(stream, limit=10000)):
            data = await services.fragments.read(f)
            video += [b.data for b in mkv.read_fragment(data).blocks if b.track == 1]
            path = data_dir.parent / f"fragment-{i}.mkv"
            path.write_bytes(data)
            files.append(path)
    finally:
        await services.fragments.stop()
        await services.control.stop()
    return video, files


@pytest.mark.parametrize("workers", ["0", "1"])
async def test_sigterm_during_webrtc_ingest_keeps_all_but_the_last_two_seconds(
    tmp_path: Path, workers: str
) -> None:
    if need_tool("ffmpeg") is None:
        pytest.skip("ffmpeg is not installed")
    srv = ProcessServer(tmp_path / "data", webrtc_workers=workers)
    srv.start()
    cam: Camera | None = None
    try:
        kv = srv.client("kinesisvideo")
        ch = kv.create_signaling_channel(ChannelName="drain")["ChannelARN"]
        st = kv.create_stream(StreamName="drain-stream", DataRetentionInHours=1)["StreamARN"]
        kv.update_media_storage_configuration(
            ChannelARN=ch, MediaStorageConfiguration={"StreamARN": st, "Status": "ENABLED"}
        )
        cam = Camera(
            srv,  # type: ignore[arg-type]
            ch,
            h264_clip(width=640, height=360, fps=FPS, seconds=4.0, gop=FPS),
            opus_packets(4.0),
            loops=3,
        )
        await cam.connect()
        await asyncio.to_thread(cam.join)
        track = cam.master.video_track
        assert track is not None
        # 5.5 s in: two whole 2 s fragments stored, the third one half-way.
        await wait_for(lambda: len(track.sent) > 5.5 * FPS, 40)
        assert srv.proc is not None
        os.kill(srv.proc.pid, signal.SIGTERM)
        signalled = time.monotonic()
        sent_at_signal = len(track.sent)
        code = await asyncio.to_thread(srv.proc.wait, 35)
        drain_seconds = time.monotonic() - signalled
    finally:
        if cam is not None:
            await cam.close()
        srv.stop()

    assert code == 0, "".join(srv.log)
    assert drain_seconds < 30
    log = "".join(srv.log)
    assert "drained in" in log, log

    stored, files = await _stored_video(tmp_path / "data", "drain-stream")
    sent = [h264.to_avcc(h264.split_annexb(data)) for data, _ in track.sent]
    # What was stored is exactly what was sent, from the first frame on, in order...
    assert stored == sent[: len(stored)]
    # ...and it lacks at most the last 2 s before the signal.
    missing = sent_at_signal - len(stored)
    print(
        f"\nworkers={workers}: SIGTERM after {sent_at_signal} frames ({sent_at_signal / FPS:.2f} s): "
        f"{len(stored)} frames ({len(stored) / FPS:.2f} s) kept in {len(files)} fragments, "
        f"{max(missing, 0) / FPS:.2f} s missing; drained and exited 0 in {drain_seconds:.2f} s"
    )
    assert missing <= 2 * FPS, f"{missing} frames of the {sent_at_signal} sent were not kept"
    for path in files:
        res = subprocess.run(
            ["ffmpeg", "-v", "error", "-i", str(path), "-f", "null", "-"],
            capture_output=True,
            text=True,
        )
        assert res.returncode == 0 and res.stderr == "", res.stderr
