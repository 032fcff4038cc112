"""The server with its fragment media in S3 (SeaweedFS): PutMedia, listing, reading, playback and
WebRTC storage sessions in worker processes all go through the bucket; a bucket is created on
first start, even by several stores at once; refused credentials stop the start-up."""

from __future__ import annotations

import asyncio
import contextlib
import io
import os
import socket
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import av
import pytest
import requests

from openkvs import clock
from openkvs.config import ConfigError, Settings
from openkvs.store.factory import blob_store

from ..dataplane.mediafiles import producer_mkv
from ..dataplane.producer import put_media
from ..mediagen import h264_clip, opus_packets
from ..playback.support import archived, create_stream, hls_url, on_demand
from ..playback.test_hls import playlists, segments
from ..seaweed import Seaweed
from ..support import ServerThread, free_port
from ..webrtc.harness import (
    Camera,
    fragments_of,
    sent_video,
    sessions,
    storage_channel,
    stored_video,
    wait_for,
)

EBML_MAGIC = b"\x1a\x45\xdf\xa3"


def frames(data: bytes, kind: str = "video") -> int:
    with av.open(io.BytesIO(data)) as container:
        stream = next(s for s in container.streams if s.type == kind)
        return sum(1 for _ in container.decode(stream))


def check_reads(srv: ServerThread, t0: int, numbers: list[str]) -> None:
    """ListFragments, GetMediaForFragmentList, GetClip, HLS and readiness, all from the bucket."""
    client = archived(srv)
    listed = client.list_fragments(StreamName="cam")["Fragments"]
    assert sorted((f["FragmentNumber"] for f in listed), key=int) == numbers
    data = client.get_media_for_fragment_list(StreamName="cam", Fragments=numbers)["Payload"].read()
    assert data.count(EBML_MAGIC) == 3
    assert frames(data) == 90

    clip = client.get_clip(
        StreamName="cam",
        ClipFragmentSelector={
            "FragmentSelectorType": "PRODUCER_TIMESTAMP",
            "TimestampRange": {
                "StartTimestamp": (t0 - 1000) / 1000,
                "EndTimestamp": (t0 + 5000) / 1000,
            },
        },
    )
    mp4 = clip["Payload"].read()
    assert mp4[4:8] == b"ftyp" and frames(mp4) == 90

    url = hls_url(
        srv, "cam", PlaybackMode="ON_DEMAND", HLSFragmentSelector=on_demand(t0 - 500, t0 + 5000)
    )
    _, media = playlists(url)
    media_url, playlist = media[1]  # the video track
    parts = segments(media_url, playlist)
    assert len(parts) == 4  # the init section and three segments
    assert frames(b"".join(parts)) == 90

    ready = requests.get(f"{srv.http_endpoint}/readyz", timeout=10)
    assert ready.status_code == 200


async def test_putmedia_listing_reading_and_playback_use_the_bucket(
    seaweed: Seaweed, s3_env: str, make_server: Any
) -> None:
    srv: ServerThread = make_server(**seaweed.settings(s3_env))
    create_stream(srv, "cam")
    t0 = clock.now_ms() - 60_000
    status, acks = await put_media(srv, producer_mkv(3.0, start_ms=t0), stream_name="cam")
    assert status == 200
    persisted = [str(a["FragmentNumber"]) for a in acks if a["EventType"] == "PERSISTED"]
    assert len(persisted) == 3, acks

    objects = seaweed.objects(s3_env)
    assert len(objects) == 3
    assert all(k.startswith("media/s") and k.endswith(".mkv") for k in objects)
    assert not (srv.settings.data_dir / "media").exists()
    await asyncio.to_thread(check_reads, srv, t0, sorted(persisted, key=int))

    # Deleting the stream deletes its media from the bucket.
    arn = srv.services.control.get_stream(name="cam").arn
    await asyncio.to_thread(srv.client("kinesisvideo").delete_stream, StreamARN=arn)
    await wait_for(lambda: not seaweed.objects(s3_env), 15)


