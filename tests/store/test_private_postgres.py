"""The private PostgreSQL that tests start when none answers (tests/engines.py): it starts on a
free loopback port with trust authentication, serves a store, and leaves nothing behind."""

from __future__ import annotations

import socket
from pathlib import Path

import asyncpg
import pytest

from openkvs.config import Settings
from openkvs.store.factory import metadata_store

from ..engines import PrivatePostgres, postgres_bin_dir
from ..support import CI


def _listening(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1):
            return True
    except OSError:
        return False


async def test_private_postgres_serves_a_store_and_is_removed(tmp_path: Path) -> None:
    bin_dir = postgres_bin_dir()
    if bin_dir is None:
        if CI:
            raise RuntimeError("initdb/pg_ctl (Debian: postgresql) are required under CI=true")
        pytest.skip("initdb/pg_ctl are not installed (Debian: postgresql)")
    server = PrivatePostgres(bin_dir)
    try:
        admin_url = server.start()
        assert _listening(server.port)
        assert (server.root / f".s.PGSQL.{server.port}").is_socket()
        conn = await asyncpg.connect(admin_url, timeout=10)
        try:
            assert await conn.fetchval("SELECT current_user") == "postgres"
            await conn.execute('CREATE DATABASE "openkvs_t_private"')
        finally:
            await conn.close()
        url = admin_url.rsplit("/", 1)[0] + "/openkvs_t_private"
        store = metadata_store(Settings(data_dir=tmp_path, database_url=url))
        await store.start()
        try:
            assert await store.secret("test", "first") == "first"
            assert await store.secret("test", "second") == "first"
        finally:
            await store.stop()
    finally:
        server.stop()
    assert not server.root.exists()
    assert not _listening(server.port)
