"""The signaling WebSocket endpoint: ConnectAsMaster / ConnectAsViewer.

``GET /?X-Amz-ChannelARN=…[&X-Amz-ClientId=…]`` with SigV4 presigned query parameters (as the KVS
WebRTC SDKs build them), upgraded to a WebSocket. Refusals happen before the upgrade and use the
documented statuses in the usual JSON error shape: InvalidArgumentException 400 (bad ARN, bad
ClientId, not a WebSocket request), AccessDeniedException 403 (bad, expired or unknown signature;
policy), ResourceNotFoundException 404 (unknown channel), ClientLimitExceededException 400 (too
many viewers, connect rate).

Each connection has a bounded send queue drained by its own writer task, so a client that does
not read is disconnected instead of growing server memory. The idle timeout and the maximum
connection age are announced with GO_AWAY before the close. Client pings are answered and count
as activity; the server also pings (``signaling_ping_interval``) and drops peers that do not pong.
"""

from __future__ import annotations

import asyncio
import enum
import logging
import re

from aiohttp import WSCloseCode, WSMsgType, web

from .. import clock, ids
from ..auth import sigv4
from ..auth.credentials import Principal
from ..errors import (
    AccessDeniedException,
    AuthFailure,
    ClientLimitExceededException,
    InvalidArgumentException,
    ResourceNotFoundException,
)
from ..services import Services
from . import messages
from .bus import MAX_PENDING_PER_PARTICIPANT, channel_label

logger = logging.getLogger(__name__)

# The signaling model's ResourceARN pattern (reference §3.5).
_CHANNEL_ARN = re.compile(r"arn:aws:kinesisvideo:[a-z0-9-]+:[0-9]+:channel/[a-zA-Z0-9_.-]+/[0-9]+")
# Frames up to this size are read and answered (a payload over 10 KiB gets a STATUS_RESPONSE);
# larger ones make aiohttp close the connection with 1009.
MAX_FRAME = 256 * 1024
CLOSE_TIMEOUT = 5.0
# The KVS WebRTC C SDK asks for the ``wss`` subprotocol (libwebsockets protocol name) and the
# endpoint echoes it in Sec-WebSocket-Protocol; clients that ask for none get none.
SUBPROTOCOLS = ("wss",)


class PeerState(enum.Enum):
    OPEN = "open"
    DRAINING = "draining"  # GO_AWAY sent, closing after the grace period
    CLOSING = "closing"
    CLOSED = "closed"


class _Close:
    def __init__(self, code: int, message: bytes) -> None:
        self.code = code
        self.message = message


