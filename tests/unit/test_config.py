from __future__ import annotations

from pathlib import Path

import pytest

from openkvs.config import ConfigError, Settings


def test_precedence_defaults_file_env_cli(tmp_path: Path) -> None:
    cfg = tmp_path / "c.toml"
    cfg.write_text('port = 9000\nregion = "eu-west-1"\n[signaling]\nmax_viewers = 4\n')
    s = Settings.load(
        {"OPENKVS_PORT": "9100", "OPENKVS_NO_AUTH": "false"}, cfg, {"region": "ap-south-1"}
    )
    assert s.port == 9100 and s.region == "ap-south-1" and s.signaling_max_viewers == 4
    assert s.no_auth is False and s.http_port == 8080 and s.host == "127.0.0.1"


@pytest.mark.parametrize(
    "value,expected", [("true", True), ("1", True), ("off", False), ("0", False)]
)
def test_strict_bools(value: str, expected: bool) -> None:
    assert Settings.load({"OPENKVS_NO_AUTH": value}).no_auth is expected


@pytest.mark.parametrize(
    "env",
    [
        {"OPENKVS_NO_AUTH": "maybe"},
        {"OPENKVS_PORT": "http"},
        {"OPENKVS_UNKNOWN": "1"},
        {"OPENKVS_PORT": "70000"},
        {"OPENKVS_ACCOUNT_ID": "12"},
    ],
)
def test_bad_values(env: dict[str, str]) -> None:
    with pytest.raises(ConfigError):
        Settings.load(env)


def test_lists_and_credentials(tmp_path: Path) -> None:
    cfg = tmp_path / "c.toml"
    cfg.write_text(
        'turn_uris = ["turn:127.0.0.1:3478?transport=udp"]\nturn_secret = "s"\n'
        '[[credentials]]\naccess_key_id = "A"\nsecret_access_key = "B"\n'
    )
    s = Settings.load({"OPENKVS_WEBRTC_ADVERTISED_HOSTS": "10.0.0.1, 10.0.0.2"}, cfg)
    assert s.turn_uris == ("turn:127.0.0.1:3478?transport=udp",)
    assert s.webrtc_advertised_hosts == ("10.0.0.1", "10.0.0.2")
    assert s.credentials[0].access_key_id == "A"
