"""coturn REST-API credentials: username ``<expiry>:<clientId>``, password
base64(HMAC-SHA1(secret, username))."""

from __future__ import annotations

import base64
import hashlib
import hmac
import logging
from pathlib import Path

import pytest

from openkvs.signaling.turn import (
    advertised_host,
    embedded_ice_server_list,
    ice_server_list,
    stun_ice_server_list,
    turn_credentials,
)
from openkvs.signaling.turnserver import coturn_config, log_line


def test_credentials_match_coturn_scheme() -> None:
    username, password = turn_credentials("north", "cam-1", 1_700_000_000)
    assert username == "1700000000:cam-1"
    expected = hmac.new(b"north", b"1700000000:cam-1", hashlib.sha1).digest()
    assert base64.b64decode(password) == expected
    # A different secret, client or expiry gives a different password.
    assert turn_credentials("south", "cam-1", 1_700_000_000)[1] != password
    assert turn_credentials("north", "cam-2", 1_700_000_000)[1] != password
    assert turn_credentials("north", "cam-1", 1_700_000_001)[1] != password


def test_ice_server_list() -> None:
    uris = [f"turn:10.0.0.{i}:3478?transport=udp" for i in range(1, 6)]
    servers = ice_server_list(uris=uris, secret="s", ttl=600, client_id="v", now=1000.9)
    assert [s["Uris"] for s in servers] == [uris[:3], uris[3:]]
    for s in servers:
        assert s["Username"] == "1600:v" and s["Ttl"] == 600
        assert s["Password"] == turn_credentials("s", "v", 1600)[1]


def test_ttl_is_clamped_to_the_model_range() -> None:
    low = ice_server_list(uris=["turn:a"], secret="s", ttl=1, client_id="v", now=0)
    high = ice_server_list(uris=["turn:a"], secret="s", ttl=10**6, client_id="v", now=0)
    assert low[0]["Ttl"] == 30 and low[0]["Username"] == "30:v"
    assert high[0]["Ttl"] == 86_400


def test_nothing_configured_means_no_servers() -> None:
    assert ice_server_list(uris=[], secret="s", ttl=60, client_id="v", now=0) == []
    assert ice_server_list(uris=["turn:a"], secret=None, ttl=60, client_id="v", now=0) == []


def test_embedded_list_has_two_sets_like_aws() -> None:
    servers = embedded_ice_server_list(
        host="10.0.0.5", port=3478, secret="s", ttl=600, client_id="cam", now=1000.5
    )
    assert len(servers) == 2
    for n, entry in enumerate(servers, start=1):
        port = 3477 + n  # a port per set
        assert entry["Uris"] == [
            f"turn:10.0.0.5:{port}?transport=udp",
            f"turn:10.0.0.5:{port}?transport=tcp",
        ]
        assert entry["Username"] == f"1600:cam.{n}" and entry["Ttl"] == 600
        assert entry["Password"] == turn_credentials("s", f"cam.{n}", 1600)[1]
    assert servers[0]["Password"] != servers[1]["Password"]
    v6 = embedded_ice_server_list(host="::1", port=9, secret="s", ttl=1, client_id="c", now=0)
    assert v6[0]["Uris"][0] == "turn:[::1]:9?transport=udp" and v6[0]["Ttl"] == 30


def test_stun_list_is_never_empty_and_has_a_ttl() -> None:
    servers = stun_ice_server_list(host="kvs.lan", port=3478, ttl=3600)
    assert [s["Uris"] for s in servers] == [["stun:kvs.lan:3478"]] * 2
    # The C SDK refuses a Ttl at or under its 30 s refresh grace period; some clients read the
    # credential fields unconditionally.
    assert all(s["Ttl"] == 3600 and s["Username"] and s["Password"] for s in servers)


@pytest.mark.parametrize(
    ("bind", "public_url", "host_header", "expected"),
    [
        ("127.0.0.1", None, "localhost:8443", "127.0.0.1"),  # the only address served
        ("192.168.1.20", None, "kvs.lan:8443", "192.168.1.20"),
        ("0.0.0.0", None, "kvs.lan:8443", "kvs.lan"),  # wildcard: what the client reached
        ("0.0.0.0", None, "192.168.1.20", "192.168.1.20"),
        ("::", None, "[2001:db8::1]:8443", "2001:db8::1"),
        ("0.0.0.0", None, "0.0.0.0:8443", "127.0.0.1"),  # never a wildcard address
        ("0.0.0.0", None, "bad host/../x", "127.0.0.1"),
        ("0.0.0.0", None, None, "127.0.0.1"),
        ("0.0.0.0", "https://kvs.example.com:443", "10.0.0.1:8443", "kvs.example.com"),
        ("127.0.0.1", "https://kvs.example.com", None, "kvs.example.com"),
    ],
)
def test_advertised_host(
    bind: str, public_url: str | None, host_header: str | None, expected: str
) -> None:
    assert (
        advertised_host(bind_host=bind, public_url=public_url, request_host=host_header) == expected
    )


