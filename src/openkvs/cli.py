"""``openkvs serve | credentials``: argv → Settings → server. No logic of its own."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import shlex
import signal
import sys
from pathlib import Path
from typing import Any

from . import __version__, heap, logwriter
from .config import ENDPOINT_ENV, HTTP_ENDPOINT_ENV, ConfigError, Settings
from .tls import local_ca

logger = logging.getLogger("openkvs")

# CLI flag → Settings field, for `serve` (each is also OPENKVS_<FIELD> and a TOML key).
SERVE_FLAGS: list[tuple[str, str, dict[str, Any]]] = [
    ("--host", "host", {"help": "address to bind (default 127.0.0.1)"}),
    ("--port", "port", {"type": int, "help": "HTTPS + WSS port (default 8443)"}),
    (
        "--http-port",
        "http_port",
        {"type": int, "help": "plain HTTP + WS port (default 8080, 0 disables)"},
    ),
    (
        "--data-dir",
        "data_dir",
        {"help": "where state, media and keys live (default ./openkvs-data)"},
    ),
    (
        "--database-url",
        "database_url",
        {
            "help": "metadata store: sqlite:///<path> (default <data-dir>/openkvs.db) or "
            "postgresql://user@host:port/db, shared by several nodes"
        },
    ),
    (
        "--media-url",
        "media_url",
        {"help": "fragment media: file://<path> (default <data-dir>/media) or s3://bucket/prefix"},
    ),
    (
        "--s3-endpoint-url",
        "s3_endpoint_url",
        {"help": "S3-compatible endpoint for an s3:// media-url (default: AWS)"},
    ),
    (
        "--bus-url",
        "bus_url",
        {"help": "cluster coordination: local: (default) or redis://host:6379/0[?prefix=...]"},
    ),
    (
        "--node-address",
        "node_address",
        {"help": "IP address or host name cameras and viewers reach this node at for media"},
    ),
    ("--region", "region", {"help": "region in ARNs and credential scopes (default us-east-1)"}),
    ("--account-id", "account_id", {"help": "12-digit account id used in ARNs"}),
    ("--public-url", "public_url", {"help": "base URL to advertise, e.g. https://kvs.example.com"}),
    ("--log-level", "log_level", {"help": "debug, info, warning or error (default info)"}),
    (
        "--tls-cert",
        "tls_cert",
        {"help": "PEM certificate chain to serve instead of the local CA's"},
    ),
    ("--tls-key", "tls_key", {"help": "PEM private key for --tls-cert"}),
    (
        "--turn-port",
        "turn_port",
        {"type": int, "help": "port of the embedded TURN server, UDP and TCP (default 3478)"},
    ),
    (
        "--storage-audio",
        "storage_audio",
        {
            "help": "the recording's audio: aac (default; Opus decoded and encoded to AAC) or "
            "opus (the camera's Opus stored as received, no audio decoding or encoding)"
        },
    ),
    (
        "--metrics-listen",
        "metrics_listen",
        {"help": "serve GET /metrics on the http (default), tls or both ports, or off"},
    ),
    ("--metrics-token", "metrics_token", {"help": "require Authorization: Bearer <token>"}),
    ("--webhook-urls", "webhook_urls", {"help": "comma-separated URLs that receive events"}),
    ("--webhook-secret", "webhook_secret", {"help": "HMAC-SHA256 key of X-Openkvs-Signature"}),
    (
        "--webhook-events",
        "webhook_events",
        {"help": "comma-separated event types (default: all but fragment.persisted; * for all)"},
    ),
]


def _settings(args: argparse.Namespace, fields: list[tuple[str, str, dict[str, Any]]]) -> Settings:
    config = args.config or os.environ.get("OPENKVS_CONFIG")
    overrides: dict[str, Any] = {field: getattr(args, field, None) for _, field, _ in fields}
    for flag in ("no_auth", "aws_error_codes", "no_turn", "metrics_channel_labels"):
        if getattr(args, flag, False):
            overrides[flag] = True
    return Settings.load(os.environ, Path(config) if config else None, overrides)


def _setup_logging(level: str) -> None:
    logwriter.setup(getattr(logging, level.upper(), logging.INFO))
    if level.lower() != "debug":
        for noisy in ("aioice", "aiortc"):
            logging.getLogger(noisy).setLevel(logging.WARNING)


def local_host(host: str) -> str:
    """How a client on this machine names a server listening on ``host`` (URL form)."""
    if host in ("0.0.0.0", "::", ""):
        host = "127.0.0.1"
    return f"[{host}]" if ":" in host else host


def advertised(
    settings: Settings, port: int | None, http_port: int | None
) -> tuple[str, str | None]:
    if settings.public_url:
        return settings.public_url.rstrip("/"), None
    host = local_host(settings.host)
    tls = f"https://{host}:{port}" if port != 443 else f"https://{host}"
    plain = f"http://{host}:{http_port}" if http_port else None
    return tls, plain


async def _serve(settings: Settings) -> int:
    from .server import Server

    server = Server(settings)
    bound = await server.start()
    heap.settle()
    tls, plain = advertised(settings, bound.port, bound.http_port)
    logger.info("openkvs %s listening", __version__)
    logger.info("  HTTPS + WSS endpoint: %s", tls)
    if plain:
        logger.info("  plain HTTP + WS endpoint (local tools): %s", plain)
    logger.info("  web console: %s/console/", tls)
    if plain:
        logger.info("  web console (plain HTTP): %s/console/", plain)
    logger.info("  data dir: %s", settings.data_dir.resolve())
    if bound.tls.ca_cert is not None:
        logger.info("  local CA certificate (trust it in clients): %s", bound.tls.ca_cert.resolve())
    if settings.no_auth:
        logger.warning("AUTHENTICATION IS DISABLED (--no-auth): anyone can call every API")
    flags = _credentials_flags(settings, bound)
    logger.info('  shell setup: eval "$(openkvs credentials %s)"', flags)

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    logger.info("shutting down")
    if not await server.drain():
        # Past the drain limit: leave now rather than wait for what is stuck.
        logging.shutdown()
        os._exit(1)
    logger.info("stopped")
    return 0


def _credentials_flags(settings: Settings, bound: Any) -> str:
    """The flags that make ``openkvs credentials`` print this server's endpoints."""
    flags = ["--data-dir", str(settings.data_dir)]
    defaults = Settings()
    if settings.host != defaults.host:
        flags += ["--host", settings.host]
    if bound.port != defaults.port:
        flags += ["--port", str(bound.port)]
    if bound.http_port != defaults.http_port:
        flags += ["--http-port", str(bound.http_port or 0)]
    if settings.public_url:
        flags += ["--public-url", settings.public_url]
    return shlex.join(flags)


