"""Webhook events: ``publish(type, **fields)`` queues an event for every configured receiver.

Each event is a JSON object with ``type`` (the event name), ``id`` (unique), ``time`` (ISO 8601,
UTC) and its own fields (the resources' ARNs and what the event says). It is POSTed to each URL
in ``webhook_urls``, signed with ``webhook_secret`` in ``X-Openkvs-Signature: sha256=<hex
HMAC-SHA256 of the raw body>``. Each receiver has its own bounded queue and one delivery task, so
events reach it in the order they were published; a failed delivery (no answer, or a status other
than 2xx) is retried with exponential backoff, and an event is dropped (and counted) when the
queue is full or its attempts are spent. ``publish`` never waits, so a slow or dead receiver
never slows ingestion.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import datetime
import hashlib
import hmac
import json
import logging
import urllib.parse
import uuid
from collections.abc import Callable
from typing import Any

import aiohttp

from .. import clock

logger = logging.getLogger(__name__)

STORAGE_SESSION_STARTED = "storage_session.started"
STORAGE_SESSION_ENDED = "storage_session.ended"
FRAGMENT_PERSISTED = "fragment.persisted"
STREAM_CREATED = "stream.created"
STREAM_DELETED = "stream.deleted"
CHANNEL_CREATED = "channel.created"
CHANNEL_DELETED = "channel.deleted"
# A producer's AWS_KINESISVIDEO_NOTIFICATION on a stream with an enabled notification
# configuration (UpdateNotificationConfiguration), once its fragment is stored.
FRAGMENT_NOTIFICATION = "fragment.notification"
EVENT_TYPES = frozenset(
    {
        STORAGE_SESSION_STARTED,
        STORAGE_SESSION_ENDED,
        FRAGMENT_PERSISTED,
        STREAM_CREATED,
        STREAM_DELETED,
        CHANNEL_CREATED,
        CHANNEL_DELETED,
        FRAGMENT_NOTIFICATION,
    }
)
# fragment.persisted is frequent (one per fragment and stream): only when asked for.
DEFAULT_EVENTS = tuple(sorted(EVENT_TYPES - {FRAGMENT_PERSISTED}))
SIGNATURE_HEADER = "X-Openkvs-Signature"
REQUEST_TIMEOUT = 10.0
BACKOFF_FIRST = 0.5
BACKOFF_MAX = 30.0
# At shutdown, queued events get this long to go out before they are dropped.
FLUSH_SECONDS = 3.0


def _where(url: str) -> str:
    """A URL as logged: scheme and host only (a path or query may carry a token)."""
    parts = urllib.parse.urlsplit(url)
    return f"{parts.scheme}://{parts.hostname}" + (f":{parts.port}" if parts.port else "")


def sign(secret: str, body: bytes) -> str:
    """The X-Openkvs-Signature value of ``body``."""
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def verify(secret: str, body: bytes, header: str | None) -> bool:
    """For receivers: does ``header`` sign ``body`` with ``secret``?"""
    return header is not None and hmac.compare_digest(sign(secret, body), header)


def selected(names: tuple[str, ...]) -> frozenset[str]:
    """The event types a ``webhook_events`` setting selects (``*`` is all of them)."""
    if not names:
        return frozenset(DEFAULT_EVENTS)
    if "*" in names:
        return EVENT_TYPES
    return frozenset(names)


@dataclasses.dataclass
class _Receiver:
    url: str
    queue: asyncio.Queue[bytes]
    task: asyncio.Task[None] | None = None


class Events:
    """Owned by the app's lifecycle: ``start`` before the first publish worth delivering."""

    def __init__(
        self,
        urls: tuple[str, ...],
        secret: str | None,
        types: tuple[str, ...],
        *,
        queue_size: int = 1000,
        max_attempts: int = 6,
        on_delivered: Callable[[], None] | None = None,
        on_dropped: Callable[[str], None] | None = None,
    ) -> None:
        self.types = selected(types)
        self._secret = secret
        self._queue_size = queue_size
        self._max_attempts = max_attempts
        self._urls = urls
        self._receivers: list[_Receiver] = []
        self._session: aiohttp.ClientSession | None = None
        self.on_delivered = on_delivered
        self.on_dropped = on_dropped
        self.backoff_first = BACKOFF_FIRST

    def wants(self, event_type: str) -> bool:
        """Whether publishing ``event_type`` would send anything (skip building costly fields)."""
        return bool(self._receivers) and event_type in self.types

    def publish(self, event_type: str, **fields: Any) -> None:
        """Queue an event for every receiver; never waits. Unknown types are a programming error."""
        if event_type not in EVENT_TYPES:
            raise ValueError(f"unknown event type {event_type!r}")
        if not self.wants(event_type):
            return
        now = datetime.datetime.fromtimestamp(clock.now(), datetime.UTC)
        event = {
            "type": event_type,
            "id": str(uuid.uuid4()),
            "time": now.isoformat(timespec="milliseconds").replace("+00:00", "Z"),
            **fields,
        }
        body = json.dumps(event, separators=(",", ":"), default=str).encode()
        for receiver in self._receivers:
            try:
                receiver.queue.put_nowait(body)
            except asyncio.QueueFull:
                self._dropped("queue_full")
                logger.warning(
                    "webhook queue for %s is full: %s dropped", _where(receiver.url), event_type
                )

    async def start(self) -> None:
        if not self._urls:
            return
        self._session = aiohttp.ClientSession(
            timeout=aiohttp.ClientTimeout(total=REQUEST_TIMEOUT),
            headers={"User-Agent": "openkvs-webhooks"},
        )
        for url in self._urls:
            receiver = _Receiver(url, asyncio.Queue(self._queue_size))
            receiver.task = asyncio.create_task(self._deliver_loop(receiver), name="webhooks")
            self._receivers.append(receiver)

    async def stop(self) -> None:
        """Give queued events a moment to go out, then drop the rest."""
        receivers, self._receivers = self._receivers, []
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(FLUSH_SECONDS):
                await asyncio.gather(*(r.queue.join() for r in receivers))
        for receiver in receivers:
            if receiver.task is not None:
                receiver.task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await receiver.task
            while not receiver.queue.empty():
                receiver.queue.get_nowait()
                self._dropped("shutdown")
        if self._session is not None:
            await self._session.close()
            self._session = None

    def _dropped(self, cause: str) -> None:
        if self.on_dropped is not None:
            self.on_dropped(cause)

    async def _deliver_loop(self, receiver: _Receiver) -> None:
        while True:
            body = await receiver.queue.get()
            try:
                if await self._deliver(receiver.url, body):
                    if self.on_delivered is not None:
                        self.on_delivered()
                else:
                    self._dropped("failed")
            finally:
                receiver.queue.task_done()

    async def _deliver(self, url: str, body: bytes) -> bool:
        assert self._session is not None
        headers = {"Content-Type": "application/json"}
        if self._secret is not None:
            headers[SIGNATURE_HEADER] = sign(self._secret, body)
        delay = self.backoff_first
        for attempt in range(1, self._max_attempts + 1):
            try:
                async with self._session.post(
                    url, data=body, headers=headers, allow_redirects=False
                ) as resp:
                    if 200 <= resp.status < 300:
                        return True
                    problem = f"status {resp.status}"
            except (aiohttp.ClientError, TimeoutError) as exc:
                # The exception's text can hold the whole URL, and a path or query may carry a
                # token: its type says enough.
                problem = type(exc).__name__
            if attempt == self._max_attempts:
                logger.warning(
                    "webhook to %s failed %d times (%s): dropped", _where(url), attempt, problem
                )
                return False
            logger.info(
                "webhook to %s failed (%s); retrying in %.1f s", _where(url), problem, delay
            )
            await asyncio.sleep(delay)
            delay = min(delay * 2, BACKOFF_MAX)
        return False


