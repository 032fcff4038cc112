"""Two-node fixtures over each coordination implementation: in-process nodes sharing one hub,
and Redis nodes sharing one key prefix (a random one per test, whose keys are deleted after)."""

from __future__ import annotations

import contextlib
import os
import secrets
import socket
import urllib.parse
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest

from openkvs.cluster.base import NODE_TTL, Cluster, NodeInfo, new_node_id
from openkvs.cluster.local import LocalCluster, LocalHub

from ..support import CI

REDIS_URL = os.environ.get("TEST_REDIS_URL", "redis://127.0.0.1:6379/0")

MakeNode = Callable[..., Awaitable[Cluster]]


def redis_url_or_skip() -> str:
    """The test Redis; skipped when it does not answer (a failure under CI=true)."""
    parts = urllib.parse.urlsplit(REDIS_URL)
    try:
        with socket.create_connection((parts.hostname or "127.0.0.1", parts.port or 6379), 1.0):
            pass
    except OSError as exc:
        if CI:
            raise RuntimeError(
                f"Redis is required under CI=true but {REDIS_URL} is not reachable"
            ) from exc
        pytest.skip(f"Redis is not reachable at {REDIS_URL} ({exc}); set TEST_REDIS_URL")
    return REDIS_URL


async def delete_prefix(url: str, prefix: str) -> int:
    import redis.asyncio as aioredis

    client = aioredis.Redis.from_url(url, decode_responses=True)
    try:
        keys = [k async for k in client.scan_iter(match=f"{prefix}:*", count=500)]
        if keys:
            await client.delete(*keys)
        return len(keys)
    finally:
        await client.aclose()


@pytest.fixture
def redis_prefix() -> str:
    return "openkvs-test-" + secrets.token_hex(6)


@contextlib.asynccontextmanager
async def _nodes(kind: str, prefix: str) -> AsyncIterator[MakeNode]:
    url = redis_url_or_skip() if kind == "redis" else ""
    hub = LocalHub()
    nodes: list[Cluster] = []

    async def make(*, node_ttl: float = NODE_TTL) -> Cluster:
        info = NodeInfo(new_node_id(), "127.0.0.1", 8443, 0.0)
        node: Cluster
        if kind == "local":
            node = LocalCluster(info, hub, node_ttl=node_ttl)
        else:
            from openkvs.cluster.redisbus import RedisCluster

            node = RedisCluster(url, prefix, info, node_ttl=node_ttl)
        await node.start()
        nodes.append(node)
        return node

    try:
        yield make
    finally:
        for node in nodes:
            await node.stop()
        if kind == "redis":
            await delete_prefix(url, prefix)
            assert await delete_prefix(url, prefix) == 0


@pytest.fixture(params=["local", "redis"])
async def make_node(request: pytest.FixtureRequest, redis_prefix: str) -> AsyncIterator[MakeNode]:
    """``await make_node()``: a started node; every node of one test shares one cluster."""
    async with _nodes(request.param, redis_prefix) as make:
        yield make


@pytest.fixture
async def make_redis_node(redis_prefix: str) -> AsyncIterator[MakeNode]:
    """Like ``make_node``, Redis nodes only."""
    async with _nodes("redis", redis_prefix) as make:
        yield make


# Clusters of server processes on PostgreSQL, S3 (SeaweedFS) and Redis: see nodes.py.
from .nodes import cluster, cluster_engines, start_cluster  # noqa: E402, F401
