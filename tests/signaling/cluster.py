"""Two openkvs nodes in the test's own loop, each a whole app on its own ports with its own
Redis signaling bus on one key prefix, sharing one metadata store (node A's control plane), as
nodes behind a load balancer share one database."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import boto3
from botocore.config import Config

from openkvs.app import SERVICES_KEY, build_services
from openkvs.auth.credentials import CredentialStore, default_principal
from openkvs.config import Settings
from openkvs.control.fragments import FragmentStore
from openkvs.control.ratelimit import RateLimiter
from openkvs.control.resources import ControlPlane
from openkvs.control.sessions import RecordingSessions
from openkvs.records import Channel
from openkvs.server import Server
from openkvs.services import Services
from openkvs.webrtc.manager import StorageSessionManager

from ..engines import redis_url
from ..support import bound_socket, make_settings


class SharedControl(ControlPlane):
    """Another node's view of the shared metadata store (node A's app starts and stops it)."""

    async def start(self) -> None:
        return None

    async def stop(self) -> None:
        return None


class Node:
    """One node, shaped like ServerThread where the kvs.py helpers look (ports, keys, ca)."""

    def __init__(self, name: str, server: Server, settings: Settings, keys_dir: Path) -> None:
        self.name = name
        self.server = server
        self.settings = settings
        self._keys_dir = keys_dir
        assert server.bound is not None
        self.port = server.bound.port or 0
        self.http_port = server.bound.http_port or 0

    @property
    def services(self) -> Services:
        services: Services = self.server.app[SERVICES_KEY]
        return services

    @property
    def keys(self) -> tuple[str, str]:
        p = default_principal(self._keys_dir)
        return p.access_key_id, p.secret_access_key

    @property
    def ca(self) -> str:
        return str(self.settings.data_dir / "tls" / "ca.pem")

    def client(self, service: str) -> Any:
        akid, secret = self.keys
        return boto3.client(
            service,
            endpoint_url=f"http://127.0.0.1:{self.http_port}",
            region_name=self.settings.region,
            aws_access_key_id=akid,
            aws_secret_access_key=secret,
            config=Config(retries={"max_attempts": 1}),
        )

    async def join(self, channel_arn: str, client_id: str | None = None) -> None:
        """JoinStorageSession(AsViewer) through this node's API, as a device would."""
        storage = self.client("kinesis-video-webrtc-storage")

        def call() -> None:
            if client_id is None:
                storage.join_storage_session(channelArn=channel_arn)
            else:
                storage.join_storage_session_as_viewer(channelArn=channel_arn, clientId=client_id)
            storage.close()

        await asyncio.to_thread(call)


def node_settings(data_dir: Path, prefix: str, **overrides: Any) -> Settings:
    return make_settings(
        data_dir,
        bus_url=f"{redis_url()}?prefix={prefix}",
        signaling_ping_interval=0,
        **overrides,
    )


def _with_sessions(services: Services, media: bool) -> Services:
    if media:
        services.sessions = StorageSessionManager(
            services.settings, services.fragments, services.hub, turn=services.ice.storage_turn
        )
    return services


async def start_nodes(
    tmp: Path, prefix: str, *, media: bool = False, **overrides: Any
) -> tuple[Node, Node]:
    """Nodes A and B; ``media``: real storage sessions (else joins are only recorded)."""
    settings_a = node_settings(tmp / "a", prefix, **overrides)
    settings_b = node_settings(tmp / "b", prefix, **overrides)
    services_a = build_services(settings_a, RecordingSessions())
    _with_sessions(services_a, media)
    a_control = services_a.control
    control_b = SharedControl(
        a_control.store,
        a_control.blobs,
        region=a_control.region,
        account_id=a_control.account_id,
    )
    services_b = Services(
        settings=settings_b,
        control=control_b,
        credentials=CredentialStore.load(settings_b.credentials),
        sessions=RecordingSessions(),
        fragments=FragmentStore(a_control.store, a_control.blobs),
        account_limiter=RateLimiter(settings_b.rate_limit_account),
        resource_limiter=RateLimiter(settings_b.rate_limit_resource),
        join_limiter=RateLimiter(settings_b.rate_limit_join_per_channel),
    )
    _with_sessions(services_b, media)
    nodes = []
    for name, settings, services in (("A", settings_a, services_a), ("B", settings_b, services_b)):
        server = Server(settings, services, tls_sock=bound_socket(), http_sock=bound_socket())
        await server.start()
        nodes.append(Node(name, server, settings, settings_a.data_dir))
    return nodes[0], nodes[1]


async def stop_nodes(*nodes: Node) -> None:
    # B first: A owns the shared store.
    for node in reversed(nodes):
        await node.server.stop()


async def make_channel(node: Node, name: str, *, ttl: int = 60, storage: bool = False) -> Channel:
    control = node.services.control
    channel = await control.create_channel(name=name, message_ttl=ttl)
    if storage:
        stream = await control.create_stream(name=f"{name}-stream", retention_hours=1)
        channel = await control.update_media_storage(
            arn=channel.arn, status="ENABLED", stream_arn=stream.arn
        )
    return channel
