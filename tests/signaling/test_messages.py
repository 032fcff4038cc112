"""Client frames in both SDK dialects, and the events and STATUS_RESPONSEs sent back."""

from __future__ import annotations

import json

import pytest

from openkvs.errors import ClientLimitExceededException, InvalidArgumentException
from openkvs.signaling import messages
from openkvs.signaling.messages import FrameError, parse_client_frame

from .kvs import b64json

OFFER = b64json({"type": "offer", "sdp": "v=0\r\n"})

# The KVS C SDK's SIGNALING_SEND_MESSAGE_TEMPLATE[_WITH_CORRELATION_ID], filled in as it does:
# tabs and newlines, PascalCase keys apart from "action", RecipientClientId always present.
C_SDK_FRAME = '{\n\t"action": "%s",\n\t"RecipientClientId": "%s",\n\t"MessagePayload": "%s"%s\n}'
C_SDK_FRAME_CORR = (
    '{\n\t"action": "%s",\n\t"RecipientClientId": "%s",\n\t"MessagePayload": "%s",\n'
    '\t"CorrelationId": "%s"%s\n}'
)
# SIGNALING_ICE_SERVER_LIST_TEMPLATE_START + one SIGNALING_ICE_SERVER_TEMPLATE (its trailing comma
# removed, as sendLwsMessage does) + SIGNALING_ICE_SERVER_LIST_TEMPLATE_END.
C_SDK_ICE_LIST = (
    ',\n\t"IceServerList": [\n\t\t{\n\t\t\t"Password": "pw",\n\t\t\t"Ttl": 298,\n'
    '\t\t\t"Uris": ["turn:1.2.3.4:443?transport=udp","turns:1.2.3.4:443?transport=tcp"],\n'
    '\t\t\t"Username": "u"\n\t\t}\n\t]'
)


def test_js_dialect() -> None:
    frame = json.dumps(
        {
            "action": "SDP_ANSWER",
            "messagePayload": OFFER,
            "recipientClientId": "viewer-1",
            "correlationId": "1697058567743",
        }
    )
    assert parse_client_frame(frame) == messages.ClientMessage(
        "SDP_ANSWER", OFFER, "viewer-1", "1697058567743"
    )
    # Undefined keys are omitted by the JS SDK.
    bare = json.dumps({"action": "ICE_CANDIDATE", "messagePayload": OFFER})
    assert parse_client_frame(bare) == messages.ClientMessage("ICE_CANDIDATE", OFFER, None, None)


def test_c_sdk_dialect() -> None:
    msg = parse_client_frame(C_SDK_FRAME % ("SDP_ANSWER", "", OFFER, ""))
    assert msg == messages.ClientMessage("SDP_ANSWER", OFFER, None, None)
    msg = parse_client_frame(C_SDK_FRAME_CORR % ("SDP_OFFER", "ProducerMaster", OFFER, "c-1", ""))
    assert msg == messages.ClientMessage("SDP_OFFER", OFFER, "ProducerMaster", "c-1")


def test_c_sdk_offer_with_ice_server_list() -> None:
    frame = C_SDK_FRAME_CORR % ("SDP_OFFER", "ProducerMaster", OFFER, "c-2", C_SDK_ICE_LIST)
    json.loads(frame)  # the template yields valid JSON
    msg = parse_client_frame(frame)
    assert msg == messages.ClientMessage("SDP_OFFER", OFFER, "ProducerMaster", "c-2")


@pytest.mark.parametrize(
    ("frame", "correlation_id", "text"),
    [
        ("not json", None, "The message is not valid JSON."),
        ("[1, 2]", None, "The message must be a JSON object."),
        ('{"messagePayload": "eA==", "correlationId": "a"}', "a", "The message has no action."),
        (
            '{"action": "SEND_SMS", "messagePayload": "eA==", "correlationId": "b"}',
            "b",
            "Unknown action 'SEND_SMS': expected SDP_OFFER, SDP_ANSWER or ICE_CANDIDATE.",
        ),
        (
            '{"action": "SDP_OFFER", "correlationId": "c"}',
            "c",
            "messagePayload is required and must be a base64 string.",
        ),
        (
            '{"action": "SDP_OFFER", "messagePayload": "not base64!", "CorrelationId": "d"}',
            "d",
            "messagePayload is not valid base64.",
        ),
        (
            '{"action": "SDP_OFFER", "messagePayload": "eA=", "correlationId": "e"}',
            "e",
            "messagePayload is not valid base64.",
        ),
        (
            '{"action": "SDP_OFFER", "messagePayload": "eA==", "recipientClientId": "a b", '
            '"correlationId": "f"}',
            "f",
            "recipientClientId must be 1 to 256 characters of [a-zA-Z0-9_.-].",
        ),
        (
            '{"action": "SDP_OFFER", "messagePayload": "eA==", "correlationId": "bad id"}',
            "bad id",
            "correlationId must be 1 to 256 characters of [a-zA-Z0-9_.-].",
        ),
        (
            '{"action": "SDP_OFFER", "messagePayload": "eA==", "correlationId": 7}',
            None,
            "correlationId must be a string.",
        ),
    ],
)
def test_bad_frames(frame: str, correlation_id: str | None, text: str) -> None:
    with pytest.raises(FrameError) as info:
        parse_client_frame(frame)
    assert info.value.correlation_id == correlation_id
    assert isinstance(info.value.error, InvalidArgumentException)
    assert info.value.error.message == text


def test_payload_limit() -> None:
    limit = "A" * messages.MAX_PAYLOAD
    assert parse_client_frame(json.dumps({"action": "SDP_OFFER", "messagePayload": limit}))
    over = "A" * (messages.MAX_PAYLOAD + 4)
    with pytest.raises(FrameError) as info:
        parse_client_frame(
            json.dumps({"action": "SDP_OFFER", "messagePayload": over, "correlationId": "big"})
        )
    assert info.value.error.message == (
        f"messagePayload is {len(over)} characters long; the maximum is 10240."
    )


def test_events() -> None:
    assert json.loads(messages.event("SDP_OFFER", "eA==", sender="v1")) == {
        "senderClientId": "v1",
        "messageType": "SDP_OFFER",
        "messagePayload": "eA==",
    }
    assert json.loads(messages.event("ICE_CANDIDATE", "eA==")) == {
        "messageType": "ICE_CANDIDATE",
        "messagePayload": "eA==",
    }
    assert json.loads(messages.go_away()) == {"messageType": "GO_AWAY"}


def test_status_response_shape() -> None:
    text = messages.status_response("1697058567743", ClientLimitExceededException("slow down"))
    assert json.loads(text) == {
        "messageType": "STATUS_RESPONSE",
        "statusResponse": {
            "correlationId": "1697058567743",
            "errorType": "ClientLimitExceededException",
            "statusCode": "400",
            "description": "slow down",
            "success": False,
        },
    }


@pytest.mark.parametrize(
    ("client_id", "ok"),
    [
        ("viewer-1", True),
        ("a" * 256, True),
        ("x.y_z-0", True),
        ("a" * 257, False),
        ("has space", False),
        ("AWS_viewer", False),
        ("aws_viewer", False),
        ("", False),
        (None, False),
    ],
)
def test_viewer_client_id_rules(client_id: str | None, ok: bool) -> None:
    if ok:
        assert messages.check_viewer_client_id(client_id) == client_id
    else:
        with pytest.raises(InvalidArgumentException):
            messages.check_viewer_client_id(client_id)
