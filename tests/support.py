"""Test support: the real server on 127.0.0.1 with random ports, in a thread with its own loop."""

from __future__ import annotations

import asyncio
import concurrent.futures
import os
import random
import shutil
import socket
import threading
from collections.abc import Coroutine
from pathlib import Path
from typing import Any, TypeVar

import boto3
from botocore.config import Config

from openkvs.app import SERVICES_KEY
from openkvs.auth.credentials import default_principal
from openkvs.config import Settings
from openkvs.server import Server
from openkvs.services import Services

T = TypeVar("T")

CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")


def need_tool(name: str) -> str | None:
    """Path of a tool, or None; under CI=true a missing tool is a failure, not a skip."""
    path = shutil.which(name)
    if path is None and CI:
        raise RuntimeError(f"{name} is required under CI=true but is not installed")
    return path


def bound_socket() -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    return sock


_LOW_PORTS = (10_000, 32_767)  # below Linux's default ephemeral range (32768-60999)
_handed_out: set[int] = set()


def free_port() -> int:
    """A loopback port that is free for both TCP and UDP, for a child process to listen on.

    Drawn below the kernel's ephemeral range, so no outgoing connection (or any socket bound
    to port 0, in this or a parallel test worker) can take it between here and the child's
    bind; random, so parallel workers do not pick the same one."""
    for _ in range(200):
        port = random.randint(*_LOW_PORTS)
        if port in _handed_out:
            continue
        try:
            with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as tcp:
                tcp.bind(("127.0.0.1", port))
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
                udp.bind(("127.0.0.1", port))
        except OSError:
            continue
        _handed_out.add(port)
        return port
    raise RuntimeError("no free loopback port below the ephemeral range")


def free_port_pair() -> int:
    """A port p such that p and p + 1 are free loopback ports (the embedded TURN server's
    ``turn_port``: coturn listens on both)."""
    for _ in range(200):
        port = free_port()
        if port + 1 in _handed_out or port + 1 > _LOW_PORTS[1]:
            continue
        try:
            with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as tcp:
                tcp.bind(("127.0.0.1", port + 1))
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
                udp.bind(("127.0.0.1", port + 1))
        except OSError:
            continue
        _handed_out.add(port + 1)
        return port
    raise RuntimeError("no two free consecutive loopback ports below the ephemeral range")


class ServerThread:
    """The real openkvs server, running on its own event loop in a background thread."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self._thread.start()
        self.server: Server | None = None
        self._clients: list[Any] = []
        self.port = 0
        self.http_port = 0
        self._start()

    def _start(self) -> None:
        tls_sock, http_sock = bound_socket(), bound_socket()
        if self.port:
            tls_sock.close()
            http_sock.close()
            tls_sock, http_sock = _rebind(self.port), _rebind(self.http_port)

        async def start() -> Server:
            server = Server(self.settings, tls_sock=tls_sock, http_sock=http_sock)
            await server.start()
            return server

        self.server = self.call(start())
        assert self.server.bound is not None
        self.port = self.server.bound.port or 0
        self.http_port = self.server.bound.http_port or 0

    def call(self, coro: Coroutine[Any, Any, T], timeout: float = 60) -> T:
        """Run a coroutine on the server's loop and wait for its result."""
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def submit(self, coro: Coroutine[Any, Any, T]) -> concurrent.futures.Future[T]:
        return asyncio.run_coroutine_threadsafe(coro, self.loop)

    @property
    def services(self) -> Services:
        assert self.server is not None
        return self.server.app[SERVICES_KEY]

    @property
    def endpoint(self) -> str:
        return f"https://127.0.0.1:{self.port}"

    @property
    def http_endpoint(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    @property
    def ca(self) -> str:
        return str(self.settings.data_dir / "tls" / "ca.pem")

    @property
    def keys(self) -> tuple[str, str]:
        p = self.services.credentials.default if self.server is not None else None
        if p is None:
            p = default_principal(self.settings.data_dir)
        return p.access_key_id, p.secret_access_key

    def client(
        self,
        service: str,
        *,
        endpoint: str | None = None,
        keys: tuple[str, str] | None = None,
        **config: Any,
    ) -> Any:
        akid, secret = keys or self.keys
        endpoint = endpoint or self.endpoint
        client = boto3.client(
            service,
            endpoint_url=endpoint,
            region_name=self.settings.region,
            aws_access_key_id=akid,
            aws_secret_access_key=secret,
            verify=self.ca if endpoint.startswith("https") else False,
            config=Config(retries={"max_attempts": 1}, **config),
        )
        self._clients.append(client)
        return client

    def stop_server(self) -> None:
        if self.server is not None:
            self.call(self.server.stop())
            # Let TLS transports finish their close handshakes before the loop goes away.
            self.call(asyncio.sleep(0.3))
            self.server = None

    def close_clients(self) -> None:
        for client in self._clients:
            client.close()
        self._clients.clear()

    def restart(self) -> None:
        self.close_clients()
        self.stop_server()
        self._start()

    def close(self) -> None:
        self.close_clients()
        self.stop_server()

        async def abort_leftovers() -> None:
            # TLS connections closed by the server wait for the peer's close_notify (asyncio's
            # 30 s ssl_shutdown_timeout); the loop is going away, so cut them now.
            for transport in list(getattr(self.loop, "_transports", {}).values()):
                if transport is not None and not transport.is_closing():
                    transport.abort()
            await asyncio.sleep(0.05)

        self.call(abort_leftovers())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(10)
        self.loop.close()


def _rebind(port: int) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", port))
    return sock


def make_settings(data_dir: Path, **overrides: Any) -> Settings:
    """Test server settings. The embedded coturn is off unless a test turns it on (with
    ``no_turn=False`` and a ``turn_port`` from free_port_pair()): most tests need no TURN, and many
    servers each starting coturn would cost time. What runs instead, the STUN responder, listens
    on a free port."""
    base: dict[str, Any] = {
        "data_dir": data_dir,
        "storage_retention_interval": 0.0,
        "no_turn": True,
        "turn_port": 0,
    }
    base.update(overrides)
    return Settings.load({}, None, base)
