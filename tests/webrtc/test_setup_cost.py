"""What a storage session sets up before its offer: the shared, rotated DTLS certificate, the
cached host addresses, the lazily built bitrate estimator, and offers prepared one at a time."""

from __future__ import annotations

import asyncio
import logging
import time
from pathlib import Path
from typing import Any

import pytest
from aiortc import RTCConfiguration, RTCPeerConnection
from aiortc.rtcdtlstransport import certificate_digest

from openkvs import clock, logwriter
from openkvs.config import Settings
from openkvs.records import Channel, Fragment, Stream
from openkvs.webrtc import tap
from openkvs.webrtc.certificates import CertificateRotation, SharedCertificate
from openkvs.webrtc.manager import StorageSessionManager


def _sdp_values(sdp: str, prefix: str) -> list[str]:
    return [line[len(prefix) :] for line in sdp.splitlines() if line.startswith(prefix)]


def test_certificate_is_shared_then_rotated(monkeypatch: pytest.MonkeyPatch) -> None:
    now = [1000.0]
    monkeypatch.setattr(clock, "monotonic", lambda: now[0])
    rotation = CertificateRotation(lifetime=3600.0)
    first = rotation.current()
    now[0] += 3599.0
    assert rotation.current() is first and rotation.generated == 1
    now[0] += 1.0
    second = rotation.current()
    assert second is not first and rotation.generated == 2
    assert second.getFingerprints()[0].value != first.getFingerprints()[0].value
    now[0] -= 10_000.0  # a clock that went back: never keep a certificate for longer
    assert rotation.current() is not second
    with pytest.raises(ValueError):
        CertificateRotation(lifetime=0)


def test_shared_certificate_fingerprints_are_aiortcs() -> None:
    cert = SharedCertificate.generateCertificate()
    prints = cert.getFingerprints()
    assert [(f.algorithm, f.value) for f in prints] == [
        (f.algorithm, certificate_digest(cert._cert, f.algorithm)) for f in prints
    ]
    prints[0].value = "changed"  # callers get copies: the cached value cannot be altered
    assert cert.getFingerprints()[0].value == certificate_digest(cert._cert, prints[0].algorithm)


async def test_sessions_share_the_certificate_not_their_ice_credentials() -> None:
    cert = SharedCertificate.generateCertificate()
    sha256 = next(f.value for f in cert.getFingerprints() if f.algorithm == "sha-256")
    offers = []
    for _ in range(2):
        pc = tap.new_peer_connection(RTCConfiguration(iceServers=[]), cert)
        pc.addTransceiver("video", direction="recvonly")
        await pc.setLocalDescription(await pc.createOffer())
        offers.append(pc.localDescription.sdp)
        await pc.close()
    for sdp in offers:
        assert f"sha-256 {sha256}" in _sdp_values(sdp, "a=fingerprint:")
    ufrags = [set(_sdp_values(sdp, "a=ice-ufrag:")) for sdp in offers]
    pwds = [set(_sdp_values(sdp, "a=ice-pwd:")) for sdp in offers]
    assert ufrags[0] and not ufrags[0] & ufrags[1]
    assert pwds[0] and not pwds[0] & pwds[1]
    # Without a certificate, aiortc generates one per connection, as before.
    own = tap.new_peer_connection(RTCConfiguration(iceServers=[]), None)
    own.addTransceiver("video", direction="recvonly")
    await own.setLocalDescription(await own.createOffer())
    assert f"sha-256 {sha256}" not in _sdp_values(own.localDescription.sdp, "a=fingerprint:")
    await own.close()
    # The stand-in is gone once the connection is built: other connections are untouched.
    plain = RTCPeerConnection()
    plain.addTransceiver("video", direction="recvonly")
    await plain.setLocalDescription(await plain.createOffer())
    assert f"sha-256 {sha256}" not in _sdp_values(plain.localDescription.sdp, "a=fingerprint:")
    await plain.close()


