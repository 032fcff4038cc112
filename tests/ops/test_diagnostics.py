"""Storage-session diagnostics: each failure class provoked for real, its verdict asserted, and
POST /describeStorageSessions (SigV4, policy) in-process and through a storage worker."""

from __future__ import annotations

import asyncio
import base64
import json
import re
from typing import Any

import pytest
import requests
from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials

from ..mediagen import h264_clip, opus_packets
from ..signaling.kvs import Client, b64json, enable_storage, setup_channel
from ..support import ServerThread, free_port
from ..webrtc.fake_master import FakeMaster
from ..webrtc.harness import Camera, storage_channel, wait_for
from .receiver import SECRET, Receiver

pytestmark = pytest.mark.slow


def describe(
    srv: ServerThread, body: dict[str, Any] | bytes, *, keys: tuple[str, str] | None = None
) -> requests.Response:
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    url = f"{srv.endpoint}/describeStorageSessions"
    req = AWSRequest(method="POST", url=url, data=raw, headers={"Content-Type": "application/json"})
    akid, secret = keys or srv.keys
    SigV4Auth(Credentials(akid, secret), "kinesisvideo", srv.settings.region).add_auth(req)
    return requests.post(
        url, data=raw, headers=dict(req.headers.items()), verify=srv.ca, timeout=10
    )


async def sessions(srv: ServerThread, channel: str) -> list[dict[str, Any]]:
    resp = await asyncio.to_thread(describe, srv, {"ChannelARN": channel})
    assert resp.status_code == 200, resp.text
    data = resp.json()
    assert data["ChannelARN"] == channel
    result: list[dict[str, Any]] = data["StorageSessions"]
    return result


async def ended_session(srv: ServerThread, channel: str, limit: float = 40) -> dict[str, Any]:
    async with asyncio.timeout(limit):
        while True:
            for s in await sessions(srv, channel):
                if s["State"] == "ENDED":
                    return s
            await asyncio.sleep(0.2)


def events(session: dict[str, Any]) -> list[str]:
    return [e["event"] for e in session["Timeline"]]


class StrippingMaster(FakeMaster):
    """Answers, but no ICE candidate ever crosses in either direction."""

    async def handle(self, message_type: str, payload: str | None) -> tuple[str, str] | None:
        assert payload is not None
        if message_type != "SDP_OFFER":
            return None
        offer = json.loads(base64.b64decode(payload))["sdp"]
        sdp = await self.answer(re.sub(r"a=candidate:[^\r\n]*\r\n", "", offer))
        sdp = re.sub(r"a=candidate:[^\r\n]*\r\n", "", sdp)
        return "SDP_ANSWER", b64json({"type": "answer", "sdp": sdp})


class UnreachableMaster(StrippingMaster):
    """Its answer names a host candidate on a port where nothing listens; it checks nothing."""

    async def handle(self, message_type: str, payload: str | None) -> tuple[str, str] | None:
        reply = await super().handle(message_type, payload)
        if reply is None:
            return None
        sdp = json.loads(base64.b64decode(reply[1]))["sdp"]
        sdp = sdp.replace(
            "a=end-of-candidates",
            f"a=candidate:1 1 udp 2130706431 127.0.0.1 {free_port()} typ host\r\na=end-of-candidates",
            1,
        )
        return "SDP_ANSWER", b64json({"type": "answer", "sdp": sdp})


