"""/healthz and /readyz on both ports, and what a draining server refuses."""

from __future__ import annotations

import asyncio
import shutil
import ssl
from typing import Any

import aiohttp
import pytest
from botocore.exceptions import ClientError

from openkvs.ops.health import Health, Phase

from ..dataplane.producer import Producer
from ..signaling.kvs import Client, Rejected, enable_storage, setup_channel
from ..support import ServerThread


async def _get(srv: ServerThread, path: str, *, tls: bool) -> tuple[int, Any]:
    base = srv.endpoint if tls else srv.http_endpoint
    ctx = ssl.create_default_context(cafile=srv.ca)
    async with (
        aiohttp.ClientSession() as session,
        session.get(base + path, ssl=ctx if tls else None) as resp,
    ):
        return resp.status, await resp.json()


@pytest.mark.parametrize("tls", [False, True])
async def test_probes_answer_unauthenticated_on_both_ports(server: ServerThread, tls: bool) -> None:
    assert await _get(server, "/healthz", tls=tls) == (200, {"status": "alive"})
    assert await _get(server, "/readyz", tls=tls) == (200, {"status": "ready"})


async def test_not_ready_while_the_media_folder_is_gone(server: ServerThread) -> None:
    media = server.settings.data_dir / "media"
    moved = server.settings.data_dir / "media-away"
    shutil.move(media, moved)
    try:
        assert await _get(server, "/readyz", tls=False) == (503, {"status": "unavailable"})
        assert (await _get(server, "/healthz", tls=False))[0] == 200  # alive all the same
    finally:
        shutil.move(moved, media)
    assert await _get(server, "/readyz", tls=False) == (200, {"status": "ready"})


async def test_not_ready_while_the_store_fails(server: ServerThread) -> None:
    store = server.services.control.store

    async def broken(stream_id: int, count: int) -> list[Any]:
        raise OSError("disk I/O error")

    store.last_fragments = broken  # type: ignore[method-assign]
    try:
        assert await _get(server, "/readyz", tls=True) == (503, {"status": "unavailable"})
    finally:
        del store.last_fragments  # type: ignore[method-assign]
    assert await _get(server, "/readyz", tls=True) == (200, {"status": "ready"})


async def test_phases() -> None:
    health = Health()
    assert await health.readiness() == (False, "starting")
    health.ready()
    assert await health.readiness() == (True, "ready")
    health.drain()
    health.ready()  # a drain is never undone
    assert health.phase is Phase.DRAINING
    assert await health.readiness() == (False, "draining")


async def test_draining_refuses_sessions_uploads_and_signaling(server: ServerThread) -> None:
    ch = setup_channel(server, "drain")
    enable_storage(server, ch, "drain-stream")
    server.services.health.drain()
    assert await _get(server, "/readyz", tls=False) == (503, {"status": "draining"})
    assert await _get(server, "/healthz", tls=False) == (200, {"status": "alive"})

    storage = server.client("kinesis-video-webrtc-storage")
    with pytest.raises(ClientError) as err:
        await asyncio.to_thread(storage.join_storage_session, channelArn=ch)
    assert err.value.response["Error"]["Code"] == "ClientLimitExceededException"
    assert "shutting down" in err.value.response["Error"]["Message"]

    with pytest.raises(Rejected) as rejected:
        await Client.connect(server, ch)
    assert rejected.value.error_type == "ClientLimitExceededException"

    producer = Producer(server, stream_name="drain-stream")
    await producer.connect()
    assert await producer.read_head() == 400
    assert producer.response_headers.get("x-amzn-errortype", "").startswith(
        "ClientLimitExceededException"
    )
    await producer.close()

    # Control-plane calls still work while draining.
    kv = server.client("kinesisvideo")
    assert kv.describe_signaling_channel(ChannelARN=ch)["ChannelInfo"]["ChannelARN"] == ch