def test_host_addresses_cached_for_a_few_seconds(monkeypatch: pytest.MonkeyPatch) -> None:
    import aioice.ice

    tap.install_setup_shortcuts()
    tap.install_setup_shortcuts()  # idempotent
    assert aioice.ice.get_host_addresses is tap._cached_host_addresses
    now = [50.0]
    monkeypatch.setattr(clock, "monotonic", lambda: now[0])
    tap._host_addresses.clear()
    real = tap._REAL_HOST_ADDRESSES[0](True, True)
    assert aioice.ice.get_host_addresses(True, True) == real
    taken = tap._host_addresses[(True, True)][0]
    now[0] += tap.HOST_ADDRESSES_TTL - 0.1
    assert aioice.ice.get_host_addresses(True, True) == real
    assert tap._host_addresses[(True, True)][0] == taken  # not enumerated again
    now[0] += 0.1
    assert aioice.ice.get_host_addresses(True, True) == real
    assert tap._host_addresses[(True, True)][0] == now[0]  # enumerated again
    got = aioice.ice.get_host_addresses(True, True)
    got.append("203.0.113.9")  # callers get copies
    assert aioice.ice.get_host_addresses(True, True) == real


def test_ice_random_strings_uniform_letters_and_digits() -> None:
    import string
    from collections import Counter

    import aioice.ice

    tap.install_setup_shortcuts()
    assert aioice.ice.random_string is tap._random_string
    alphabet = set(string.ascii_letters + string.digits)
    drawn = [aioice.ice.random_string(n) for n in (0, 1, 4, 22, 300) for _ in range(50)]
    assert [len(x) for x in drawn] == [n for n in (0, 1, 4, 22, 300) for _ in range(50)]
    assert set("".join(drawn)) <= alphabet
    passwords = {aioice.ice.random_string(22) for _ in range(1000)}
    assert len(passwords) == 1000
    # Uniform: 124,000 characters, 2,000 expected of each; a biased mapping (the 256 % 62
    # leftover bytes folded onto the first 8 characters) would give those about 2,420.
    counts = Counter("".join(aioice.ice.random_string(124) for _ in range(1000)))
    assert set(counts) == alphabet
    assert max(counts.values()) < 2200 and min(counts.values()) > 1800


async def test_video_bitrate_estimator_built_on_first_packet() -> None:
    from aiortc.rate import RemoteBitrateEstimator

    tap.install_setup_shortcuts()
    pc = RTCPeerConnection()
    receiver = pc.addTransceiver("video", direction="recvonly").receiver
    await pc.close()
    lazy = getattr(receiver, tap._ESTIMATOR)
    assert isinstance(lazy, tap._LazyBitrateEstimator) and lazy._inner is None
    real = RemoteBitrateEstimator()
    results = []
    for i in range(300):  # 30 fps-like arrivals: the estimates match aiortc's own estimator
        kw = {
            "arrival_time_ms": 1000 + i * 33,
            "abs_send_time": ((i * 33) << 18) // 1000 & 0xFFFFFF,
            "payload_size": 1200,
            "ssrc": 1234,
        }
        results.append((lazy.add(**kw), real.add(**kw)))
    assert isinstance(lazy._inner, RemoteBitrateEstimator)
    assert all(a == b for a, b in results)
    assert any(a is not None for a, _ in results)


