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
