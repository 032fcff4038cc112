"""Storage sessions spread over worker processes (``webrtc_workers`` > 0).

One event loop carries a few dozen storage sessions; a machine has more cores than that. With
workers, the server process keeps the API, signaling and the fragment index, and each worker
process runs a :class:`StorageSessionManager` of its own for the channels assigned to it (all
sessions of a channel live in one worker, since viewers take the master's video in-process).

The two sides talk over a socket pair with length-prefixed JSON messages::

    server → worker   join_master, join_viewer, on_message, on_disconnect, channel_closed,
                      stats, stop                                     (requests, answered)
    worker → server   send (signaling), next_number, commit (a fragment whose blob the worker
                      has made durable), ended (a session's final stats), live_open,
                      live_publish, live_finish, live_abandon (LL-HLS parts of the fragment
                      being recorded, for the server's live edge)

A worker writes fragment blobs itself (fsync + rename into the shared media folder) and asks the
server to commit the metadata row, so the server stays the only writer of the index and wakes
live readers. Service errors raised in a worker travel back by name and are raised again here,
so STATUS_RESPONSEs and API errors are the same as in-process. A worker that dies is replaced;
its sessions end (their committed fragments stay).

LL-HLS parts travel as the fragments' rows do: each step is a request, answered once the
server's live edge has it, so a recording has at most one step in flight; a part's frames go
base64-encoded, and a part too large for one message (``MAX_PART_BYTES``) has its fragment's
parts withdrawn instead (its segment is listed as usual once stored).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import dataclasses
import itertools
import json
import logging
import multiprocessing
import os
import socket
import struct
from collections.abc import Awaitable, Callable
from typing import Any

from .. import clock, errors, heap, logwriter
from ..config import Settings
from ..control.fragments import FragmentStore, blob_key
from ..playback.livecut import PartSink
from ..playback.liveedge import Part
from ..playback.mkv import Frame
from ..records import Channel, Fragment, Stream
from ..signaling.ice import external_turn
from ..signaling.turn import TurnAccess

logger = logging.getLogger(__name__)

MAX_MESSAGE = 1 << 20
MAX_PART_BYTES = 600_000  # a part's frames, before base64 (4/3 of it must fit a message)
_HEADER = struct.Struct(">I")


def _error_classes() -> dict[str, type[errors.ServiceError]]:
    out: dict[str, type[errors.ServiceError]] = {}
    stack: list[type[errors.ServiceError]] = [errors.ServiceError]
    while stack:
        cls = stack.pop()
        out.setdefault(cls.code, cls)
        stack.extend(cls.__subclasses__())
    return out


class RemoteError(Exception):
    """An unexpected failure on the other side of a link."""


Handler = Callable[[str, dict[str, Any]], Awaitable[Any]]


class Link:
    """Requests, replies and notifications over one stream socket."""

    def __init__(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, handler: Handler
    ) -> None:
        self._reader = reader
        self._writer = writer
        self._handler = handler
        self._ids = itertools.count(1)
        self._waiting: dict[int, asyncio.Future[Any]] = {}
        self._tasks: set[asyncio.Task[Any]] = set()
        self._errors = _error_classes()
        self.closed = asyncio.Event()

    def _write(self, message: dict[str, Any]) -> None:
        data = json.dumps(message, separators=(",", ":")).encode()
        if len(data) > MAX_MESSAGE:
            raise ValueError(f"message of {len(data)} bytes is too large")
        self._writer.write(_HEADER.pack(len(data)) + data)

    async def request(self, op: str, **args: Any) -> Any:
        if self.closed.is_set():
            raise RemoteError("the link is closed")
        rid = next(self._ids)
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._waiting[rid] = future
        self._write({"id": rid, "op": op, "args": args})
        await self._writer.drain()
        return await future

    def notify(self, op: str, **args: Any) -> None:
        if not self.closed.is_set():
            self._write({"op": op, "args": args})

    async def run(self) -> None:
        try:
            while True:
                header = await self._reader.readexactly(_HEADER.size)
                (size,) = _HEADER.unpack(header)
                if size > MAX_MESSAGE:
                    raise ValueError("oversized message")
                message = json.loads(await self._reader.readexactly(size))
                if "re" in message:
                    self._settle(message)
                else:
                    task = asyncio.ensure_future(self._serve(message))
                    self._tasks.add(task)
                    task.add_done_callback(self._tasks.discard)
        except (asyncio.IncompleteReadError, ConnectionError, ValueError):
            pass
        finally:
            self.closed.set()
            for future in self._waiting.values():
                if not future.done():
                    future.set_exception(RemoteError("the link closed"))
            self._waiting.clear()

    def _settle(self, message: dict[str, Any]) -> None:
        future = self._waiting.pop(message["re"], None)
        if future is None or future.done():
            return
        err = message.get("error")
        if err is None:
            future.set_result(message.get("result"))
        elif err.get("code") in self._errors:
            future.set_exception(self._errors[err["code"]](err.get("message", "")))
        else:
            future.set_exception(RemoteError(err.get("message", "remote failure")))

    async def _serve(self, message: dict[str, Any]) -> None:
        rid = message.get("id")
        try:
            result = await self._handler(message["op"], message.get("args") or {})
            reply: dict[str, Any] = {"re": rid, "result": result}
        except errors.ServiceError as exc:
            reply = {"re": rid, "error": {"code": exc.code, "message": exc.message}}
        except Exception as exc:  # noqa: BLE001 - reported to the requester, logged here
            logger.exception("link request %s failed", message.get("op"))
            reply = {"re": rid, "error": {"code": None, "message": str(exc)}}
        if rid is not None and not self.closed.is_set():
            self._write(reply)
            with contextlib.suppress(ConnectionError):
                await self._writer.drain()

    async def close(self) -> None:
        self._writer.close()
        with contextlib.suppress(Exception):
            await self._writer.wait_closed()


def _part_to_json(part: Part) -> dict[str, Any]:
    return {
        "index": part.index,
        "frames": {
            str(track): [[f.pts_ns, base64.b64encode(f.data).decode(), f.key] for f in frames]
            for track, frames in part.frames.items()
        },
        "start_ns": part.start_ns,
        "end_ns": part.end_ns,
        "independent": part.independent,
        "published_ms": part.published_ms,
    }


def _part_from_json(d: dict[str, Any]) -> Part:
    return Part(
        index=int(d["index"]),
        frames={
            int(track): tuple(Frame(int(p), base64.b64decode(b), bool(k)) for p, b, k in frames)
            for track, frames in d["frames"].items()
        },
        start_ns=int(d["start_ns"]),
        end_ns=int(d["end_ns"]),
        independent=bool(d["independent"]),
        published_ms=int(d["published_ms"]),
    )


def _channel(d: dict[str, Any]) -> Channel:
    return Channel(**d)


def _stream(d: dict[str, Any]) -> Stream:
    return Stream(**d)


# -- the server side -------------------------------------------------------------------------


@dataclasses.dataclass
class _Worker:
    index: int
    process: multiprocessing.process.BaseProcess
    link: Link
    task: asyncio.Task[None]


class WorkerPool:
    """StorageSessions + StorageEndpoint that forwards to worker processes."""

    def __init__(
        self,
        settings: Settings,
        fragments: FragmentStore,
        hub: Any,
        *,
        turn: Callable[[], TurnAccess | None] | None = None,
        live: PartSink | None = None,
    ) -> None:
        self.settings = settings
        self.live = live  # the server's live edge, which the workers' recordings feed
        self.turn = turn or (lambda: external_turn(settings))
        self.fragments = fragments
        self.hub = hub
        self.workers: list[_Worker | None] = [None] * settings.webrtc_workers
        self.assigned: dict[str, int] = {}  # channel ARN → worker index
        self.masters: dict[str, int] = {}  # channel ARN → worker index, while a master session runs
        self.viewers: dict[str, set[str]] = {}
        self.ended: list[dict[str, Any]] = []
        # Called with each session's final stats, as the in-process manager's hook is.
        self.on_session_end: Callable[[dict[str, Any]], None] | None = None
        self._stopping = False
        self._ctx = multiprocessing.get_context("spawn")

    async def start(self) -> None:
        for i in range(len(self.workers)):
            await self._spawn(i)
        self.hub.set_storage_endpoint(self)

    async def _spawn(self, index: int) -> None:
        parent, child = socket.socketpair()
        process = self._ctx.Process(
            target=worker_main,
            args=(self.settings, child, index, self.turn()),
            name=f"openkvs-storage-{index}",
            daemon=True,
        )
        process.start()
        child.close()
        reader, writer = await asyncio.open_unix_connection(sock=parent)

        async def handle(op: str, args: dict[str, Any]) -> Any:
            return await self._from_worker(index, op, args)

        link = Link(reader, writer, handle)
        task = asyncio.ensure_future(self._watch(index, link))
        self.workers[index] = _Worker(index, process, link, task)
        await link.request("ping")
        logger.info("storage worker %d started (pid %s)", index, process.pid)

    async def _watch(self, index: int, link: Link) -> None:
        await link.run()
        if self._stopping:
            return
        await link.close()
        logger.error("storage worker %d exited; its sessions ended, starting a new one", index)
        for arn in [a for a, i in self.assigned.items() if i == index]:
            self.assigned.pop(arn, None)
            self.masters.pop(arn, None)
            self.viewers.pop(arn, None)
        worker = self.workers[index]
        if worker is not None:
            with contextlib.suppress(Exception):
                worker.process.join(1)
        self.workers[index] = None
        await self._spawn(index)

    async def stop(self) -> None:
        self._stopping = True
        self.hub.set_storage_endpoint(None)
        for worker in self.workers:
            if worker is None:
                continue
            with contextlib.suppress(Exception):
                await asyncio.wait_for(worker.link.request("stop"), 30)
            await worker.link.close()
            await asyncio.to_thread(worker.process.join, 10)
            if worker.process.is_alive():
                worker.process.kill()
            worker.task.cancel()

    def _worker_for(self, arn: str, create: bool) -> _Worker | None:
        index = self.assigned.get(arn)
        if index is None:
            if not create:
                return None
            loads = [0] * len(self.workers)
            for i in self.assigned.values():
                loads[i] += 1
            index = min(range(len(self.workers)), key=lambda i: loads[i])
            self.assigned[arn] = index
        return self.workers[index]

    def _release(self, arn: str) -> None:
        if arn not in self.masters and not self.viewers.get(arn):
            self.assigned.pop(arn, None)
            self.viewers.pop(arn, None)

    async def _from_worker(self, index: int, op: str, args: dict[str, Any]) -> Any:
        if op == "send":
            await self.hub.send(
                args["channel_arn"], args["client_id"], args["type"], args["payload"]
            )
            return None
        if op == "next_number":
            return await self.fragments.next_number(int(args["stream_id"]))
        if op == "commit":
            await self.fragments.commit(Fragment(**args["fragment"]))
            return None
        if op.startswith("live_"):
            return await self._live(op, args)
        if op == "ended":
            stats = args["stats"]
            self.ended.append(stats)
            del self.ended[:-100]
            if self.on_session_end is not None:
                self.on_session_end(stats)
            arn = stats["channel_arn"]
            if stats.get("current"):
                if stats["role"] == "master":
                    self.masters.pop(arn, None)
                else:
                    self.viewers.get(arn, set()).discard(stats.get("client_id", ""))
            self._release(arn)
            return None
        raise errors.InvalidArgumentException(f"unknown worker request {op}")

    async def _live(self, op: str, args: dict[str, Any]) -> Any:
        live = self.live
        stream_id, number = int(args["stream_id"]), int(args["number"])
        if op == "live_open":
            return live is not None and await live.open(
                stream_id,
                number,
                server_ts=int(args["server_ts"]),
                producer_ts=int(args["producer_ts"]),
            )
        if live is None:
            return None
        if op == "live_publish":
            part = _part_from_json(args["part"])
            await live.publish(stream_id, number, part, last=bool(args["last"]))
        elif op == "live_finish":
            await live.finish(stream_id, number)
        elif op == "live_abandon":
            await live.abandon(stream_id, number)
        else:
            raise errors.InvalidArgumentException(f"unknown worker request {op}")
        return None

    # -- StorageSessions -----------------------------------------------------------------------

    async def join_master(self, channel: Channel, stream: Stream) -> None:
        worker = self._worker_for(channel.arn, create=True)
        if worker is None:
            raise errors.ClientLimitExceededException("The storage workers are restarting.")
        await worker.link.request(
            "join_master", channel=dataclasses.asdict(channel), stream=dataclasses.asdict(stream)
        )
        self.masters[channel.arn] = worker.index

    async def join_viewer(self, channel: Channel, stream: Stream, client_id: str) -> None:
        worker = self._worker_for(channel.arn, create=True)
        if worker is None:
            raise errors.ClientLimitExceededException("The storage workers are restarting.")
        try:
            await worker.link.request(
                "join_viewer",
                channel=dataclasses.asdict(channel),
                stream=dataclasses.asdict(stream),
                client_id=client_id,
            )
        except errors.ServiceError:
            self._release(channel.arn)
            raise
        self.viewers.setdefault(channel.arn, set()).add(client_id)

    async def channel_closed(self, channel: Channel) -> None:
        worker = self._worker_for(channel.arn, create=False)
        if worker is not None:
            await worker.link.request("channel_closed", channel=dataclasses.asdict(channel))

    # -- StorageEndpoint -----------------------------------------------------------------------

    async def on_message(
        self, channel_arn: str, client_id: str | None, message_type: str, payload: str
    ) -> None:
        worker = self._worker_for(channel_arn, create=False)
        if worker is None:
            who = "the master" if client_id is None else f"viewer {client_id}"
            raise errors.InvalidArgumentException(
                f"No storage session is waiting for {who}; call JoinStorageSession first."
            )
        await worker.link.request(
            "on_message",
            channel_arn=channel_arn,
            client_id=client_id,
            type=message_type,
            payload=payload,
        )

    async def on_disconnect(self, channel_arn: str, client_id: str | None) -> None:
        worker = self._worker_for(channel_arn, create=False)
        if worker is not None:
            worker.link.notify("on_disconnect", channel_arn=channel_arn, client_id=client_id)

    async def describe(self, channel_arn: str) -> list[dict[str, Any]]:
        """Diagnostics of the channel's current sessions (from its worker), then its recent
        ended ones (reported to this side when they ended)."""
        from .diagnostics import recent_diagnostics

        worker = self._worker_for(channel_arn, create=False)
        live = await worker.link.request("describe", channel_arn=channel_arn) if worker else []
        return list(live) + recent_diagnostics(self.ended, channel_arn)

    async def stats(self) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = []
        for worker in self.workers:
            if worker is not None:
                out += await worker.link.request("stats")
        return out


# -- the worker side -------------------------------------------------------------------------


class _RemoteHub:
    def __init__(self, link: Link) -> None:
        self.link = link

    async def send(
        self, channel_arn: str, client_id: str | None, message_type: str, payload: str | None
    ) -> None:
        self.link.notify(
            "send",
            channel_arn=channel_arn,
            client_id=client_id,
            type=message_type,
            payload=payload,
        )

    def set_storage_endpoint(self, ep: object) -> None:
        return None


class _RemoteLive:
    """The server's live edge, over the link (``livecut.PartSink``)."""

    def __init__(self, link: Link) -> None:
        self.link = link

    async def open(self, stream_id: int, number: int, *, server_ts: int, producer_ts: int) -> bool:
        return bool(
            await self.link.request(
                "live_open",
                stream_id=stream_id,
                number=number,
                server_ts=server_ts,
                producer_ts=producer_ts,
            )
        )

    async def publish(self, stream_id: int, number: int, part: Part, *, last: bool) -> None:
        size = sum(len(f.data) for frames in part.frames.values() for f in frames)
        if size > MAX_PART_BYTES:
            logger.info("a part of %d bytes is too large to send; parts withdrawn", size)
            await self.abandon(stream_id, number)
            raise ValueError("part too large")
        await self.link.request(
            "live_publish", stream_id=stream_id, number=number, part=_part_to_json(part), last=last
        )

    async def finish(self, stream_id: int, number: int) -> None:
        await self.link.request("live_finish", stream_id=stream_id, number=number)

    async def abandon(self, stream_id: int, number: int) -> None:
        await self.link.request("live_abandon", stream_id=stream_id, number=number)


