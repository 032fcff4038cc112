"""Typed server settings.

``Settings.load(environ, config_file, overrides)`` merges, lowest precedence first: the defaults
below, an optional TOML file, ``OPENKVS_*`` environment variables, then explicit overrides (the
command line). Casts are strict: a bool is one of true/false/1/0/yes/no/on/off, and an unknown
key in the TOML file is an error. Nothing else in openkvs reads ``os.environ``.

TOML layout: top-level keys are field names; a table ``[signaling]`` with key ``max_viewers``
sets ``signaling_max_viewers``. ``[[credentials]]`` entries add access keys::

    [[credentials]]
    access_key_id = "AKIAEXAMPLE"
    secret_access_key = "..."
    policy = { Statement = [{ Effect = "Allow", Action = "kinesisvideo:*", Resource = "*" }] }
"""

from __future__ import annotations

import dataclasses
import re
import tomllib
import types
import typing
import urllib.parse
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from .ops.events import EVENT_TYPES

ENV_PREFIX = "OPENKVS_"
# Variables for clients, printed by `openkvs credentials`: a shell prepared with
# `eval "$(openkvs credentials)"` must still be able to start the server or the demo.
ENDPOINT_ENV = ENV_PREFIX + "ENDPOINT"  # set by `openkvs credentials` for clients
HTTP_ENDPOINT_ENV = ENV_PREFIX + "HTTP_ENDPOINT"
CLIENT_ENV = frozenset({ENDPOINT_ENV, HTTP_ENDPOINT_ENV})
_HOST = re.compile(r"[A-Za-z0-9_.:-]{1,253}|\[[0-9A-Fa-f:.]{2,45}\]")
_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off"}
STORAGE_AUDIO = ("aac", "opus")


class ConfigError(ValueError):
    """A setting could not be parsed."""


@dataclasses.dataclass(frozen=True)
class CredentialConfig:
    access_key_id: str
    secret_access_key: str
    policy: Mapping[str, Any] | None = None
    session_token: str | None = None


