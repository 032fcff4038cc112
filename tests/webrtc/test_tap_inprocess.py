"""The storage peer's receive path with an in-process aiortc master: tap pin test and a recording
checked bit for bit (the end-to-end tests through real signaling live in test_storage_session)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from openkvs.config import Settings
from openkvs.control.fragments import FragmentStore
from openkvs.control.resources import ControlPlane
from openkvs.media import h264, mkv
from openkvs.store.fs import FsBlobStore
from openkvs.store.sqlite import SqliteMetadataStore
from openkvs.webrtc import tap
from openkvs.webrtc.master import MasterSession

from ..mediagen import h264_clip, opus_packets
from .fake_master import FakeMaster


def test_tap_pins_aiortc_internals() -> None:
    # Fails loudly if aiortc moves the receiver internals the tap relies on.
    tap.check_internals()


def test_unwrapping_mapper() -> None:
    m = tap.UnwrappingMapper()
    assert m.map(0xFFFFFF00) == 0xFFFFFF00
    assert m.map(0x100) == (1 << 32) + 0x100
    assert m.map(0xFFFFFFF0) == 0xFFFFFFF0  # a late packet from before the wrap
    assert m.map(0x200) == (1 << 32) + 0x200


@pytest.fixture
async def env(
    tmp_path: Path,
) -> AsyncIterator[tuple[ControlPlane, FragmentStore, ThreadPoolExecutor]]:
    meta = SqliteMetadataStore(tmp_path / "db.sqlite")
    blobs = FsBlobStore(tmp_path / "media")
    await meta.start()
    await blobs.start()
    control = ControlPlane(meta, blobs, region="us-east-1", account_id="000000000000")
    fragments = FragmentStore(meta, blobs)
    await fragments.start()
    pool = ThreadPoolExecutor(2)
    tap.register_h264_profiles()
    yield control, fragments, pool
    pool.shutdown()
    await blobs.stop()
    await meta.stop()


async def test_records_bit_exact_video_and_aac(
    env: tuple[ControlPlane, FragmentStore, ThreadPoolExecutor],
) -> None:
    control, fragments, pool = env
    channel = await control.create_channel(name="c")
    stream = await control.create_stream(name="s", retention_hours=1)
    clip = h264_clip(width=640, height=360, seconds=4.0, profile="main")
    master = FakeMaster(clip, opus_packets(4.0))
    ended: list[str] = []
    settings = Settings.load({}, None, {"storage_fragment_duration": 1.0})

    async def send(message_type: str, payload: str | None) -> None:
        reply = await master.handle(message_type, payload)
        if reply is not None:
            asyncio.get_running_loop().call_soon(
                lambda: asyncio.ensure_future(session.on_message(*reply))
            )

    async def on_end(s: MasterSession, reason: str) -> None:
        ended.append(reason)

    session = MasterSession(
        channel=channel,
        stream=stream,
        settings=settings,
        send=send,
        fragments=fragments,
        pool=pool,
        ice_servers=[],
        on_end=on_end,
        number=1,
    )
    await session.start()
    await master.wait_sent()
    await asyncio.sleep(0.5)
    await session.stop("test over")
    await master.close()
    assert ended == ["test over"]

    frags = await fragments.list_fragments(stream)
    assert len(frags) >= 3
    stored_video: list[bytes] = []
    audio_blocks = 0
    for f in frags:
        parsed = mkv.read_fragment(await fragments.read(f))
        assert parsed.blocks[0].keyframe and parsed.blocks[0].track == 1
        assert parsed.tracks[0].codec_id == mkv.CODEC_H264
        for b in parsed.blocks:
            if b.track == 1:
                stored_video.append(b.data)
            else:
                audio_blocks += 1
    sent_video = [h264.to_avcc(h264.split_annexb(data)) for data, _ in master.video_track.sent]  # type: ignore[union-attr]
    # Loopback: nothing lost, nothing altered, in order.
    assert stored_video == sent_video
    assert audio_blocks > 100  # ~4 s of 1024-sample AAC frames at 48 kHz is ~187
    total_ms = sum(f.duration_ms for f in frags)
    assert abs(total_ms - 4000) < 200


def test_check_internals_fails_loudly_when_aioice_moves(monkeypatch: pytest.MonkeyPatch) -> None:
    import aioice
    import aioice.ice

    monkeypatch.setattr(aioice, "__version__", "0.99.0")
    with pytest.raises(RuntimeError, match="aioice"):
        tap.check_internals()
    monkeypatch.undo()

    def check_start_task(self: object, pair: object) -> None:
        pass

    monkeypatch.setattr(aioice.ice.Connection, "check_start_task", check_start_task)
    with pytest.raises(RuntimeError, match="check_start"):
        tap.check_internals()
    monkeypatch.undo()
    monkeypatch.delattr(aioice.ice, "relayed_candidate")
    with pytest.raises(RuntimeError, match="relayed_candidate"):
        tap.check_internals()


def test_check_internals_pins_the_feedback_and_pair_observers(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import aioice.ice
    import aiortc.rtcrtpreceiver as rr

    # NACKs are counted by replacing the receiver's _send_rtcp_nack.
    monkeypatch.delattr(rr.RTCRtpReceiver, "_send_rtcp_nack")
    with pytest.raises(RuntimeError, match="_send_rtcp_nack"):
        tap.check_internals()
    monkeypatch.undo()

    # RTX packets are counted through the receiver's RTX SSRC map, looked up on RTX only.
    async def handle(self: object, packet: object, arrival_time_ms: int) -> None:
        self._send_rtcp_nack(0, [])  # type: ignore[attr-defined]
        self._send_rtcp_pli(0)  # type: ignore[attr-defined]

    monkeypatch.setattr(rr.RTCRtpReceiver, "_handle_rtp_packet", handle)
    with pytest.raises(RuntimeError, match="rtx_ssrc"):
        tap.check_internals()
    monkeypatch.undo()

    async def receive(self: object, parameters: object) -> None:
        self._RTCRtpReceiver__rtx_ssrc = {}  # type: ignore[attr-defined]

    monkeypatch.setattr(rr.RTCRtpReceiver, "receive", receive)
    with pytest.raises(RuntimeError, match="receive replaces"):
        tap.check_internals()
    monkeypatch.undo()

    # Pair states are observed through the instance's check_state and check_complete.
    async def check_start(self: object, pair: object) -> None:
        pair.state = aioice.ice.CandidatePair.State.SUCCEEDED  # type: ignore[attr-defined]

    monkeypatch.setattr(aioice.ice.Connection, "check_start", check_start)
    with pytest.raises(RuntimeError, match="check_state"):
        tap.check_internals()
    monkeypatch.undo()

    def pair_init(self: object, protocol: object, remote_candidate: object) -> None:
        pass

    monkeypatch.setattr(aioice.ice.CandidatePair, "__init__", pair_init)
    with pytest.raises(RuntimeError, match="CandidatePair no longer sets"):
        tap.check_internals()
    monkeypatch.undo()
    tap.check_internals()


async def test_feedback_counts_reach_the_receiver() -> None:
    # count_feedback wraps what aiortc calls: its NACK/PLI senders and its RTX SSRC map.
    from aiortc import RTCPeerConnection

    pc = RTCPeerConnection()
    try:
        receiver = pc.addTransceiver("video", direction="recvonly").receiver
        counts = tap.count_feedback(receiver)
        rtx_map = receiver._RTCRtpReceiver__rtx_ssrc  # type: ignore[attr-defined]
        rtx_map[1234] = 5678  # what receive() does for a negotiated RTX encoding
        assert rtx_map.get(1234) == 5678 and counts.rtx_packets == 1
        receiver._set_rtcp_ssrc(None)  # type: ignore[arg-type]
        await receiver._send_rtcp_nack(5678, [1, 2, 3])  # without an RTCP SSRC nothing is sent
        await receiver._send_rtcp_pli(5678)
        assert counts.nacks_sent == counts.plis_sent == 0
        receiver._set_rtcp_ssrc(42)
        await receiver._send_rtcp_nack(5678, [1, 2, 3])
        await receiver._send_rtcp_pli(5678)
        assert counts.as_dict() == {
            "nacks_sent": 1,
            "nacked_packets": 3,
            "plis_sent": 1,
            "rtx_packets": 1,
        }
    finally:
        await pc.close()
