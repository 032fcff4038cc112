"""What master and viewer storage sessions share: the peer connection, signaling, lifecycle."""

from __future__ import annotations

import asyncio
import enum
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from aiortc import RTCCertificate
from aiortc.sdp import SessionDescription

from .. import clock
from ..config import Settings
from ..errors import InvalidArgumentException
from ..records import Channel
from . import net, offer_tags, signaling_io, tap
from .diagnostics import Timeline, dtls_state, selected_pair
from .peer import OfferingPeer, Send

logger = logging.getLogger(__name__)


STALE_ANSWER_MESSAGE = (
    "This SDP answer is for the offer of a storage session that was replaced or has ended; "
    "answer the latest SDP_OFFER."
)


class SessionGone(Exception):
    """A send from a session that is no longer its participant's current session."""


class State(enum.Enum):
    NEW = "new"
    OFFERED = "offered"
    CONNECTED = "connected"
    ENDED = "ended"


class CodecCheckingPeer(OfferingPeer):
    """Refuses answers whose live media lines carry no H.264 (video) or Opus (audio)."""

    def check_answer(self, sdp: str) -> None:
        parsed = SessionDescription.parse(sdp)
        for media in parsed.media:
            names = {c.mimeType.lower() for c in media.rtp.codecs}
            if media.kind == "video" and media.port != 0 and "video/h264" not in names:
                raise InvalidArgumentException(
                    "The SDP answer's video has no H.264 codec; the storage session only "
                    "accepts H.264 video."
                )
            if media.kind == "audio" and media.port != 0 and "audio/opus" not in names:
                raise InvalidArgumentException(
                    "The SDP answer's audio has no Opus codec; the storage session only "
                    "accepts Opus audio."
                )