# -- what the server publishes ---------------------------------------------------------------


def attach(events: Events, services: Any) -> None:
    """Publish fragment.persisted and storage_session.ended from the running app's hooks."""
    from .metrics import chain_hooks, end_reason, session_role

    control = services.control

    def persisted(fragment: Any) -> None:
        if not events.wants(FRAGMENT_PERSISTED):
            return
        stream = control.stream_by_id(fragment.stream_id)
        events.publish(
            FRAGMENT_PERSISTED,
            StreamARN=stream.arn if stream is not None else None,
            FragmentNumber=str(fragment.number),
            ProducerTimestamp=fragment.producer_ts / 1000,
            ServerTimestamp=fragment.server_ts / 1000,
            DurationMs=fragment.duration_ms,
            SizeBytes=fragment.size,
        )

    def ended(stats: dict[str, Any]) -> None:
        if not events.wants(STORAGE_SESSION_ENDED):
            return
        arn = stats.get("channel_arn")
        stream = None
        if stats.get("stream"):
            stream = control.stream_by_name(stats["stream"])
        channel = control.channel_by_arn(arn) if arn else None
        if stream is None and channel is not None:
            stream = control.storage_stream(channel)
        fields: dict[str, Any] = {
            "ChannelARN": arn,
            "StreamARN": stream.arn if stream is not None else None,
            "role": session_role(stats),
            "session": stats.get("session"),
            "reason": stats.get("end_reason"),
            "reasonCode": end_reason(stats.get("end_reason")),
            "connectedSeconds": round(float(stats.get("connected_seconds") or 0.0), 3),
        }
        if stats.get("client_id"):
            fields["clientId"] = stats["client_id"]
        if "fragments" in stats:
            fields["fragments"] = stats["fragments"]
            fields["videoFrames"] = stats.get("video_frames", 0)
        if stats.get("verdict"):
            fields["verdict"] = stats["verdict"]
        events.publish(STORAGE_SESSION_ENDED, **fields)

    def notification(event: Any) -> None:
        if event.kind != "NOTIFICATION" or not events.wants(FRAGMENT_NOTIFICATION):
            return
        stream = control.stream_by_id(event.stream_id)
        config = stream.notification if stream is not None else None
        if not config or config.get("Status") != "ENABLED":
            return
        destination = config.get("DestinationConfig") or {}
        events.publish(
            FRAGMENT_NOTIFICATION,
            StreamARN=event.stream_arn,
            FragmentNumber=str(event.fragment_number),
            ProducerTimestamp=event.producer_ts_ms / 1000,
            ServerTimestamp=event.server_ts_ms / 1000,
            DestinationUri=destination.get("Uri"),
            metadata=dict(event.event.metadata),
        )

    services.fragments.on_commit.append(persisted)
    services.dataplane.events.subscribe(notification)
    sessions = services.sessions
    if hasattr(sessions, "on_session_end"):
        sessions.on_session_end = chain_hooks(sessions.on_session_end, ended)