@dataclasses.dataclass(frozen=True)
class Settings:
    # Server
    host: str = "127.0.0.1"
    port: int = 8443
    http_port: int = 8080
    data_dir: Path = Path("./openkvs-data")
    # Storage backends: None means sqlite:///<data_dir>/openkvs.db and file://<data_dir>/media
    database_url: str | None = None
    media_url: str | None = None
    # Cluster coordination: "local:" (one node) or redis://host:6379/0[?prefix=<key prefix>]
    # shared by the nodes of one cluster; node_address is where cameras and viewers reach this
    # node for media (an IP address or host name: its TURN/STUN URIs, its host candidates)
    bus_url: str = "local:"
    node_address: str | None = None
    # media_url s3://...: the S3-compatible endpoint (None: AWS's, from the standard AWS chain)
    s3_endpoint_url: str | None = None
    region: str = "us-east-1"
    account_id: str = "000000000000"
    public_url: str | None = None
    log_level: str = "info"
    tls_cert: Path | None = None
    tls_key: Path | None = None
    # The web console's built files (index.html, console.js...); None: the package's console/dist
    console_dir: Path | None = None
    no_auth: bool = False
    aws_error_codes: bool = False
    max_body_bytes: int = 1024 * 1024
    clock_skew_seconds: int = 900
    # Request-rate limits (requests per second; 0 disables)
    rate_limit_account: float = 10000.0
    rate_limit_resource: float = 1000.0
    rate_limit_join_per_channel: float = 50.0
    # Signaling
    signaling_max_viewers: int = 10
    signaling_idle_timeout: float = 600.0
    signaling_max_connection_age: float = 0.0
    signaling_go_away_grace: float = 1.0
    signaling_sdp_rate: float = 5.0
    signaling_ice_rate: float = 20.0
    signaling_send_queue: int = 256
    signaling_ping_interval: float = 30.0  # server WebSocket pings; 0 disables
    # TURN. An external coturn (turn_uris + its REST API shared secret) replaces the embedded one
    # that openkvs runs otherwise; no_turn (or no coturn installed) leaves a STUN responder.
    turn_uris: tuple[str, ...] = ()
    turn_secret: str | None = None
    turn_ttl: int = 3600
    no_turn: bool = False
    # UDP + TCP, embedded coturn (and turn_port + 1) or STUN responder (0: free ports)
    turn_port: int = 3478
    turn_relay_port_min: int = 49152
    turn_relay_port_max: int = 49999
    turn_binary: str = "turnserver"  # coturn's server, a path or a name looked up in PATH
    # Storage session (webrtc_enabled = False answers JoinStorageSession without media)
    webrtc_enabled: bool = True
    # 0: storage sessions run in the server process; N: spread over N worker processes
    webrtc_workers: int = 0
    storage_fragment_duration: float = 2.0
    # The recording's audio: "aac" (the camera's Opus decoded and encoded to AAC, with the
    # viewers' audio mixed in) or "opus" (the camera's Opus packets stored as received: no audio
    # decoding or encoding, the viewers' audio is not recorded)
    storage_audio: str = "aac"
    storage_max_session_duration: float = 0.0
    storage_media_timeout: float = 10.0
    storage_connect_timeout: float = 30.0
    storage_max_viewers: int = 3
    storage_viewer_wait: float = 180.0
    storage_retention_interval: float = 60.0
    # PutMedia: IDLE acks every putmedia_idle_ack_interval s without data; close after
    # putmedia_idle_timeout s; error ack 4001 for fragments larger than putmedia_max_fragment_bytes
    putmedia_idle_timeout: float = 30.0
    putmedia_idle_ack_interval: float = 5.0
    putmedia_max_fragment_bytes: int = 50 * 1024 * 1024
    # A second PutMedia to a stream waits this long for the first to end (the Producer SDK opens
    # its next connection a few seconds before it ends the current one), then is refused
    putmedia_handover_wait: float = 10.0
    # ... and a holder without data for putmedia_handover_idle s is ended for it (a producer gone
    # without closing its connection)
    putmedia_handover_idle: float = 5.0
    # Playback (HLS/DASH, GetClip, GetImages): remux/decode threads, cache budget (segments,
    # parsed fragments and images share it), LIVE/LIVE_REPLAY session cursors kept in memory
    playback_workers: int = 2
    playback_cache_mb: int = 128
    playback_live_sessions: int = 1024
    # Storage peer networking
    webrtc_ice_servers: tuple[str, ...] = ()
    webrtc_advertised_hosts: tuple[str, ...] = ()
    webrtc_port_min: int = 0
    webrtc_port_max: int = 0
    # Metrics: GET /metrics on the "http" (plain) port, "tls", "both" or "off"; when
    # metrics_token is set, scrapes need "Authorization: Bearer <token>"; channel names become
    # labels only with metrics_channel_labels (one series per channel)
    metrics_listen: str = "http"
    metrics_token: str | None = None
    metrics_channel_labels: bool = False
    # Webhooks: events POSTed to each of webhook_urls, signed with webhook_secret (HMAC-SHA256);
    # webhook_events selects event types (default: all but fragment.persisted; "*": all);
    # at most webhook_queue events wait per receiver; each is tried webhook_max_attempts times
    webhook_urls: tuple[str, ...] = ()
    webhook_secret: str | None = None
    webhook_events: tuple[str, ...] = ()
    webhook_queue: int = 1000
    webhook_max_attempts: int = 6
    # Credentials from the config file
    credentials: tuple[CredentialConfig, ...] = ()

    @classmethod
    def load(
        cls,
        environ: Mapping[str, str] | None = None,
        config_file: Path | None = None,
        overrides: Mapping[str, Any] | None = None,
    ) -> Settings:
        values: dict[str, Any] = {}
        if config_file is not None:
            values.update(_read_toml(config_file))
        for key, raw in (environ or {}).items():
            if not key.startswith(ENV_PREFIX) or key == ENV_PREFIX + "CONFIG" or key in CLIENT_ENV:
                continue
            name = key[len(ENV_PREFIX) :].lower()
            if name not in _FIELDS or name == "credentials":
                raise ConfigError(f"unknown setting in environment: {key}")
            values[name] = raw
        for name, value in (overrides or {}).items():
            if value is not None:
                values[name] = value
        kwargs = {name: _cast(name, value) for name, value in values.items()}
        settings = cls(**kwargs)
        settings.validate()
        return settings

    def validate(self) -> None:
        for name in ("port", "http_port", "webrtc_port_min", "webrtc_port_max", "turn_port"):
            value = getattr(self, name)
            if not 0 <= value <= 65535:
                raise ConfigError(f"{name} must be between 0 and 65535, got {value}")
        if (self.tls_cert is None) != (self.tls_key is None):
            raise ConfigError("tls_cert and tls_key must be given together")
        if self.webrtc_port_min > self.webrtc_port_max:
            raise ConfigError("webrtc_port_min must not exceed webrtc_port_max")
        if not 1024 <= self.turn_relay_port_min <= self.turn_relay_port_max <= 65535:
            raise ConfigError(
                "turn_relay_port_min and turn_relay_port_max must be ports from 1024 to 65535, "
                "min <= max"
            )
        if self.turn_port == 65535:
            raise ConfigError("turn_port must be below 65535 (coturn also uses turn_port + 1)")
        if self.turn_port and {self.turn_port, self.turn_port + 1} & {self.port, self.http_port}:
            raise ConfigError("turn_port and turn_port + 1 must differ from port and http_port")
        if bool(self.turn_uris) != bool(self.turn_secret):
            raise ConfigError("turn_uris and turn_secret must be given together")
        if not self.account_id.isdigit() or len(self.account_id) != 12:
            raise ConfigError("account_id must be 12 digits")
        if not 0 <= self.webrtc_workers <= 64:
            raise ConfigError("webrtc_workers must be between 0 and 64")
        if self.storage_audio not in STORAGE_AUDIO:
            raise ConfigError(f"storage_audio must be aac or opus, got {self.storage_audio!r}")
        if self.storage_fragment_duration <= 0:
            raise ConfigError("storage_fragment_duration must be positive")
        if not 0 < self.putmedia_idle_ack_interval <= self.putmedia_idle_timeout:
            raise ConfigError(
                "putmedia_idle_ack_interval must be positive and at most putmedia_idle_timeout"
            )
        if not 0 <= self.putmedia_handover_wait <= 60:
            raise ConfigError("putmedia_handover_wait must be between 0 and 60 seconds")
        if self.putmedia_handover_idle <= 0:
            raise ConfigError("putmedia_handover_idle must be positive")
        if not 1024 <= self.putmedia_max_fragment_bytes <= 50 * 1024 * 1024:
            raise ConfigError("putmedia_max_fragment_bytes must be between 1024 and 52428800")
        if not 1 <= self.playback_workers <= 64:
            raise ConfigError("playback_workers must be between 1 and 64")
        if self.playback_cache_mb < 0 or self.playback_live_sessions < 1:
            raise ConfigError("playback_cache_mb must be >= 0 and playback_live_sessions >= 1")
        if self.metrics_listen not in ("http", "tls", "both", "off"):
            raise ConfigError("metrics_listen must be http, tls, both or off")
        for url in self.webhook_urls:
            if not url.startswith(("http://", "https://")):
                raise ConfigError("webhook_urls must start with http:// or https://")
        unknown = set(self.webhook_events) - EVENT_TYPES - {"*"}
        if unknown:
            raise ConfigError(
                f"unknown webhook_events {sorted(unknown)}; known: {sorted(EVENT_TYPES)} or *"
            )
        if self.webhook_queue < 1 or self.webhook_max_attempts < 1:
            raise ConfigError("webhook_queue and webhook_max_attempts must be at least 1")
        from .cluster.factory import parse_bus_url  # the cluster package imports this module

        parse_bus_url(self.bus_url)
        if self.node_address is not None and not _HOST.fullmatch(self.node_address):
            raise ConfigError("node_address must be an IP address or a host name")
        if self.s3_endpoint_url is not None and not _is_http_url(self.s3_endpoint_url):
            raise ConfigError(
                "s3_endpoint_url must start with http:// or https:// and name a host, "
                "e.g. http://127.0.0.1:9000"
            )
        if self.public_url is not None and not self.public_url.startswith(("http://", "https://")):
            raise ConfigError("public_url must start with http:// or https://")

    def replace(self, **changes: Any) -> Settings:
        return dataclasses.replace(self, **changes)