class StorageSession:
    role = "session"

    def __init__(
        self,
        *,
        channel: Channel,
        settings: Settings,
        send: Send,
        ice_servers: list[Any],
        on_end: Callable[[Any, str], Awaitable[None]],
        number: int,
        label: str,
        is_current: Callable[[], bool] | None = None,
        certificate: RTCCertificate | None = None,
    ) -> None:
        self.channel = channel
        self.settings = settings
        self.number = number
        self.prefix = f"[{channel.name} {label} #{number}] "
        self.state = State.NEW
        self.started_at = clock.monotonic()
        self.connected_at: float | None = None
        self.end_reason: str | None = None
        self._on_end = on_end
        self._tasks: set[asyncio.Task[Any]] = set()
        self._stopping: asyncio.Task[None] | None = None
        self._send_raw = send
        self._is_current = is_current or (lambda: True)
        self.tag = offer_tags.session_tag(number)
        self.offer_sent = False
        # The process's shared DTLS certificate (certificates.py); None: one of its own.
        self.pc = tap.new_peer_connection(net.configuration(ice_servers), certificate)
        self.timeline = Timeline(self.role, channel.arn, number)
        self.peer = CodecCheckingPeer(
            self.pc,
            self._send,
            net.advertised_hosts(settings),
            self.prefix,
            on_pair=self.timeline.pair_checked,
        )
        self.pc.on("connectionstatechange", self._on_state)
        self.pc.on(
            "iceconnectionstatechange",
            lambda: self.timeline.state("ice", self.pc.iceConnectionState),
        )

    def spawn(self, coro: Awaitable[Any], name: str) -> None:
        task = asyncio.ensure_future(coro)
        task.set_name(name)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def live(self) -> bool:
        """Still its participant's current session, and not ended."""
        return self.state is not State.ENDED and self._is_current()

    async def _send(self, message_type: str, payload: str | None) -> None:
        """Everything the peer sends goes through here: nothing leaves a session that was
        replaced or ended (checked right before the send), and offers and candidates carry the
        session's tag on their mids (see ``offer_tags``)."""
        if not self.live():
            raise SessionGone(message_type)
        if payload is not None and message_type == "SDP_OFFER":
            data = signaling_io.decode(payload, "SDP")
            data["sdp"] = offer_tags.tag_sdp(str(data.get("sdp", "")), self.tag)
            payload = signaling_io.encode(data)
        elif payload is not None and message_type == "ICE_CANDIDATE":
            data = signaling_io.decode(payload, "ICE candidate")
            if isinstance(data.get("sdpMid"), str):
                data["sdpMid"] = offer_tags.tag_mid(data["sdpMid"], self.tag)
            payload = signaling_io.encode(data)
        await self._send_raw(message_type, payload)
        if message_type == "SDP_OFFER":
            self.offer_sent = True

    async def start(self) -> None:
        self.spawn(self._watchdog(), "storage watchdog")
        # The offer is part of the session: stopping the session (replaced by a newer join)
        # cancels an offer still being prepared, and a finished one is never sent (``_send``).
        offering = asyncio.current_task()
        if offering is not None:
            self._tasks.add(offering)
        try:
            await self.peer.offer()
        except (SessionGone, asyncio.CancelledError):
            if self.state is not State.ENDED and self._is_current():
                raise
            if not self.offer_sent:
                logger.info("%sended before its offer went out: no offer sent", self.prefix)
            return
        except Exception as exc:  # noqa: BLE001
            logger.warning("%scould not send the offer: %s", self.prefix, exc)
            self.stop(f"offer failed: {exc}")
            return
        finally:
            if offering is not None:
                self._tasks.discard(offering)
        if self.state is State.NEW:
            self.state = State.OFFERED
        self.timeline.offer_sent(self.pc.localDescription.sdp)
        logger.info("%soffer sent", self.prefix)

    def stop(self, reason: str) -> asyncio.Task[None]:
        """End the session (idempotent); returns the task that finishes it."""
        if self._stopping is None:
            self.end_reason = reason
            self.state = State.ENDED
            self._stopping = asyncio.ensure_future(self._stop(reason))
        return self._stopping

    async def _stop(self, reason: str) -> None:
        current = asyncio.current_task()
        for task in list(self._tasks):
            if task is not current:
                task.cancel()
        await self.peer.close()
        await self.finish(reason)
        verdict = self.timeline.end(reason, self.stats())
        log = logger.warning if verdict else logger.info
        log("%sended (%s)%s", self.prefix, reason, f": {verdict}" if verdict else "")
        await self._on_end(self, reason)

    async def finish(self, reason: str) -> None:
        """Subclasses flush and release what they own."""

    def check(self, now: float) -> str | None:
        """Subclasses: a reason to end the session now, checked twice a second."""
        return None

    async def _watchdog(self) -> None:
        s = self.settings
        while self.state is not State.ENDED:
            await asyncio.sleep(0.5)
            self.timeline.observe(self.stats())
            now = clock.monotonic()
            if self.state is not State.CONNECTED:
                wait = max(s.storage_connect_timeout, self.channel.message_ttl + 10.0)
                if now - self.started_at > wait:
                    self.stop("the participant did not connect")
                    return
                continue
            reason = self.check(now)
            if reason is not None:
                self.stop(reason)
                return

    def on_connected(self) -> None:
        """Subclasses: the peer connection is up."""

    async def _on_state(self) -> None:
        state = self.pc.connectionState
        self.timeline.state("dtls", dtls_state(self.pc))
        self.timeline.state("connection", state)
        if state == "connected" and self.state is not State.ENDED:
            self.timeline.selected(selected_pair(self.pc))
            self.state = State.CONNECTED
            self.connected_at = clock.monotonic()
            self.on_connected()
            logger.info("%sconnected", self.prefix)
        elif state in ("failed", "closed") and self.state is not State.ENDED:
            self.stop(f"peer connection {state}")

    async def on_message(self, message_type: str, payload: str) -> None:
        if self.state is State.ENDED:
            raise InvalidArgumentException("This storage session has ended; join again.")
        if message_type == "SDP_ANSWER":
            try:
                await self.peer.on_answer(self._own_answer(payload))
            except offer_tags.ForeignTag:
                # An answer to a replaced session's offer: refused, this session unharmed.
                raise InvalidArgumentException(STALE_ANSWER_MESSAGE) from None
            except InvalidArgumentException as exc:
                self.timeline.answer_refused(exc.message)
                self.stop(f"unusable answer: {exc.message}")
                raise
            self.timeline.answer_received(self.pc.remoteDescription.sdp)
        elif message_type == "ICE_CANDIDATE":
            self.timeline.candidate_received(payload)
            data = signaling_io.decode(payload, "ICE candidate")
            if isinstance(data.get("sdpMid"), str):
                try:
                    data["sdpMid"] = offer_tags.untag_mid(data["sdpMid"], self.tag)
                except offer_tags.ForeignTag:
                    return  # a candidate for a replaced session's offer: of no use here
                payload = signaling_io.encode(data)
            await self.peer.on_candidate(payload)
        else:
            raise InvalidArgumentException(
                f"The storage session does not accept {message_type[:40]} messages."
            )

    def _own_answer(self, payload: str) -> str:
        """The answer with the session's tag taken off its mids (ForeignTag: another's)."""
        data = signaling_io.decode(payload, "SDP")
        if not isinstance(data.get("sdp"), str):
            return payload
        data["sdp"] = offer_tags.untag_sdp(data["sdp"], self.tag)
        return signaling_io.encode(data)

    def stats(self) -> dict[str, Any]:
        """Subclasses add their own counters."""
        return self.base_stats()

    def base_stats(self) -> dict[str, Any]:
        return {
            "channel": self.channel.name,
            "channel_arn": self.channel.arn,
            "role": self.role,
            "session": self.number,
            "state": self.state.value,
            "connected_seconds": (clock.monotonic() - self.connected_at)
            if self.connected_at
            else 0.0,
            "end_reason": self.end_reason,
            "verdict": self.timeline.verdict,
        }