@pytest.mark.parametrize("workers", [0, 1])
async def test_a_good_session_has_a_full_timeline_and_no_verdict(
    make_server: Any, workers: int
) -> None:
    srv: ServerThread = make_server(webrtc_workers=workers, storage_fragment_duration=1.0)
    ch, _ = storage_channel(srv, "good")
    clip = h264_clip(seconds=2.0, gop=30)
    cam = Camera(srv, ch, clip, opus_packets(2.0))
    await cam.connect()
    await asyncio.to_thread(cam.join)
    track = cam.master.video_track
    assert track is not None
    # Every frame sent (the counts below are compared with all of them), then time to arrive.
    await wait_for(lambda: len(track.sent) >= len(clip), 30)
    await asyncio.sleep(0.6)
    live = await sessions(srv, ch)
    assert [s["State"] for s in live] == ["ACTIVE"] and live[0]["Role"] == "MASTER"
    await wait_for(lambda: track.done, 30)
    await cam.close()
    s = await ended_session(srv, ch)
    assert s.get("Verdict") is None, s  # absent: nothing failed
    assert "H264" in s["OfferedCodecs"]["video"] and "opus" in s["OfferedCodecs"]["audio"]
    assert s["LocalCandidates"].get("host", 0) >= 1 and s["RemoteCandidates"].get("host", 0) >= 1
    assert s["States"]["connection"] in ("closed", "connected")
    assert re.fullmatch(r"[\d.:a-f]+:\d+ -> [\d.:a-f]+:\d+", s["SelectedPair"]), s
    assert events(s).index("selected pair") < events(s).index("first keyframe")
    # The candidate pairs tried, each with its final check state; exactly one nominated, and it
    # is the selected pair.
    pairs = s["CandidatePairs"]
    assert pairs and all(
        re.fullmatch(r"(host|srflx|prflx|relay) [\d.:a-f]+:\d+", p[end])
        for p in pairs
        for end in ("Local", "Remote")
    ), pairs
    assert {p["State"] for p in pairs} <= {"WAITING", "IN_PROGRESS", "SUCCEEDED", "FAILED"}
    nominated = [p for p in pairs if p["Nominated"]]
    assert len(nominated) == 1 and nominated[0]["State"] == "SUCCEEDED", pairs
    chosen = nominated[0]
    assert s["SelectedPair"] == (
        f"{chosen['Local'].split()[1]} -> {chosen['Remote'].split()[1]}"
    ), (s["SelectedPair"], pairs)
    assert "CandidatePairsOmitted" not in s
    assert events(s).index("pair nominated") < events(s).index("connection connected")
    assert events(s).count("pair nominated") == 1
    assert all(key in s["Counts"] for key in ("nacks_sent", "rtx_packets", "plis_sent"))
    assert set(s["Firsts"]) == {"rtp", "frame", "keyframe", "fragment"}
    assert s["Firsts"]["rtp"] <= s["Firsts"]["fragment"]
    assert s["Counts"]["video_frames"] == len(track.sent) and s["Counts"]["frames_lost"] == 0
    assert s["Counts"]["fragments"] >= 2
    assert s["EndReason"] == "the master's signaling connection closed"
    order = events(s)
    for a, b in [
        ("offer sent", "answer received"),
        ("answer received", "ice completed"),
        ("ice completed", "connection connected"),
        ("connection connected", "first keyframe"),
        ("first fragment", "ended"),
    ]:
        assert a in order and b in order and order.index(a) < order.index(b), (a, b, order)


async def test_participant_leaves_before_answering(server: ServerThread) -> None:
    ch, _ = storage_channel(server, "noanswer")
    client = await Client.connect(server, ch)
    cam = Camera(server, ch, None)
    await asyncio.to_thread(cam.join)
    msg = await client.recv(timeout=10)
    assert msg["messageType"] == "SDP_OFFER"
    await client.close()
    s = await ended_session(server, ch)
    assert s["Verdict"] == "The participant left signaling before it answered the SDP offer."
    assert "answer received" not in events(s)


async def test_unusable_answer_is_refused_with_the_reason(server: ServerThread) -> None:
    ch, _ = storage_channel(server, "badanswer")
    client = await Client.connect(server, ch)
    cam = Camera(server, ch, None)
    await asyncio.to_thread(cam.join)
    assert (await client.recv(timeout=10))["messageType"] == "SDP_OFFER"
    await client.send("SDP_ANSWER", b64json({"type": "answer", "sdp": "v=0\r\nbogus\r\n"}))
    s = await ended_session(server, ch)
    await client.close()
    assert s["Verdict"].startswith("The participant's SDP answer was refused: "), s["Verdict"]
    assert "answer refused" in events(s)