def _is_http_url(url: str) -> bool:
    try:
        parts = urllib.parse.urlsplit(url)
        port_ok = parts.port is None or parts.port > 0
    except ValueError:
        return False
    return (
        parts.scheme in ("http", "https")
        and bool(parts.hostname)
        and port_ok
        and not any(c.isspace() for c in url)
    )


_FIELDS: dict[str, Any] = {f.name: f for f in dataclasses.fields(Settings)}
_HINTS = typing.get_type_hints(Settings)


def _read_toml(path: Path) -> dict[str, Any]:
    try:
        with open(path, "rb") as fh:
            data = tomllib.load(fh)
    except OSError as exc:
        raise ConfigError(f"cannot read config file {path}: {exc.strerror}") from exc
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"invalid TOML in {path}: {exc}") from exc
    flat: dict[str, Any] = {}
    for key, value in data.items():
        key = key.replace("-", "_")
        if key == "credentials":
            flat[key] = value
        elif isinstance(value, dict):
            for sub, subvalue in value.items():
                flat[f"{key}_{sub.replace('-', '_')}"] = subvalue
        else:
            flat[key] = value
    for key in flat:
        if key not in _FIELDS:
            raise ConfigError(f"unknown setting in {path}: {key}")
    return flat


def _cast(name: str, value: Any) -> Any:
    if name not in _HINTS:
        raise ConfigError(f"unknown setting: {name}")
    if name == "credentials":
        return _cast_credentials(value)
    try:
        return _cast_to(_HINTS[name], value)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"invalid value for {name}: {value!r} ({exc})") from exc


