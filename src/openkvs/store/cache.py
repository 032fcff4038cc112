"""The in-memory view of channels and streams that both metadata stores keep.

Control-plane reads (by ARN, name or id, and the sorted listings) are served from memory, so
they never leave the event loop. A store fills the cache at start and after each committed
write (and, for a shared store, after each change another node made); this class only keeps the
three indexes of each kind consistent.
"""

from __future__ import annotations

from ..records import Channel, Stream


class RecordCache:
    def __init__(self) -> None:
        self._channels: dict[str, Channel] = {}
        self._channel_names: dict[str, str] = {}
        self._channel_ids: dict[int, str] = {}
        self._streams: dict[str, Stream] = {}
        self._stream_names: dict[str, str] = {}
        self._stream_ids: dict[int, str] = {}

    # -- reads (the MetadataStore interface) ------

    def channel_by_arn(self, arn: str) -> Channel | None:
        return self._channels.get(arn)

    def channel_by_name(self, name: str) -> Channel | None:
        arn = self._channel_names.get(name)
        return None if arn is None else self._channels.get(arn)

    def channels(self) -> list[Channel]:
        return sorted(self._channels.values(), key=lambda c: c.name)

    def stream_by_arn(self, arn: str) -> Stream | None:
        return self._streams.get(arn)

    def stream_by_name(self, name: str) -> Stream | None:
        arn = self._stream_names.get(name)
        return None if arn is None else self._streams.get(arn)

    def stream_by_id(self, stream_id: int) -> Stream | None:
        arn = self._stream_ids.get(stream_id)
        return None if arn is None else self._streams.get(arn)

    def streams(self) -> list[Stream]:
        return sorted(self._streams.values(), key=lambda s: s.name)

    # -- updates, for the store ------

    def _cache_channel(self, c: Channel) -> None:
        old = self._channels.get(c.arn)
        if old is not None and old.name != c.name and self._channel_names.get(old.name) == c.arn:
            del self._channel_names[old.name]
        self._channels[c.arn] = c
        self._channel_names[c.name] = c.arn
        self._channel_ids[c.id] = c.arn

    def _cache_stream(self, s: Stream) -> None:
        old = self._streams.get(s.arn)
        if old is not None and old.name != s.name and self._stream_names.get(old.name) == s.arn:
            del self._stream_names[old.name]
        self._streams[s.arn] = s
        self._stream_names[s.name] = s.arn
        self._stream_ids[s.id] = s.arn

    def _uncache_channel(self, channel_id: int) -> None:
        arn = self._channel_ids.pop(channel_id, None)
        c = self._channels.pop(arn, None) if arn is not None else None
        if c is not None and self._channel_names.get(c.name) == c.arn:
            del self._channel_names[c.name]

    def _uncache_stream(self, stream_id: int) -> None:
        arn = self._stream_ids.pop(stream_id, None)
        s = self._streams.pop(arn, None) if arn is not None else None
        if s is not None and self._stream_names.get(s.name) == s.arn:
            del self._stream_names[s.name]

    def _clear_cache(self) -> None:
        for index in (
            self._channels,
            self._channel_names,
            self._channel_ids,
            self._streams,
            self._stream_names,
            self._stream_ids,
        ):
            index.clear()
