"""Signaling frames: client → service messages in and service → client events out.

Clients send JSON text frames with an ``action`` and a base64 ``messagePayload``. Two dialects
exist and both are accepted:

- the KVS WebRTC JS SDK: ``action``, ``messagePayload``, ``recipientClientId``,
  ``correlationId`` (keys it has no value for are omitted);
- the KVS WebRTC C SDK: ``action``, ``RecipientClientId`` (always present, ``""`` for none),
  ``MessagePayload``, ``CorrelationId``, and sometimes an ``IceServerList`` (ignored).

Events sent back carry ``messageType`` and, for peer messages, ``senderClientId`` and
``messagePayload``. Messages from the master and from the storage session carry no
``senderClientId`` (the C SDK's signaling canary notes the service leaves it empty on the
master's answer). Errors come back as ``STATUS_RESPONSE`` events, and only for messages that
carried a correlation id.
"""

from __future__ import annotations

import binascii
import dataclasses
import json
import re
from base64 import b64decode
from typing import Any

from .. import safejson
from ..errors import InvalidArgumentException, ServiceError

SDP_OFFER = "SDP_OFFER"
SDP_ANSWER = "SDP_ANSWER"
ICE_CANDIDATE = "ICE_CANDIDATE"
GO_AWAY = "GO_AWAY"
RECONNECT_ICE_SERVER = "RECONNECT_ICE_SERVER"
STATUS_RESPONSE = "STATUS_RESPONSE"

ACTIONS = frozenset({SDP_OFFER, SDP_ANSWER, ICE_CANDIDATE})
EVENT_TYPES = ACTIONS | {GO_AWAY, RECONNECT_ICE_SERVER}

# "The encoded messagePayload is at most 10K": read as 10 KiB, the generous reading, so a
# browser offer that a real client can send is never refused here.
MAX_PAYLOAD = 10 * 1024
MAX_ID = 256

_ID = re.compile(r"[a-zA-Z0-9_.-]{1,256}")
_BASE64 = re.compile(r"[A-Za-z0-9+/]*={0,2}")


def valid_id(value: str) -> bool:
    """ClientId, recipientClientId and correlationId share the pattern ``[a-zA-Z0-9_.-]{1,256}``."""
    return _ID.fullmatch(value) is not None


def check_viewer_client_id(value: str | None) -> str:
    """The ConnectAsViewer ``X-Amz-ClientId`` rules; raise InvalidArgumentException if broken."""
    if value is None or value == "":
        raise InvalidArgumentException("X-Amz-ClientId is required to connect as a viewer.")
    if not valid_id(value):
        raise InvalidArgumentException(
            "X-Amz-ClientId must be 1 to 256 characters of [a-zA-Z0-9_.-]."
        )
    if value.upper().startswith("AWS_"):
        raise InvalidArgumentException("X-Amz-ClientId must not start with AWS_.")
    return value


def valid_base64(value: str) -> bool:
    """Standard alphabet, padded: what both SDKs produce (``btoa``, the C SDK's encoder)."""
    if len(value) % 4 or not _BASE64.fullmatch(value):
        return False
    try:
        b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        return False
    return True


class FrameError(ValueError):
    """A client frame that cannot be honoured; ``error`` goes into the STATUS_RESPONSE."""

    def __init__(self, error: ServiceError, correlation_id: str | None) -> None:
        super().__init__(error.message)
        self.error = error
        self.correlation_id = correlation_id


@dataclasses.dataclass(frozen=True)
class ClientMessage:
    action: str
    payload: str
    recipient: str | None
    correlation_id: str | None


def _pick(frame: dict[str, Any], lower: str, pascal: str) -> Any:
    value = frame.get(lower)
    return frame.get(pascal) if value is None else value


def _invalid(message: str, correlation_id: str | None) -> FrameError:
    return FrameError(InvalidArgumentException(message), correlation_id)


def parse_client_frame(text: str) -> ClientMessage:
    """Parse one text frame from a client; raise :class:`FrameError` when it is unusable.

    The error carries the frame's correlation id when one could be read, so the caller can
    answer with a STATUS_RESPONSE; without one the frame is dropped silently.
    """
    try:
        frame = safejson.loads(text)
    except ValueError as exc:
        raise _invalid("The message is not valid JSON.", None) from exc
    if not isinstance(frame, dict):
        raise _invalid("The message must be a JSON object.", None)

    correlation_id: str | None = None
    raw_corr = _pick(frame, "correlationId", "CorrelationId")
    if isinstance(raw_corr, str) and raw_corr:
        # An id that breaks the pattern is still echoed (cut to the maximum length) so that the
        # sender learns why its message was refused.
        correlation_id = raw_corr[:MAX_ID]
        if not valid_id(raw_corr):
            raise _invalid(
                "correlationId must be 1 to 256 characters of [a-zA-Z0-9_.-].", correlation_id
            )
    elif raw_corr not in (None, ""):
        raise _invalid("correlationId must be a string.", None)

    action = frame.get("action")
    if not isinstance(action, str) or not action:
        raise _invalid("The message has no action.", correlation_id)
    if action not in ACTIONS:
        raise _invalid(
            f"Unknown action {action[:40]!r}: expected SDP_OFFER, SDP_ANSWER or ICE_CANDIDATE.",
            correlation_id,
        )

    payload = _pick(frame, "messagePayload", "MessagePayload")
    if not isinstance(payload, str) or not payload:
        raise _invalid("messagePayload is required and must be a base64 string.", correlation_id)
    if len(payload) > MAX_PAYLOAD:
        raise _invalid(
            f"messagePayload is {len(payload)} characters long; the maximum is {MAX_PAYLOAD}.",
            correlation_id,
        )
    if not valid_base64(payload):
        raise _invalid("messagePayload is not valid base64.", correlation_id)

    recipient = _pick(frame, "recipientClientId", "RecipientClientId")
    if recipient == "":
        recipient = None  # the C SDK always sends the key, empty when there is no recipient
    if recipient is not None and (not isinstance(recipient, str) or not valid_id(recipient)):
        raise _invalid(
            "recipientClientId must be 1 to 256 characters of [a-zA-Z0-9_.-].", correlation_id
        )
    return ClientMessage(action, payload, recipient, correlation_id)


def _dumps(obj: dict[str, Any]) -> str:
    return json.dumps(obj, separators=(",", ":"))


def event(message_type: str, payload: str | None = None, sender: str | None = None) -> str:
    """A service → client event. ``sender`` is the viewer's ClientId, None for master/storage."""
    obj: dict[str, Any] = {}
    if sender is not None:
        obj["senderClientId"] = sender
    obj["messageType"] = message_type
    if payload is not None:
        obj["messagePayload"] = payload
    return _dumps(obj)


def go_away() -> str:
    return event(GO_AWAY)


def status_response(correlation_id: str, error: ServiceError) -> str:
    """The documented failure shape: string ``statusCode`` and ``success: false``."""
    return _dumps(
        {
            "messageType": STATUS_RESPONSE,
            "statusResponse": {
                "correlationId": correlation_id,
                "errorType": error.code,
                "statusCode": str(error.status),
                "description": error.message,
                "success": False,
            },
        }
    )
