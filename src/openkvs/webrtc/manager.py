"""The storage-session manager: JoinStorageSession(AsViewer) calls in, WebRTC sessions out.

It implements ``control.sessions.StorageSessions`` (the API side) and the signaling hub's
``StorageEndpoint`` (participants' answers and candidates, disconnects). One master session per
channel — the latest JoinStorageSession wins and replaces the previous one, whose partial
fragment is flushed and kept. Each channel is independent: a failing session never disturbs
another.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import os
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from .. import clock
from ..config import Settings
from ..control.fragments import FragmentStore
from ..errors import ClientLimitExceededException, InvalidArgumentException
from ..playback.livecut import PartSink
from ..records import Channel, Stream
from ..signaling.hub import SignalingHub
from ..signaling.ice import external_turn
from ..signaling.turn import TurnAccess
from . import net, tap
from .audio import ChannelAudio
from .certificates import CertificateRotation
from .diagnostics import recent_diagnostics
from .master import MasterSession
from .seams import FragmentSink, SignalingSink
from .viewer import ViewerSession

logger = logging.getLogger(__name__)

MAX_VIEWERS_MESSAGE = "The maximum number of viewers connected to the session has been reached."
# How long the session creator waits for one master session's offer before it creates the next.
# Offers prepared side by side all go out late (each one's steps interleave with all the others');
# one after another, the first goes out after one offer's work, the median after half the burst's.
# A stuck offer holds the next channel back by this much at most.
OFFER_TURN = 0.1


class StorageSessionManager:
    def __init__(
        self,
        settings: Settings,
        fragments: FragmentStore | FragmentSink,
        hub: SignalingHub | SignalingSink,
        *,
        number_base: int = 0,
        turn: Callable[[], TurnAccess | None] | None = None,
        live: PartSink | None = None,
    ) -> None:
        self.settings = settings
        # The TURN server the storage peer allocates on (asked per session: the embedded one is
        # known once the server has started); the configured one by default.
        self.turn = turn or (lambda: external_turn(settings))
        self.fragments = fragments
        self.hub = hub
        self.live = live  # where recordings publish LL-HLS parts (the server's live edge)
        # Called with a session's final stats (plus "current": whether it was still the
        # channel's session when it ended); worker processes report them to the server.
        self.on_session_end: Callable[[dict[str, Any]], None] | None = None
        self.masters: dict[str, MasterSession] = {}
        self.viewers: dict[str, dict[str, ViewerSession]] = {}
        self.audio: dict[str, ChannelAudio] = {}
        self.ended: list[dict[str, Any]] = []  # stats of recently ended sessions
        self._numbers = itertools.count(number_base + 1)
        self._tasks: set[asyncio.Task[Any]] = set()
        # Masters' joins not turned into sessions yet (channel ARN → the latest join).
        self._pending: dict[str, tuple[Channel, Stream]] = {}
        self._creator: asyncio.Task[None] | None = None
        self._pool: ThreadPoolExecutor | None = None
        self._ports: net.PortRange | None = None
        # One DTLS certificate for the sessions of this process, replaced daily.
        self.certificates = CertificateRotation()

    # -- lifecycle -------------------------------------------------------------------------------

    async def start(self) -> None:
        tap.check_internals()
        tap.register_h264_profiles()
        tap.install_setup_shortcuts()
        net.configure_sockets()
        self._pool = ThreadPoolExecutor(
            max(2, os.cpu_count() or 2), thread_name_prefix="openkvs-media"
        )
        s = self.settings
        if s.webrtc_port_min and s.webrtc_port_max:
            self._ports = net.PortRange(s.webrtc_port_min, s.webrtc_port_max)
            self._ports.install(asyncio.get_running_loop())
        self.hub.set_storage_endpoint(self)

    async def stop(self) -> None:
        self.hub.set_storage_endpoint(None)
        self._pending.clear()
        if self._creator is not None:
            self._creator.cancel()
        sessions: list[Any] = list(self.masters.values())
        for viewers in self.viewers.values():
            sessions += list(viewers.values())
        await asyncio.gather(
            *(s.stop("server shutting down") for s in sessions), return_exceptions=True
        )
        for task in list(self._tasks):
            task.cancel()
        if self._ports is not None:
            self._ports.uninstall()
        if self._pool is not None:
            self._pool.shutdown(wait=True)

    def _spawn(self, coro: Any, name: str) -> asyncio.Task[Any]:
        task: asyncio.Task[Any] = asyncio.ensure_future(coro)
        task.set_name(name)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    def ice_servers(self) -> list[Any]:
        s = self.settings
        access = self.turn()
        if access is None:
            return net.ice_servers(s, None)

        def mint(client_id: str) -> list[dict[str, Any]]:
            # The server's own allocations live as long as a session may: a day.
            assert access is not None
            return access.ice_server_list(client_id, max(s.turn_ttl, 86_400), clock.now())

        return net.ice_servers(s, mint)

    # -- StorageSessions (the API side) ------------------------------------------------------------

    async def join_master(self, channel: Channel, stream: Stream) -> None:
        """Accept a master's join: the channel's running session is replaced at once (it sends
        nothing more), and the new session is created on the loop's next turn. Joins that
        arrive before that turn (a camera retrying, a burst over many channels) coalesce into
        one session: only the latest is ever created, so a master gets one offer, and a burst
        costs one peer connection per channel rather than one per call."""
        assert self._pool is not None, "storage sessions not started"
        arn = channel.arn
        self._pending[arn] = (channel, stream)
        previous = self.masters.get(arn)
        if previous is not None:
            previous.stop("replaced by a newer JoinStorageSession")
        if self._creator is None or self._creator.done():
            self._creator = asyncio.ensure_future(self._create_pending())
            self._creator.set_name("storage sessions: create")

    async def _create_pending(self) -> None:
        while self._pending:
            arn = next(iter(self._pending))
            channel, stream = self._pending.pop(arn)
            try:
                offering = self._create_master(channel, stream)
            except Exception:  # noqa: BLE001 - one channel's failure must not stop the others
                logger.exception("[%s] could not create the storage session", channel.name)
            else:
                # One offer at a time (see OFFER_TURN). Joins that come in meanwhile wait in
                # _pending and coalesce; one that replaces this session ends the wait at once.
                await asyncio.wait({offering}, timeout=OFFER_TURN)
            await asyncio.sleep(0)  # joins that came in meanwhile are seen before the next one

    def _create_master(self, channel: Channel, stream: Stream) -> asyncio.Task[Any]:
        assert self._pool is not None
        arn = channel.arn

        async def send(message_type: str, payload: str | None) -> None:
            await self.hub.send(arn, None, message_type, payload)

        def is_current() -> bool:
            return self.masters.get(arn) is session and arn not in self._pending

        session = MasterSession(
            channel=channel,
            stream=stream,
            settings=self.settings,
            send=send,
            fragments=self.fragments,
            pool=self._pool,
            ice_servers=self.ice_servers(),
            on_end=self._master_ended,
            number=next(self._numbers),
            is_current=is_current,
            audio=self._channel_audio(arn),
            certificate=self.certificates.current(),
            live=self.live,
        )
        previous = self.masters.get(arn)
        self.masters[arn] = session
        for viewer in self.viewers.get(arn, {}).values():
            viewer.attach_master(session)
        if previous is not None:
            previous.stop("replaced by a newer JoinStorageSession")
        return self._spawn(session.start(), f"offer {channel.name}")

    async def join_viewer(self, channel: Channel, stream: Stream, client_id: str) -> None:
        assert self._pool is not None, "storage sessions not started"
        arn = channel.arn
        viewers = self.viewers.setdefault(arn, {})
        previous = viewers.get(client_id)
        if previous is None and len(viewers) >= self.settings.storage_max_viewers:
            raise ClientLimitExceededException(MAX_VIEWERS_MESSAGE)

        async def send(message_type: str, payload: str | None) -> None:
            await self.hub.send(arn, client_id, message_type, payload)

        def is_current() -> bool:
            return self.viewers.get(arn, {}).get(client_id) is session

        session = ViewerSession(
            channel=channel,
            client_id=client_id,
            settings=self.settings,
            send=send,
            ice_servers=self.ice_servers(),
            on_end=self._viewer_ended,
            number=next(self._numbers),
            audio=self._channel_audio(arn),
            pool=self._pool,
            is_current=is_current,
            certificate=self.certificates.current(),
        )
        viewers[client_id] = session
        if previous is not None:
            previous.stop("replaced by a newer JoinStorageSessionAsViewer")
        master = self.masters.get(arn)
        if master is not None:
            session.attach_master(master)
        self._spawn(session.start(), f"offer {channel.name}/{client_id}")

    async def channel_closed(self, channel: Channel) -> None:
        self._pending.pop(channel.arn, None)
        master = self.masters.get(channel.arn)
        if master is not None:
            master.stop("channel deleted or media storage disabled")
        for viewer in list(self.viewers.get(channel.arn, {}).values()):
            viewer.stop("channel deleted or media storage disabled")

    def _report(self, stats: dict[str, Any], current: bool) -> None:
        self.ended.append(stats)
        del self.ended[:-100]
        if self.on_session_end is not None:
            self.on_session_end({**stats, "current": current, "channel_arn": stats["channel_arn"]})

    async def _master_ended(self, session: MasterSession, reason: str) -> None:
        # A session replaced by a join that is still pending is not the channel's current one
        # (the server routes the channel's messages by this, in worker mode).
        arn = session.channel.arn
        current = self.masters.get(arn) is session and arn not in self._pending
        self._report({**session.stats(), "diagnostics": session.timeline.as_dict()}, current)
        if self.masters.get(session.channel.arn) is session:
            del self.masters[session.channel.arn]
            for viewer in self.viewers.get(session.channel.arn, {}).values():
                viewer.detach_master(session)
        self._forget_audio(session.channel.arn)

    async def _viewer_ended(self, session: ViewerSession, reason: str) -> None:
        viewers = self.viewers.get(session.channel.arn, {})
        current = viewers.get(session.client_id) is session
        self._report({**session.stats(), "diagnostics": session.timeline.as_dict()}, current)
        if viewers.get(session.client_id) is session:
            del viewers[session.client_id]
        if not viewers:
            self.viewers.pop(session.channel.arn, None)
        self._forget_audio(session.channel.arn)

    def _channel_audio(self, arn: str) -> ChannelAudio:
        audio = self.audio.get(arn)
        if audio is None:
            # The viewers' audio goes into the recording only when it is re-encoded (AAC).
            audio = self.audio[arn] = ChannelAudio(recording=self.settings.storage_audio == "aac")
        return audio

    def _forget_audio(self, arn: str) -> None:
        if arn not in self.masters and arn not in self._pending and not self.viewers.get(arn):
            self.audio.pop(arn, None)

    # -- StorageEndpoint (the signaling side) ----------------------------------------------------

    async def on_message(
        self, channel_arn: str, client_id: str | None, message_type: str, payload: str
    ) -> None:
        if client_id is None:
            session: Any = self.masters.get(channel_arn)
            who = "the master"
        else:
            session = self.viewers.get(channel_arn, {}).get(client_id)
            who = f"viewer {client_id}"
        if session is None or session.state.value == "ended":
            raise InvalidArgumentException(
                f"No storage session is waiting for {who}; call JoinStorageSession first."
            )
        await session.on_message(message_type, payload)

    async def on_disconnect(self, channel_arn: str, client_id: str | None) -> None:
        if client_id is None:
            master = self.masters.get(channel_arn)
            if master is not None and master.state.value != "new":
                master.stop("the master's signaling connection closed")
        else:
            viewer = self.viewers.get(channel_arn, {}).get(client_id)
            if viewer is not None:
                viewer.stop("the viewer's signaling connection closed")

    # -- observability -----------------------------------------------------------------------------

    def stats(self) -> list[dict[str, Any]]:
        out = [m.stats() for m in self.masters.values()]
        for viewers in self.viewers.values():
            out += [v.stats() for v in viewers.values()]
        return out

    def describe(self, channel_arn: str, *, ended: bool = True) -> list[dict[str, Any]]:
        """Diagnostics of the channel's current sessions, then (``ended``) its recent ended
        ones, newest first."""
        live: list[Any] = [self.masters.get(channel_arn)]
        live += list(self.viewers.get(channel_arn, {}).values())
        out = [s.timeline.as_dict() for s in live if s is not None]
        if ended:
            out += recent_diagnostics(self.ended, channel_arn)
        return out

    async def wait_idle(self) -> None:
        """Wait until background offer tasks finished (tests)."""
        with contextlib.suppress(Exception):
            while self._creator is not None and not self._creator.done():
                await self._creator
            await asyncio.gather(*list(self._tasks))
