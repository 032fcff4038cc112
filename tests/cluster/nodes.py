"""openkvs clusters for tests: N server processes on one PostgreSQL database, one S3 bucket
(SeaweedFS) and one Redis bus prefix, as nodes behind a load balancer share them.

``start_cluster(n, **overrides) -> list[Node]`` (a fixture, registered by tests/cluster/conftest.py)
starts ``n`` nodes of this test's cluster at once and waits until each answers; called again in
the same test it adds nodes to the same cluster. ``overrides`` are openkvs settings (their
``OPENKVS_*`` environment form is what the process gets), for every node of that call. Every
test gets a fresh database, a fresh bucket and a fresh key prefix (``cluster_engines``); its
nodes are stopped, the database dropped and the prefix's keys deleted after it.

A :class:`Node` is shaped like ``tests.support.ServerThread`` where the helpers look (``port``,
``http_port``, ``endpoint``, ``http_endpoint``, ``keys``, ``ca``, ``settings``, ``client``), so
the signaling, producer and playback helpers take one. Each node has its own data dir, hence
its own TLS CA (``ca``); ``keys`` is the cluster's generated access key (kept in the shared
database, the same on every node). ``stop()`` is a graceful stop (SIGTERM), ``kill()`` a
``kill -9``, ``start()`` (re)starts the process on the same ports and data dir; ``alive``,
``pid``, ``log_text()`` and ``node_id`` (its id in the cluster) tell about the
process; ``client_factory(service)`` makes boto3 clients of the node (e.g. one per thread).
``node.cluster`` is the :class:`Cluster` (``nodes``, ``engines``: the database URL, bucket, bus
URL and prefix, ``objects()`` in the bucket). ``fresh_engines`` and ``running_cluster`` build the
same outside a test's scope (a cluster shared by the tests of a module).

    def test_x(start_cluster: StartCluster) -> None:
        a, b = start_cluster(2)
        a.client("kinesisvideo").create_stream(StreamName="s", DataRetentionInHours=1)
        b.client("kinesisvideo").describe_stream(StreamName="s")
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import dataclasses
import os
import re
import signal
import ssl
import subprocess
import sys
import threading
import time
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import boto3
import pytest
from botocore.config import Config

from openkvs.app import generated_principal
from openkvs.config import Settings

from ..engines import _run, create_database, delete_redis_prefix, drop_database
from ..seaweed import Seaweed
from ..support import CI, free_port

START_TIMEOUT = 90.0  # a loaded machine starting several nodes at once


@dataclasses.dataclass(frozen=True)
class ClusterEngines:
    """What every node of one test's cluster shares."""

    database_url: str
    seaweed: Seaweed
    bucket: str
    media_prefix: str
    redis_url: str
    redis_prefix: str

    @property
    def media_url(self) -> str:
        return f"s3://{self.bucket}/{self.media_prefix}"

    @property
    def bus_url(self) -> str:
        return f"{self.redis_url}?prefix={self.redis_prefix}"

    def settings(self) -> dict[str, str]:
        """The shared openkvs settings of every node."""
        return {
            "database_url": self.database_url,
            "media_url": self.media_url,
            "s3_endpoint_url": self.seaweed.endpoint,
            "bus_url": self.bus_url,
        }

    def objects(self) -> list[str]:
        """The keys of every object under the media prefix."""
        return self.seaweed.objects(self.bucket, f"{self.media_prefix}/")


