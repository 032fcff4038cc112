"""Signaling routing: who may send what to whom, TTL buffering, and the storage-session seam.

A channel has at most one master and up to ``signaling_max_viewers`` viewers, each holding a
signaling connection (a :class:`Peer`; the WebSocket implementation is in ``ws.py``). The hub
decides where a client's message goes; the :class:`Bus` knows who is connected where, delivers
and buffers. ``LocalBus`` keeps all of that in this process; ``RedisBus`` implements the same
calls for several nodes, with presence in a shared map, delivery over pub/sub to the node that
holds the socket and pending messages in TTL'd lists.

Routing, peer-to-peer mode (media storage not ENABLED), as documented for SendSdpOffer and
friends:

- a viewer's SDP_OFFER / SDP_ANSWER / ICE_CANDIDATE goes to the master, with
  ``senderClientId`` = the viewer's ClientId; any recipient it names is ignored, so viewers never
  reach each other;
- the master's messages go to the viewer named by ``recipientClientId`` (required), with no
  ``senderClientId``;
- a message for a participant that is not connected is kept for the channel's
  MessageTtlSeconds and delivered when it connects; a newer SDP_OFFER from the same sender to
  the same participant drops that sender's older pending messages for it (they belong to the
  superseded offer).

Storage mode (media storage ENABLED): participants talk to the storage session only (reference
§5.2, §7.2). See :meth:`SignalingHub._route_storage`. A channel's storage sessions run on one
node (the cluster's :class:`~openkvs.cluster.base.SessionRegistry` knows which); a participant's
answers, candidates and disconnects reach the storage endpoint there through a bus call when its
socket is on another node.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Iterable
from typing import Any, Protocol

from .. import ids
from ..cluster.base import SessionRegistry
from ..cluster.local import LocalHub, LocalSessionRegistry
from ..config import Settings
from ..control.ratelimit import RateLimiter
from ..control.resources import ControlPlane
from ..errors import (
    ClientLimitExceededException,
    InternalFailure,
    InvalidArgumentException,
    ResourceNotFoundException,
    ServiceError,
)
from ..records import Channel
from . import messages
from .bus import (
    Bus,
    Delivery,
    LocalBus,
    NodeUnreachable,
    ParticipantKey,
    Peer,
    ViewerLimitReached,
    channel_label,
)
from .messages import ICE_CANDIDATE, SDP_ANSWER, SDP_OFFER, ClientMessage, FrameError

logger = logging.getLogger(__name__)

PRUNE_INTERVAL = 5.0
# SendAlexaOfferToMaster: 5 TPS per channel (documented limit); concurrent waits per hub.
ALEXA_RATE = 5.0
MAX_ALEXA_WAITS = 1000
# How long the hub waits for the storage endpoint to take note of a disconnect.
DISCONNECT_NOTICE_TIMEOUT = 5.0
# How long a participant's message waits for the node running the channel's storage session.
STORAGE_CALL_TIMEOUT = 5.0
STORAGE_MESSAGE = "storage.message"
STORAGE_DISCONNECT = "storage.disconnect"

STORAGE_ORIGIN = "storage"
MASTER_ORIGIN = "master"


class StorageEndpoint(Protocol):
    # Registered by the storage-session manager with hub.set_storage_endpoint(ep).
    async def on_message(
        self, channel_arn: str, client_id: str | None, message_type: str, payload: str
    ) -> None:
        """A participant (client_id None = the channel's master, else the viewer's ClientId) sent
        SDP_ANSWER or ICE_CANDIDATE with no (or empty) recipient while the channel's media
        storage is ENABLED. ``payload`` is the base64 messagePayload exactly as sent. Raising a
        ServiceError makes the hub answer with a STATUS_RESPONSE (only if the message had a
        correlationId)."""
        ...

    async def on_disconnect(self, channel_arn: str, client_id: str | None) -> None:
        """That participant's signaling connection closed or was replaced by a newer one."""
        ...


