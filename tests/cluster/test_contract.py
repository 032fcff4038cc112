"""The coordination contract, held by the in-process and the Redis implementation alike: two
nodes of one cluster see each other's fragments, leases, duties, claims and heartbeats."""

from __future__ import annotations

import asyncio
import time

import pytest

from openkvs.cluster.base import DutyLock, Lease, lease_token
from openkvs.control.retention import RetentionTask

from ..engines import redis_url
from .conftest import MakeNode

WAIT = 3.0  # seconds a cross-node message may take at most, even on a loaded machine


# -- fragment notifications --------------------------------------------------------------------


async def test_fragment_wakes_a_waiter_on_another_node(make_node: MakeNode) -> None:
    a, b = await make_node(), await make_node()
    waiting = b.notifier.changed(7)
    other = b.notifier.changed(8)
    started = time.perf_counter()
    a.notifier.notify(7, 1234)
    await asyncio.wait_for(waiting.wait(), WAIT)
    latency = time.perf_counter() - started
    assert latency < 1.0
    assert not other.is_set()
    # The event fired is spent: the next wait takes a new one, woken by the next fragment.
    again = b.notifier.changed(7)
    assert again is not waiting and not again.is_set()
    a.notifier.notify(7, 1235)
    await asyncio.wait_for(again.wait(), WAIT)


async def test_fragment_wakes_this_nodes_waiter_at_once(make_node: MakeNode) -> None:
    a = await make_node()
    waiting = a.notifier.changed(3)
    a.notifier.notify(3, 1)
    assert waiting.is_set()  # no round trip through the bus for this node's own readers


async def test_many_streams_each_wake_only_their_waiters(make_node: MakeNode) -> None:
    a, b = await make_node(), await make_node()
    events = {sid: b.notifier.changed(sid) for sid in range(1, 41)}
    for sid in range(1, 41, 2):
        a.notifier.notify(sid, sid)
    await asyncio.wait_for(asyncio.gather(*(events[s].wait() for s in range(1, 41, 2))), WAIT)
    # Even streams: nothing was committed; a later odd commit still wakes nobody of them.
    a.notifier.notify(41, 41)
    await asyncio.sleep(0.2)
    assert not any(events[s].is_set() for s in range(2, 41, 2))


async def test_wake_all_ends_every_wait(make_node: MakeNode) -> None:
    a = await make_node()
    waits = [a.notifier.changed(s) for s in (1, 2, 3)]
    a.notifier.wake_all()
    assert all(e.is_set() for e in waits)


# -- leases ------------------------------------------------------------------------------------


async def test_lease_has_one_holder(make_node: MakeNode) -> None:
    a, b = await make_node(), await make_node()
    held = await a.leases.acquire("w", 5.0)
    assert held is not None and held.node_id == a.node.node_id
    assert await b.leases.acquire("w", 5.0) is None
    assert await a.leases.acquire("w", 5.0) is None  # not re-entrant either
    assert await b.leases.holder("w") == a.node.node_id
    assert await b.leases.holder("other") is None
    assert await a.leases.release(held)
    assert await b.leases.holder("w") is None
    taken = await b.leases.acquire("w", 5.0)
    assert taken is not None and taken.token != held.token


async def test_lease_cannot_be_released_or_renewed_by_another(make_node: MakeNode) -> None:
    a, b = await make_node(), await make_node()
    held = await a.leases.acquire("w", 5.0)
    assert held is not None
    forged = Lease("w", lease_token(b.node.node_id), 5.0)
    assert not await b.leases.release(forged)
    assert not await b.leases.renew(forged)
    assert not await a.leases.release(forged)
    assert await b.leases.holder("w") == a.node.node_id
    assert await b.leases.acquire("w", 5.0) is None


async def test_lease_expires_unless_renewed(make_node: MakeNode) -> None:
    a, b = await make_node(), await make_node()
    held = await a.leases.acquire("w", 0.6)
    assert held is not None
    for _ in range(3):  # 1.2 s in all: held throughout while renewed
        await asyncio.sleep(0.4)
        assert await a.leases.renew(held)
        assert await b.leases.acquire("w", 5.0) is None
    await asyncio.sleep(0.9)  # not renewed: a dead node's lease frees itself
    assert await a.leases.holder("w") is None
    taken = await b.leases.acquire("w", 5.0)
    assert taken is not None
    # The former holder can neither extend nor drop the lease that is now b's.
    assert not await a.leases.renew(held)
    assert not await a.leases.release(held)
    assert await a.leases.holder("w") == b.node.node_id


