"""Every client gets ICE servers: the embedded coturn by default (two TURN server sets, as AWS
returns), a STUN responder when TURN is off or coturn is missing, the configured TURN instead of
either. Real coturn, real boto3 clients, real TURN allocations over UDP and TCP."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import random
import re
import signal
import socket
import stat
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from aioice import stun as aioice_stun
from aioice.turn import TurnClientUdpProtocol, create_turn_endpoint

from openkvs.signaling import stun

from ..playback.support import browser_missing
from ..support import ServerThread, free_port, free_port_pair, need_tool
from .kvs import Client, setup_channel
from .peers import RED, call
from .test_https_api import signaling_client

ROOT = Path(__file__).resolve().parents[2]
JS = Path(__file__).with_name("js")
_TURN_URI = re.compile(r"turn:(\[[0-9a-fA-F:.]+\]|[^:/?\[\]]+):(\d+)\?transport=(udp|tcp)")
_STUN_URI = re.compile(r"stun:(\[[0-9a-fA-F:.]+\]|[^:/?\[\]]+):(\d+)")


def embedded(make_server: Callable[..., ServerThread], **overrides: Any) -> ServerThread:
    """A server running its own coturn, on a free port."""
    if need_tool("turnserver") is None:
        pytest.skip("coturn (turnserver) is not installed")
    return make_server(no_turn=False, turn_port=free_port_pair(), **overrides)


async def ice_server_config(server: ServerThread, client_id: str | None = None) -> Any:
    arn = await asyncio.to_thread(setup_channel, server, f"ice-{random.randrange(10**9)}")
    sig = signaling_client(server, arn)
    kw = {"ClientId": client_id} if client_id else {}
    response = await asyncio.to_thread(sig.get_ice_server_config, ChannelARN=arn, **kw)
    return response["IceServerList"]


def c_sdk_sample_entry(servers: list[dict[str, Any]]) -> dict[str, Any]:
    """What the KVS WebRTC C SDK checks (Signaling.c) before its sample takes entry 0
    (Common.c): a non-empty list (else STATUS_SIGNALING_NO_CONFIG_SPECIFIED, 0x5d00001c), 1-4
    URIs per entry, every Ttl over the 30 s refresh grace period."""
    assert servers, "STATUS_SIGNALING_NO_CONFIG_SPECIFIED"
    for entry in servers:
        assert 1 <= len(entry["Uris"]) <= 4
        assert entry["Ttl"] > 30
    return servers[0]


def js_sample_entry(servers: list[dict[str, Any]], rng: random.Random) -> dict[str, Any]:
    """The KVS WebRTC JS sample page with "use only one set of TURN servers": a random entry,
    which RTCPeerConnection refuses ("Malformed RTCIceServer") if a turn: URL has no username
    or credential."""
    entry = rng.choice(servers)
    for url in entry["Uris"]:
        if url.startswith(("turn:", "turns:")):
            assert isinstance(entry.get("Username"), str) and entry["Username"], entry
            assert isinstance(entry.get("Password"), str) and entry["Password"], entry
    return entry


async def allocate(uri: str, username: str, password: str) -> tuple[str, int]:
    """A TURN Allocate on the server a turn: URI names, over its transport; the relayed
    address."""
    m = _TURN_URI.fullmatch(uri)
    assert m is not None, uri
    host, port, transport = m.group(1).strip("[]"), int(m.group(2)), m.group(3)
    turn, _ = await create_turn_endpoint(
        asyncio.DatagramProtocol, (host, port), username, password, transport=transport
    )
    try:
        relayed: tuple[str, int] = turn.get_extra_info("sockname")
        return relayed
    finally:
        turn.close()
        await asyncio.sleep(0.01)


async def test_every_entry_allocates_over_udp_and_tcp(
    make_server: Callable[..., ServerThread],
) -> None:
    server = embedded(make_server, turn_relay_port_min=40000, turn_relay_port_max=40999)
    port = server.settings.turn_port
    servers = await ice_server_config(server, "cam-1")
    assert len(servers) == 2
    for n, entry in enumerate(servers, start=1):
        # Each set on a port of its own (a client allocating on both from one socket would
        # otherwise make coturn refuse the second allocation: same 5-tuple).
        p = port + n - 1
        assert entry["Uris"] == [
            f"turn:127.0.0.1:{p}?transport=udp",
            f"turn:127.0.0.1:{p}?transport=tcp",
        ]
        assert entry["Username"].endswith(f":cam-1.{n}") and entry["Password"]
        assert entry["Ttl"] == 3600
    assert servers[0]["Password"] != servers[1]["Password"]
    # The clients that failed on an empty list: the C SDK sample (entry 0) and the JS sample
    # page (a random entry) both find a usable entry.
    chosen = [c_sdk_sample_entry(servers)] + [
        js_sample_entry(servers, random.Random(seed)) for seed in range(4)
    ]
    assert servers[0] in chosen and servers[1] in chosen
    for entry in servers:
        for uri in entry["Uris"]:
            host, relayed_port = await allocate(uri, entry["Username"], entry["Password"])
            assert host == "127.0.0.1" and 40000 <= relayed_port <= 40999, uri
    # coturn checks the credentials: a forged password is refused.
    with pytest.raises(aioice_stun.TransactionFailed):
        await allocate(servers[0]["Uris"][0], servers[0]["Username"], "Zm9yZ2VkLXBhc3N3b3Jk")
    # Without a ClientId (the JS SDK sends none) there are still two sets.
    anonymous = await ice_server_config(server)
    assert len(anonymous) == 2 and anonymous[0]["Username"] != anonymous[1]["Username"]


async def test_storage_peer_uses_the_embedded_turn(
    make_server: Callable[..., ServerThread],
) -> None:
    server = embedded(make_server)
    port = server.settings.turn_port
    sessions: Any = server.services.sessions
    (turn,) = sessions.ice_servers()
    assert turn.urls == [
        f"turn:127.0.0.1:{port}?transport=udp",
        f"turn:127.0.0.1:{port}?transport=tcp",
    ]
    assert turn.username.endswith(":openkvs-storage")
    expiry = int(turn.username.split(":")[0])
    assert expiry >= time.time() + 86_000  # the storage peer's allocations may last a day
    for uri in turn.urls:
        await allocate(uri, turn.username, turn.credential)


def test_storage_workers_get_the_embedded_turn(make_server: Callable[..., ServerThread]) -> None:
    server = embedded(make_server, webrtc_workers=1)
    sessions: Any = server.services.sessions
    access = sessions.turn()  # what each worker process is started with
    port = server.settings.turn_port
    assert access.uris == (
        f"turn:127.0.0.1:{port}?transport=udp",
        f"turn:127.0.0.1:{port}?transport=tcp",
    )
    assert access.secret == (server.settings.data_dir / "turn-secret.key").read_text()
    assert access.secret not in repr(access)


async def test_relay_only_call_through_the_embedded_turn(
    make_server: Callable[..., ServerThread],
) -> None:
    server = embedded(make_server)
    arn = await asyncio.to_thread(setup_channel, server, "relay")
    sig = signaling_client(server, arn)
    master_list = (await asyncio.to_thread(sig.get_ice_server_config, ChannelARN=arn))[
        "IceServerList"
    ]
    viewer_list = (
        await asyncio.to_thread(sig.get_ice_server_config, ChannelARN=arn, ClientId="v")
    )["IceServerList"]
    ice = {
        "master": [c_sdk_sample_entry(master_list)],
        "viewer": [js_sample_entry(viewer_list, random.Random(1))],
    }
    master = await Client.connect(server, arn)
    viewer = await Client.connect(server, arn, "v")
    try:
        result = await call(master, viewer, "v", ice_servers=ice, relay=True)
    finally:
        await viewer.close()
        await master.close()
    candidates = result.viewer_candidates + result.master_candidates
    assert candidates and all(" typ relay " in c["candidate"] for c in candidates), candidates
    assert result.viewer_state == "connected" and result.master_state == "connected"
    mean = result.frames[-1].to_ndarray(format="rgb24").reshape(-1, 3).mean(axis=0)
    assert all(abs(m - c) < 25 for m, c in zip(mean, RED, strict=True)), mean


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


async def test_coturn_is_supervised_and_stops_with_the_server(
    make_server: Callable[..., ServerThread],
) -> None:
    server = embedded(make_server)
    key = server.settings.data_dir / "turn-secret.key"
    conf = server.settings.data_dir / "turn" / "turnserver.conf"
    for path in (key, conf):
        assert stat.S_IMODE(path.stat().st_mode) == 0o600, path
    secret = key.read_text()
    coturn = server.services.ice.coturn
    assert coturn is not None and coturn.process is not None
    assert secret not in " ".join(coturn.command)  # the secret is in the 0600 file only
    first = coturn.process.pid

    os.kill(first, signal.SIGKILL)
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        process = coturn.process
        if process is not None and process.pid != first and coturn.running.is_set():
            break
        await asyncio.sleep(0.05)
    assert coturn.process is not None and coturn.process.pid != first, "coturn not restarted"
    assert coturn.running.is_set() and coturn.starts == 2
    second = coturn.process.pid
    entry = (await ice_server_config(server))[0]
    await allocate(entry["Uris"][0], entry["Username"], entry["Password"])

    await asyncio.to_thread(server.restart)
    assert not _alive(second), "coturn outlived the server"
    assert key.read_text() == secret  # the same secret across restarts
    assert stat.S_IMODE(key.stat().st_mode) == 0o600
    restarted = server.services.ice.coturn
    assert restarted is not None and restarted.process is not None
    third = restarted.process.pid
    entry = (await ice_server_config(server))[1]
    await allocate(entry["Uris"][1], entry["Username"], entry["Password"])

    await asyncio.to_thread(server.stop_server)
    assert not _alive(third), "coturn outlived the server"


@pytest.mark.parametrize("why", ["no_turn", "coturn missing"])
async def test_stun_only_fallback_answers_binding_requests(
    why: str,
    make_server: Callable[..., ServerThread],
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="openkvs.turn")
    if why == "no_turn":
        server = make_server(no_turn=True, turn_port=free_port())
    else:
        missing = tmp_path / "no-such-dir" / "turnserver"
        server = make_server(no_turn=False, turn_binary=str(missing), turn_port=free_port())
    assert server.services.ice.coturn is None
    for _ in range(2):
        servers = await ice_server_config(server, "cam")
        assert len(servers) == 2
        entry = c_sdk_sample_entry(servers)
        assert js_sample_entry(servers, random.Random(3))["Uris"] == entry["Uris"]
    (uri,) = entry["Uris"]
    m = _STUN_URI.fullmatch(uri)
    assert m is not None and m.group(1) == "127.0.0.1", uri
    assert int(m.group(2)) == server.settings.turn_port
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
        udp.bind(("127.0.0.1", 0))
        udp.settimeout(5)
        tid = os.urandom(12)
        udp.sendto(stun.binding_request(tid), ("127.0.0.1", int(m.group(2))))
        data, _ = udp.recvfrom(2048)
        mine = udp.getsockname()
    parsed = aioice_stun.parse_message(data)  # an independent parser, FINGERPRINT checked
    assert parsed.transaction_id == tid and parsed.message_class == aioice_stun.Class.RESPONSE
    assert parsed.attributes["XOR-MAPPED-ADDRESS"] == mine
    warnings = [r for r in caplog.records if "not installed" in r.getMessage()]
    if why == "no_turn":
        assert not warnings
    else:
        assert len(warnings) == 1 and warnings[0].levelno == logging.WARNING


async def test_external_turn_replaces_the_embedded_one(
    make_server: Callable[..., ServerThread],
) -> None:
    uris = ("turn:turn.example.com:3478?transport=udp", "turns:turn.example.com:5349")
    port = free_port_pair()
    server = make_server(no_turn=False, turn_port=port, turn_uris=uris, turn_secret="ext")
    ice = server.services.ice
    assert ice.mode == "external" and ice.coturn is None and ice.stun is None
    servers = await ice_server_config(server, "cam")
    assert [s["Uris"] for s in servers] == [list(uris)]
    assert not any(str(port) in u for s in servers for u in s["Uris"])
    sessions: Any = server.services.sessions
    assert [s.urls for s in sessions.ice_servers()] == [list(uris)]
    # Nothing listens on the embedded server's ports.
    for p in (port, port + 1):
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
            udp.bind(("127.0.0.1", p))


def _non_loopback_ipv4() -> str | None:
    """This machine's address on its default route, if it has one."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
        try:
            udp.connect(("192.0.2.1", 9))  # TEST-NET-1: nothing is sent
        except OSError:
            return None
        address: str = udp.getsockname()[0]
    return None if address.startswith("127.") else address