def test_advertised_host_is_the_node_address_when_set() -> None:
    kw = {"bind_host": "0.0.0.0", "public_url": "https://kvs.example.com", "request_host": "h"}
    assert advertised_host(**kw, node_address="10.1.2.3") == "10.1.2.3"
    assert advertised_host(**kw, node_address="[fd00::1]") == "fd00::1"
    assert advertised_host(**kw, node_address=None) == "kvs.example.com"


def test_coturn_config_on_loopback_relays_to_loopback_only(tmp_path: Path) -> None:
    text = coturn_config(
        listen=["127.0.0.1"],
        port=3478,
        relay_min=49152,
        relay_max=49999,
        secret="k",
        turn_dir=tmp_path,
    )
    lines = text.splitlines()
    for line in (
        "listening-ip=127.0.0.1",
        "relay-ip=127.0.0.1",
        "listening-port=3478",
        "min-port=49152",
        "max-port=49999",
        "use-auth-secret",
        "static-auth-secret=k",
        "realm=openkvs",
        "aux-server=127.0.0.1:3479",
        "no-rfc5780",
        "no-tls",
        "no-dtls",
        "no-cli",
        "allow-loopback-peers",
        "denied-peer-ip=0.0.0.0-255.255.255.255",
        "allowed-peer-ip=127.0.0.0-127.255.255.255",
        f"pidfile={tmp_path / 'turnserver.pid'}",
        "log-file=stdout",
    ):
        assert line in lines, line


def test_coturn_config_elsewhere_refuses_loopback_and_link_local(tmp_path: Path) -> None:
    for listen in ([], ["192.168.1.20"]):
        lines = coturn_config(
            listen=listen,
            port=3478,
            relay_min=50000,
            relay_max=50100,
            secret="k",
            turn_dir=tmp_path,
        ).splitlines()
        assert "allow-loopback-peers" not in lines
        assert not any(line.startswith("allowed-peer-ip") for line in lines)
        assert "denied-peer-ip=169.254.0.0-169.254.255.255" in lines
        assert "no-multicast-peers" in lines
        assert [x for x in lines if x.startswith("listening-ip")] == [
            f"listening-ip={a}" for a in listen
        ]
    lines = coturn_config(
        listen=["192.168.1.20", "fd00::2"],
        port=3478,
        relay_min=50000,
        relay_max=50100,
        secret="k",
        turn_dir=tmp_path,
    ).splitlines()
    assert "aux-server=192.168.1.20:3479" in lines and "aux-server=[fd00::2]:3479" in lines
    assert "relay-ip=fd00::2" in lines
    # Listening on every address: relayed addresses are never loopback ones.
    lines = coturn_config(
        listen=["127.0.0.1", "192.0.2.2", "::1"],
        port=3478,
        relay_min=50000,
        relay_max=50100,
        secret="k",
        turn_dir=tmp_path,
    ).splitlines()
    assert [x for x in lines if x.startswith("relay-ip")] == ["relay-ip=192.0.2.2"]
    assert "listening-ip=127.0.0.1" in lines and "aux-server=[::1]:3479" in lines


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        (
            "0: : Listener address to use: 127.0.0.1\n",
            (logging.DEBUG, "Listener address to use: 127.0.0.1"),
        ),
        ("0: : \n", None),
        ("", None),
        (
            "12: : ERROR: check_stun_auth: Cannot find credentials of user <x>",
            (logging.ERROR, "ERROR: check_stun_auth: Cannot find credentials of user <x>"),
        ),
        (
            "0: : Cannot bind DTLS/UDP listener socket to addr 127.0.0.1:3478",
            (logging.ERROR, "Cannot bind DTLS/UDP listener socket to addr 127.0.0.1:3478"),
        ),
        ("3: (1234): WARNING: something odd", (logging.WARNING, "WARNING: something odd")),
        # Routine: every start on loopback, and peers refused by the peer rules.
        (
            "0: : CONFIG WARNING: allow_loopback_peers opens a possible security vulnerability. Do not use in production!!",
            (
                logging.DEBUG,
                "CONFIG WARNING: allow_loopback_peers opens a possible security vulnerability. Do not use in production!!",
            ),
        ),
        (
            "22: : ERROR: A peer IP 192.0.2.2 denied in the range: ::-ffff:ffff",
            (logging.DEBUG, "ERROR: A peer IP 192.0.2.2 denied in the range: ::-ffff:ffff"),
        ),
        ("socket: Protocol not supported", (logging.DEBUG, "socket: Protocol not supported")),
    ],
)
def test_coturn_log_lines(raw: str, expected: tuple[int, str] | None) -> None:
    assert log_line(raw) == expected