async def test_lease_holder_is_asked_to_yield(make_node: MakeNode) -> None:
    a, b = await make_node(), await make_node()
    asked: asyncio.Queue[str] = asyncio.Queue()
    a.leases.on_yield(asked.put_nowait)
    assert await a.leases.acquire("putmedia:5", 5.0) is not None
    await b.leases.ask_to_yield("putmedia:5")
    assert await asyncio.wait_for(asked.get(), WAIT) == "putmedia:5"


# -- duties ------------------------------------------------------------------------------------


# The duty period of the test: its lease is renewed every 0.3 s, so a loaded machine (an event
# loop or a Redis reply late by a tenth of a second) does not lose it.
DUTY_PERIOD = 1.0


async def test_duty_runs_once_across_nodes(make_node: MakeNode) -> None:
    a, b = await make_node(), await make_node()
    runs: list[str] = []

    def work(name: str) -> object:
        async def run() -> None:
            runs.append(name)
            await asyncio.sleep(DUTY_PERIOD * 1.2)  # longer than the lease: renewed while it runs

        return run

    ran = await asyncio.gather(
        a.duties.run("retention", DUTY_PERIOD, work("a")),
        b.duties.run("retention", DUTY_PERIOD, work("b")),
        b.duties.run("retention", DUTY_PERIOD, work("b")),
    )
    assert sorted(ran) == [False, False, True] and len(runs) == 1
    # Within the period after it ran, nobody runs it again...
    assert not await a.duties.run("retention", DUTY_PERIOD, work("a"))
    assert len(runs) == 1
    # ... after it, the next node to tick does; other duties are independent.
    await asyncio.sleep(DUTY_PERIOD * 1.5)
    assert await b.duties.run("retention", DUTY_PERIOD, work("b"))
    assert await a.duties.run("sweep", DUTY_PERIOD, work("a"))
    assert len(runs) == 3


async def test_failed_duty_still_ends_its_renewal(make_node: MakeNode) -> None:
    a, b = await make_node(), await make_node()

    async def boom() -> None:
        raise ValueError("duty failed")

    with pytest.raises(ValueError, match="duty failed"):
        await a.duties.run("d", 0.3, boom)
    await asyncio.sleep(0.4)  # the lease was left to expire, not renewed forever
    ran: list[int] = []

    async def ok() -> None:
        ran.append(1)

    assert await b.duties.run("d", 0.3, ok) and ran == [1]


async def test_cancelled_duty_stays_cancelled(make_node: MakeNode) -> None:
    # Cancelled while it waits for its lease renewal to end (the work done): the cancellation
    # reaches the caller; a retention loop stopped at that moment would otherwise run on.
    a = await make_node()
    loop = asyncio.get_running_loop()
    outer: asyncio.Task[bool] | None = None

    async def work() -> None:
        assert outer is not None
        loop.call_soon(outer.cancel)

    outer = asyncio.create_task(a.duties.run("d", 1.0, work))
    with pytest.raises(asyncio.CancelledError):
        await outer


class CountingRetention(RetentionTask):
    def __init__(self, interval: float, duties: DutyLock, runs: list[float]) -> None:
        super().__init__(None, interval, duties)  # type: ignore[arg-type]
        self.runs = runs

    async def run_once(self, every: float = 0.0) -> int:
        self.runs.append(asyncio.get_running_loop().time())
        return 0


async def test_retention_runs_on_one_node_per_interval(make_node: MakeNode) -> None:
    a, b = await make_node(), await make_node()
    runs: list[float] = []
    tasks = [CountingRetention(0.25, node.duties, runs) for node in (a, b, b)]
    for task in tasks:
        await task.start()
    await asyncio.sleep(2.1)  # 8 intervals: three tasks alone would run 24 times
    for task in tasks:
        await task.stop()
    assert 4 <= len(runs) <= 10, runs
    gaps = [later - earlier for earlier, later in zip(runs, runs[1:], strict=False)]
    assert min(gaps) >= 0.15, gaps  # never twice within one lease (0.9 of the interval)


# -- storage-session registry ------------------------------------------------------------------

ARN = "arn:aws:kinesisvideo:us-east-1:000000000000:channel/cam/1700000000000"


async def test_a_live_owner_keeps_its_claim_unless_found_unreachable(make_node: MakeNode) -> None:
    a, b = await make_node(), await make_node()
    assert await a.sessions.owner(ARN) is None
    assert await b.sessions.claim(ARN) == b.node.node_id
    assert await a.sessions.owner(ARN) == b.node.node_id
    assert await b.sessions.claim(ARN) == b.node.node_id  # claiming again keeps it
    # Claims are atomic: a live owner keeps the channel, unless the claimant found it
    # unreachable.
    assert await a.sessions.claim(ARN) == b.node.node_id
    assert await a.sessions.claim(ARN, instead_of=b.node.node_id) == a.node.node_id
    assert await b.sessions.owner(ARN) == a.node.node_id
    assert await b.sessions.claim(ARN) == a.node.node_id
    assert await b.sessions.claim(ARN, instead_of=a.node.node_id) == b.node.node_id
    await b.stop()  # a stopped node runs nothing
    assert await a.sessions.owner(ARN) is None


