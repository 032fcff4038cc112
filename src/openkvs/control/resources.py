"""The control plane: signaling channels, streams, media storage configuration and tags.

Plain business logic over a :class:`MetadataStore`: typed arguments in, records out, service
errors raised. No HTTP here.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import json
import logging
from collections.abc import Awaitable, Callable, Mapping, Sequence
from concurrent.futures import Executor
from contextlib import AbstractAsyncContextManager
from typing import Any, TypeVar

from .. import clock, ids, safejson
from ..errors import (
    AccountChannelLimitExceededException,
    AccountStreamLimitExceededException,
    InvalidArgumentException,
    NoDataRetentionException,
    ResourceInUseException,
    ResourceNotFoundException,
    TagsPerResourceExceededLimitException,
    VersionMismatchException,
)
from ..records import Channel, Stream
from ..store.base import BlobStore, LimitReached, MetadataStore, StaleRecord

logger = logging.getLogger(__name__)
T = TypeVar("T")

MAX_TAGS = 50
MAX_CHANNELS = 10_000
MAX_STREAMS = 10_000
MAX_RETENTION_HOURS = 87_600
DEFAULT_KMS_KEY = "aws/kinesisvideo"
# A change that another node's write overtook is redone on fresh records this many times.
STALE_ATTEMPTS = 5

ChannelListener = Callable[[Channel], Awaitable[None]]


def encode_token(after: str) -> str:
    return base64.b64encode(json.dumps({"after": after}).encode()).decode()


def decode_token(token: str) -> str:
    try:
        data = safejson.loads(base64.b64decode(token.encode(), validate=True))
        after = data["after"]
        if not isinstance(after, str):
            raise TypeError
        return after
    except (ValueError, KeyError, TypeError, binascii.Error) as exc:
        raise InvalidArgumentException("NextToken is invalid or expired.") from exc


def paginate(
    names: Sequence[str], max_results: int, next_token: str | None
) -> tuple[list[str], str | None]:
    """Page through sorted names; the token carries the last name returned."""
    items = list(names)
    if next_token:
        after = decode_token(next_token)
        items = [n for n in items if n > after]
    page = items[:max_results]
    token = encode_token(page[-1]) if len(items) > max_results and page else None
    return page, token


class ControlPlane:
    def __init__(
        self,
        store: MetadataStore,
        blobs: BlobStore,
        *,
        region: str,
        account_id: str,
    ) -> None:
        self.store = store
        self.blobs = blobs
        self.region = region
        self.account_id = account_id
        self._lock = asyncio.Lock()
        self._channel_listeners: list[ChannelListener] = []

    async def start(self) -> None:
        await self.store.start()
        await self.blobs.start()

    async def stop(self) -> None:
        await self.blobs.stop()
        await self.store.stop()

    async def sync(self) -> None:
        """Catch up with the channels and streams other nodes changed (before serving an API
        request, so that what a client wrote through any node is what it reads)."""
        await self.store.sync()

    async def secret(self, name: str, candidate: str) -> str:
        """The cluster-wide secret ``name``, created from ``candidate`` if there is none."""
        return await self.store.secret(name, candidate)

    def duty(self, name: str, every: float = 0.0) -> AbstractAsyncContextManager[bool]:
        """Enter to run a background duty that one node of a cluster runs at a time: yields
        whether this node runs it now (see ``MetadataStore.exclusive``)."""
        return self.store.exclusive(name, every)

    @property
    def clustered(self) -> bool:
        """Whether other nodes share this node's metadata store."""
        return self.store.shared

    async def _locked(self, body: Callable[[], Awaitable[T]]) -> T:
        """Run a read-check-write under this node's lock. When another node changed or deleted
        the record in between (the store refuses the write), catch up and run it again: the
        checks then see the other node's write (a version mismatch, a deleted resource)."""
        for _ in range(STALE_ATTEMPTS):
            async with self._lock:
                try:
                    return await body()
                except StaleRecord:
                    pass
            await self.store.sync()
        raise ResourceInUseException(
            "The resource is being changed by other requests at the same time; try again."
        )

    async def check_store(self) -> None:
        """A real read through the metadata store's reader pool (readiness)."""
        # By index; stream ids start at 1.
        await self.store.last_fragments(0, 1)

    async def check_media(self) -> bool:
        """The blob store answers: its folder is writable, or its bucket answers (readiness)."""
        return await self.blobs.reachable()

    def storage_pools(self) -> list[tuple[str, Executor | None]]:
        """The storage backends' thread pools, by name, for the pool metrics."""
        return [
            ("blobs", getattr(self.blobs, "_pool", None)),
            ("store_writer", getattr(self.store, "_writer", None)),
            ("store_readers", getattr(self.store, "_readers", None)),
        ]

    # Lookups that answer None rather than raising (the API's get_* raise).

    def channel_by_arn(self, arn: str) -> Channel | None:
        return self.store.channel_by_arn(arn)

    def stream_by_id(self, stream_id: int) -> Stream | None:
        return self.store.stream_by_id(stream_id)

    def stream_by_name(self, name: str) -> Stream | None:
        return self.store.stream_by_name(name)

    def on_channel_closed(self, listener: ChannelListener) -> None:
        """Call ``listener`` when a channel is deleted or its media storage is disabled."""
        self._channel_listeners.append(listener)

    async def _channel_closed(self, channel: Channel) -> None:
        for listener in self._channel_listeners:
            try:
                await listener(channel)
            except Exception:  # noqa: BLE001 - one listener must not break the API call
                logger.exception("channel-closed listener failed for %s", channel.arn)

    # -- signaling channels ------

    def get_channel(self, *, name: str | None = None, arn: str | None = None) -> Channel:
        if name is None and arn is None:
            raise InvalidArgumentException("Either ChannelName or ChannelARN must be specified.")
        channel = self.store.channel_by_arn(arn) if arn is not None else None
        if arn is None and name is not None:
            channel = self.store.channel_by_name(name)
        if channel is None or (name is not None and channel.name != name):
            raise ResourceNotFoundException(
                f"The requested channel is not found or not active: {arn or name}"
            )
        return channel

    async def create_channel(
        self,
        *,
        name: str,
        channel_type: str = "SINGLE_MASTER",
        message_ttl: int = 60,
        tags: Mapping[str, str] | None = None,
    ) -> Channel:
        if channel_type != "SINGLE_MASTER":
            raise InvalidArgumentException("Only the SINGLE_MASTER channel type is supported.")
        tags = dict(tags or {})
        if len(tags) > MAX_TAGS:
            raise TagsPerResourceExceededLimitException(
                f"A resource can have at most {MAX_TAGS} tags."
            )
        too_many = AccountChannelLimitExceededException(
            f"You have reached the maximum of {MAX_CHANNELS} signaling channels."
        )
        async with self._lock:
            if self.store.channel_by_name(name) is not None:
                raise ResourceInUseException(f"The signaling channel {name} already exists.")
            if len(self.store.channels()) >= MAX_CHANNELS:
                raise too_many
            created_ms = clock.now_ms()
            channel = Channel(
                id=0,
                arn=ids.channel_arn(self.region, self.account_id, name, created_ms),
                name=name,
                channel_type=channel_type,
                status="ACTIVE",
                created=created_ms / 1000.0,
                version=ids.version(),
                message_ttl=message_ttl,
                tags=tags,
            )
            try:
                return await self.store.insert_channel(channel, limit=MAX_CHANNELS)
            except LimitReached:
                raise too_many from None

    def list_channels(self, prefix: str | None = None) -> list[Channel]:
        channels = self.store.channels()
        if prefix is not None:
            channels = [c for c in channels if c.name.startswith(prefix)]
        return channels

    async def update_channel(
        self, *, arn: str, current_version: str, message_ttl: int | None
    ) -> Channel:
        async def body() -> Channel:
            channel = self.get_channel(arn=arn)
            if channel.version != current_version:
                raise VersionMismatchException(
                    f"The version {current_version} does not match the channel's latest version."
                )
            updated = channel.replace(
                version=ids.version(),
                message_ttl=message_ttl if message_ttl is not None else channel.message_ttl,
            )
            await self.store.save_channel(updated)
            return updated

        return await self._locked(body)

    async def delete_channel(self, *, arn: str, current_version: str | None) -> None:
        async def body() -> Channel:
            channel = self.get_channel(arn=arn)
            if current_version is not None and channel.version != current_version:
                raise VersionMismatchException(
                    f"The version {current_version} does not match the channel's latest version."
                )
            await self.store.delete_channel(channel)
            return channel

        await self._channel_closed(await self._locked(body))

    # -- media storage ------

    def channel_for_stream(self, stream: Stream) -> Channel | None:
        for channel in self.store.channels():
            if channel.storage_stream_arn == stream.arn and channel.storage_status == "ENABLED":
                return channel
        return None

    def storage_stream(self, channel: Channel) -> Stream | None:
        """The stream a channel records into, if media storage is enabled and the stream exists."""
        if channel.storage_status != "ENABLED" or channel.storage_stream_arn is None:
            return None
        return self.store.stream_by_arn(channel.storage_stream_arn)

    async def update_media_storage(
        self, *, arn: str, status: str, stream_arn: str | None
    ) -> Channel:
        async def body() -> tuple[Channel, Channel]:
            channel = self.get_channel(arn=arn)
            if status == "ENABLED":
                if not stream_arn:
                    raise InvalidArgumentException(
                        "MediaStorageConfiguration.StreamARN is required when Status is ENABLED."
                    )
                stream = self.store.stream_by_arn(stream_arn)
                if stream is None:
                    raise ResourceNotFoundException(f"The stream {stream_arn} is not found.")
                if stream.status != "ACTIVE":
                    raise ResourceInUseException(f"The stream {stream.name} is not ACTIVE.")
                if stream.retention_hours <= 0:
                    raise NoDataRetentionException(
                        f"The stream {stream.name} has no data retention; media storage needs "
                        "DataRetentionInHours > 0."
                    )
                other = self.channel_for_stream(stream)
                if other is not None and other.arn != channel.arn:
                    raise ResourceInUseException(
                        f"The stream {stream.name} is already mapped to channel {other.name}."
                    )
                updated = channel.replace(storage_status="ENABLED", storage_stream_arn=stream.arn)
            else:
                updated = channel.replace(storage_status="DISABLED", storage_stream_arn=None)
            await self.store.save_channel(updated)
            return channel, updated

        channel, updated = await self._locked(body)
        if channel.storage_status == "ENABLED" and (
            updated.storage_status != "ENABLED"
            or updated.storage_stream_arn != channel.storage_stream_arn
        ):
            await self._channel_closed(channel)
        return updated

    # -- streams ------

    def get_stream(self, *, name: str | None = None, arn: str | None = None) -> Stream:
        if name is None and arn is None:
            raise InvalidArgumentException("Either StreamName or StreamARN must be specified.")
        stream = (
            self.store.stream_by_arn(arn)
            if arn is not None
            else self.store.stream_by_name(name or "")
        )
        if stream is None or (name is not None and stream.name != name):
            raise ResourceNotFoundException(
                f"The requested stream is not found or not active: {arn or name}"
            )
        return stream

    async def create_stream(
        self,
        *,
        name: str,
        device_name: str | None = None,
        media_type: str | None = None,
        kms_key_id: str | None = None,
        retention_hours: int = 0,
        tags: Mapping[str, str] | None = None,
        storage_tier: str = "HOT",
    ) -> Stream:
        tags = dict(tags or {})
        if len(tags) > MAX_TAGS:
            raise TagsPerResourceExceededLimitException(
                f"A resource can have at most {MAX_TAGS} tags."
            )
        if not 0 <= retention_hours <= MAX_RETENTION_HOURS:
            raise InvalidArgumentException(
                f"DataRetentionInHours must be between 0 and {MAX_RETENTION_HOURS}."
            )
        too_many = AccountStreamLimitExceededException(
            f"You have reached the maximum of {MAX_STREAMS} streams."
        )
        async with self._lock:
            if self.store.stream_by_name(name) is not None:
                raise ResourceInUseException(f"The stream {name} already exists.")
            if len(self.store.streams()) >= MAX_STREAMS:
                raise too_many
            created_ms = clock.now_ms()
            stream = Stream(
                id=0,
                arn=ids.stream_arn(self.region, self.account_id, name, created_ms),
                name=name,
                device_name=device_name,
                media_type=media_type,
                kms_key_id=kms_key_id or DEFAULT_KMS_KEY,
                version=ids.version(),
                status="ACTIVE",
                created=created_ms / 1000.0,
                retention_hours=retention_hours,
                tags=tags,
                storage_tier=storage_tier,
            )
            try:
                return await self.store.insert_stream(stream, limit=MAX_STREAMS)
            except LimitReached:
                raise too_many from None

    def list_streams(self, prefix: str | None = None) -> list[Stream]:
        streams = self.store.streams()
        if prefix is not None:
            streams = [s for s in streams if s.name.startswith(prefix)]
        return streams

    def _check_version(self, stream: Stream, current_version: str | None) -> None:
        if current_version is not None and stream.version != current_version:
            raise VersionMismatchException(
                f"The version {current_version} does not match the stream's latest version."
            )

    async def update_stream(
        self,
        *,
        name: str | None,
        arn: str | None,
        current_version: str,
        device_name: str | None,
        media_type: str | None,
    ) -> Stream:
        async def body() -> Stream:
            stream = self.get_stream(name=name, arn=arn)
            self._check_version(stream, current_version)
            updated = stream.replace(
                version=ids.version(),
                device_name=device_name if device_name is not None else stream.device_name,
                media_type=media_type if media_type is not None else stream.media_type,
            )
            await self.store.save_stream(updated)
            return updated

        return await self._locked(body)

    async def update_stream_config(
        self, *, arn: str, kind: str, config: Mapping[str, Any] | None
    ) -> Stream:
        """Set (or, with None, remove) a stream's ``image_generation`` or ``notification``
        configuration."""
        if kind not in ("image_generation", "notification"):
            raise ValueError(f"unknown stream configuration {kind!r}")

        async def body() -> Stream:
            stream = self.get_stream(arn=arn)
            updated = stream.replace(**{kind: None if config is None else dict(config)})
            await self.store.save_stream(updated)
            return updated

        return await self._locked(body)

    async def update_stream_tier(self, *, arn: str, current_version: str, tier: str) -> Stream:
        async def body() -> Stream:
            stream = self.get_stream(arn=arn)
            self._check_version(stream, current_version)
            updated = stream.replace(version=ids.version(), storage_tier=tier)
            await self.store.save_stream(updated)
            return updated

        return await self._locked(body)

    async def update_retention(
        self,
        *,
        name: str | None,
        arn: str | None,
        current_version: str,
        operation: str,
        change_hours: int,
    ) -> Stream:
        sign = 1 if operation == "INCREASE_DATA_RETENTION" else -1

        async def body() -> Stream:
            stream = self.get_stream(name=name, arn=arn)
            self._check_version(stream, current_version)
            new = stream.retention_hours + sign * change_hours
            if not 0 <= new <= MAX_RETENTION_HOURS:
                raise InvalidArgumentException(
                    f"The resulting data retention ({new} hours) must be between 0 and "
                    f"{MAX_RETENTION_HOURS} hours."
                )
            if new == 0 and self.channel_for_stream(stream) is not None:
                raise ResourceInUseException(
                    f"The stream {stream.name} is used for media storage by a signaling channel "
                    "and needs data retention."
                )
            updated = stream.replace(version=ids.version(), retention_hours=new)
            await self.store.save_stream(updated)
            return updated

        updated = await self._locked(body)
        if sign < 0:
            await self.enforce_retention(updated)
        return updated

    async def delete_stream(self, *, arn: str, current_version: str | None) -> None:
        async def body() -> list[str]:
            stream = self.get_stream(arn=arn)
            self._check_version(stream, current_version)
            channel = self.channel_for_stream(stream)
            if channel is not None:
                raise ResourceInUseException(
                    f"The stream {stream.name} is the media storage of channel {channel.name}; "
                    "disable media storage first."
                )
            return await self.store.delete_stream(stream)

        await self.blobs.delete(await self._locked(body))

    async def enforce_retention(self, stream: Stream) -> int:
        """Delete the stream's fragments older than its retention; return how many went."""
        if stream.retention_hours <= 0:
            return 0
        cutoff = clock.now_ms() - stream.retention_hours * 3600 * 1000
        keys = await self.store.expire_fragments(stream.id, cutoff)
        await self.blobs.delete(keys)
        return len(keys)

    # -- tags ------

    def get_resource(self, arn: str) -> Channel | Stream:
        channel = self.store.channel_by_arn(arn)
        if channel is not None:
            return channel
        stream = self.store.stream_by_arn(arn)
        if stream is not None:
            return stream
        raise ResourceNotFoundException(f"The resource {arn} is not found.")

    async def tag_resource(self, resource: Channel | Stream, tags: Mapping[str, str]) -> None:
        async def body() -> None:
            current = self.get_resource(resource.arn)
            merged = {**current.tags, **tags}
            if len(merged) > MAX_TAGS:
                raise TagsPerResourceExceededLimitException(
                    f"A resource can have at most {MAX_TAGS} tags."
                )
            await self._save_tags(current, merged)

        await self._locked(body)

    async def untag_resource(self, resource: Channel | Stream, keys: Sequence[str]) -> None:
        async def body() -> None:
            current = self.get_resource(resource.arn)
            remaining = {k: v for k, v in current.tags.items() if k not in set(keys)}
            await self._save_tags(current, remaining)

        await self._locked(body)

    async def _save_tags(self, resource: Channel | Stream, tags: dict[str, str]) -> None:
        if isinstance(resource, Channel):
            await self.store.save_channel(resource.replace(tags=tags))
        else:
            await self.store.save_stream(resource.replace(tags=tags))
