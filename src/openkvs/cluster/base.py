"""The coordination interfaces, and the parts shared by their implementations.

Each interface has an in-process implementation (``local.py``, one node) and a Redis one
(``redis.py``, nodes sharing one Redis); ``factory.py`` picks one from ``bus_url``.
"""

from __future__ import annotations

import abc
import asyncio
import dataclasses
import logging
import secrets
from collections.abc import Awaitable, Callable, Iterable
from typing import Any, Protocol

from ..config import ConfigError

logger = logging.getLogger(__name__)

# A node's heartbeat key lives this long; the node refreshes it every third of that.
NODE_TTL = 15.0


class ClusterUnavailable(ConfigError):
    """The coordination bus named by ``bus_url`` cannot be reached at startup."""


@dataclasses.dataclass(frozen=True)
class NodeInfo:
    """One running openkvs process."""

    node_id: str
    address: str | None = None  # where cameras and viewers reach it for media (node_address)
    port: int | None = None
    started: float = 0.0  # epoch seconds


def new_node_id() -> str:
    """A random id per process start: a restarted node is a new node."""
    return "n" + secrets.token_hex(8)


@dataclasses.dataclass(frozen=True)
class Lease:
    """A held lease: ``token`` names the holder (``<node id>:<random>``)."""

    name: str
    token: str
    ttl: float

    @property
    def node_id(self) -> str:
        return self.token.partition(":")[0]


def lease_token(node_id: str) -> str:
    return f"{node_id}:{secrets.token_hex(12)}"


class FragmentNotifier(Protocol):
    """Wakes the readers that wait for a stream's next fragment (GetMedia live tail), on every
    node."""

    def changed(self, stream_id: int) -> asyncio.Event:
        """An event set at the next fragment of ``stream_id`` committed on any node (take a new
        one after each wake-up)."""
        ...

    def notify(self, stream_id: int, number: int) -> None:
        """A fragment of ``stream_id`` was committed here: wake this node's waiters now and
        tell the other nodes (never blocks, never fails the commit)."""
        ...

    def wake_all(self) -> None:
        """Wake every waiter of this node (shutdown)."""
        ...


YieldCallback = Callable[[str], None]


class Leases(Protocol):
    """Named leases held by one owner at a time, expiring unless renewed (so a dead node's
    lease frees itself)."""

    async def acquire(self, name: str, ttl: float) -> Lease | None:
        """The lease, or None while someone holds it."""
        ...

    async def renew(self, lease: Lease) -> bool:
        """Extend a held lease by its ttl; False when it is no longer ours (expired, taken)."""
        ...

    async def release(self, lease: Lease) -> bool:
        """Give the lease up; False (and nothing changes) when it is not ours."""
        ...

    async def holder(self, name: str) -> str | None:
        """The node id holding ``name``, or None."""
        ...

    async def ask_to_yield(self, name: str) -> None:
        """Ask whoever holds ``name`` to consider giving it up (its ``on_yield`` callbacks
        decide)."""
        ...

    def on_yield(self, callback: YieldCallback) -> None:
        """Call ``callback(name)`` on this node when another asks the holder of ``name`` to
        yield."""
        ...


class SessionRegistry(Protocol):
    """Which node runs each channel's storage sessions (its master session and the viewer
    sessions attached to it). A claim of a node whose heartbeat is gone counts as none, so a
    dead node's channels are taken over by the next join."""

    async def owner(self, channel_arn: str) -> str | None:
        """The live node that claimed the channel's sessions, or None."""
        ...

    async def claim(self, channel_arn: str, *, instead_of: str | None = None) -> str:
        """Claim the channel's sessions for this node, atomically: unless another live node
        (other than ``instead_of``, found unreachable) holds them. Return the node that runs
        them (this one, or the live owner)."""
        ...


class NodeRegistry(Protocol):
    """The live nodes: each refreshes a heartbeat that expires when it stops."""

    async def live_nodes(self) -> list[NodeInfo]: ...

    async def is_alive(self, node_id: str) -> bool: ...


class DutyLock(Protocol):
    """Background duties that one node at a time runs (retention, sweeps)."""

    async def run(self, duty: str, period: float, work: Callable[[], Awaitable[object]]) -> bool:
        """Run ``work`` unless another node ran ``duty`` within the last ``period`` seconds (or
        runs it now); True when it ran here."""
        ...


# A duty's lease lasts this fraction of its period: a node ticking every period finds the
# lease it took itself expired, and nodes ticking at other phases find it held.
DUTY_LEASE_FRACTION = 0.9


class LeaseDutyLock:
    """A DutyLock on leases: a duty takes the lease ``duty:<name>`` for most of its period
    (renewed while the work runs) and leaves it to expire."""

    def __init__(self, leases: Leases) -> None:
        self._leases = leases

    async def run(self, duty: str, period: float, work: Callable[[], Awaitable[object]]) -> bool:
        ttl = max(period * DUTY_LEASE_FRACTION, 0.05)
        lease = await self._leases.acquire(f"duty:{duty}", ttl)
        if lease is None:
            logger.debug("duty %s runs on another node", duty)
            return False
        keeper = asyncio.create_task(keep_renewed(self._leases, lease), name=f"duty-{duty}")
        try:
            await work()
        finally:
            keeper.cancel()
            # Waits for the keeper without taking its cancellation for ours: a caller cancelled
            # here (a retention loop being stopped) still ends.
            await asyncio.wait([keeper])
        return True


async def keep_renewed(
    leases: Leases, lease: Lease, on_lost: Callable[[], None] | None = None
) -> None:
    """Renew ``lease`` every third of its ttl until cancelled; call ``on_lost`` (and return)
    once it is no longer ours or could not be renewed before it expired."""
    interval = lease.ttl / 3
    loop = asyncio.get_running_loop()
    renewed = loop.time()
    while True:
        await asyncio.sleep(interval)
        try:
            ok = await leases.renew(lease)
        except Exception as exc:  # noqa: BLE001 - retried until the lease would have expired
            logger.warning("renewing lease %s failed: %s", lease.name, exc or type(exc).__name__)
            ok = loop.time() - renewed < lease.ttl - interval
            if ok:
                continue
        if not ok:
            logger.warning("lease %s is lost", lease.name)
            if on_lost is not None:
                on_lost()
            return
        renewed = loop.time()


async def cancel_tasks(tasks: Iterable[asyncio.Task[Any]], *, every: float = 0.5) -> None:
    """Cancel ``tasks`` and wait until all have ended. A task that absorbed its cancellation
    (a client library may turn one into an error that a retry loop then survives) is cancelled
    again every ``every`` seconds."""
    pending = {t for t in tasks if not t.done()}
    while pending:
        for task in pending:
            task.cancel()
        _, pending = await asyncio.wait(pending, timeout=every)


class Cluster(abc.ABC):
    """This node's view of the cluster: its identity and the coordination parts."""

    node: NodeInfo
    notifier: FragmentNotifier
    leases: Leases
    sessions: SessionRegistry
    nodes: NodeRegistry
    duties: DutyLock

    @property
    @abc.abstractmethod
    def distributed(self) -> bool:
        """True when other processes take part (then state in this process is not the whole
        truth)."""

    @abc.abstractmethod
    async def start(self) -> None:
        """Connect (ClusterUnavailable when the bus cannot be reached) and start heartbeats."""

    @abc.abstractmethod
    async def stop(self, *, graceful: bool = True) -> None:
        """Stop; ``graceful=False`` leaves this node's keys to expire, as a crash would."""

    @abc.abstractmethod
    async def reachable(self) -> bool:
        """Whether the bus answers (readiness)."""