@pytest.mark.slow
async def test_storage_sessions_in_workers_record_into_the_bucket(
    seaweed: Seaweed, s3_env: str, make_server: Any
) -> None:
    srv: ServerThread = make_server(
        webrtc_workers=1, storage_fragment_duration=1.0, **seaweed.settings(s3_env, "rec")
    )
    pool = sessions(srv)
    ch, _ = storage_channel(srv, "s3-cam")
    cam = Camera(srv, ch, h264_clip(width=320, height=240, seconds=3.0), opus_packets(3.0))
    await cam.connect()
    await asyncio.to_thread(cam.join)
    await cam.master.wait_sent()
    await asyncio.sleep(0.3)
    await cam.close()
    await wait_for(lambda: not pool.masters, 15)
    fragments = fragments_of(srv, "s3-cam-stream")
    video, audio, _ = stored_video(srv, fragments)
    assert video == sent_video(cam)
    assert audio > 60
    keys = seaweed.objects(s3_env, "rec/")
    assert len(keys) == len(fragments) >= 3
    assert not (srv.settings.data_dir / "media").exists()


async def test_several_stores_create_one_bucket_at_once(seaweed: Seaweed, s3_env: str) -> None:
    settings = Settings.load({}, None, {"data_dir": Path("unused"), **seaweed.settings(s3_env)})
    stores = [blob_store(settings) for _ in range(4)]
    try:
        await asyncio.gather(*(s.start() for s in stores))
        await stores[0].put("s1/0/1.mkv", b"x")
        assert all([await s.reachable() for s in stores])
        assert await stores[3].get("s1/0/1.mkv") == b"x"
    finally:
        for s in stores:
            await s.stop()


async def test_refused_credentials_stop_the_start(
    seaweed: Seaweed, s3_env: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = Settings.load({}, None, {"data_dir": Path("unused"), **seaweed.settings(s3_env)})
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "not-the-secret")
    store = blob_store(settings)
    try:
        with pytest.raises(ConfigError) as info:
            await store.start()
    finally:
        await store.stop()
    message = str(info.value)
    assert message.startswith(f"media_url s3://{s3_env}/media: {seaweed.endpoint} refused")
    assert "not-the-secret" not in message


def readyz(srv: ServerThread) -> int:
    return requests.get(f"{srv.http_endpoint}/readyz", timeout=10).status_code


async def test_not_ready_while_the_bucket_is_gone(
    seaweed: Seaweed, s3_env: str, make_server: Any
) -> None:
    srv: ServerThread = make_server(**seaweed.settings(s3_env))
    assert await asyncio.to_thread(readyz, srv) == 200
    s3 = seaweed.client()
    try:
        s3.delete_bucket(Bucket=s3_env)
        assert await asyncio.to_thread(readyz, srv) == 503
        s3.create_bucket(Bucket=s3_env)
        assert await asyncio.to_thread(readyz, srv) == 200
    finally:
        s3.close()


class Gate:
    """A TCP forwarder on a fixed loopback port in front of the S3 endpoint, which can be closed
    (connections refused and cut) and opened again."""

    def __init__(self, target: str) -> None:
        host, _, port = target.removeprefix("http://").partition(":")
        self.target = (host, int(port))
        self.port = free_port()
        self._conns: list[socket.socket] = []
        self._listener: socket.socket | None = None
        self.open()

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def open(self) -> None:
        listener = socket.socket()
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", self.port))
        listener.listen(64)
        self._listener = listener
        threading.Thread(target=self._accept, args=(listener,), daemon=True).start()

    def close(self) -> None:
        if self._listener is not None:
            with contextlib.suppress(OSError):
                self._listener.shutdown(socket.SHUT_RDWR)  # wakes the accepting thread
            self._listener.close()
            self._listener = None
        for conn in self._conns:
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)
            conn.close()
        self._conns.clear()

    def _accept(self, listener: socket.socket) -> None:
        while True:
            try:
                client, _ = listener.accept()
            except OSError:
                return
            upstream = socket.create_connection(self.target)
            self._conns += [client, upstream]
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pipe, args=(a, b), daemon=True).start()

    @staticmethod
    def _pipe(a: socket.socket, b: socket.socket) -> None:
        with contextlib.suppress(OSError):
            while data := a.recv(65536):
                b.sendall(data)
        with contextlib.suppress(OSError):
            b.shutdown(socket.SHUT_WR)


