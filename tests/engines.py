"""Database engines for tests: a fresh PostgreSQL database per test, dropped afterwards.

The server is ``OPENKVS_TEST_POSTGRES_URL`` (default: the local one, user postgres, database
``test``), reached only to create and drop ``openkvs_t_<hex>`` databases. When it cannot be
reached the tests that need it skip with the reason, except under CI=true, where they fail.

Fixtures (registered for every test by ``tests/conftest.py``):

- ``postgres_url``: the URL of a new, empty database for this test;
- ``postgres_urls``: a factory of more such databases within one test.
"""

from __future__ import annotations

import asyncio
import os
import secrets
import threading
from collections.abc import Callable, Coroutine, Iterator
from typing import Any, TypeVar
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import pytest

from .support import CI

T = TypeVar("T")

ADMIN_URL = os.environ.get("OPENKVS_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test")
PREFIX = "openkvs_t_"


def _run(coro: Coroutine[Any, Any, T]) -> T:
    """Run a coroutine to completion on a loop of its own (callable from async tests too)."""
    box: dict[str, Any] = {}

    def target() -> None:
        try:
            box["value"] = asyncio.run(coro)
        except BaseException as exc:  # noqa: BLE001 - re-raised in the caller
            box["error"] = exc

    thread = threading.Thread(target=target)
    thread.start()
    thread.join()
    if "error" in box:
        raise box["error"]
    return box["value"]  # type: ignore[no-any-return]


def database_url(name: str) -> str:
    parts = urlsplit(ADMIN_URL)
    return urlunsplit(parts._replace(path=f"/{name}"))


async def _admin() -> Any:
    return await asyncpg.connect(ADMIN_URL, timeout=3)


_unreachable: str | None = None
_checked = False


def postgres_unreachable() -> str | None:
    """Why PostgreSQL cannot be used for tests, or None when it can (checked once)."""
    global _unreachable, _checked
    if not _checked:
        _checked = True

        async def probe() -> None:
            conn = await _admin()
            await conn.close()

        try:
            _run(probe())
        except (TimeoutError, OSError, asyncpg.PostgresError) as exc:
            where = urlsplit(ADMIN_URL)
            _unreachable = f"PostgreSQL at {where.hostname}:{where.port} unreachable: {exc}"
    return _unreachable


def need_postgres() -> None:
    """Skip the calling test (fail it under CI=true) when PostgreSQL cannot be reached."""
    reason = postgres_unreachable()
    if reason is not None:
        if CI:
            pytest.fail(f"{reason} (required under CI=true)")
        pytest.skip(reason)


def create_database() -> str:
    """A new empty database; its URL."""
    name = PREFIX + secrets.token_hex(6)

    async def create() -> None:
        conn = await _admin()
        try:
            await conn.execute(f'CREATE DATABASE "{name}"')
        finally:
            await conn.close()

    _run(create())
    return database_url(name)


def drop_database(url: str) -> None:
    name = urlsplit(url).path.lstrip("/")
    assert name.startswith(PREFIX)

    async def drop() -> None:
        conn = await _admin()
        try:
            await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        finally:
            await conn.close()

    _run(drop())


@pytest.fixture
def postgres_urls() -> Iterator[Callable[[], str]]:
    need_postgres()
    made: list[str] = []

    def make() -> str:
        made.append(create_database())
        return made[-1]

    yield make
    for url in made:
        drop_database(url)


@pytest.fixture
def postgres_url(postgres_urls: Callable[[], str]) -> str:
    return postgres_urls()


# -- Redis ----------------------------------------------------------------------------------
#
# The Redis of multi-node tests: $TEST_REDIS_URL (or $REDIS_URL), else the machine's own on
# 127.0.0.1:6379, else a private redis-server started for the test session. When none answers
# and redis-server is not installed, the tests that need Redis skip, except under CI=true,
# where they fail. Each test gets its own key prefix (``redis_prefix``, keys ``<prefix>:...``)
# whose keys are deleted afterwards.
#
# Fixtures (registered for every test by ``tests/conftest.py``):
#
# - ``redis_server``: (session) the URL of a Redis that answers, or None;
# - ``redis_prefix``: a fresh key prefix on it (``redis_url()`` names that Redis).

_redis = {
    "url": os.environ.get("TEST_REDIS_URL")
    or os.environ.get("REDIS_URL")
    or "redis://127.0.0.1:6379/0"
}


def redis_url() -> str:
    """The test Redis (after ``redis_server`` ran: the one that answers)."""
    return _redis["url"]


def _redis_answers(url: str) -> bool:
    import redis

    try:
        with redis.Redis.from_url(url, socket_connect_timeout=1) as r:
            return bool(r.ping())
    except (redis.RedisError, OSError):
        return False


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str | None]:
    """The URL of a Redis that answers, or None (no Redis and no redis-server to start)."""
    import subprocess
    import time

    from .support import free_port, need_tool

    if _redis_answers(_redis["url"]):
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
            if _redis_answers(url):
                break
            time.sleep(0.05)
        else:
            raise RuntimeError("redis-server did not start")
        _redis["url"] = url
        yield url
    finally:
        proc.terminate()
        proc.wait(10)


def delete_redis_prefix(url: str, prefix: str) -> int:
    """Delete the keys ``<prefix>:*``; how many there were."""
    import redis

    with redis.Redis.from_url(url) as r:
        keys = list(r.scan_iter(match=f"{prefix}:*", count=1000))
        if keys:
            r.delete(*keys)
        return len(keys)


@pytest.fixture
def redis_prefix(redis_server: str | None) -> Iterator[str]:
    """A fresh key prefix (``openkvs-test-<hex>``, keys ``<prefix>:...``) on the test Redis;
    skips (fails under CI=true) when there is no Redis."""
    if redis_server is None:
        reason = f"no Redis answers at {_redis['url']} and redis-server is not installed"
        if CI:
            pytest.fail(f"{reason} (required under CI=true)")
        pytest.skip(reason)
    prefix = "openkvs-test-" + secrets.token_hex(6)
    yield prefix
    delete_redis_prefix(redis_server, prefix)
