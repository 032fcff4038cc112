"""kill -9 of the server during ingest: after a restart every listed fragment is complete and
decodable (a fragment becomes visible only once durable; a torn one never is)."""

from __future__ import annotations

import asyncio
import subprocess
from pathlib import Path

import pytest

from openkvs.media import mkv

from ..mediagen import h264_clip, opus_packets
from ..support import need_tool
from .harness import Camera, wait_for
from .procserver import ProcessServer

pytestmark = pytest.mark.slow


async def test_kill9_during_ingest_leaves_only_complete_fragments(tmp_path: Path) -> None:
    if need_tool("ffmpeg") is None:
        pytest.skip("ffmpeg is not installed")
    srv = ProcessServer(tmp_path / "data", storage_fragment_duration="0.5")
    srv.start()
    try:
        kv = srv.client("kinesisvideo")
        ch = kv.create_signaling_channel(ChannelName="crash")["ChannelARN"]
        st = kv.create_stream(StreamName="crash-stream", DataRetentionInHours=1)["StreamARN"]
        kv.update_media_storage_configuration(
            ChannelARN=ch, MediaStorageConfiguration={"StreamARN": st, "Status": "ENABLED"}
        )
        cam = Camera(
            srv,
            ch,
            h264_clip(width=640, height=360, seconds=4.0, gop=15),  # type: ignore[arg-type]
            opus_packets(4.0),
        )
        await cam.connect()
        await asyncio.to_thread(cam.join)
        await wait_for(lambda: len(cam.master.video_track.sent) > 75, 30)  # type: ignore[union-attr]
        srv.kill9()  # mid-stream, with fragments being written
        await cam.close()
    finally:
        srv.stop()

    from openkvs.app import build_services
    from openkvs.config import Settings

    settings = Settings.load({}, None, {"data_dir": tmp_path / "data"})
    services = build_services(settings)
    await services.control.start()
    await services.fragments.start()  # sweeps blobs that no committed row names
    try:
        stream = services.control.get_stream(name="crash-stream")
        frags = await services.fragments.list_fragments(stream)
        assert len(frags) >= 2
        listed = {f.blob_key for f in frags}
        assert await services.control.blobs.keys() == listed  # no orphan left behind
        for i, f in enumerate(frags):
            data = await services.fragments.read(f)
            assert len(data) == f.size
            parsed = mkv.read_fragment(data)
            assert parsed.blocks and parsed.blocks[0].keyframe
            path = tmp_path / f"{i}.mkv"
            path.write_bytes(data)
            res = subprocess.run(
                ["ffmpeg", "-v", "error", "-i", str(path), "-f", "null", "-"],
                capture_output=True,
                text=True,
            )
            assert res.returncode == 0 and res.stderr == "", res.stderr
    finally:
        await services.fragments.stop()
        await services.control.stop()