async def test_ice_failure_names_the_candidates(server: ServerThread) -> None:
    ch, _ = storage_channel(server, "noice")
    cam = Camera(server, ch, h264_clip(seconds=1.0), None)
    cam.master = StrippingMaster(h264_clip(seconds=1.0), None)
    await cam.connect()
    await asyncio.to_thread(cam.join)
    s = await ended_session(server, ch, limit=60)
    await cam.close()
    assert s["Verdict"] == (
        "ICE failed: the participant sent no ICE candidates (none in its answer, none as "
        "ICE_CANDIDATE messages)."
    ), s
    assert s["RemoteCandidates"] == {}
    assert s["States"].get("ice") in ("failed", "closed")


async def test_connected_without_media(make_server: Any, receiver: Receiver) -> None:
    srv: ServerThread = make_server(
        storage_media_timeout=1.5, webhook_urls=(receiver.url,), webhook_secret=SECRET
    )
    ch, _ = storage_channel(srv, "nomedia")
    cam = Camera(srv, ch, None, None)
    await cam.connect()
    await asyncio.to_thread(cam.join)
    s = await ended_session(srv, ch)
    await cam.close()
    assert s["Verdict"] == (
        "Connected, but no video arrived: the participant sent no RTP on the video track "
        "(no media for 1.5 s)."
    ), s
    assert "connection connected" in events(s) and "first rtp" not in events(s)
    # The storage_session.ended event carries the verdict.
    await wait_for(lambda: any(b"storage_session.ended" in r[0] for r in receiver.requests), 10)
    ended = [e for e in receiver.events() if e["type"] == "storage_session.ended"]
    assert ended[0]["verdict"] == s["Verdict"]


async def test_video_without_a_keyframe(server: ServerThread) -> None:
    ch, _ = storage_channel(server, "nokey")
    clip = h264_clip(seconds=2.0, gop=300)  # one IDR at the start, which is left out
    cam = Camera(server, ch, clip[1:], None)
    await cam.connect()
    await asyncio.to_thread(cam.join)
    track = cam.master.video_track
    assert track is not None
    await wait_for(lambda: track.done, 30)
    await asyncio.sleep(0.6)
    await cam.close()
    s = await ended_session(server, ch)
    assert re.fullmatch(
        r"Video arrived \(\d+ RTP packets\) but never a keyframe, so nothing could be recorded; "
        r"the camera must send an IDR frame \(and answer PLI requests with one\)\.",
        s["Verdict"],
    ), s["Verdict"]
    assert s["Counts"]["rtp_packets"] > 0 and s["Counts"]["fragments"] == 0


async def test_describe_errors(make_server: Any) -> None:
    srv: ServerThread = make_server()
    ch, _ = storage_channel(srv, "errs")
    resp = await asyncio.to_thread(describe, srv, {})
    assert resp.status_code == 400
    assert resp.headers["x-amzn-ErrorType"].startswith("InvalidArgumentException")
    resp = await asyncio.to_thread(describe, srv, {"ChannelARN": ch + "0"})
    assert resp.status_code == 404
    resp = await asyncio.to_thread(describe, srv, b"not json")
    assert resp.status_code == 400
    resp = await asyncio.to_thread(describe, srv, {"ChannelARN": ch}, keys=("AKIANOBODY", "x"))
    assert resp.status_code == 403
    unsigned = await asyncio.to_thread(
        requests.post,
        f"{srv.endpoint}/describeStorageSessions",
        json={"ChannelARN": ch},
        verify=srv.ca,
        timeout=10,
    )
    assert unsigned.status_code == 403
    assert await sessions(srv, ch) == []  # no session yet


