from __future__ import annotations

import os
import time
import uuid
from collections.abc import Iterator

import pytest

from openkvs import clock

from ..support import CI


class FakeMonotonic:
    """openkvs.clock.monotonic, moved by hand: ``advance`` jumps, ``freeze`` stops it."""

    def __init__(self) -> None:
        self.offset = 0.0
        self.frozen_at: float | None = None

    def __call__(self) -> float:
        base = self.frozen_at if self.frozen_at is not None else time.monotonic()
        return base + self.offset

    def advance(self, seconds: float) -> None:
        self.offset += seconds

    def freeze(self) -> None:
        self.frozen_at = time.monotonic()

    def thaw(self) -> None:
        if self.frozen_at is not None:
            self.offset -= time.monotonic() - self.frozen_at
        self.frozen_at = None


@pytest.fixture
def monotonic(monkeypatch: pytest.MonkeyPatch) -> FakeMonotonic:
    fake = FakeMonotonic()
    monkeypatch.setattr(clock, "monotonic", fake)
    return fake


# The Redis that multi-node tests use (the machine's own by default); each test gets its own key
# prefix and deletes its keys afterwards.
REDIS_URL = os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0")


def redis_available() -> bool:
    import redis

    try:
        with redis.Redis.from_url(REDIS_URL, socket_connect_timeout=1) as r:
            return bool(r.ping())
    except (redis.RedisError, OSError):
        return False


@pytest.fixture
def redis_prefix() -> Iterator[str]:
    """A fresh key prefix on the test Redis; skips (fails under CI=true) when Redis is not up."""
    if not redis_available():
        if CI:
            raise RuntimeError(f"Redis at {REDIS_URL} is required under CI=true")
        pytest.skip(f"no Redis at {REDIS_URL}")
    import redis

    prefix = f"openkvs-test-{uuid.uuid4().hex[:12]}:"
    yield prefix
    with redis.Redis.from_url(REDIS_URL) as r:
        keys = list(r.scan_iter(match=f"{prefix}*", count=1000))
        if keys:
            r.delete(*keys)
