"""Storage interfaces and the records they hold.

``MetadataStore`` keeps channels, streams and fragment metadata; ``BlobStore`` keeps fragment
media. The default implementations are SQLite (``sqlite.py``) and the filesystem (``fs.py``).
Records are plain frozen dataclasses; timestamps are epoch seconds (resources) or epoch
milliseconds (fragments).
"""

from __future__ import annotations

import dataclasses
import errno
from collections.abc import Mapping, Sequence
from typing import Any, Protocol


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


class MetadataStore(Protocol):
    async def start(self) -> None: ...
    async def stop(self) -> None: ...

    # Channels and streams are few; reads are served from memory.
    def channel_by_arn(self, arn: str) -> Channel | None: ...
    def channel_by_name(self, name: str) -> Channel | None: ...
    def channels(self) -> list[Channel]: ...
    def stream_by_arn(self, arn: str) -> Stream | None: ...
    def stream_by_name(self, name: str) -> Stream | None: ...
    def stream_by_id(self, stream_id: int) -> Stream | None: ...
    def streams(self) -> list[Stream]: ...
    async def insert_channel(self, channel: Channel) -> Channel: ...
    async def save_channel(self, channel: Channel) -> None: ...
    async def delete_channel(self, channel: Channel) -> None: ...
    async def insert_stream(self, stream: Stream) -> Stream: ...
    async def save_stream(self, stream: Stream) -> None: ...
    async def delete_stream(self, stream: Stream) -> list[str]: ...

    # Fragments
    async def add_fragment(self, fragment: Fragment) -> None: ...
    async def max_fragment_number(self) -> int: ...
    async def list_fragments(
        self,
        stream_id: int,
        *,
        timestamp_type: str | None = None,
        start_ms: int | None = None,
        end_ms: int | None = None,
        after_number: int | None = None,
        limit: int = 1000,
    ) -> list[Fragment]: ...
    async def get_fragments(self, stream_id: int, numbers: Sequence[int]) -> list[Fragment]: ...
    async def last_fragments(self, stream_id: int, count: int) -> list[Fragment]: ...
    async def expire_fragments(self, stream_id: int, before_server_ms: int) -> list[str]: ...
    async def all_blob_keys(self) -> set[str]: ...


class BlobStore(Protocol):
    async def start(self) -> None: ...
    async def stop(self) -> None: ...
    async def put(self, key: str, data: bytes) -> None: ...
    async def get(self, key: str) -> bytes: ...
    async def delete(self, keys: Sequence[str]) -> None: ...
    async def keys(self) -> set[str]: ...


class BlobNotFound(KeyError):
    """A blob key has no data."""


def is_disk_full(exc: BaseException) -> bool:
    """A write failed for want of space: a blob's ENOSPC/EDQUOT, the index's "database or disk
    is full", or either of them reported by a storage worker process."""
    if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return True
    text = str(exc).lower()
    return "disk is full" in text or "no space left" in text