async def test_policy_action(make_server: Any, tmp_path: Any) -> None:
    def key(akid: str, action: str) -> dict[str, Any]:
        statement = {"Effect": "Allow", "Action": action, "Resource": "*"}
        return {
            "access_key_id": akid,
            "secret_access_key": "diag-secret",
            "policy": {"Statement": [statement]},
        }

    deny = key("AKIADIAGNOSTICS00001", "kinesisvideo:Describe*Channel")
    allow = key("AKIADIAGNOSTICS00002", "kinesisvideo:DescribeStorageSessions")
    srv: ServerThread = make_server(credentials=[deny, allow])
    ch, _ = storage_channel(srv, "pol")
    resp = await asyncio.to_thread(
        describe, srv, {"ChannelARN": ch}, keys=("AKIADIAGNOSTICS00001", "diag-secret")
    )
    # AccessDeniedException, with the status kinesisvideo's model gives it (401).
    assert resp.status_code == 401, resp.text
    assert resp.headers["x-amzn-ErrorType"].startswith("AccessDeniedException")
    assert "kinesisvideo:DescribeStorageSessions" in resp.json()["message"]
    resp = await asyncio.to_thread(
        describe, srv, {"ChannelARN": ch}, keys=("AKIADIAGNOSTICS00002", "diag-secret")
    )
    assert resp.status_code == 200


async def test_ice_failure_when_no_pair_works(make_server: Any) -> None:
    server: ServerThread = make_server(storage_connect_timeout=1.0)
    ch = setup_channel(server, "unreachable", ttl=5)  # gives up 15 s after the offer
    enable_storage(server, ch, "unreachable-stream")
    cam = Camera(server, ch, h264_clip(seconds=1.0), None)
    cam.master = UnreachableMaster(h264_clip(seconds=1.0), None)
    await cam.connect()
    await asyncio.to_thread(cam.join)
    s = await ended_session(server, ch, limit=60)
    await cam.close()
    assert re.fullmatch(
        r"ICE failed: no candidate pair worked between the server \(\d+ host\) and the "
        r"participant \(1 host\); they cannot reach each other \(a TURN server, or "
        r"webrtc_advertised_hosts, may help\)\.",
        s["Verdict"],
    ), s


async def test_participant_never_answers(make_server: Any) -> None:
    # The camera stays connected to signaling and ignores the offer; the session gives up after
    # its connect timeout (at least the channel's message TTL + 10 s, the offer's lifetime).
    srv: ServerThread = make_server(storage_connect_timeout=1.0)
    ch = setup_channel(srv, "silent", ttl=5)
    enable_storage(srv, ch, "silent-stream")
    client = await Client.connect(srv, ch)
    try:
        cam = Camera(srv, ch, None)
        await asyncio.to_thread(cam.join)
        assert (await client.recv(timeout=10))["messageType"] == "SDP_OFFER"
        s = await ended_session(srv, ch, limit=40)
    finally:
        await client.close()
    assert s["Verdict"] == (
        "The participant never answered the SDP offer: it must be connected to the channel's "
        "signaling and answer the storage session's SDP_OFFER."
    ), s
    assert s["EndReason"] == "the participant did not connect"
    assert "offer sent" in events(s) and "answer received" not in events(s)
    assert s["CandidatePairs"] == [] and "SelectedPair" not in s  # no check ever ran


class WrongFingerprintMaster(FakeMaster):
    """Answers with certificate fingerprints that are not its certificate's: ICE connects, then
    the server's DTLS handshake fails its fingerprint check."""

    async def handle(self, message_type: str, payload: str | None) -> tuple[str, str] | None:
        reply = await super().handle(message_type, payload)
        if reply is None:
            return None
        sdp = json.loads(base64.b64decode(reply[1]))["sdp"]
        wrong, n = re.subn(
            r"^(a=fingerprint:\S+ )([0-9A-Fa-f:]+)",
            lambda m: m.group(1) + ":".join("00" for _ in m.group(2).split(":")),
            sdp,
            flags=re.M,
        )
        assert n >= 1 and wrong != sdp
        return "SDP_ANSWER", b64json({"type": "answer", "sdp": wrong})


