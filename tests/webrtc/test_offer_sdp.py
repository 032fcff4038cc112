"""The storage offer's SDP rewrites (pure text): one SHA-256 fingerprint, trickle ICE announced,
no end-of-candidates while more candidates are coming."""

from __future__ import annotations

import pytest

from openkvs.webrtc import offer_sdp

FP256 = "a=fingerprint:sha-256 " + ":".join(["AB"] * 32)
FP384 = "a=fingerprint:sha-384 " + ":".join(["CD"] * 48)
FP512 = "a=fingerprint:sha-512 " + ":".join(["EF"] * 64)

# The shape aiortc produces: session lines, then per media section ICE, candidates and three
# fingerprints.
AIORTC_OFFER = (
    "\r\n".join(
        [
            "v=0",
            "o=- 3912345678 3912345678 IN IP4 0.0.0.0",
            "s=-",
            "t=0 0",
            "a=group:BUNDLE 0 1",
            "a=msid-semantic:WMS *",
            "m=video 40000 UDP/TLS/RTP/SAVPF 97",
            "c=IN IP4 192.0.2.2",
            "a=recvonly",
            "a=mid:0",
            "a=candidate:1 1 udp 2130706431 192.0.2.2 40000 typ host",
            "a=end-of-candidates",
            "a=ice-ufrag:abcd",
            "a=ice-pwd:0123456789012345678901",
            FP256,
            FP384,
            FP512,
            "a=setup:actpass",
            "m=audio 40001 UDP/TLS/RTP/SAVPF 96",
            "c=IN IP4 192.0.2.2",
            "a=sendrecv",
            "a=mid:1",
            "a=candidate:2 1 udp 2130706431 192.0.2.2 40001 typ host",
            "a=end-of-candidates",
            "a=ice-ufrag:efgh",
            "a=ice-pwd:0123456789012345678901",
            FP256,
            FP384,
            FP512,
            "a=setup:actpass",
        ]
    )
    + "\r\n"
)


def sections(sdp: str) -> list[list[str]]:
    out: list[list[str]] = [[]]
    for line in sdp.split("\r\n"):
        if line.startswith("m="):
            out.append([])
        if line:
            out[-1].append(line)
    return out


def check_offer(sdp: str) -> None:
    """What KVS WebRTC clients need from the offer (used on the real storage offers too)."""
    assert sdp.endswith("\r\n") and "\n" not in sdp.replace("\r\n", "")
    session, *media = sections(sdp)
    assert media, sdp
    assert "a=ice-options:trickle" in session, sdp
    session_fps = [line for line in session if line.startswith("a=fingerprint:")]
    assert len(session_fps) <= 1
    for m in media:
        fps = [line for line in m if line.startswith("a=fingerprint:")] + session_fps
        assert len(fps) == 1, m
        assert fps[0].startswith("a=fingerprint:sha-256 "), fps


def test_aiortc_offer_becomes_a_kvs_offer() -> None:
    out = offer_sdp.storage_offer(AIORTC_OFFER, more_candidates=True)
    check_offer(out)
    assert out.count(FP256) == 2 and FP384 not in out and FP512 not in out
    assert "a=end-of-candidates" not in out
    session, *_ = sections(out)
    assert session[-1] == "a=ice-options:trickle"  # after the session attributes, once
    assert out.count("a=ice-options") == 1
    # Nothing else changed.
    kept = [
        line
        for line in AIORTC_OFFER.split("\r\n")
        if line and line not in (FP384, FP512, "a=end-of-candidates")
    ]
    assert [line for line in out.split("\r\n") if line != "a=ice-options:trickle" and line] == kept
    # Idempotent.
    assert offer_sdp.storage_offer(out, more_candidates=True) == out


def test_end_of_candidates_kept_when_nothing_more_comes() -> None:
    out = offer_sdp.storage_offer(AIORTC_OFFER, more_candidates=False)
    check_offer(out)
    assert out.count("a=end-of-candidates") == 2


def test_the_checker_refuses_what_the_c_sdk_cannot_use() -> None:
    with pytest.raises(AssertionError):
        check_offer(AIORTC_OFFER)  # three fingerprints, no trickle
    with pytest.raises(AssertionError):
        check_offer(offer_sdp.single_sha256_fingerprint(AIORTC_OFFER))  # no trickle
    with pytest.raises(AssertionError):
        check_offer(offer_sdp.add_trickle_option(AIORTC_OFFER))  # three fingerprints


def test_existing_ice_options_get_trickle_added() -> None:
    sdp = AIORTC_OFFER.replace("a=group:BUNDLE 0 1", "a=ice-options:ice2\r\na=group:BUNDLE 0 1")
    out = offer_sdp.add_trickle_option(sdp)
    assert "a=ice-options:ice2 trickle" in out and out.count("a=ice-options") == 1


def test_no_sha256_fingerprint_is_an_error() -> None:
    sdp = AIORTC_OFFER.replace(FP256 + "\r\n", "")
    with pytest.raises(ValueError, match="sha-256"):
        offer_sdp.single_sha256_fingerprint(sdp)


def test_duplicate_sha256_lines_collapse() -> None:
    sdp = AIORTC_OFFER.replace(FP384, FP256.replace("AB", "12"))
    out = offer_sdp.single_sha256_fingerprint(sdp)
    assert out.count("a=fingerprint:") == 2 and out.count(FP256) == 2