async def _permitted(
    server: tuple[str, int], entry: dict[str, Any], peers: list[str]
) -> list[bool]:
    """For each peer address: may this allocation relay to it (a ChannelBind succeeds)?"""
    loop = asyncio.get_running_loop()
    transport, protocol = await loop.create_datagram_endpoint(
        lambda: TurnClientUdpProtocol(
            server,
            username=entry["Username"],
            password=entry["Password"],
            lifetime=600,
            channel_refresh_time=500,
        ),
        remote_addr=server,
    )
    out = []
    try:
        await protocol.connect()
        for n, peer in enumerate(peers):
            try:
                await protocol.channel_bind(0x4000 + n, (peer, 40000 + n))
                out.append(True)
            except aioice_stun.TransactionFailed as exc:
                assert exc.response.attributes["ERROR-CODE"][0] == 403, exc
                out.append(False)
        await protocol.delete()
    finally:
        transport.close()
    return out


async def test_loopback_turn_relays_to_loopback_peers_only(
    make_server: Callable[..., ServerThread],
) -> None:
    server = embedded(make_server)
    entry = (await ice_server_config(server))[0]
    port = server.settings.turn_port
    peers = ["127.0.0.1", "127.8.9.10", "10.1.2.3", "192.168.1.20", "169.254.169.254", "8.8.8.8"]
    assert await _permitted(("127.0.0.1", port), entry, peers) == [True, True] + [False] * 4