async def test_a_failed_upload_loses_its_fragment_only(
    seaweed: Seaweed, s3_env: str, make_server: Any
) -> None:
    # An S3 failure is no full disk: each fragment gets its ARCHIVAL_ERROR and the upload goes on.
    gate = Gate(seaweed.endpoint)
    try:
        srv: ServerThread = make_server(
            media_url=f"s3://{s3_env}/media", s3_endpoint_url=gate.endpoint
        )
        create_stream(srv, "cam")
        gate.close()
        t0 = clock.now_ms() - 60_000
        status, acks = await put_media(srv, producer_mkv(2.0, start_ms=t0), stream_name="cam")
        assert status == 200
        errors = [a for a in acks if a["EventType"] == "ERROR"]
        assert [a["ErrorId"] for a in errors] == [5001, 5001], acks
        assert not [a for a in acks if a["EventType"] == "PERSISTED"]
        gate.open()
        t1 = t0 + 10_000
        status, acks = await put_media(srv, producer_mkv(2.0, start_ms=t1), stream_name="cam")
        assert [a["EventType"] for a in acks].count("PERSISTED") == 2, acks
    finally:
        gate.close()
    assert len(seaweed.objects(s3_env)) == 2


async def test_objects_openkvs_could_not_have_made_are_never_listed(
    seaweed: Seaweed, s3_env: str
) -> None:
    # keys() feeds the orphan sweep: what it lists, the sweep may delete.
    settings = Settings.load({}, None, {"data_dir": Path("unused"), **seaweed.settings(s3_env)})
    store = blob_store(settings)
    try:
        await store.start()
        await store.put("s1/0/1.mkv", b"x")
        s3 = seaweed.client()
        try:
            s3.put_object(Bucket=s3_env, Key="media/NOTES.txt", Body=b"someone else's")
            s3.put_object(Bucket=s3_env, Key="other/s1/0/2.mkv", Body=b"outside the prefix")
        finally:
            s3.close()
        assert await store.keys() == {"s1/0/1.mkv"}
    finally:
        await store.stop()


def test_serve_stops_at_start_up_when_s3_refuses_the_credentials(
    seaweed: Seaweed, s3_env: str, tmp_path: Path
) -> None:
    base = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "OPENKVS_"))}
    res = subprocess.run(
        [sys.executable, "-m", "openkvs", "serve", "--data-dir", str(tmp_path)]
        + ["--port", "0", "--http-port", "0", "--no-turn"]
        + ["--media-url", f"s3://{s3_env}/media", "--s3-endpoint-url", seaweed.endpoint],
        capture_output=True,
        text=True,
        timeout=90,
        env={
            **base,
            "AWS_ACCESS_KEY_ID": seaweed.access_key,
            "AWS_SECRET_ACCESS_KEY": "not-the-secret",
            "AWS_CONFIG_FILE": str(tmp_path / "none"),
        },
    )
    assert res.returncode == 2, res.stderr
    assert (
        f"openkvs: media_url s3://{s3_env}/media: {seaweed.endpoint} refused the AWS credentials"
        in res.stderr
    )
    assert "Traceback" not in res.stderr and "not-the-secret" not in res.stderr
    assert s3_env not in seaweed_buckets(seaweed)


def seaweed_buckets(seaweed: Seaweed) -> list[str]:
    s3 = seaweed.client()
    try:
        return [b["Name"] for b in s3.list_buckets()["Buckets"]]
    finally:
        s3.close()