class _RemoteFragments:
    """Writes the blob here, durably, and has the server commit the row."""

    def __init__(self, link: Link, blobs: Any) -> None:
        self.link = link
        self.blobs = blobs

    async def next_number(self, stream_id: int) -> int:
        return int(await self.link.request("next_number", stream_id=stream_id))

    async def append(
        self,
        stream: Stream,
        data: bytes,
        *,
        producer_ts_ms: int,
        server_ts_ms: int | None = None,
        duration_ms: int,
        number: int | None = None,
    ) -> Fragment:
        server_ts = clock.now_ms() if server_ts_ms is None else server_ts_ms
        if number is None:
            number = await self.next_number(stream.id)
        fragment = Fragment(
            stream_id=stream.id,
            number=number,
            producer_ts=producer_ts_ms,
            server_ts=server_ts,
            duration_ms=max(0, duration_ms),
            size=len(data),
            blob_key=blob_key(stream.id, server_ts, number),
        )
        await self.blobs.put(fragment.blob_key, data)
        await self.link.request("commit", fragment=dataclasses.asdict(fragment))
        return fragment


def worker_main(
    settings: Settings, sock: socket.socket, index: int, turn: TurnAccess | None = None
) -> None:
    """Entry point of a storage worker process."""
    logwriter.setup(
        getattr(logging, settings.log_level.upper(), logging.INFO),
        fmt=f"%(asctime)s %(levelname)s %(name)s[w{index}]: %(message)s",
    )
    for noisy in ("aioice", "aiortc"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    try:
        import uvloop

        uvloop.install()
    except ImportError:
        pass
    try:
        with contextlib.suppress(KeyboardInterrupt):
            asyncio.run(_worker(settings, sock, index, turn))
    finally:
        logwriter.stop()


async def _worker(
    settings: Settings, sock: socket.socket, index: int, turn: TurnAccess | None
) -> None:
    from ..store.factory import blob_store
    from .manager import StorageSessionManager

    blobs = blob_store(settings)
    stop = asyncio.Event()
    manager: StorageSessionManager | None = None

    async def handle(op: str, args: dict[str, Any]) -> Any:
        assert manager is not None
        if op == "ping":
            return os.getpid()
        if op == "join_master":
            await manager.join_master(_channel(args["channel"]), _stream(args["stream"]))
        elif op == "join_viewer":
            await manager.join_viewer(
                _channel(args["channel"]), _stream(args["stream"]), args["client_id"]
            )
        elif op == "on_message":
            await manager.on_message(
                args["channel_arn"], args["client_id"], args["type"], args["payload"]
            )
        elif op == "on_disconnect":
            await manager.on_disconnect(args["channel_arn"], args["client_id"])
        elif op == "channel_closed":
            await manager.channel_closed(_channel(args["channel"]))
        elif op == "stats":
            return manager.stats()
        elif op == "describe":
            return manager.describe(args["channel_arn"], ended=False)
        elif op == "stop":
            await manager.stop()
            stop.set()
        else:
            raise errors.InvalidArgumentException(f"unknown request {op}")
        return None

    reader, writer = await asyncio.open_unix_connection(sock=sock)
    link = Link(reader, writer, handle)
    manager = StorageSessionManager(
        settings,
        _RemoteFragments(link, blobs),
        _RemoteHub(link),
        number_base=(index + 1) * 1_000_000_000,
        turn=lambda: turn,
        live=_RemoteLive(link),
    )
    manager.on_session_end = lambda stats: link.notify("ended", stats=stats)
    await manager.start()
    heap.settle()
    runner = asyncio.ensure_future(link.run())
    closed = asyncio.ensure_future(link.closed.wait())
    stopped = asyncio.ensure_future(stop.wait())
    await asyncio.wait({closed, stopped}, return_when=asyncio.FIRST_COMPLETED)
    if not stop.is_set():
        await manager.stop()  # the server went away: flush what we have
    await asyncio.sleep(0.1)  # let the last replies go out
    await link.close()
    runner.cancel()
    await blobs.stop()
