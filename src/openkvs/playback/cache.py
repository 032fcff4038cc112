"""A size-bounded LRU cache whose ``get_or_create`` runs one factory per key at a time.

Concurrent requests for the same segment (a player's retry, the audio and video playlists of one
session, several viewers) share a single remux; the cache never holds more than ``max_bytes`` of
values (a value larger than the whole budget is returned but not kept).
"""

from __future__ import annotations

import asyncio
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Hashable
from typing import Generic, TypeVar

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")


class ByteLRU(Generic[K, V]):
    def __init__(self, max_bytes: int, sizeof: Callable[[V], int]) -> None:
        self.max_bytes = max(0, max_bytes)
        self._sizeof = sizeof
        self._items: OrderedDict[K, tuple[V, int]] = OrderedDict()
        self._inflight: dict[K, asyncio.Future[V]] = {}
        self.bytes = 0
        self.hits = 0
        self.misses = 0

    def __len__(self) -> int:
        return len(self._items)

    def get(self, key: K) -> V | None:
        item = self._items.get(key)
        if item is None:
            return None
        self._items.move_to_end(key)
        self.hits += 1
        return item[0]

    def put(self, key: K, value: V) -> None:
        size = self._sizeof(value)
        old = self._items.pop(key, None)
        if old is not None:
            self.bytes -= old[1]
        if size > self.max_bytes:
            return
        self._items[key] = (value, size)
        self.bytes += size
        while self.bytes > self.max_bytes and self._items:
            _, (_, evicted) = self._items.popitem(last=False)
            self.bytes -= evicted

    def clear(self) -> None:
        self._items.clear()
        self.bytes = 0

    async def get_or_create(self, key: K, factory: Callable[[], Awaitable[V]]) -> V:
        """The cached value, or the result of ``factory()``: run once, as its own task, so a
        requester that goes away does not cancel the work the others are waiting for."""
        cached = self.get(key)
        if cached is not None:
            return cached
        task = self._inflight.get(key)
        if task is None:
            self.misses += 1
            task = asyncio.ensure_future(factory())
            self._inflight[key] = task
            task.add_done_callback(lambda t: self._done(key, t))
        else:
            self.hits += 1
        return await asyncio.shield(task)

    def _done(self, key: K, task: asyncio.Future[V]) -> None:
        if self._inflight.get(key) is task:
            del self._inflight[key]
        if task.cancelled():
            return
        if task.exception() is None:
            self.put(key, task.result())

    def cancel_pending(self) -> None:
        for task in list(self._inflight.values()):
            task.cancel()
        self._inflight.clear()
