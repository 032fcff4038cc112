"""bus_url and node_address: parsed like every setting, refused clearly when wrong."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from openkvs.cluster.factory import DEFAULT_PREFIX, open_cluster, parse_bus_url
from openkvs.cluster.local import LocalCluster
from openkvs.config import ConfigError, Settings

from ..support import free_port


def test_defaults() -> None:
    s = Settings.load({})
    assert s.bus_url == "local:" and s.node_address is None
    cluster = open_cluster(s)
    assert isinstance(cluster, LocalCluster) and not cluster.distributed
    assert cluster.node.node_id != open_cluster(s).node.node_id  # a new id per start


def test_flag_env_and_file(tmp_path: Path) -> None:
    cfg = tmp_path / "c.toml"
    cfg.write_text('bus_url = "redis://10.0.0.5:6379/2"\nnode_address = "10.0.0.7"\n')
    s = Settings.load({}, cfg)
    assert s.bus_url == "redis://10.0.0.5:6379/2" and s.node_address == "10.0.0.7"
    s = Settings.load({"OPENKVS_BUS_URL": "redis://r:6379/0", "OPENKVS_NODE_ADDRESS": "kvs-1"}, cfg)
    assert s.bus_url == "redis://r:6379/0" and s.node_address == "kvs-1"
    s = Settings.load({"OPENKVS_BUS_URL": "redis://r:6379/0"}, cfg, {"bus_url": "local:"})
    assert s.bus_url == "local:"


def test_redis_url_and_prefix() -> None:
    bus = parse_bus_url("redis://127.0.0.1:6379/3")
    assert (bus.kind, bus.url, bus.prefix) == ("redis", "redis://127.0.0.1:6379/3", DEFAULT_PREFIX)
    bus = parse_bus_url(
        "rediss://user:s3cret@cache.example:6380/0?prefix=site-a&ssl_cert_reqs=none"
    )
    assert bus.prefix == "site-a"
    assert bus.url == "rediss://user:s3cret@cache.example:6380/0?ssl_cert_reqs=none"
    assert "s3cret" not in bus.display and bus.display.startswith("rediss://cache.example:6380/0")


@pytest.mark.parametrize(
    "url",
    [
        "",
        "redis",
        "http://127.0.0.1:6379",
        "redis://",
        "redis://127.0.0.1:99999/0",
        "redis://127.0.0.1:6379/0?prefix=",
        "redis://127.0.0.1:6379/0?prefix=a*b",
        "redis://127.0.0.1:6379/0?prefix=a&prefix=b",
    ],
)
def test_bad_bus_urls(url: str) -> None:
    with pytest.raises(ConfigError, match="bus_url"):
        Settings.load({"OPENKVS_BUS_URL": url})


def test_bad_bus_url_hides_its_password() -> None:
    with pytest.raises(ConfigError) as info:
        Settings.load({"OPENKVS_BUS_URL": "memcached://u:topsecret@h:1"})
    assert "topsecret" not in str(info.value)


@pytest.mark.parametrize("address", ["", "a b", "x" * 300, "host/path"])
def test_bad_node_address(address: str) -> None:
    if address == "":  # empty means unset, like every optional setting
        assert Settings.load({"OPENKVS_NODE_ADDRESS": address}).node_address is None
        return
    with pytest.raises(ConfigError, match="node_address"):
        Settings.load({"OPENKVS_NODE_ADDRESS": address})


def test_node_address_forms() -> None:
    for address in ("10.1.2.3", "kvs-1.internal", "[fd00::1]", "fd00::1"):
        assert Settings.load({"OPENKVS_NODE_ADDRESS": address}).node_address == address


def test_serve_without_its_bus_exits_with_a_clear_message(tmp_path: Path) -> None:
    port = free_port()
    url = f"redis://:pw-not-shown@127.0.0.1:{port}/0?prefix=nothing-here"
    args = ["serve", "--data-dir", str(tmp_path), "--port", str(free_port()), "--http-port", "0"]
    proc = subprocess.run(
        [sys.executable, "-m", "openkvs", *args, "--bus-url", url],
        capture_output=True,
        text=True,
        timeout=60,
        env={"PATH": "/usr/bin:/bin", "OPENKVS_TURN_PORT": "0", "OPENKVS_NO_TURN": "true"},
    )
    assert proc.returncode == 2, proc.stderr
    assert f"cannot reach the coordination bus at redis://127.0.0.1:{port}/0" in proc.stderr
    assert "pw-not-shown" not in proc.stderr
    assert "Traceback" not in proc.stderr
