"""The STUN Binding responder's pure core, against the RFC 5769 test vectors."""

from __future__ import annotations

import struct

import pytest
from aioice import stun as aioice_stun

from openkvs.signaling import stun

TID = bytes.fromhex("b7e7a701bc34d686fa87dfae")
# RFC 5769 2.1: a Binding request from an ICE agent (SOFTWARE, PRIORITY, ICE-CONTROLLED,
# USERNAME, MESSAGE-INTEGRITY, FINGERPRINT).
RFC5769_REQUEST = bytes.fromhex(
    "000100582112a442b7e7a701bc34d686fa87dfae802200105354554e207465737420636c69656e74"
    "002400046e0001ff80290008932ff9b151263b36000600096576746a3a68367659202020"
    "000800149aeaa70cbfd8cb56781ef2b5b2d3f249c1b571a280280004e57a3bcf"
)
# RFC 5769 2.2 and 2.3: Binding success responses for 192.0.2.1:32853 and
# [2001:db8:1234:5678:11:2233:4455:6677]:32853.
RFC5769_RESPONSE_V4 = bytes.fromhex(
    "0101003c2112a442b7e7a701bc34d686fa87dfae8022000b7465737420766563746f7220"
    "002000080001a147e112a643000800142b91f599fd9e90c38c7489f92af9ba53f06be7d7"
    "80280004c07d4c96"
)
RFC5769_RESPONSE_V6 = bytes.fromhex(
    "010100482112a442b7e7a701bc34d686fa87dfae8022000b7465737420766563746f7220"
    "002000140002a1470113a9faa5d3f179bc25f4b5bed2b9d900080014a382954e4be67bf1"
    "1784c97c8292c275bfe3ed4180280004c8fb0b4c"
)


def test_xor_mapped_address_vectors() -> None:
    assert stun.xor_mapped_address("192.0.2.1", 32853, TID) == RFC5769_RESPONSE_V4[36:48]
    v6 = stun.xor_mapped_address("2001:db8:1234:5678:11:2233:4455:6677", 32853, TID)
    assert v6 == RFC5769_RESPONSE_V6[36:60]
    # An IPv4-mapped IPv6 sender (a dual-stack socket) is answered as IPv4.
    assert stun.xor_mapped_address("::ffff:192.0.2.1", 32853, TID) == RFC5769_RESPONSE_V4[36:48]


def test_fingerprint_vectors() -> None:
    for message in (RFC5769_RESPONSE_V4, RFC5769_RESPONSE_V6, RFC5769_REQUEST):
        assert stun.fingerprint(message[:-8]) == message[-8:]


def test_response_to_the_rfc_request() -> None:
    response = stun.binding_response(RFC5769_REQUEST, "192.0.2.1", 32853)
    assert response is not None
    assert response == (
        struct.pack("!HHI12s", 0x0101, 20, 0x2112A442, TID)
        + RFC5769_RESPONSE_V4[36:48]
        + stun.fingerprint(response[:-8])
    )
    assert stun.mapped_address(response) == ("192.0.2.1", 32853)
    # An independent parser accepts it (and checks the FINGERPRINT).
    parsed = aioice_stun.parse_message(response)
    assert parsed.message_method == aioice_stun.Method.BINDING
    assert parsed.message_class == aioice_stun.Class.RESPONSE
    assert parsed.transaction_id == TID
    assert parsed.attributes["XOR-MAPPED-ADDRESS"] == ("192.0.2.1", 32853)


def test_v6_sender() -> None:
    request = stun.binding_request(TID)
    response = stun.binding_response(request, "2001:db8::7", 4000)
    assert response is not None and len(response) == 52
    assert stun.mapped_address(response) == ("2001:db8::7", 4000)
    assert aioice_stun.parse_message(response).attributes["XOR-MAPPED-ADDRESS"] == (
        "2001:db8::7",
        4000,
    )


def _with(data: bytes, offset: int, value: bytes) -> bytes:
    return data[:offset] + value + data[offset + len(value) :]


@pytest.mark.parametrize(
    "request_bytes",
    [
        b"",
        b"\x00\x01",
        RFC5769_REQUEST[:19],
        RFC5769_REQUEST[:-4],  # length field disagrees with the datagram
        _with(RFC5769_REQUEST, 4, b"\x21\x12\xa4\x43"),  # wrong magic cookie
        _with(RFC5769_REQUEST, 0, b"\x00\x03"),  # Allocate, not Binding
        _with(RFC5769_REQUEST, 0, b"\x00\x11"),  # Binding indication
        RFC5769_RESPONSE_V4,  # a response is never answered
        _with(RFC5769_REQUEST, 0, b"\x40\x01"),  # top bits set: not STUN (e.g. RTP)
        _with(RFC5769_REQUEST, 22, b"\x00\xff"),  # an attribute runs past the end
        stun.binding_request(TID)[:2] + b"\x00\x02" + stun.binding_request(TID)[4:] + b"\0\0",
        struct.pack("!HHI12s", 1, 600, 0x2112A442, TID) + bytes(600),  # oversized
    ],
)
def test_malformed_requests_get_no_answer(request_bytes: bytes) -> None:
    assert stun.binding_response(request_bytes, "192.0.2.1", 1) is None


def test_mapped_address_of_other_messages() -> None:
    assert stun.mapped_address(b"") is None
    assert stun.mapped_address(RFC5769_REQUEST) is None
    assert stun.mapped_address(RFC5769_RESPONSE_V6) == (
        "2001:db8:1234:5678:11:2233:4455:6677",
        32853,
    )
