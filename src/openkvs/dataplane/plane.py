"""The data plane's long-lived state: who is writing to which stream, and the shutdown signal."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Iterator

from ..config import Settings
from ..control.fragments import FragmentStore
from ..control.resources import ControlPlane
from ..errors import ConnectionLimitExceededException
from ..store.base import Stream

logger = logging.getLogger(__name__)


class DataPlane:
    """Shared by every PutMedia/GetMedia connection; ``start``/``stop`` follow the app lifecycle.

    ``shutdown`` (called before aiohttp waits for handlers) tells open connections to finish, so
    a live GetMedia or an idle PutMedia never holds the server open.
    """

    def __init__(self, settings: Settings, control: ControlPlane, fragments: FragmentStore) -> None:
        self.settings = settings
        self.control = control
        self.fragments = fragments
        self._writers: set[int] = set()
        self.ingested_bytes = 0  # PutMedia request-body bytes, for metrics
        self._closing: asyncio.Event | None = None

    @property
    def closing(self) -> asyncio.Event:
        if self._closing is None:
            self._closing = asyncio.Event()
        return self._closing

    async def start(self) -> None:
        self.closing.clear()

    async def shutdown(self) -> None:
        self.closing.set()

    async def stop(self) -> None:
        self.closing.set()

    @contextlib.contextmanager
    def writer(self, stream: Stream) -> Iterator[None]:
        """Hold the single PutMedia writer slot of ``stream`` (ConnectionLimitExceeded if taken)."""
        if stream.id in self._writers:
            raise ConnectionLimitExceededException(
                f"Another PutMedia connection is already writing to the stream {stream.name}; "
                "only one writer per stream is allowed at a time."
            )
        self._writers.add(stream.id)
        try:
            yield
        finally:
            self._writers.discard(stream.id)
