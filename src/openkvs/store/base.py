"""Storage interfaces.

``MetadataStore`` keeps channels, streams and fragment metadata; ``BlobStore`` keeps fragment
media. The default implementations are SQLite (``sqlite.py``) and the filesystem (``fs.py``);
media can also live in an S3-compatible object store (``s3.py``), and PostgreSQL
(``postgres.py``) lets several nodes share one metadata store. ``factory.py`` chooses
them from settings. The records themselves live in ``openkvs.records``.
Only ``openkvs.control`` and the composition root (``app.py``) use this package.
"""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import AbstractAsyncContextManager
from typing import Protocol

from ..records import Channel, Fragment, Stream


class MetadataStore(Protocol):
    # True when several server processes (nodes) share this store: fragment numbers then come
    # from ``reserve_fragment_numbers`` and background duties take ``exclusive``.
    shared: bool

    async def start(self) -> None: ...
    async def stop(self) -> None: ...

    async def sync(self) -> None:
        """Bring the in-memory channels and streams up to date with every write committed so far
        (by any node); one cheap query when nothing changed, nothing for a single-node store."""
        ...

    # Channels and streams are few; reads are served from memory.
    def channel_by_arn(self, arn: str) -> Channel | None: ...
    def channel_by_name(self, name: str) -> Channel | None: ...
    def channels(self) -> list[Channel]: ...
    def stream_by_arn(self, arn: str) -> Stream | None: ...
    def stream_by_name(self, name: str) -> Stream | None: ...
    def stream_by_id(self, stream_id: int) -> Stream | None: ...
    def streams(self) -> list[Stream]: ...
    # Inserts raise ResourceInUseException for a taken name and LimitReached when ``limit``
    # records of the kind exist. Saves and deletes apply only to the record as this store last
    # saw it: StaleRecord when another node changed or deleted it since, or changed another
    # record the write depends on (sync, check again, then retry).
    async def insert_channel(self, channel: Channel, *, limit: int | None = None) -> Channel: ...
    async def save_channel(self, channel: Channel) -> None: ...
    async def delete_channel(self, channel: Channel) -> None: ...
    async def insert_stream(self, stream: Stream, *, limit: int | None = None) -> Stream: ...
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
    async def reserve_fragment_numbers(self, floor: int, count: int) -> int:
        """The first of ``count`` consecutive fragment numbers, all above ``floor`` and above
        every number reserved before (by any node), reserved for the caller alone."""
        ...

    # Cluster-wide helpers
    async def secret(self, name: str, candidate: str) -> str:
        """The secret stored under ``name``; if there is none yet, ``candidate`` is stored and
        returned. Atomic: every caller, on every node, gets the same value."""
        ...

    def exclusive(self, name: str, every: float = 0.0) -> AbstractAsyncContextManager[bool]:
        """Enter to run the duty ``name``: yields True if this node may run it now (no other
        node is running it and, with ``every`` > 0, nobody ran it in the last ``every``
        seconds), False to skip it."""
        ...


class BlobStore(Protocol):
    async def start(self) -> None: ...
    async def stop(self) -> None: ...
    async def put(self, key: str, data: bytes) -> None: ...
    async def get(self, key: str) -> bytes: ...
    async def delete(self, keys: Sequence[str]) -> None: ...
    async def keys(self) -> set[str]: ...
    async def reachable(self) -> bool: ...


class BlobNotFound(KeyError):
    """A blob key has no data."""


class BlobStoreError(Exception):
    """A remote blob store failed an operation (after its retries). Never a full disk: the
    fragment at hand is lost, the next one may be stored."""


class StaleRecord(Exception):
    """A save or delete was refused: the record, or one it depends on, changed (or went) since
    this store loaded it."""


class LimitReached(Exception):
    """An insert was refused: the account already has its maximum of records of the kind."""
