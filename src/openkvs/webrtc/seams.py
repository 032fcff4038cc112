"""What storage sessions need from the rest of the server, as Protocols.

In the server process these are the signaling hub and the fragment store themselves; in a
storage-session worker process (``workers.py``) they are proxies that reach the server over a
socket.
"""

from __future__ import annotations

from typing import Protocol

from ..records import Fragment, Stream


class SignalingSink(Protocol):
    async def send(
        self, channel_arn: str, client_id: str | None, message_type: str, payload: str | None
    ) -> None: ...

    def set_storage_endpoint(self, ep: object) -> None: ...


class FragmentSink(Protocol):
    async def next_number(self, stream_id: int) -> int:
        """A new fragment number for the stream, above every number it has."""
        ...

    async def append(
        self,
        stream: Stream,
        data: bytes,
        *,
        producer_ts_ms: int,
        server_ts_ms: int | None = None,
        duration_ms: int,
        number: int | None = None,
    ) -> Fragment: ...
