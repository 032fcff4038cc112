"""Token-bucket request-rate limits, bounded in memory."""

from __future__ import annotations

from collections import OrderedDict

from .. import clock


class RateLimiter:
    """Allows ``rate`` events per second per key, with bursts of up to ``burst`` (default: rate).

    Keys are kept in LRU order and capped at ``max_keys`` so hostile key churn cannot grow memory.
    A rate of 0 disables the limit.
    """

    def __init__(self, rate: float, burst: float | None = None, max_keys: int = 100_000) -> None:
        self.rate = rate
        self.burst = max(1.0, burst if burst is not None else rate)
        self._max_keys = max_keys
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()

    def allow(self, key: str, cost: float = 1.0) -> bool:
        if self.rate <= 0:
            return True
        now = clock.monotonic()
        tokens, last = self._buckets.pop(key, (self.burst, now))
        tokens = min(self.burst, tokens + (now - last) * self.rate)
        ok = tokens >= cost
        if ok:
            tokens -= cost
        self._buckets[key] = (tokens, now)
        if len(self._buckets) > self._max_keys:
            self._buckets.popitem(last=False)
        return ok