class Node:
    """One openkvs server process of a cluster."""

    def __init__(self, name: str, data_dir: Path, env: dict[str, str], cluster: Cluster) -> None:
        self.name = name
        self.data_dir = data_dir
        self.cluster = cluster
        self.port = free_port()
        self.http_port = free_port()
        self.settings = Settings.load({}, None, {"data_dir": data_dir})
        self.env = env
        self.proc: subprocess.Popen[str] | None = None
        self.log: list[str] = []
        self._clients: list[Any] = []

    # -- the process ---------------------------------------------------------------------------

    def spawn(self) -> None:
        """Start the process (without waiting for it to answer)."""
        assert not self.alive, f"{self.name} is running"
        env = {
            k: v
            for k, v in os.environ.items()
            if not k.startswith(("AWS_", "OPENKVS_")) and not k.lower().endswith("_proxy")
        }
        env.update({f"OPENKVS_{k.upper()}": v for k, v in self.env.items()})
        env.update(self.cluster.engines.seaweed.env())  # the S3 store's keys (AWS chain)
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "openkvs",
                "serve",
                "--port",
                str(self.port),
                "--http-port",
                str(self.http_port),
                "--data-dir",
                str(self.data_dir),
            ],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
        )
        stderr = self.proc.stderr
        assert stderr is not None

        def read() -> None:
            for line in iter(stderr.readline, ""):
                self.log.append(line)
            stderr.close()

        threading.Thread(target=read, daemon=True, name=f"log-{self.name}").start()

    def wait_ready(self, timeout: float = START_TIMEOUT) -> None:
        """Until /health answers over TLS (the node has joined the cluster and started)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc is None or self.proc.poll() is not None:
                break
            try:
                ctx = ssl.create_default_context(cafile=self.ca)
                with urllib.request.urlopen(self.endpoint + "/health", context=ctx, timeout=2):
                    return
            except (OSError, ValueError):
                time.sleep(0.1)
        raise RuntimeError(f"node {self.name} did not start:\n{self.log_text()}")

    def start(self) -> None:
        """Start (or restart, on the same ports and data dir) and wait until it answers."""
        self.spawn()
        self.wait_ready()

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def kill(self) -> None:
        """``kill -9``: no shutdown at all (its sockets, leases and heartbeats are left)."""
        if self.alive:
            assert self.proc is not None
            os.kill(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)

    def stop(self, timeout: float = 20.0) -> None:
        """A graceful stop (SIGTERM), then SIGKILL after ``timeout``."""
        self.close_clients()
        if self.alive:
            assert self.proc is not None
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)

    def log_text(self) -> str:
        return "".join(self.log)

    @property
    def node_id(self) -> str | None:
        """The node's id in the cluster at its latest start, as its log announces it (its
        heartbeat is ``<prefix>:node:<id>`` on the bus; the signaling bus uses the same id)."""
        found = re.findall(
            r"openkvs\.cluster\.redisbus: node (\S+) joined the cluster", self.log_text()
        )
        return found[-1] if found else None

    # -- what clients need ---------------------------------------------------------------------

    @property
    def endpoint(self) -> str:
        return f"https://127.0.0.1:{self.port}"

    @property
    def http_endpoint(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    @property
    def ca(self) -> str:
        """This node's TLS CA (each node has its own data dir, hence its own CA)."""
        return str(self.data_dir / "tls" / "ca.pem")

    @property
    def keys(self) -> tuple[str, str]:
        """The cluster's generated access key (the same on every node)."""
        return self.cluster.keys

    def client(self, service: str, *, endpoint: str | None = None, **config: Any) -> Any:
        """A boto3 client of this node (its HTTPS endpoint unless told), closed with the node."""
        return self.client_factory(service, endpoint=endpoint, **config)()

    def client_factory(
        self, service: str, *, endpoint: str | None = None, **config: Any
    ) -> Callable[[], Any]:
        """A function making boto3 clients of this node (e.g. one per thread)."""
        akid, secret = self.keys
        where = endpoint or self.endpoint

        def make() -> Any:
            c = boto3.client(
                service,
                endpoint_url=where,
                region_name=self.settings.region,
                aws_access_key_id=akid,
                aws_secret_access_key=secret,
                verify=self.ca if where.startswith("https") else False,
                config=Config(retries={"max_attempts": 1}, **config),
            )
            self._clients.append(c)
            return c

        return make

    def close_clients(self) -> None:
        for c in self._clients:
            c.close()
        self._clients.clear()

    def __repr__(self) -> str:
        return f"<Node {self.name} :{self.port} {'up' if self.alive else 'down'}>"


