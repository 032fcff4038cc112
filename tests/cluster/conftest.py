"""Two-node fixtures over each coordination implementation: in-process nodes sharing one hub,
and Redis nodes sharing one key prefix (``redis_prefix``, from ``tests/engines.py``)."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest

from openkvs.cluster.base import NODE_TTL, Cluster, NodeInfo, new_node_id
from openkvs.cluster.local import LocalCluster, LocalHub

from ..engines import delete_redis_prefix, redis_url

MakeNode = Callable[..., Awaitable[Cluster]]


@contextlib.asynccontextmanager
async def _nodes(kind: str, prefix: str) -> AsyncIterator[MakeNode]:
    hub = LocalHub()
    nodes: list[Cluster] = []

    async def make(*, node_ttl: float = NODE_TTL) -> Cluster:
        info = NodeInfo(new_node_id(), "127.0.0.1", 8443, 0.0)
        node: Cluster
        if kind == "local":
            node = LocalCluster(info, hub, node_ttl=node_ttl)
        else:
            from openkvs.cluster.redisbus import RedisCluster

            node = RedisCluster(redis_url(), prefix, info, node_ttl=node_ttl)
        await node.start()
        nodes.append(node)
        return node

    try:
        yield make
    finally:
        for node in nodes:
            await node.stop()
        if kind == "redis":
            delete_redis_prefix(redis_url(), prefix)
            assert delete_redis_prefix(redis_url(), prefix) == 0


@pytest.fixture(params=["local", "redis"])
async def make_node(request: pytest.FixtureRequest) -> AsyncIterator[MakeNode]:
    """``await make_node()``: a started node; every node of one test shares one cluster."""
    prefix = request.getfixturevalue("redis_prefix") if request.param == "redis" else ""
    async with _nodes(request.param, prefix) as make:
        yield make


@pytest.fixture
async def make_redis_node(redis_prefix: str) -> AsyncIterator[MakeNode]:
    """Like ``make_node``, Redis nodes only."""
    async with _nodes("redis", redis_prefix) as make:
        yield make


# Clusters of server processes on PostgreSQL, S3 (SeaweedFS) and Redis: see nodes.py.
from .nodes import cluster, cluster_engines, start_cluster  # noqa: E402, F401
