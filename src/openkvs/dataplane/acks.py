"""PutMedia acknowledgements: one JSON object per line, keys as the producer SDKs parse them.

The C producer library matches ``EventType``, ``FragmentNumber``, ``FragmentTimecode`` and
``ErrorId`` case-sensitively (string values quoted, numbers bare); the Java SDK also reads
``ErrorCode``. IDLE acks carry only the event type.
"""

from __future__ import annotations

import enum
import json
from typing import Any

from ..media.mkvstream import Problem


class AckError(enum.Enum):
    """(ErrorId, ErrorCode) pairs of the PutMedia ERROR acknowledgement."""

    STREAM_READ_ERROR = (4000, "STREAM_READ_ERROR")
    MAX_FRAGMENT_SIZE_REACHED = (4001, "MAX_FRAGMENT_SIZE_REACHED")
    MAX_FRAGMENT_DURATION_REACHED = (4002, "MAX_FRAGMENT_DURATION_REACHED")
    MAX_CONNECTION_DURATION_REACHED = (4003, "MAX_CONNECTION_DURATION_REACHED")
    FRAGMENT_TIMECODE_LESSER_THAN_PREVIOUS = (4004, "FRAGMENT_TIMECODE_LESSER_THAN_PREVIOUS")
    MORE_THAN_ONE_TRACK_FOUND = (4005, "MORE_THAN_ONE_TRACK_FOUND")
    INVALID_MKV_DATA = (4006, "INVALID_MKV_DATA")
    INVALID_PRODUCER_TIMESTAMP = (4007, "INVALID_PRODUCER_TIMESTAMP")
    STREAM_DELETED = (4008, "STREAM_DELETED")
    FRAGMENT_METADATA_LIMIT_REACHED = (4009, "FRAGMENT_METADATA_LIMIT_REACHED")
    TRACK_NUMBER_MISMATCH = (4010, "TRACK_NUMBER_MISMATCH")
    FRAMES_MISSING_FOR_TRACK = (4011, "FRAMES_MISSING_FOR_TRACK")
    MORE_THAN_ALLOWED_TRACKS_FOUND = (4012, "MORE_THAN_ALLOWED_TRACKS_FOUND")
    INTERNAL_ERROR = (5000, "INTERNAL_ERROR")
    ARCHIVAL_ERROR = (5001, "ARCHIVAL_ERROR")

    @property
    def error_id(self) -> int:
        return self.value[0]

    @property
    def code(self) -> str:
        return self.value[1]

    @classmethod
    def of(cls, problem: Problem) -> AckError:
        return cls[problem.name]


def ack(
    event: str,
    *,
    timecode: int | None = None,
    number: int | None = None,
    error: AckError | None = None,
) -> bytes:
    """One acknowledgement line, e.g. ``{"EventType":"PERSISTED","FragmentTimecode":…}``."""
    obj: dict[str, Any] = {"EventType": event}
    if timecode is not None:
        obj["FragmentTimecode"] = timecode
    if number is not None:
        obj["FragmentNumber"] = str(number)
    if error is not None:
        obj["ErrorId"] = error.error_id
        obj["ErrorCode"] = error.code
    return json.dumps(obj, separators=(",", ":")).encode() + b"\n"
