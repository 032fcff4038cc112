"""The verdict of a storage session from its facts (pure: no peers)."""

from __future__ import annotations

from openkvs.webrtc.diagnostics import (
    MAX_PAIR_EVENTS,
    MAX_PAIRS,
    Timeline,
    candidate_types,
    sdp_codecs,
)

OFFER = (
    "v=0\r\no=- 1 1 IN IP4 0.0.0.0\r\ns=-\r\nt=0 0\r\n"
    "m=video 9 UDP/TLS/RTP/SAVPF 97 98\r\na=rtpmap:97 H264/90000\r\na=rtpmap:98 rtx/90000\r\n"
    "a=candidate:1 1 udp 2130706431 10.0.0.1 5000 typ host\r\n"
    "a=candidate:2 1 udp 1694498815 1.2.3.4 5000 typ srflx raddr 10.0.0.1 rport 5000\r\n"
    "m=audio 9 UDP/TLS/RTP/SAVPF 111\r\na=rtpmap:111 opus/48000/2\r\n"
    "m=audio 0 UDP/TLS/RTP/SAVPF 0\r\na=rtpmap:0 PCMU/8000\r\n"
)
RECORDED = {"rtp_packets": 900, "video_frames": 300, "keyframes": 10, "fragments": 5}


def connected() -> Timeline:
    t = Timeline("master", "arn:aws:kinesisvideo:us-east-1:000000000000:channel/c/1", 1)
    t.offer_sent(OFFER)
    t.answer_received(OFFER)
    for layer, state in (("ice", "completed"), ("dtls", "connected"), ("connection", "connected")):
        t.state(layer, state)
    return t


def test_sdp_facts() -> None:
    assert sdp_codecs(OFFER) == {"video": ["H264", "rtx"], "audio": ["opus"]}  # port 0 left out
    assert candidate_types(OFFER) == {"host": 1, "srflx": 1}


def test_normal_ends_have_no_verdict() -> None:
    for reason in (
        "the master's signaling connection closed",
        "peer connection closed",
        "replaced by a newer JoinStorageSession",
        "server shutting down",
        "maximum session duration of 60 s reached",
    ):
        assert connected().end(reason, RECORDED) is None, reason


def test_failures_have_one_line_verdicts() -> None:
    assert connected().end("peer connection failed", RECORDED) == (
        "The connection broke after 5 fragments (peer connection failed)."
    )
    assert connected().end("no media for 10 s", RECORDED) == (
        "The participant stopped sending media (no media for 10 s) after 5 fragments; the "
        "recording ends there."
    )
    stuck = connected()
    stuck.states.clear()
    stuck.reached = {"ice:completed", "dtls:failed"}
    stuck.states["dtls"] = "failed"
    assert stuck.end("peer connection failed", RECORDED) == (
        "ICE connected but the DTLS handshake did not complete (DTLS failed)."
    )
    unanswered = Timeline("master", "arn", 2)
    unanswered.offer_sent(OFFER)
    assert unanswered.end("the participant did not connect", {}) is not None
    assert unanswered.verdict is not None and unanswered.verdict.startswith(
        "The participant never answered the SDP offer"
    )
    stored_nothing = connected()
    assert stored_nothing.end("peer connection closed", {**RECORDED, "fragments": 0}) == (
        "Video arrived but no fragment was stored (0 store errors; peer connection closed)."
    )


def test_the_timeline_is_bounded() -> None:
    t = connected()
    for i in range(500):
        t.note("noise", i)
    d = t.as_dict()
    assert len(d["Timeline"]) == 64
    assert d["Timeline"][0]["event"] == "offer sent"  # the beginning is kept
    assert d["Timeline"][-1]["detail"] == 499  # and the latest
    assert d["TimelineEventsOmitted"] == 500 + 5 - 64


def test_the_candidate_pairs_are_bounded_and_the_good_ones_kept() -> None:
    t = connected()
    before = len(t.events)
    for i in range(MAX_PAIRS + 10):
        remote = f"host 10.0.0.{i}:5000"
        t.pair_checked("host 10.0.1.1:4000", remote, "WAITING", False)
        t.pair_checked("host 10.0.1.1:4000", remote, "IN_PROGRESS", False)
        t.pair_checked("host 10.0.1.1:4000", remote, "FAILED", False)
    t.pair_checked("host 10.0.1.1:4000", "host 10.0.0.3:5000", "FAILED", False)  # no change
    # A pair that succeeds after the table is full takes the place of the oldest failed one.
    t.pair_checked("host 10.0.1.1:4000", "srflx 1.2.3.4:6000", "WAITING", False)
    t.pair_checked("host 10.0.1.1:4000", "srflx 1.2.3.4:6000", "SUCCEEDED", True)
    d = t.as_dict()
    pairs = d["CandidatePairs"]
    assert len(pairs) == MAX_PAIRS
    assert pairs[0]["Remote"] == "host 10.0.0.1:5000"  # 10.0.0.0 made room
    assert pairs[-1] == {
        "Local": "host 10.0.1.1:4000",
        "Remote": "srflx 1.2.3.4:6000",
        "State": "SUCCEEDED",
        "Nominated": True,
    }
    assert d["CandidatePairsOmitted"] == 11  # the 10 that never fitted, and the one evicted
    pair_events = [e for e in t.events[before:] if e["event"].startswith("pair ")]
    assert len(pair_events) == MAX_PAIR_EVENTS
    assert pair_events[0] == {
        "t": pair_events[0]["t"],
        "event": "pair failed",
        "detail": "host 10.0.1.1:4000 -> host 10.0.0.0:5000",
    }
    # The record is a copy: later reports do not change what was described.
    t.pair_checked("host 10.0.1.1:4000", "srflx 1.2.3.4:6000", "FAILED", True)
    assert pairs[-1]["State"] == "SUCCEEDED"