async def test_turn_on_a_lan_address_refuses_loopback_and_link_local_peers(
    make_server: Callable[..., ServerThread],
) -> None:
    lan = _non_loopback_ipv4()
    if lan is None:
        pytest.skip("no non-loopback IPv4 address on this machine")
    # The server's own sockets stay on loopback; the setting decides where coturn listens.
    server = embedded(make_server, host=lan)
    entry = (await ice_server_config(server))[0]
    assert entry["Uris"][0] == f"turn:{lan}:{server.settings.turn_port}?transport=udp"
    peers = [lan, "10.1.2.3", "127.0.0.1", "169.254.169.254", "0.1.2.3"]
    assert await _permitted((lan, server.settings.turn_port), entry, peers) == [
        True,
        True,
        False,
        False,
        False,
    ]


def chromium_gather(policy: str, configs: dict[str, list[dict[str, Any]]]) -> dict[str, Any]:
    """RTCPeerConnections in headless Chromium built from IceServerList entries as the KVS JS
    sample page builds them; what each gathered (or the error constructing it)."""
    proc = subprocess.run(
        ["node", str(JS / "ice_chromium.js"), json.dumps({"policy": policy, "configs": configs})],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return dict(json.loads(proc.stdout.strip().splitlines()[-1]))


async def test_chromium_gets_relay_candidates_from_each_entry(
    make_server: Callable[..., ServerThread],
) -> None:
    reason = browser_missing()
    if reason is not None:
        pytest.skip(reason)
    server = embedded(make_server)
    servers = await ice_server_config(server)
    port = server.settings.turn_port
    configs = {
        "entry 0": [servers[0]],
        "entry 1": [servers[1]],
        "both": servers,  # the JS sample page with "use only one set" unchecked
        # The failure a list without credentials gives the sample page (and the harness sees it).
        "no credentials": [{"Uris": [f"turn:127.0.0.1:{port}?transport=udp"]}],
    }
    results = await asyncio.to_thread(chromium_gather, "relay", configs)
    refused = results.pop("no credentials")["error"]
    assert refused.startswith("InvalidAccessError: Failed to construct 'RTCPeerConnection'")
    for name, result in results.items():
        assert result["error"] is None, (name, result)
        relay = [c for c in result["candidates"] if " typ relay " in c]
        # A relay candidate per set and transport (TURN over UDP and over TCP), and gathering
        # completes (no allocation left waiting for a timeout).
        assert len(relay) == 2 * (len(configs[name])), (name, result)
        assert all(" 127.0.0.1 " in c for c in relay), (name, result)
        assert result["ms"] is not None and result["ms"] < 10_000, (name, result)


async def test_chromium_takes_the_stun_only_list(
    make_server: Callable[..., ServerThread],
) -> None:
    reason = browser_missing()
    if reason is not None:
        pytest.skip(reason)
    server = make_server(no_turn=True, turn_port=free_port())
    servers = await ice_server_config(server)
    results = await asyncio.to_thread(
        chromium_gather, "all", {"entry 0": [servers[0]], "both": servers}
    )
    for name, result in results.items():
        assert result["error"] is None and result["candidates"], (name, result)
