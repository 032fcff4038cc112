from __future__ import annotations

import os
import subprocess
import time
import uuid
from collections.abc import Iterator

import pytest

from openkvs import clock

from ..support import CI, free_port, need_tool


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


# The Redis that multi-node tests use: $REDIS_URL, else the machine's own on the default port,
# else a private redis-server started for the session. Each test gets its own key prefix and
# deletes its keys afterwards.
_redis = {"url": os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0")}


def redis_url() -> str:
    return _redis["url"]


def _answers(url: str) -> bool:
    import redis

    try:
        with redis.Redis.from_url(url, socket_connect_timeout=1) as r:
            return bool(r.ping())
    except (redis.RedisError, OSError):
        return False


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str | None]:
    """The URL of a Redis that answers, or None (no Redis and no redis-server to start)."""
    if _answers(_redis["url"]):
        yield _redis["url"]
        return
    binary = need_tool("redis-server")
    if binary is None:
        yield None
        return
    port = free_port()
    proc = subprocess.Popen(
        [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
        cwd=tmp_path_factory.mktemp("redis"),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"redis://127.0.0.1:{port}/0"
    try:
        for _ in range(100):
            if _answers(url):
                break
            time.sleep(0.05)
        else:
            raise RuntimeError("redis-server did not start")
        _redis["url"] = url
        yield url
    finally:
        proc.terminate()
        proc.wait(10)


@pytest.fixture
def redis_prefix(redis_server: str | None) -> Iterator[str]:
    """A fresh key prefix on the test Redis (``redis_url()``); skips (fails under CI=true)
    when there is no Redis."""
    if redis_server is None:
        if CI:
            raise RuntimeError("Redis (or redis-server) is required under CI=true")
        pytest.skip("no Redis answers and redis-server is not installed")
    import redis

    prefix = f"openkvs-test-{uuid.uuid4().hex[:12]}:"
    yield prefix
    with redis.Redis.from_url(redis_server) as r:
        keys = list(r.scan_iter(match=f"{prefix}*", count=1000))
        if keys:
            r.delete(*keys)