class _AnswerWaiter:
    """Stands in for a SendAlexaOfferToMaster caller (no socket): takes the master's SDP_ANSWER
    and drops anything else, as the local waiter does."""

    def __init__(self, channel_arn: str, client_id: str, waiter: asyncio.Future[str]) -> None:
        self.channel_arn = channel_arn
        self.client_id: str | None = client_id
        self.connection_id = f"alexa-{ids.token(9)}"
        self._waiter = waiter

    def deliver(self, text: str) -> bool:
        try:
            event = json.loads(text)
        except ValueError:
            return True
        payload = event.get("messagePayload")
        if event.get("messageType") == SDP_ANSWER and isinstance(payload, str):
            if not self._waiter.done():
                self._waiter.set_result(payload)
        return True

    def go_away(self, grace: float | None = None) -> None:
        return None

    def close(self) -> None:
        return None


class SignalingHub:
    """Routes signaling messages between a channel's master, its viewers and storage sessions."""

    def __init__(
        self,
        settings: Settings,
        control: ControlPlane,
        bus: Bus | None = None,
        sessions: SessionRegistry | None = None,
    ) -> None:
        self.settings = settings
        self.control = control
        self.bus: Bus = bus if bus is not None else LocalBus()
        # Which node runs each channel's storage sessions (this one alone when not given).
        self.registry: SessionRegistry = (
            sessions if sessions is not None else LocalSessionRegistry(LocalHub(), self.bus.node_id)
        )
        self._storage: StorageEndpoint | None = None
        # Per-connection message rates (documented: SDP 5/s, ICE 20/s per WebSocket connection).
        self._sdp_rate = RateLimiter(settings.signaling_sdp_rate)
        self._ice_rate = RateLimiter(settings.signaling_ice_rate)
        self._alexa_rate = RateLimiter(ALEXA_RATE)
        self._alexa: dict[ParticipantKey, asyncio.Future[str]] = {}
        self._pruner: asyncio.Task[None] | None = None

    # -- lifecycle ------

    async def start(self) -> None:
        self.bus.serve(STORAGE_MESSAGE, self._serve_storage_message)
        self.bus.serve(STORAGE_DISCONNECT, self._serve_storage_disconnect)
        await self.bus.start()
        self._pruner = asyncio.create_task(self._prune_loop(), name="signaling-prune")

    async def shutdown(self) -> None:
        """Server shutdown: every connection gets GO_AWAY and is closed right away."""
        for peer in self.bus.peers():
            peer.go_away(0.0)

    async def stop(self) -> None:
        if self._pruner is not None:
            self._pruner.cancel()
            await asyncio.gather(self._pruner, return_exceptions=True)
            self._pruner = None
        for peer in self.bus.peers():
            peer.close()
        for fut in self._alexa.values():
            if not fut.done():
                fut.set_exception(InternalFailure("The server is shutting down."))
        self._alexa.clear()
        await self.bus.stop()

    async def _prune_loop(self) -> None:
        while True:
            await asyncio.sleep(PRUNE_INTERVAL)
            try:
                await self.bus.prune()
            except Exception:  # noqa: BLE001 - the next round tries again
                logger.exception("pruning kept signaling messages failed")

    # -- the storage-session seam ------

    def set_storage_endpoint(self, ep: StorageEndpoint | None) -> None:
        self._storage = ep

    async def send(
        self, channel_arn: str, client_id: str | None, message_type: str, payload: str | None
    ) -> None:
        """Deliver an event WITHOUT senderClientId (messageType + messagePayload) to the master
        (client_id None) or to the viewer with that ClientId. If that participant is not
        connected, buffer it for the channel's MessageTtlSeconds and deliver on connect; queuing
        a newer SDP_OFFER for a participant drops the older pending messages for it.

        Events without a payload (GO_AWAY, RECONNECT_ICE_SERVER) go to a connected participant
        only. Nothing is sent for a channel that no longer exists. Raises
        ClientLimitExceededException when the server's pending-message budget is spent.
        """
        if message_type not in messages.EVENT_TYPES:
            raise ValueError(f"cannot send a {message_type!r} event")
        if (payload is None) != (message_type not in messages.ACTIONS):
            need = "need a" if payload is None else "take no"
            raise ValueError(f"{message_type} events {need} payload")
        key = (channel_arn, client_id)
        text = messages.event(message_type, payload)
        channel = self.control.channel_by_arn(channel_arn)
        if channel is None:
            logger.debug("[%s] dropped %s for a deleted channel", channel_arn, message_type)
            return
        ttl = float(channel.message_ttl) if payload is not None else 0.0
        await self.bus.deliver(
            key, text, ttl=ttl, origin=STORAGE_ORIGIN, is_offer=message_type == SDP_OFFER
        )

    async def is_connected(self, channel_arn: str, client_id: str | None) -> bool:
        return await self.bus.locate((channel_arn, client_id)) is not None

    async def connection_id(self, channel_arn: str, client_id: str | None) -> str | None:
        """An id that changes each time that participant (re)connects (on any node); None if
        not connected."""
        where = await self.bus.locate((channel_arn, client_id))
        return None if where is None else where.connection_id

    # -- connections ------

    async def attach(self, peer: Peer) -> None:
        """Register a new connection: replace the participant's previous one (which gets
        GO_AWAY), enforce the viewer cap, then hand over the messages kept for it."""
        key = (peer.channel_arn, peer.client_id)
        cap = self.settings.signaling_max_viewers
        try:
            attached = await self.bus.attach(peer, max_viewers=cap)
        except ViewerLimitReached:
            raise ClientLimitExceededException(
                f"The maximum number of viewers ({cap}) are already connected to channel "
                f"{channel_label(peer.channel_arn)}."
            ) from None
        replaced = attached.replaced
        if replaced is not None:
            logger.info(
                "[%s %s] new connection replaces %s (on node %s)",
                channel_label(peer.channel_arn),
                peer.client_id or "master",
                replaced.connection_id,
                replaced.node,
            )
            await self._notify_disconnect(key)

    async def detach(self, peer: Peer) -> None:
        """A connection ended; tell the storage endpoint if it was the participant's current one."""
        try:
            was_current = await self.bus.detach(peer)
        except Exception:  # noqa: BLE001 - the connection ends anyway; its entry expires
            logger.exception(
                "[%s %s] could not forget connection %s",
                channel_label(peer.channel_arn),
                peer.client_id or "master",
                peer.connection_id,
            )
            return
        if was_current:
            await self._notify_disconnect((peer.channel_arn, peer.client_id))

    async def _notify_disconnect(self, key: ParticipantKey) -> None:
        try:
            node = await self._storage_node(key[0])
            if node is None:
                return
            if node == self.bus.node_id:
                await self._local_disconnect(key[0], key[1])
                return
            await self.bus.call(
                node,
                STORAGE_DISCONNECT,
                {"channel_arn": key[0], "client_id": key[1]},
                limit=DISCONNECT_NOTICE_TIMEOUT,
            )
        except NodeUnreachable:
            logger.info("[%s] the node of its storage session is gone", channel_label(key[0]))
        except Exception:  # noqa: BLE001 - the storage side must not break signaling
            logger.exception("[%s %s] storage on_disconnect failed", channel_label(key[0]), key[1])

    async def _local_disconnect(self, channel_arn: str, client_id: str | None) -> None:
        ep = self._storage
        if ep is not None:
            await asyncio.wait_for(
                ep.on_disconnect(channel_arn, client_id), DISCONNECT_NOTICE_TIMEOUT
            )

    async def _storage_node(self, channel_arn: str) -> str | None:
        """The node whose storage endpoint takes the channel's participants' traffic: the one
        that claimed the channel's sessions, else this one if it has an endpoint."""
        node = await self.registry.owner(channel_arn)
        if node is not None:
            return node
        return self.bus.node_id if self._storage is not None else None

    async def _serve_storage_message(self, args: dict[str, Any]) -> None:
        channel_arn, client_id = str(args["channel_arn"]), args.get("client_id")
        await self._local_message(
            channel_arn,
            None if client_id is None else str(client_id),
            str(args["type"]),
            str(args["payload"]),
        )

    async def _serve_storage_disconnect(self, args: dict[str, Any]) -> None:
        client_id = args.get("client_id")
        await self._local_disconnect(
            str(args["channel_arn"]), None if client_id is None else str(client_id)
        )

    async def _local_message(
        self, channel_arn: str, client_id: str | None, message_type: str, payload: str
    ) -> None:
        ep = self._storage
        if ep is None:
            raise InvalidArgumentException(
                f"No storage session is running for channel {channel_label(channel_arn)}; call "
                "JoinStorageSession first."
            )
        await ep.on_message(channel_arn, client_id, message_type, payload)

    async def channel_closed(self, channel: Channel) -> None:
        """The channel was deleted or its media storage disabled: GO_AWAY to all of its
        connections (closed after the grace period) and forget what was kept for them."""
        await self.bus.close_channel(channel.arn)
        for key, fut in list(self._alexa.items()):
            if key[0] == channel.arn and not fut.done():
                fut.set_exception(
                    ResourceNotFoundException(f"The channel {channel.name} was closed.")
                )

    # -- client messages ------

    async def handle_frame(self, peer: Peer, text: str) -> None:
        """Act on one text frame from ``peer``; failures become STATUS_RESPONSEs when correlated."""
        try:
            msg = messages.parse_client_frame(text)
        except FrameError as exc:
            self._refuse(peer, exc.correlation_id, exc.error)
            return
        try:
            await self._route(peer, msg)
        except ServiceError as err:
            self._refuse(peer, msg.correlation_id, err)
        except Exception:
            logger.exception(
                "[%s %s] failed to route %s",
                channel_label(peer.channel_arn),
                peer.client_id or "master",
                msg.action,
            )
            self._refuse(peer, msg.correlation_id, InternalFailure("Internal error."))

    def _refuse(self, peer: Peer, correlation_id: str | None, err: ServiceError) -> None:
        logger.debug(
            "[%s %s] refused a message (%s): %s",
            channel_label(peer.channel_arn),
            peer.client_id or "master",
            err.code,
            err.message,
        )
        if correlation_id is not None:
            peer.deliver(messages.status_response(correlation_id, err))

    async def _route(self, peer: Peer, msg: ClientMessage) -> None:
        if not self.bus.is_current(peer):
            raise InvalidArgumentException(
                "This connection was replaced by a newer connection of the same client."
            )
        if msg.action == ICE_CANDIDATE:
            if not self._ice_rate.allow(peer.connection_id):
                raise ClientLimitExceededException(
                    f"Too many ICE_CANDIDATE messages: the limit is "
                    f"{self.settings.signaling_ice_rate:g} per second per connection."
                )
        elif not self._sdp_rate.allow(peer.connection_id):
            raise ClientLimitExceededException(
                f"Too many SDP messages: the limit is {self.settings.signaling_sdp_rate:g} per "
                "second per connection."
            )
        channel = self.control.channel_by_arn(peer.channel_arn)
        if channel is None:
            raise ResourceNotFoundException(
                f"The channel {channel_label(peer.channel_arn)} no longer exists."
            )
        if channel.storage_status == "ENABLED":
            await self._route_storage(peer, channel, msg)
        else:
            await self._route_peer_to_peer(peer, channel, msg)

    async def _route_storage(self, peer: Peer, channel: Channel, msg: ClientMessage) -> None:
        """Media storage is ENABLED: direct master <-> viewer traffic does not happen.

        Recipient-less SDP_ANSWER and ICE_CANDIDATE from the master, and those from a viewer
        (whose recipient is ignored, as in peer-to-peer mode), go to the storage endpoint. An
        SDP_OFFER from anyone, and a master's message addressed to a viewer, would be
        peer-to-peer traffic: they are refused with InvalidArgumentException (a STATUS_RESPONSE
        when correlated, dropped otherwise). The participants' answerer role is what AWS
        documents for ingestion: the storage session offers, they answer.
        """
        recipient = msg.recipient if peer.client_id is None else None
        if msg.action == SDP_OFFER or recipient is not None:
            raise InvalidArgumentException(
                f"Media storage is enabled for channel {channel.name}: peers connect to the "
                "storage session (JoinStorageSession), not to each other."
            )
        node = await self._storage_node(channel.arn)
        if node is None or node == self.bus.node_id:
            await self._local_message(channel.arn, peer.client_id, msg.action, msg.payload)
            return
        try:
            await self.bus.call(
                node,
                STORAGE_MESSAGE,
                {
                    "channel_arn": channel.arn,
                    "client_id": peer.client_id,
                    "type": msg.action,
                    "payload": msg.payload,
                },
                limit=STORAGE_CALL_TIMEOUT,
            )
        except NodeUnreachable:
            raise InvalidArgumentException(
                f"No storage session is running for channel {channel.name}; call "
                "JoinStorageSession first."
            ) from None

    async def _route_peer_to_peer(self, peer: Peer, channel: Channel, msg: ClientMessage) -> None:
        ttl = float(channel.message_ttl)
        is_offer = msg.action == SDP_OFFER
        if peer.client_id is not None:
            # Viewer -> master; the recipient a viewer names is ignored.
            await self.bus.deliver(
                (channel.arn, None),
                messages.event(msg.action, msg.payload, sender=peer.client_id),
                ttl=ttl,
                origin=f"viewer:{peer.client_id}",
                is_offer=is_offer,
            )
            return
        if msg.recipient is None:
            raise InvalidArgumentException(
                "Messages from the master need a recipientClientId naming the viewer."
            )
        waiter = self._alexa.get((channel.arn, msg.recipient))
        if waiter is not None:
            # A SendAlexaOfferToMaster call waits for this answer; that client takes no
            # trickled candidates, so anything else for it is dropped.
            if msg.action == SDP_ANSWER and not waiter.done():
                waiter.set_result(msg.payload)
            return
        await self.bus.deliver(
            (channel.arn, msg.recipient),
            messages.event(msg.action, msg.payload),
            ttl=ttl,
            origin=MASTER_ORIGIN,
            is_offer=is_offer,
        )

    # -- HTTPS signaling ------

    async def alexa_offer(self, channel: Channel, sender_client_id: str, payload: str) -> str:
        """SendAlexaOfferToMaster: give the master the offer (kept for the channel's TTL if it is
        not connected) and wait up to that TTL for its answer; return the answer's payload."""
        if channel.storage_status == "ENABLED":
            raise InvalidArgumentException(
                f"Media storage is enabled for channel {channel.name}: the master only talks to "
                "the storage session."
            )
        if not self._alexa_rate.allow(channel.arn):
            raise ClientLimitExceededException(
                f"Too many SendAlexaOfferToMaster calls for channel {channel.name}; the limit is "
                f"{ALEXA_RATE:g} per second."
            )
        key = (channel.arn, sender_client_id)
        previous = self._alexa.pop(key, None)
        if previous is not None and not previous.done():
            previous.set_exception(
                InvalidArgumentException("A newer offer from the same SenderClientId replaced it.")
            )
        if len(self._alexa) >= MAX_ALEXA_WAITS:
            raise ClientLimitExceededException("Too many offers are waiting for an answer.")
        ttl = float(channel.message_ttl)
        waiter: asyncio.Future[str] = asyncio.get_running_loop().create_future()
        self._alexa[key] = waiter
        # The master may be connected to another node: its answer comes back to this one.
        stand_in = _AnswerWaiter(channel.arn, sender_client_id, waiter)
        held = False
        try:
            await self.bus.hold(key, stand_in, ttl=ttl + 1.0)
            held = True
            await self.bus.deliver(
                (channel.arn, None),
                messages.event(SDP_OFFER, payload, sender=sender_client_id),
                ttl=ttl,
                origin=f"viewer:{sender_client_id}",
                is_offer=True,
            )
            try:
                return await asyncio.wait_for(waiter, ttl)
            except TimeoutError:
                raise ResourceNotFoundException(
                    f"The master of channel {channel.name} did not answer within {ttl:g} seconds "
                    "(the channel's MessageTtlSeconds)."
                ) from None
        finally:
            if self._alexa.get(key) is waiter:
                del self._alexa[key]
            if not waiter.done():
                waiter.cancel()
            if held:
                try:
                    await self.bus.release(key, stand_in)
                except Exception:  # noqa: BLE001 - it expires on its own
                    logger.warning("[%s] could not release a waiting offer", channel.name)

    # -- introspection ------

    def connections(self, channel_arn: str | None = None) -> Iterable[Peer]:
        return self.bus.peers(channel_arn)


__all__ = [
    "Bus",
    "Delivery",
    "LocalBus",
    "Peer",
    "SignalingHub",
    "StorageEndpoint",
]
