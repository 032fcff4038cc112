"""Database engines for tests: a fresh PostgreSQL database per test, dropped afterwards.

The server is ``OPENKVS_TEST_POSTGRES_URL`` (default: the local one, user postgres, database
``test``), reached only to create and drop ``openkvs_t_<hex>`` databases. When nothing answers
there, a private PostgreSQL is started for the test session (one per xdist worker): ``initdb``
in a temporary folder, trust authentication, a free loopback port and its Unix socket in that
folder; it is stopped and removed at the end of the session. Its binaries are found on PATH or
in Debian's ``/usr/lib/postgresql/<version>/bin`` (package ``postgresql``); as root it runs as
the ``postgres`` user (else ``nobody``), since PostgreSQL refuses to run as root. When neither
works the tests that need it skip with the reason, except under CI=true, where they fail.

Fixtures (registered for every test by ``tests/conftest.py``):

- ``postgres_url``: the URL of a new, empty database for this test;
- ``postgres_urls``: a factory of more such databases within one test;
- ``postgres_admin_url``: (session) the server those databases are made on.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import pwd
import re
import secrets
import shutil
import signal
import subprocess
import tempfile
import threading
from collections.abc import Callable, Coroutine, Iterator
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import pytest

from .support import CI, free_port

T = TypeVar("T")

# ---------------------------------------------------------------------------------------------
# PostgreSQL
# ---------------------------------------------------------------------------------------------

ADMIN_URL = os.environ.get("OPENKVS_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test")
PREFIX = "openkvs_t_"
PG_START_TIMEOUT = 120  # seconds: initdb and the first start are slow on a loaded machine


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


def database_url(admin_url: str, name: str) -> str:
    parts = urlsplit(admin_url)
    return urlunsplit(parts._replace(path=f"/{name}"))


async def _admin(admin_url: str) -> Any:
    return await asyncpg.connect(admin_url, timeout=3)


def postgres_unreachable(admin_url: str) -> str | None:
    """Why the PostgreSQL at ``admin_url`` cannot be used for tests, or None when it can."""

    async def probe() -> None:
        conn = await _admin(admin_url)
        await conn.close()

    try:
        _run(probe())
    except (TimeoutError, OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
        # Nothing listens, or a server that refuses us (e.g. one asking for a password)
        where = urlsplit(admin_url)
        return f"PostgreSQL at {where.hostname}:{where.port} unreachable: {exc}"
    return None


def postgres_bin_dir() -> Path | None:
    """The folder of ``initdb`` and ``pg_ctl``: on PATH, else the newest of Debian's
    ``/usr/lib/postgresql/<version>/bin``."""
    on_path = shutil.which("initdb")
    candidates = [Path(on_path).resolve().parent] if on_path else []

    def version(path: Path) -> tuple[int, ...]:
        return tuple(int(n) for n in re.findall(r"\d+", path.parent.parent.name)) or (0,)

    candidates += sorted(
        (p.parent for p in Path("/usr/lib/postgresql").glob("*/bin/initdb")),
        key=lambda d: version(d / "initdb"),
        reverse=True,
    )
    for folder in candidates:
        if all(os.access(folder / tool, os.X_OK) for tool in ("initdb", "pg_ctl", "postgres")):
            return folder
    return None


class PrivatePostgres:
    """A throwaway PostgreSQL server over a temporary folder (data, socket and log)."""

    def __init__(self, bin_dir: Path) -> None:
        self.bin_dir = bin_dir
        self.root = Path(tempfile.mkdtemp(prefix="okvs-pg-"))
        self.data = self.root / "data"
        self.log = self.root / "postgres.log"
        self.port = 0
        self._user: dict[str, Any] = {}
        if os.geteuid() == 0:  # initdb and postgres refuse root: run as an unprivileged user
            try:
                account = pwd.getpwnam("postgres")
            except KeyError:
                account = pwd.getpwnam("nobody")
            self._user = {"user": account.pw_uid, "group": account.pw_gid, "extra_groups": []}
            os.chown(self.root, account.pw_uid, account.pw_gid)
        self._env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
        self._env["LC_ALL"] = "C"

    @property
    def admin_url(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    def _tool(self, *args: str, timeout: float = PG_START_TIMEOUT) -> None:
        done = subprocess.run(
            [str(self.bin_dir / args[0]), *args[1:]],
            cwd=self.root,
            env=self._env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            timeout=timeout,
            check=False,
            **self._user,
        )
        if done.returncode != 0:
            output = done.stdout.decode(errors="replace").strip()[-2000:]
            raise RuntimeError(f"{args[0]} exited with {done.returncode}: {output}")

    def start(self) -> str:
        """initdb, then start on a free port (another one when that one got taken); the admin
        URL (superuser ``postgres``, database ``postgres``)."""
        self._tool(
            "initdb", "-D", str(self.data), "-U", "postgres", "-A", "trust",
            "-E", "UTF8", "--locale=C", "--no-sync",
        )  # fmt: skip
        last: Exception | None = None
        for _ in range(3):
            self.port = free_port()
            with open(self.data / "postgresql.conf", "a") as conf:
                conf.write(
                    f"\nport = {self.port}\n"
                    "listen_addresses = '127.0.0.1'\n"
                    f"unix_socket_directories = '{self.root}'\n"
                    # Its data is thrown away: no durability, little memory.
                    "fsync = off\nsynchronous_commit = off\nfull_page_writes = off\n"
                    "shared_buffers = 16MB\nmax_connections = 200\n"
                )
            try:
                self._tool(
                    "pg_ctl", "-D", str(self.data), "-l", str(self.log),
                    "-w", "-t", str(PG_START_TIMEOUT), "start",
                )  # fmt: skip
                return self.admin_url
            except (RuntimeError, subprocess.TimeoutExpired) as exc:
                last = exc
                self._kill()
                log = self.log.read_text(errors="replace") if self.log.exists() else ""
                if "could not bind" not in log and "already in use" not in log:
                    break
        raise RuntimeError(f"the private PostgreSQL did not start ({last}); see {self.log}")

    def _kill(self) -> None:
        """SIGQUIT (immediate shutdown) to the postmaster, if one runs."""
        with contextlib.suppress(OSError, ValueError, IndexError):
            pid = int((self.data / "postmaster.pid").read_text().split()[0])
            os.kill(pid, signal.SIGQUIT)

    def stop(self) -> None:
        """Stop the server at once (its data is thrown away) and remove its folder."""
        try:
            self._tool("pg_ctl", "-D", str(self.data), "-m", "immediate", "-w", "stop", timeout=60)
        except (RuntimeError, subprocess.TimeoutExpired):
            self._kill()
        shutil.rmtree(self.root, ignore_errors=True)


def need_postgres(reason: str) -> None:
    """Skip the calling test (fail it under CI=true) for ``reason``."""
    if CI:
        pytest.fail(f"{reason} (required under CI=true)")
    pytest.skip(reason)


@pytest.fixture(scope="session")
def postgres_admin_url() -> Iterator[str]:
    """The PostgreSQL server of this test session: ADMIN_URL, or a private one when nothing
    answers there."""
    reason = postgres_unreachable(ADMIN_URL)
    if reason is None:
        yield ADMIN_URL
        return
    bin_dir = postgres_bin_dir()
    if bin_dir is None:
        need_postgres(f"{reason}, and initdb/pg_ctl are not installed (Debian: postgresql)")
    assert bin_dir is not None
    server = PrivatePostgres(bin_dir)
    try:
        try:
            url = server.start()
        except (OSError, RuntimeError, subprocess.TimeoutExpired) as exc:
            need_postgres(f"{reason}, and a private PostgreSQL did not start: {exc}")
        yield url
    finally:
        server.stop()


def create_database(admin_url: str) -> str:
    """A new empty database; its URL."""
    name = PREFIX + secrets.token_hex(6)

    async def create() -> None:
        conn = await _admin(admin_url)
        try:
            await conn.execute(f'CREATE DATABASE "{name}"')
        finally:
            await conn.close()

    _run(create())
    return database_url(admin_url, name)


def drop_database(admin_url: str, url: str) -> None:
    name = urlsplit(url).path.lstrip("/")
    assert name.startswith(PREFIX)

    async def drop() -> None:
        conn = await _admin(admin_url)
        try:
            await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        finally:
            await conn.close()

    _run(drop())


@pytest.fixture
def postgres_urls(postgres_admin_url: str) -> Iterator[Callable[[], str]]:
    made: list[str] = []

    def make() -> str:
        made.append(create_database(postgres_admin_url))
        return made[-1]

    yield make
    for url in made:
        drop_database(postgres_admin_url, url)


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
