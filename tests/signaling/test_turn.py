"""coturn REST-API credentials: username ``<expiry>:<clientId>``, password
base64(HMAC-SHA1(secret, username))."""

from __future__ import annotations

import base64
import hashlib
import hmac

from openkvs.signaling.turn import ice_server_list, turn_credentials


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