class WsPeer:
    """A participant's WebSocket, as a hub :class:`~openkvs.signaling.hub.Peer`."""

    def __init__(
        self,
        request: web.Request,
        ws: web.WebSocketResponse,
        *,
        channel_arn: str,
        client_id: str | None,
        queue_size: int,
        grace: float,
    ) -> None:
        self._request = request
        self._ws = ws
        self._channel_arn = channel_arn
        self._client_id = client_id
        self._connection_id = ids.token(12)
        self._queue: asyncio.Queue[str | _Close] = asyncio.Queue(max(1, queue_size))
        self._grace = grace
        self._close_timer: asyncio.TimerHandle | None = None
        self.state = PeerState.OPEN
        self.label = f"[{channel_label(channel_arn)} {client_id or 'master'}]"

    @property
    def channel_arn(self) -> str:
        return self._channel_arn

    @property
    def client_id(self) -> str | None:
        return self._client_id

    @property
    def connection_id(self) -> str:
        return self._connection_id

    def deliver(self, text: str) -> bool:
        if self.state in (PeerState.CLOSING, PeerState.CLOSED):
            return False
        try:
            self._queue.put_nowait(text)
        except asyncio.QueueFull:
            logger.warning(
                "%s send queue full (%d events): disconnecting a client that does not read",
                self.label,
                self._queue.maxsize,
            )
            self.abort()
            return False
        return True

    def go_away(self, grace: float | None = None) -> None:
        if self.state is not PeerState.OPEN:
            if grace == 0.0:
                self.close(WSCloseCode.GOING_AWAY)
            return
        self.deliver(messages.go_away())
        self.state = PeerState.DRAINING
        delay = self._grace if grace is None else grace
        self._close_timer = asyncio.get_running_loop().call_later(
            max(0.0, delay), self.close, WSCloseCode.GOING_AWAY
        )

    def close(self, code: int = WSCloseCode.OK, message: bytes = b"") -> None:
        if self.state in (PeerState.CLOSING, PeerState.CLOSED):
            return
        if self._close_timer is not None:
            self._close_timer.cancel()
            self._close_timer = None
        self.state = PeerState.CLOSING
        try:
            self._queue.put_nowait(_Close(code, message))
        except asyncio.QueueFull:
            self.abort()

    def abort(self) -> None:
        """Cut the connection without a close handshake (it cannot take more data)."""
        if self._close_timer is not None:
            self._close_timer.cancel()
            self._close_timer = None
        self.state = PeerState.CLOSED
        transport = self._request.transport
        if transport is not None:
            transport.abort()

    async def run_writer(self) -> None:
        try:
            while True:
                item = await self._queue.get()
                if isinstance(item, _Close):
                    await asyncio.wait_for(
                        self._ws.close(code=item.code, message=item.message), CLOSE_TIMEOUT
                    )
                    return
                await self._ws.send_str(item)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # noqa: BLE001 - a broken socket ends this connection only
            logger.debug("%s writer stopped: %r", self.label, exc)
            self.abort()
        finally:
            if self.state is not PeerState.CLOSED:
                self.state = PeerState.CLOSED


