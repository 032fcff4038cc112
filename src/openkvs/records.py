"""The records the server keeps: signaling channels, streams and fragment metadata.

Plain frozen dataclasses that no storage backend owns; timestamps are epoch seconds (resources)
or epoch milliseconds (fragments).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any


@dataclasses.dataclass(frozen=True)
class Channel:
    id: int
    arn: str
    name: str
    channel_type: str
    status: str
    created: float
    version: str
    message_ttl: int
    tags: Mapping[str, str]
    storage_status: str = "DISABLED"
    storage_stream_arn: str | None = None

    def replace(self, **changes: object) -> Channel:
        return dataclasses.replace(self, **changes)  # type: ignore[arg-type]


@dataclasses.dataclass(frozen=True)
class Stream:
    id: int
    arn: str
    name: str
    device_name: str | None
    media_type: str | None
    kms_key_id: str
    version: str
    status: str
    created: float
    retention_hours: int
    tags: Mapping[str, str]
    storage_tier: str = "HOT"
    # UpdateImageGenerationConfiguration / UpdateNotificationConfiguration, as sent (wire shape)
    image_generation: Mapping[str, Any] | None = None
    notification: Mapping[str, Any] | None = None

    def replace(self, **changes: object) -> Stream:
        return dataclasses.replace(self, **changes)  # type: ignore[arg-type]


@dataclasses.dataclass(frozen=True)
class Fragment:
    stream_id: int
    number: int
    producer_ts: int  # epoch ms
    server_ts: int  # epoch ms
    duration_ms: int
    size: int
    blob_key: str

    @property
    def number_str(self) -> str:
        return str(self.number)