async def test_dtls_failure(server: ServerThread) -> None:
    ch, _ = storage_channel(server, "baddtls")
    cam = Camera(server, ch, h264_clip(seconds=1.0), None)
    cam.master = WrongFingerprintMaster(h264_clip(seconds=1.0), None)
    await cam.connect()
    try:
        await asyncio.to_thread(cam.join)
        s = await ended_session(server, ch, limit=20)
    finally:
        await cam.close()
    assert s["Verdict"] == (
        "ICE connected but the DTLS handshake did not complete (DTLS failed)."
    ), s
    assert s["EndReason"] == "peer connection failed"
    assert s["States"]["dtls"] == "failed"
    order = events(s)
    assert "answer received" in order and "ice completed" in order and "dtls failed" in order
    assert "connection connected" not in order and "first rtp" not in order
    # ICE itself worked: a pair was nominated.
    assert [p["State"] for p in s["CandidatePairs"] if p["Nominated"]] == ["SUCCEEDED"], s


class DroppingMaster(FakeMaster):
    """Drops every tenth of its first 80 H.264 RTP packets, once each (retransmissions, RTX or
    not, go through): the server must NACK them and the camera retransmit them."""

    def __init__(self, *args: Any, **kw: Any) -> None:
        super().__init__(*args, **kw)
        self.dropped: list[int] = []

    async def answer(self, offer_sdp: str) -> str:
        sdp = await super().answer(offer_sdp)
        video = re.search(r"^m=video \d+ \S+ (\d+)", sdp, re.M)
        assert video is not None
        h264_pt = int(video.group(1))
        transceiver = next(t for t in self.pc.getTransceivers() if t.kind == "video")
        transport = transceiver.sender.transport
        send = transport._send_rtp
        seen = 0
        dropped: set[int] = set()

        async def lossy(data: bytes) -> None:
            nonlocal seen
            if len(data) >= 12 and data[1] & 0x7F == h264_pt:
                seq = int.from_bytes(data[2:4], "big")
                if seq not in dropped:
                    seen += 1
                    if seen < 80 and seen % 10 == 3:
                        dropped.add(seq)
                        self.dropped.append(seq)
                        return
            await send(data)

        transport._send_rtp = lossy
        return sdp


async def test_nack_and_rtx_are_counted(make_server: Any) -> None:
    from .test_metrics import scrape, value

    srv: ServerThread = make_server(storage_fragment_duration=1.0)
    ch, _ = storage_channel(srv, "lossy")
    clip = h264_clip(seconds=2.0, gop=30)
    cam = Camera(srv, ch, clip, None)
    master = cam.master = DroppingMaster(clip, None)
    await cam.connect()
    try:
        await asyncio.to_thread(cam.join)
        track = master.video_track
        assert track is not None
        await wait_for(lambda: track.done, 30)
        await asyncio.sleep(0.6)
        live = await sessions(srv, ch)
    finally:
        await cam.close()
    assert len(master.dropped) >= 5
    counts = live[0]["Counts"]
    assert counts["nacks_sent"] >= 1, counts
    assert counts["nacked_packets"] >= len(master.dropped), counts
    assert counts["rtx_packets"] >= len(master.dropped), counts
    assert counts["frames_recovered"] >= 1 and counts["late_packets"] >= len(master.dropped)
    assert counts["frames_lost"] == 0 and counts["video_frames"] == len(track.sent), counts
    s = await ended_session(srv, ch)
    assert s.get("Verdict") is None, s
    assert s["Counts"]["rtx_packets"] >= counts["rtx_packets"]
    samples = await scrape(srv)
    assert value(samples, "openkvs_nacks_sent_total") == s["Counts"]["nacks_sent"]
    assert value(samples, "openkvs_rtx_packets_received_total") == s["Counts"]["rtx_packets"]
    assert value(samples, "openkvs_frames_recovered_total") == s["Counts"]["frames_recovered"]
