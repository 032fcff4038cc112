"""TURN with coturn (``use-auth-secret`` on loopback): two aiortc peers forced to relay-only
connect with the credentials GetIceServerConfig hands out; coturn refuses stale or forged ones."""

from __future__ import annotations

import asyncio
import os
import secrets
import socket
import struct
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, Any

import pytest
from aioice import stun
from aioice.turn import create_turn_endpoint

from openkvs.signaling.turn import turn_credentials

from ..support import ServerThread, free_port, need_tool
from .kvs import Client, setup_channel
from .peers import RED, call
from .test_https_api import signaling_client

SECRET = "coturn-shared-secret"


def _stun_ready(port: int, deadline: float, server: subprocess.Popen[bytes]) -> bool:
    """True once a STUN binding request is answered; False at the deadline or if the server
    exited (say, because its port was taken)."""
    request = struct.pack("!HHI12s", 0x0001, 0, 0x2112A442, secrets.token_bytes(12))
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
        udp.settimeout(0.2)
        while time.monotonic() < deadline and server.poll() is None:
            udp.sendto(request, ("127.0.0.1", port))
            try:
                data, _ = udp.recvfrom(2048)
            except OSError:
                continue
            if data[:2] == b"\x01\x01":  # Binding success response
                return True
    return False


def _start_coturn(binary: str, tmp_path: Path, port: int, log: IO[str]) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [
            binary,
            "-n",
            "--listening-ip=127.0.0.1",
            f"--listening-port={port}",
            "--relay-ip=127.0.0.1",
            "--allow-loopback-peers",
            "--use-auth-secret",
            f"--static-auth-secret={SECRET}",
            "--realm=openkvs.test",
            "--no-tcp",
            "--no-tls",
            "--no-dtls",
            "--no-cli",
            f"--userdb={tmp_path / 'turndb'}",
            f"--pidfile={tmp_path / 'turnserver.pid'}",
            "--log-file=stdout",
            "--simple-log",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
        cwd=tmp_path,
        env={"PATH": os.environ.get("PATH", "")},
    )


def _stop(proc: subprocess.Popen[bytes]) -> None:
    proc.terminate()
    try:
        proc.wait(5)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(5)


@pytest.fixture
def coturn(tmp_path: Path) -> Iterator[int]:
    """coturn on a loopback UDP port. The port is free when picked but another process can
    still take it before coturn binds; then coturn is started again on a fresh port."""
    binary = need_tool("turnserver")
    if binary is None:
        pytest.skip("coturn (turnserver) is not installed")
    logs: list[str] = []
    for attempt in range(3):
        port = free_port()
        log_path = tmp_path / f"turnserver-{attempt}.log"
        with open(log_path, "w") as log:
            proc = _start_coturn(binary, tmp_path, port, log)
            try:
                ready = _stun_ready(port, time.monotonic() + 10, proc)
            except BaseException:
                _stop(proc)
                raise
            if ready:
                try:
                    yield port
                finally:
                    _stop(proc)
                return
            _stop(proc)
        logs.append(log_path.read_text()[-1500:])
    raise RuntimeError("coturn did not start:\n" + "\n---\n".join(logs))


async def test_relay_only_call_with_ice_server_config(
    coturn: int, make_server: Callable[..., ServerThread]
) -> None:
    server = make_server(
        turn_uris=(f"turn:127.0.0.1:{coturn}?transport=udp",), turn_secret=SECRET, turn_ttl=600
    )
    arn = setup_channel(server, "relay")
    sig = signaling_client(server, arn)
    ice = {
        "master": (await asyncio.to_thread(sig.get_ice_server_config, ChannelARN=arn))[
            "IceServerList"
        ],
        "viewer": (
            await asyncio.to_thread(
                sig.get_ice_server_config, ChannelARN=arn, ClientId="relay-viewer"
            )
        )["IceServerList"],
    }
    master = await Client.connect(server, arn)
    viewer = await Client.connect(server, arn, "relay-viewer")
    try:
        result = await call(master, viewer, "relay-viewer", ice_servers=ice, relay=True)
    finally:
        await viewer.close()
        await master.close()
    candidates = result.viewer_candidates + result.master_candidates
    assert candidates and all(" typ relay " in c["candidate"] for c in candidates), candidates
    assert result.viewer_state == "connected" and result.master_state == "connected"
    mean = result.frames[-1].to_ndarray(format="rgb24").reshape(-1, 3).mean(axis=0)
    assert all(abs(m - c) < 25 for m, c in zip(mean, RED, strict=True)), mean


async def _allocate(port: int, username: str, password: str) -> Any:
    transport, _ = await create_turn_endpoint(
        asyncio.DatagramProtocol, ("127.0.0.1", port), username, password
    )
    return transport


async def test_coturn_checks_the_credentials(coturn: int) -> None:
    now = int(time.time())
    username, password = turn_credentials(SECRET, "probe", now + 600)
    transport = await _allocate(coturn, username, password)
    assert transport.get_extra_info("sockname")[0] == "127.0.0.1"  # a relayed address
    transport.close()
    await asyncio.sleep(0.05)
    stale_user, stale_password = turn_credentials(SECRET, "probe", now - 60)
    forged_user, forged_password = turn_credentials("not-the-secret", "probe", now + 600)
    for user, pw in ((stale_user, stale_password), (forged_user, forged_password)):
        with pytest.raises(stun.TransactionFailed):
            await _allocate(coturn, user, pw)