class SignalingEndpoint:
    """aiohttp handler for ``GET /`` WebSocket upgrades."""

    def __init__(self, services: Services) -> None:
        self.services = services

    async def handle(self, request: web.Request) -> web.StreamResponse:
        services = self.services
        settings = services.settings
        ws = web.WebSocketResponse(
            protocols=SUBPROTOCOLS,
            autoping=False,
            heartbeat=settings.signaling_ping_interval or None,
            max_msg_size=MAX_FRAME,
            compress=False,
            timeout=CLOSE_TIMEOUT,
        )
        if not ws.can_prepare(request).ok:
            raise InvalidArgumentException(
                "This is the openkvs signaling endpoint: open a WebSocket with a presigned "
                "ConnectAsMaster / ConnectAsViewer URL."
            )
        query = sigv4.parse_query(request.rel_url.raw_query_string)
        channel_arn = _single(query, "X-Amz-ChannelARN")
        if not channel_arn or not _CHANNEL_ARN.fullmatch(channel_arn):
            raise InvalidArgumentException(
                "X-Amz-ChannelARN must be a signaling channel ARN "
                "(arn:aws:kinesisvideo:<region>:<account>:channel/<name>/<number>)."
            )
        raw_client_id = _single(query, "X-Amz-ClientId")
        client_id = (
            None if raw_client_id is None else messages.check_viewer_client_id(raw_client_id)
        )
        operation = "ConnectAsMaster" if client_id is None else "ConnectAsViewer"
        services.health.refuse_if_draining()

        principal = self._authenticate(request)
        await services.control.sync()  # a channel just created through another node is known
        channel = services.control.channel_by_arn(channel_arn)
        if channel is None:
            raise ResourceNotFoundException(
                f"The requested channel is not found or not active: {channel_arn}"
            )
        action = f"kinesisvideo:{operation}"
        if principal is not None and not principal.allows(action, channel.arn):
            raise AccessDeniedException(
                f"User: {principal.access_key_id} is not authorized to perform: {action} on "
                f"resource: {channel.arn}"
            )
        if not services.resource_limiter.allow(f"{operation}:{channel.arn}"):
            raise ClientLimitExceededException(
                f"Too many {operation} calls for channel {channel.name}; try again later."
            )

        hub = services.hub
        peer = WsPeer(
            request,
            ws,
            channel_arn=channel.arn,
            client_id=client_id,
            # Room for the messages kept while the participant was away: they are handed over
            # at once, before the writer runs.
            queue_size=settings.signaling_send_queue + MAX_PENDING_PER_PARTICIPANT,
            grace=settings.signaling_go_away_grace,
        )
        await hub.attach(peer)
        try:
            await ws.prepare(request)
        except ConnectionError:
            # The client went away during the handshake; nothing more can be written to it.
            peer.state = PeerState.CLOSED
            await hub.detach(peer)
            return ws
        except BaseException:
            peer.state = PeerState.CLOSED
            await hub.detach(peer)
            raise
        logger.info("%s connected (%s)", peer.label, peer.connection_id)
        writer = asyncio.create_task(peer.run_writer(), name=f"signaling-writer {peer.label}")
        try:
            await self._read(peer, ws)
        finally:
            await hub.detach(peer)
            peer.close()
            try:
                await asyncio.wait_for(writer, CLOSE_TIMEOUT + 1)
            except (Exception, asyncio.CancelledError):  # noqa: BLE001
                writer.cancel()
                peer.abort()
            logger.info("%s disconnected (%s)", peer.label, peer.connection_id)
        return ws

    def _authenticate(self, request: web.Request) -> Principal | None:
        services = self.services
        if services.settings.no_auth:
            return None
        try:
            identity = sigv4.verify(
                method=request.method,
                raw_path=request.rel_url.raw_path,
                raw_query=request.rel_url.raw_query_string,
                headers=list(request.headers.items()),
                body_sha256=lambda: sigv4.EMPTY_SHA256,
                lookup=services.credentials.lookup,
                now=clock.now(),
                max_skew=services.settings.clock_skew_seconds,
            )
        except AuthFailure as exc:
            # The docs name AccessDeniedException (403) for signaling refusals; the message is
            # kept, since the C SDK looks for "Signature expired" to detect clock skew.
            raise AccessDeniedException(exc.message) from None
        return services.credentials.principal(identity.access_key_id)

    async def _read(self, peer: WsPeer, ws: web.WebSocketResponse) -> None:
        settings = self.services.settings
        hub = self.services.hub
        idle = settings.signaling_idle_timeout
        max_age = settings.signaling_max_connection_age
        started = last_active = clock.monotonic()
        while True:
            timeout: float | None = None
            if peer.state is PeerState.OPEN:
                deadlines = []
                if idle > 0:
                    deadlines.append(last_active + idle)
                if max_age > 0:
                    deadlines.append(started + max_age)
                if deadlines:
                    # aiohttp reads a zero timeout as "none".
                    timeout = max(0.001, min(deadlines) - clock.monotonic())
            try:
                msg = await ws.receive(timeout=timeout)
            except TimeoutError:
                now = clock.monotonic()
                if max_age > 0 and now >= started + max_age:
                    logger.info("%s reached the maximum connection age: GO_AWAY", peer.label)
                    peer.go_away()
                elif idle > 0 and now >= last_active + idle:
                    logger.info("%s idle for %gs: GO_AWAY", peer.label, idle)
                    peer.go_away()
                continue
            if msg.type is WSMsgType.TEXT:
                last_active = clock.monotonic()
                await hub.handle_frame(peer, msg.data)
            elif msg.type is WSMsgType.PING:
                last_active = clock.monotonic()
                try:
                    await ws.pong(msg.data)
                except ConnectionError:
                    return
            elif msg.type is WSMsgType.BINARY:
                last_active = clock.monotonic()
                logger.debug("%s ignored a binary frame", peer.label)
            elif msg.type is WSMsgType.PONG:
                continue
            else:  # CLOSE, CLOSING, CLOSED, ERROR
                if msg.type is WSMsgType.ERROR:
                    logger.debug("%s connection error: %r", peer.label, msg.data)
                return


def _single(query: list[tuple[str, str]], name: str) -> str | None:
    values = [v for k, v in query if k == name]
    if len(values) > 1:
        raise InvalidArgumentException(f"{name} is given more than once.")
    return values[0] if values else None