async def test_a_dead_nodes_claim_is_taken_over(make_node: MakeNode) -> None:
    a = await make_node(node_ttl=0.6)
    b = await make_node(node_ttl=0.6)
    assert await a.sessions.claim(ARN) == a.node.node_id
    await asyncio.sleep(0.8)  # beats keep the owner alive past its ttl
    assert await b.sessions.claim(ARN) == a.node.node_id
    await a.stop(graceful=False)  # a crash: its heartbeat is not removed, it expires
    assert await b.sessions.owner(ARN) == a.node.node_id
    assert await b.sessions.claim(ARN) == a.node.node_id
    async with asyncio.timeout(3):
        while await b.sessions.owner(ARN) is not None:
            await asyncio.sleep(0.05)
    # The owner's heartbeat is gone: its claim counts as none, and the next join claims it.
    assert await b.sessions.claim(ARN) == b.node.node_id
    assert await b.sessions.owner(ARN) == b.node.node_id


async def test_claims_of_channels_are_independent(make_node: MakeNode) -> None:
    a, b = await make_node(), await make_node()
    other = ARN.replace("/cam/", "/door/")
    assert await a.sessions.claim(ARN) == a.node.node_id
    assert await b.sessions.claim(other) == b.node.node_id
    assert await b.sessions.owner(ARN) == a.node.node_id
    assert await a.sessions.owner(other) == b.node.node_id


# -- node heartbeats ---------------------------------------------------------------------------


async def test_nodes_see_each_other_and_a_dead_node_expires(make_node: MakeNode) -> None:
    a = await make_node(node_ttl=0.6)
    b = await make_node(node_ttl=0.6)
    ids = {n.node_id for n in await b.nodes.live_nodes()}
    assert ids == {a.node.node_id, b.node.node_id}
    info = next(n for n in await b.nodes.live_nodes() if n.node_id == a.node.node_id)
    assert (info.address, info.port) == ("127.0.0.1", 8443)
    await asyncio.sleep(1.0)  # beats keep both alive past their ttl
    assert await b.nodes.is_alive(a.node.node_id)
    await a.stop(graceful=False)  # a crash: its heartbeat is not removed, it expires
    assert await b.nodes.is_alive(a.node.node_id)
    await asyncio.sleep(0.9)
    assert not await b.nodes.is_alive(a.node.node_id)
    assert [n.node_id for n in await b.nodes.live_nodes()] == [b.node.node_id]


async def test_a_stopped_node_leaves_at_once(make_node: MakeNode) -> None:
    a, b = await make_node(), await make_node()
    assert await b.nodes.is_alive(a.node.node_id)
    await a.stop()
    assert not await b.nodes.is_alive(a.node.node_id)
    assert await b.nodes.is_alive(b.node.node_id)
    assert not await b.nodes.is_alive("n-never-was")


async def test_reachable(make_node: MakeNode) -> None:
    a = await make_node()
    assert await a.reachable()


# -- Redis specifics ---------------------------------------------------------------------------


async def test_redis_subscription_survives_a_dropped_connection(
    make_redis_node: MakeNode,
) -> None:
    import redis.asyncio as aioredis

    a, b = await make_redis_node(), await make_redis_node()
    client = aioredis.Redis.from_url(redis_url(), decode_responses=True)
    try:
        name = f"openkvs-{b.node.node_id}"
        subscribed = [
            c for c in await client.client_list() if c["name"] == name and c["sub"] != "0"
        ]
        assert len(subscribed) == 1
        waiting = b.notifier.changed(9)
        assert await client.client_kill_filter(_id=subscribed[0]["id"]) == 1
        # Waiters are woken to read the store again: notifications may have been lost meanwhile.
        await asyncio.wait_for(waiting.wait(), WAIT)
        # The subscription comes back by itself, and carries notifications again.
        deadline = asyncio.get_running_loop().time() + 15
        while True:
            again = b.notifier.changed(9)
            a.notifier.notify(9, 1)
            try:
                await asyncio.wait_for(again.wait(), 0.5)
                break
            except TimeoutError:
                assert asyncio.get_running_loop().time() < deadline, "never resubscribed"
    finally:
        await client.aclose()
