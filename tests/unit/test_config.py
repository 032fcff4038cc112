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
        {"OPENKVS_NO_TURN": "maybe"},
        {"OPENKVS_TURN_PORT": "65536"},
        {"OPENKVS_TURN_RELAY_PORT_MIN": "50000", "OPENKVS_TURN_RELAY_PORT_MAX": "49999"},
        {"OPENKVS_TURN_RELAY_PORT_MIN": "80"},
        {"OPENKVS_TURN_URIS": "turn:a:3478"},  # without its secret
        {"OPENKVS_TURN_SECRET": "s"},  # without URIs
        {"OPENKVS_TURN_PORT": "8443"},  # the HTTPS port
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


def test_turn_settings_from_flag_env_and_file(tmp_path: Path) -> None:
    from openkvs.cli import _settings, build_parser

    defaults = Settings.load({})
    assert defaults.no_turn is False and defaults.turn_port == 3478
    assert (defaults.turn_relay_port_min, defaults.turn_relay_port_max) == (49152, 49999)
    cfg = tmp_path / "c.toml"
    cfg.write_text(
        "no_turn = true\nturn_port = 3479\n[turn]\nrelay_port_min = 50000\nrelay_port_max = 50100\n"
    )
    s = Settings.load({}, cfg)
    assert s.no_turn and s.turn_port == 3479 and s.turn_relay_port_min == 50000
    assert Settings.load({"OPENKVS_NO_TURN": "yes"}).no_turn is True
    args = build_parser().parse_args(["serve", "--no-turn", "--turn-port", "5349"])
    s = _settings(args, [("--turn-port", "turn_port", {})])
    assert s.no_turn is True and s.turn_port == 5349
    assert _settings(build_parser().parse_args(["serve"]), []).no_turn is False


def test_storage_audio_from_flag_env_and_file(tmp_path: Path) -> None:
    from openkvs.cli import SERVE_FLAGS, _settings, build_parser

    assert Settings.load({}).storage_audio == "aac"
    cfg = tmp_path / "c.toml"
    cfg.write_text('storage_audio = "opus"\n')
    assert Settings.load({}, cfg).storage_audio == "opus"
    cfg.write_text('[storage]\naudio = "opus"\n')
    assert Settings.load({}, cfg).storage_audio == "opus"
    assert Settings.load({"OPENKVS_STORAGE_AUDIO": "opus"}).storage_audio == "opus"
    args = build_parser().parse_args(["serve", "--storage-audio", "opus"])
    assert _settings(args, SERVE_FLAGS).storage_audio == "opus"
    for bad in ("mp3", "OPUS", ""):
        with pytest.raises(ConfigError, match="storage_audio must be aac or opus"):
            Settings.load({"OPENKVS_STORAGE_AUDIO": bad})
    cfg.write_text("storage_audio = 1\n")
    with pytest.raises(ConfigError, match="storage_audio"):
        Settings.load({}, cfg)