def _cast_to(hint: Any, value: Any) -> Any:
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        if value is None or value == "":
            return None
        return _cast_to(args[0], value)
    if origin is tuple:
        (item,) = {a for a in typing.get_args(hint) if a is not Ellipsis}
        if isinstance(value, str):
            value = [v.strip() for v in value.split(",") if v.strip()]
        if not isinstance(value, list | tuple):
            raise TypeError("expected a list")
        return tuple(_cast_to(item, v) for v in value)
    if hint is bool:
        if isinstance(value, bool):
            return value
        text = str(value).strip().lower()
        if text in _TRUE:
            return True
        if text in _FALSE:
            return False
        raise ValueError("expected true/false")
    if hint is int:
        if isinstance(value, bool):
            raise TypeError("expected an integer")
        return int(value)
    if hint is float:
        if isinstance(value, bool):
            raise TypeError("expected a number")
        return float(value)
    if hint is Path:
        return Path(str(value)).expanduser()
    if hint is str:
        if not isinstance(value, str | int | float):
            raise TypeError("expected a string")
        return str(value)
    raise TypeError(f"unsupported type {hint}")


def _cast_credentials(value: Any) -> tuple[CredentialConfig, ...]:
    if not isinstance(value, list):
        raise ConfigError("credentials must be an array of tables")
    out = []
    for entry in value:
        if not isinstance(entry, dict):
            raise ConfigError("each credentials entry must be a table")
        akid = entry.get("access_key_id")
        secret = entry.get("secret_access_key")
        if not isinstance(akid, str) or not isinstance(secret, str) or not akid or not secret:
            raise ConfigError("credentials need access_key_id and secret_access_key strings")
        policy = entry.get("policy")
        if policy is not None and not isinstance(policy, dict):
            raise ConfigError(f"policy of {akid} must be a table")
        unknown = set(entry) - {"access_key_id", "secret_access_key", "policy", "session_token"}
        if unknown:
            raise ConfigError(f"unknown keys in credentials entry {akid}: {sorted(unknown)}")
        out.append(CredentialConfig(akid, secret, policy, entry.get("session_token")))
    return tuple(out)
