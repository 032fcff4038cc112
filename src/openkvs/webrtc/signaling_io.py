"""Encoding of the storage peer's signaling payloads (base64 of JSON, as KVS clients send)."""

from __future__ import annotations

import base64
import binascii
import json
from typing import Any

from .. import safejson
from ..errors import InvalidArgumentException

MAX_PAYLOAD = 64 * 1024


def encode(obj: dict[str, Any]) -> str:
    return base64.b64encode(json.dumps(obj, separators=(",", ":")).encode()).decode()


def decode(payload: str, what: str) -> dict[str, Any]:
    if len(payload) > MAX_PAYLOAD:
        raise InvalidArgumentException(f"The {what} payload is too large.")
    try:
        data = safejson.loads(base64.b64decode(payload, validate=True))
    except (ValueError, binascii.Error, UnicodeDecodeError) as exc:
        raise InvalidArgumentException(f"The {what} payload is not base64-encoded JSON.") from exc
    if not isinstance(data, dict):
        raise InvalidArgumentException(f"The {what} payload must be a JSON object.")
    return data


def session_description(payload: str, expected_type: str) -> str:
    data = decode(payload, "SDP")
    sdp, kind = data.get("sdp"), data.get("type")
    if kind != expected_type:
        raise InvalidArgumentException(f"Expected an SDP {expected_type}, got {str(kind)[:20]!r}.")
    if not isinstance(sdp, str) or not sdp.startswith("v=0"):
        raise InvalidArgumentException("The SDP answer is not a session description.")
    return sdp


def candidate(payload: str) -> tuple[str, str | None, int | None]:
    data = decode(payload, "ICE candidate")
    cand = data.get("candidate")
    if not isinstance(cand, str):
        raise InvalidArgumentException("The ICE candidate payload has no candidate string.")
    mid = data.get("sdpMid")
    index = data.get("sdpMLineIndex")
    return cand, mid if isinstance(mid, str) else None, index if isinstance(index, int) else None