def test_check_internals_fails_loudly_when_setup_internals_move(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import aioice.ice
    import aiortc.rtcpeerconnection

    tap.check_internals()

    async def gather_candidates(self: object) -> None:
        pass

    monkeypatch.setattr(aioice.ice.Connection, "gather_candidates", gather_candidates)
    with pytest.raises(RuntimeError, match="get_host_addresses"):
        tap.check_internals()
    monkeypatch.undo()

    def init(self: object, configuration: object = None) -> None:
        pass

    monkeypatch.setattr(aiortc.rtcpeerconnection.RTCPeerConnection, "__init__", init)
    with pytest.raises(RuntimeError, match="certificate"):
        tap.check_internals()
    monkeypatch.undo()
    tap.check_internals()


# -- offers prepared one at a time ----------------------------------------------------------------


class _Hub:
    """The signaling side of the seam: records, for each offer sent, how many master sessions
    the manager had created by then."""

    def __init__(self) -> None:
        self.manager: StorageSessionManager | None = None
        self.offers: list[tuple[str, int]] = []

    async def send(
        self, channel_arn: str, client_id: str | None, message_type: str, payload: str | None
    ) -> None:
        if message_type == "SDP_OFFER":
            assert self.manager is not None
            self.offers.append((channel_arn, len(self.manager.masters)))

    def set_storage_endpoint(self, ep: object) -> None:
        pass


class _Fragments:
    async def next_number(self, stream_id: int) -> int:
        raise AssertionError("no media in this test")

    async def append(self, stream: Stream, data: bytes, **kw: Any) -> Fragment:
        raise AssertionError("no media in this test")


def _records(i: int) -> tuple[Channel, Stream]:
    arn = f"arn:aws:kinesisvideo:us-east-1:000000000000:channel/burst{i}/1"
    channel = Channel(
        id=i,
        arn=arn,
        name=f"burst{i}",
        channel_type="SINGLE_MASTER",
        status="ACTIVE",
        created=0.0,
        version="1",
        message_ttl=60,
        tags={},
        storage_status="ENABLED",
    )
    stream = Stream(
        id=i,
        arn=f"arn:aws:kinesisvideo:us-east-1:000000000000:stream/burst{i}-stream/1",
        name=f"burst{i}-stream",
        device_name=None,
        media_type=None,
        kms_key_id="k",
        version="1",
        status="ACTIVE",
        created=0.0,
        retention_hours=1,
        tags={},
    )
    return channel, stream


async def test_burst_offers_go_out_one_after_another(tmp_path: Path) -> None:
    settings = Settings.load({}, None, {"data_dir": tmp_path})
    hub = _Hub()
    manager = StorageSessionManager(settings, _Fragments(), hub)
    hub.manager = manager
    await manager.start()
    try:
        records = [_records(i) for i in range(6)]
        for _ in range(3):  # three joins per channel, round robin, before the loop turns
            for channel, stream in records:
                await manager.join_master(channel, stream)
        t0 = time.perf_counter()
        async with asyncio.timeout(20):
            while len(hub.offers) < len(records):
                await asyncio.sleep(0.01)
        await manager.wait_idle()
        elapsed = time.perf_counter() - t0
        # One session per channel (the joins coalesced), one offer each, in join order, and each
        # offer went out before the next channel's session was created.
        assert [arn for arn, _ in hub.offers] == [c.arn for c, _ in records]
        assert [n for _, n in hub.offers] == list(range(1, len(records) + 1))
        assert sorted(s.number for s in manager.masters.values()) == list(range(1, 7))
        # They share the process's certificate.
        prints = {
            s.pc.localDescription.sdp.split("a=fingerprint:sha-256 ")[1].split()[0]
            for s in manager.masters.values()
        }
        assert len(prints) == 1 and manager.certificates.generated == 1
        print(f"\n6 offers one after another in {elapsed * 1000:.0f} ms")
    finally:
        await manager.stop()


async def test_replaced_session_not_reported_current_while_a_join_is_pending(
    tmp_path: Path,
) -> None:
    """A session replaced by a join that waits its turn (the creator is busy with another
    channel's offer) ends as not current: in worker mode the server would otherwise stop routing
    the channel to its worker, and its audio mix would be forgotten."""
    settings = Settings.load({}, None, {"data_dir": tmp_path})
    hub = _Hub()
    manager = StorageSessionManager(settings, _Fragments(), hub)
    hub.manager = manager
    ends: list[tuple[int, bool, bool]] = []
    a, b = _records(1), _records(2)
    manager.on_session_end = lambda e: ends.append(
        (e["session"], e["current"], a[0].arn in manager._pending)
    )
    await manager.start()
    try:
        await manager.join_master(*a)
        await manager.wait_idle()
        first = manager.masters[a[0].arn]
        await manager.join_master(*b)  # the creator prepares b's offer first...
        await manager.join_master(*a)  # ...while a's join waits and a's session ends
        await first.stop("replaced")
        await manager.wait_idle()
        assert ends == [(first.number, False, True)]
        assert manager.masters[a[0].arn].number == first.number + 2
        assert a[0].arn in manager.audio
        assert [arn for arn, _ in hub.offers] == [a[0].arn, b[0].arn, a[0].arn]
    finally:
        await manager.stop()


def test_log_lines_written_by_a_thread_in_order(capfd: pytest.CaptureFixture[str]) -> None:
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    try:
        logwriter.setup(logging.INFO, lines=4)  # a small queue: the writer is often behind
        log = logging.getLogger("openkvs.test")
        for i in range(200):
            log.info("line %d", i)
        logwriter.stop()
        log.info("line %d", 200)  # after the writer stopped: written directly
        err = capfd.readouterr().err
        lines = [line for line in err.splitlines() if "openkvs.test: line" in line]
        assert [int(line.rsplit(" ", 1)[1]) for line in lines] == list(range(201))
        assert " INFO openkvs.test: line 0" in lines[0]
    finally:
        logwriter.stop()
        root.handlers[:] = handlers
        root.setLevel(level)