class Cluster:
    """The nodes of one test and the engines they share."""

    def __init__(self, engines: ClusterEngines, root: Path) -> None:
        self.engines = engines
        self.root = root
        self.nodes: list[Node] = []
        self._keys: tuple[str, str] | None = None

    @property
    def keys(self) -> tuple[str, str]:
        if self._keys is None:
            settings = Settings.load(
                {}, None, {"data_dir": self.root, "database_url": self.engines.database_url}
            )
            p = _run(generated_principal(settings))
            self._keys = (p.access_key_id, p.secret_access_key)
        return self._keys

    def start(self, n: int, **overrides: Any) -> list[Node]:
        base: dict[str, str] = {
            # No embedded coturn (a killed node would leave it running); retention off.
            "no_turn": "true",
            "turn_port": "0",
            "storage_retention_interval": "0",
            "node_address": "127.0.0.1",
            **self.engines.settings(),
        }
        base.update({k: _env_value(v) for k, v in overrides.items()})
        made = []
        for _ in range(n):
            name = chr(ord("a") + len(self.nodes)) if len(self.nodes) < 26 else str(len(self.nodes))
            node = Node(name, self.root / f"node-{name}", dict(base), self)
            self.nodes.append(node)
            made.append(node)
        for node in made:
            node.spawn()
        with concurrent.futures.ThreadPoolExecutor(len(made)) as pool:
            list(pool.map(lambda node: node.wait_ready(), made))
        return made

    def stop(self) -> None:
        with concurrent.futures.ThreadPoolExecutor(max(1, len(self.nodes))) as pool:
            list(pool.map(lambda node: node.stop(), self.nodes))


StartCluster = Callable[..., list[Node]]


def _env_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (list, tuple)):
        return ",".join(str(v) for v in value)
    return str(value)


@contextlib.contextmanager
def fresh_engines(
    seaweed: Seaweed, redis_url: str | None, postgres_admin_url: str
) -> Iterator[ClusterEngines]:
    """A new PostgreSQL database (on the ``postgres_admin_url`` fixture's server), S3 bucket name
    and Redis key prefix (on ``redis_url``, the ``redis_server`` fixture's); the database is
    dropped and the prefix's keys deleted after. Skips (fails under CI=true) without Redis."""
    if redis_url is None:
        reason = "no Redis answers and redis-server is not installed"
        if CI:
            pytest.fail(f"{reason} (required under CI=true)")
        pytest.skip(reason)
    database_url = create_database(postgres_admin_url)
    prefix = "openkvs-test-" + uuid.uuid4().hex[:12]
    engines = ClusterEngines(
        database_url, seaweed, f"okvs-{uuid.uuid4().hex[:16]}", "media", redis_url, prefix
    )
    try:
        yield engines
    finally:
        drop_database(postgres_admin_url, database_url)
        delete_redis_prefix(redis_url, prefix)


@contextlib.contextmanager
def running_cluster(engines: ClusterEngines, root: Path) -> Iterator[Cluster]:
    """A cluster (no node yet) whose nodes are stopped on the way out."""
    c = Cluster(engines, root)
    try:
        yield c
    finally:
        c.stop()


@pytest.fixture
def cluster_engines(
    seaweed: Seaweed, redis_server: str | None, postgres_admin_url: str
) -> Iterator[ClusterEngines]:
    """A fresh PostgreSQL database, S3 bucket name and Redis key prefix for this test."""
    with fresh_engines(seaweed, redis_server, postgres_admin_url) as engines:
        yield engines


@pytest.fixture
def cluster(cluster_engines: ClusterEngines, tmp_path: Path) -> Iterator[Cluster]:
    """This test's cluster: ``cluster.start(n, **overrides)``, ``cluster.nodes``,
    ``cluster.engines``."""
    with running_cluster(cluster_engines, tmp_path / "cluster") as c:
        yield c


@pytest.fixture
def start_cluster(cluster: Cluster) -> StartCluster:
    """``start_cluster(n, **overrides)``: ``n`` more started nodes of this test's cluster."""
    return cluster.start
