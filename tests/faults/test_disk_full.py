"""A full disk during ingest, on a real size-limited filesystem (a tmpfs mounted as the data
dir): the upload or session ends cleanly with a clear error, what was stored before stays
intact, the server stays up, and ingest works again once space returns."""

from __future__ import annotations

import asyncio
import contextlib
import errno
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from ..dataplane.mediafiles import producer_mkv
from ..mediagen import h264_clip
from ..support import CI, need_tool
from ..webrtc.harness import Camera, wait_for
from ..webrtc.procserver import ProcessServer
from .common import PacedPut, check_fragments_decode, listed_fragments

pytestmark = pytest.mark.slow

DISK_MB = 24


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 24 MiB tmpfs. Mounting needs root (CAP_SYS_ADMIN); under CI that is required."""
    mount = tmp_path / "disk"
    mount.mkdir()
    res = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={DISK_MB}m", "tmpfs", str(mount)],
        capture_output=True,
        text=True,
    )
    if res.returncode != 0:
        reason = f"cannot mount a tmpfs here: {res.stderr.strip()}"
        if CI:
            raise RuntimeError(reason)
        pytest.skip(reason)
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def fill(disk: Path, leave: int = 0) -> Path:
    """Fill the filesystem, leaving about ``leave`` bytes free."""
    filler = disk / "filler"
    st = os.statvfs(disk)
    todo = max(0, st.f_bavail * st.f_frsize - leave)
    block = b"\0" * (1 << 20)
    with open(filler, "ab") as f:
        try:
            while todo > 0:
                f.write(block[: min(len(block), todo)])
                todo -= len(block)
            f.flush()
            os.fsync(f.fileno())
        except OSError as exc:
            assert exc.errno == errno.ENOSPC
    return filler


async def _put(
    srv: ProcessServer, stream: str, seconds: float, start_ms: int = 1_700_000_000_000
) -> PacedPut:
    # A fragment with a producer timestamp the stream already holds is taken as a resend (acked
    # with its stored number, not stored again), so each upload brings its own times.
    put = PacedPut(srv, stream, producer_mkv(seconds=seconds, gop_seconds=0.5, start_ms=start_ms))
    await put.open()
    while await put.send_next(0.05):
        if put.numbers("ERROR"):
            break
    with contextlib.suppress(ConnectionError, RuntimeError):
        await put.producer.end()
    assert put.reader is not None
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(asyncio.shield(put.reader), 15)
    await put.close()
    return put


async def test_disk_full_during_putmedia(small_disk: Path, tmp_path: Path) -> None:
    if need_tool("ffmpeg") is None:
        pytest.skip("ffmpeg is not installed")
    srv = ProcessServer(small_disk / "data")
    srv.start()
    try:
        srv.client("kinesisvideo").create_stream(StreamName="full", DataRetentionInHours=1)
        filler = fill(small_disk, leave=1_500_000)
        put = await _put(srv, "full", seconds=30.0)
        errors = [a for a in put.acks if a["EventType"] == "ERROR"]
        assert errors, put.acks
        assert (errors[0]["ErrorId"], errors[0]["ErrorCode"]) == (5001, "ARCHIVAL_ERROR")
        assert put.acks[-1] is errors[0]  # the upload ended there
        assert put.producer.eof  # ... cleanly: the response was finished
        persisted = put.numbers("PERSISTED")
        assert len(persisted) >= 1
        assert put.sent < len(put.clusters)
        # The earlier fragments are intact, and the server answers.
        assert listed_fragments(srv, "full") == persisted
        check_fragments_decode(srv, "full", persisted, tmp_path)
        assert any("the disk is full" in line for line in srv.log)
        # Space returns: a new upload works.
        filler.unlink()
        again = await _put(srv, "full", seconds=1.5, start_ms=1_700_000_100_000)
        assert [a["EventType"] for a in again.acks if a["EventType"] == "ERROR"] == []
        assert len(again.numbers("PERSISTED")) == 3
        assert listed_fragments(srv, "full") == persisted + again.numbers("PERSISTED")
        print(
            f"\ndisk full during PutMedia: {len(persisted)} fragments persisted, then"
            f" ERROR {errors[0]['ErrorId']} {errors[0]['ErrorCode']} and the upload ended;"
            " a new upload after freeing space persisted 3"
        )
    finally:
        srv.stop()


async def test_disk_full_during_webrtc_session(small_disk: Path, tmp_path: Path) -> None:
    if need_tool("ffmpeg") is None:
        pytest.skip("ffmpeg is not installed")
    srv = ProcessServer(small_disk / "data", storage_fragment_duration="0.5")
    srv.start()
    try:
        kv = srv.client("kinesisvideo")
        ch = kv.create_signaling_channel(ChannelName="fullrtc")["ChannelARN"]
        st = kv.create_stream(StreamName="fullrtc-stream", DataRetentionInHours=1)["StreamARN"]
        kv.update_media_storage_configuration(
            ChannelARN=ch, MediaStorageConfiguration={"StreamARN": st, "Status": "ENABLED"}
        )
        cam = Camera(srv, ch, h264_clip(width=640, height=360, seconds=10.0, gop=15), None)  # type: ignore[arg-type]
        await cam.connect()
        await asyncio.to_thread(cam.join)
        track: Any = cam.master.video_track
        await wait_for(lambda: len(track.sent) > 45, 30)
        before = listed_fragments(srv, "fullrtc-stream")
        assert before
        filler = fill(small_disk)
        await wait_for(lambda: any("ended (the disk is full" in line for line in srv.log), 20)
        await cam.close()
        after = listed_fragments(srv, "fullrtc-stream")
        assert after[: len(before)] == before  # nothing stored before was lost
        check_fragments_decode(srv, "fullrtc-stream", after, tmp_path)
        # Space returns: a new ingest works.
        filler.unlink()
        kv.create_stream(StreamName="after-full", DataRetentionInHours=1)
        again = await _put(srv, "after-full", seconds=1.5)
        assert len(again.numbers("PERSISTED")) == 3
        reason = next(line for line in srv.log if "ended (the disk is full" in line)
        print(f"\ndisk full during a WebRTC session: {len(after)} fragments kept; {reason.strip()}")
    finally:
        srv.stop()
