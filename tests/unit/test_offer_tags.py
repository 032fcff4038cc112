"""Session tags on offer mids: vectors."""

from __future__ import annotations

import pytest

from openkvs.webrtc import offer_tags

OFFER = (
    "v=0\r\no=- 1 1 IN IP4 0.0.0.0\r\ns=-\r\nt=0 0\r\na=group:BUNDLE 0 1\r\n"
    "m=video 9 UDP/TLS/RTP/SAVPF 97\r\na=mid:0\r\na=extmap:1 urn:ietf:params:rtp-hdrext:sdes:mid\r\n"
    "m=audio 9 UDP/TLS/RTP/SAVPF 111\r\na=mid:1\r\n"
)


def test_session_tag_is_short_and_distinct() -> None:
    assert offer_tags.session_tag(0) == "s0"
    assert offer_tags.session_tag(35) == "sz"
    assert offer_tags.session_tag(36) == "s10"
    assert len(offer_tags.session_tag(9_000_000_000)) <= 8
    assert len({offer_tags.session_tag(n) for n in range(1000)}) == 1000


def test_tag_and_untag_round_trip() -> None:
    tagged = offer_tags.tag_sdp(OFFER, "s7")
    assert "a=group:BUNDLE s7-0 s7-1\r\n" in tagged
    assert "a=mid:s7-0\r\n" in tagged and "a=mid:s7-1\r\n" in tagged
    assert "sdes:mid" not in tagged  # packets carry no (untagged) mid
    assert offer_tags.untag_sdp(tagged, "s7") == OFFER.replace(
        "a=extmap:1 urn:ietf:params:rtp-hdrext:sdes:mid\r\n", ""
    )
    assert offer_tags.untag_mid("s7-1", "s7") == "1"


def test_untagged_answers_pass_as_they_are() -> None:
    # KVS C SDK answerers number their mids themselves.
    assert offer_tags.untag_sdp(OFFER, "s7") == OFFER
    assert offer_tags.untag_mid("0", "s7") == "0"
    assert offer_tags.untag_mid("video-1", "s7") == "video-1"
    assert offer_tags.untag_sdp(OFFER.replace("\r\n", "\n"), "s7") == OFFER.replace("\r\n", "\n")


def test_another_sessions_tag_is_foreign() -> None:
    with pytest.raises(offer_tags.ForeignTag):
        offer_tags.untag_sdp(offer_tags.tag_sdp(OFFER, "s6"), "s7")
    with pytest.raises(offer_tags.ForeignTag):
        offer_tags.untag_mid("s6-0", "s7")
