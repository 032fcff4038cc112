"""openkvs nodes as separate server processes sharing one PostgreSQL database, one ``s3://``
media store on SeaweedFS and one Redis bus: a cluster whose nodes a test can kill -9.

``proc_cluster`` (function-scoped) gives a :class:`ProcCluster` on a fresh database, a fresh
bucket and a fresh Redis key prefix; ``proc_cluster.node(**settings)`` starts one more node
(``settings`` are extra ``OPENKVS_*`` values, e.g. ``storage_fragment_duration="0.5"``). At the
end every node still running is stopped, the prefix's Redis keys are deleted and the database is
dropped (the ``postgres_url`` fixture). The nodes read the SeaweedFS keys from the AWS
environment that ``s3_env`` sets in this process.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from openkvs.app import generated_principal
from openkvs.config import Settings

from ..engines import redis_url
from ..seaweed import Seaweed
from ..webrtc.procserver import ProcessServer

MEDIA_PREFIX = "media"


def run_async(coro: Any) -> Any:
    """Run a coroutine on a loop of its own in a thread (callable from async tests too)."""
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
    return box.get("value")


class Node(ProcessServer):
    """One node process; its clients sign with the cluster's generated key (kept in the shared
    database, not in the node's data dir)."""

    def __init__(self, cluster: ProcCluster, data_dir: Path, **env: str) -> None:
        super().__init__(data_dir, **env)
        self.cluster = cluster
        self.name = data_dir.name

    @property
    def keys(self) -> tuple[str, str]:
        return self.cluster.keys


class ProcCluster:
    def __init__(
        self, root: Path, database_url: str, seaweed: Seaweed, bucket: str, bus_url: str
    ) -> None:
        self.root = root
        self.database_url = database_url
        self.seaweed = seaweed
        self.bucket = bucket
        self.bus_url = bus_url
        self.nodes: list[Node] = []
        # Where the nodes reach S3 (the gateway, or a proxy in front of it).
        self.s3_endpoint = seaweed.endpoint
        self._keys: tuple[str, str] | None = None

    def node(self, **env: str) -> Node:
        """A new started node."""
        (node,) = self.start(1, **env)
        return node

    def start(self, count: int, **env: str) -> list[Node]:
        """``count`` new nodes, started side by side."""
        shared = {
            "database_url": self.database_url,
            "bus_url": self.bus_url,
            "node_address": "127.0.0.1",
            **self.seaweed.settings(self.bucket, MEDIA_PREFIX),
            "s3_endpoint_url": self.s3_endpoint,
        }
        made: list[Node] = []
        for _ in range(count):
            data_dir = self.root / f"node{len(self.nodes)}"
            data_dir.mkdir(parents=True)
            made.append(Node(self, data_dir, **shared, **env))
            self.nodes.append(made[-1])
        with ThreadPoolExecutor(count) as pool:
            list(pool.map(Node.start, made))
        return made

    @property
    def keys(self) -> tuple[str, str]:
        if self._keys is None:
            settings = Settings(data_dir=self.root / "keys", database_url=self.database_url)
            p = run_async(generated_principal(settings))
            self._keys = (p.access_key_id, p.secret_access_key)
        return self._keys

    def objects(self) -> list[str]:
        """The keys of every object under the media prefix, relative to it."""
        start = MEDIA_PREFIX + "/"
        return [k[len(start) :] for k in self.seaweed.objects(self.bucket, start)]

    def object(self, key: str) -> bytes:
        client = self.seaweed.client()
        try:
            body: bytes = client.get_object(Bucket=self.bucket, Key=f"{MEDIA_PREFIX}/{key}")[
                "Body"
            ].read()
            return body
        finally:
            client.close()

    def rows(self) -> dict[str, int]:
        """Every fragment row in the database: blob key → fragment number."""

        async def fetch() -> dict[str, int]:
            conn = await asyncpg.connect(self.database_url, timeout=5)
            try:
                rows = await conn.fetch("SELECT blob_key, number FROM openkvs_fragments")
                return {r[0]: int(r[1]) for r in rows}
            finally:
                await conn.close()

        out: dict[str, int] = run_async(fetch())
        return out

    def stop(self) -> None:
        if self.nodes:
            with ThreadPoolExecutor(len(self.nodes)) as pool:
                list(pool.map(Node.stop, self.nodes))


@pytest.fixture
def proc_cluster(
    tmp_path: Path, postgres_url: str, seaweed: Seaweed, s3_env: str, redis_prefix: str
) -> Iterator[ProcCluster]:
    url = redis_url()  # redis_prefix skipped (or failed, under CI) when there is none
    cluster = ProcCluster(
        tmp_path / "nodes", postgres_url, seaweed, s3_env, f"{url}?prefix={redis_prefix}"
    )
    try:
        yield cluster
    finally:
        cluster.stop()  # redis_prefix deletes the keys