def cmd_serve(args: argparse.Namespace) -> int:
    settings = _settings(args, SERVE_FLAGS)
    _setup_logging(settings.log_level)
    try:
        import uvloop

        uvloop.install()
    except ImportError:
        pass
    return asyncio.run(_serve(settings))


def cmd_credentials(args: argparse.Namespace) -> int:
    settings = _settings(args, SERVE_FLAGS)
    from .app import generated_principal

    principal = asyncio.run(generated_principal(settings))
    tls, plain = advertised(settings, settings.port, settings.http_port)
    print(f"export AWS_ACCESS_KEY_ID={principal.access_key_id}")
    print(f"export AWS_SECRET_ACCESS_KEY={principal.secret_access_key}")
    print(f"export AWS_DEFAULT_REGION={settings.region}")
    print(f"export {ENDPOINT_ENV}={tls}")
    if plain:
        print(f"export {HTTP_ENDPOINT_ENV}={plain}")
    # botocore >= 1.31 reads per-service endpoint variables, so boto3 and the AWS CLI need no
    # --endpoint-url in this shell.
    for service_id in SERVICE_IDS:
        print(f"export AWS_ENDPOINT_URL_{service_id.upper().replace(' ', '_')}={tls}")
    ca = local_ca(settings.data_dir)
    if settings.tls_cert is None:
        print(f"export AWS_CA_BUNDLE={ca.resolve()}")
    # The KVS Producer SDK (kvssink) reads its control-plane endpoint and CA file from these.
    print(f"export {PRODUCER_SDK_ENDPOINT_ENV}={tls}")
    if settings.tls_cert is None:
        print(f"export {PRODUCER_SDK_CA_ENV}={ca.resolve()}")
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from . import demo

    settings = _settings(args, SERVE_FLAGS)
    _setup_logging(args.log_level or "warning")  # keep the terminal for the progress line
    return demo.main(settings, args)


PRODUCER_SDK_ENDPOINT_ENV = "CONTROL_PLANE_URI"
PRODUCER_SDK_CA_ENV = "KVSSINK_CA_CERT_PATH"

SERVICE_IDS = (
    "Kinesis Video",
    "Kinesis Video Archived Media",
    "Kinesis Video Media",
    "Kinesis Video Signaling",
    "Kinesis Video WebRTC Storage",
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="openkvs", description=__doc__)
    parser.add_argument("--version", action="version", version=f"openkvs {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    def common(p: argparse.ArgumentParser) -> None:
        p.add_argument("--config", help="TOML config file (also OPENKVS_CONFIG)")
        for flag, field, kw in SERVE_FLAGS:
            p.add_argument(flag, dest=field, default=None, **kw)

    serve = sub.add_parser("serve", help="run the server")
    common(serve)
    serve.add_argument(
        "--no-auth", action="store_true", help="accept unsigned requests (throwaway local use only)"
    )
    serve.add_argument(
        "--aws-error-codes",
        action="store_true",
        help="JoinStorageSession[AsViewer] errors use AWS's 400/403/404, not 480-483",
    )
    serve.add_argument(
        "--no-turn",
        action="store_true",
        help="do not run the embedded TURN server (coturn); clients get a STUN server only",
    )
    serve.add_argument(
        "--metrics-channel-labels",
        action="store_true",
        help="label storage-session metrics with channel names (one series per channel)",
    )
    serve.set_defaults(func=cmd_serve)

    creds = sub.add_parser("credentials", help="print shell exports for boto3 and the AWS CLI")
    common(creds)
    creds.set_defaults(func=cmd_credentials)

    demo = sub.add_parser(
        "demo", help="record a synthetic WebRTC camera into a new stream, with playback URLs"
    )
    common(demo)
    demo.add_argument("--channel", help="channel and stream name (default openkvs-demo)")
    demo.add_argument("--resolution", help="test pattern size, WxH (default 1280x720)")
    demo.add_argument("--duration", type=float, help="seconds to stream (default: until Ctrl-C)")
    demo.set_defaults(func=cmd_demo)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        code: int = args.func(args)
        return code
    except ConfigError as exc:
        print(f"openkvs: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
