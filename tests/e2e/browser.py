"""The customer's browser app for the end-to-end tests: bundle it with esbuild (at test time, into
a temporary directory), serve it from another origin than openkvs, and drive it with Playwright
in Debian's Chromium (``js/drive.js``)."""

from __future__ import annotations

import functools
import http.server
import json
import shutil
import subprocess
import threading
from pathlib import Path
from typing import Any

import pytest

from ..playback.support import NODE_MODULES, browser_missing
from ..support import ServerThread

ROOT = Path(__file__).resolve().parents[2]
JS = Path(__file__).parent / "js"
CONSOLE_EVENTS = ROOT / "src" / "openkvs" / "web" / "console" / "src" / "events.js"
PACKAGES = (
    "amazon-kinesis-video-streams-webrtc",
    "@aws-sdk/client-kinesis-video",
    "@aws-sdk/client-kinesis-video-signaling",
    "@aws-sdk/client-kinesis-video-webrtc-storage",
    "esbuild",
    "playwright-core",
    "hls.js",
)


def browser_ready() -> None:
    """Skip (or, under CI=true, fail) when Chromium, Node or the npm packages are missing."""
    reason = browser_missing(PACKAGES)
    if reason is not None:
        pytest.skip(reason)


def sdk_version() -> str:
    package = NODE_MODULES / "amazon-kinesis-video-streams-webrtc" / "package.json"
    return str(json.loads(package.read_text())["version"])


def build_app(out_dir: Path) -> Path:
    """Bundle js/app.js and the official SDKs for the browser; return the directory to serve."""
    out_dir.mkdir(parents=True, exist_ok=True)
    esbuild = NODE_MODULES / ".bin" / "esbuild"
    proc = subprocess.run(
        [
            str(esbuild),
            str(JS / "app.js"),
            "--bundle",
            "--platform=browser",
            "--format=iife",
            "--target=chrome120",
            # The console's EventEmitter shim (one copy for both bundles).
            f"--alias:events={CONSOLE_EVENTS}",
            # The SDK reads its version from process.env (its own webpack build defines it).
            f"--define:process.env.PACKAGE_VERSION={json.dumps(json.dumps(sdk_version()))}",
            f"--outfile={out_dir / 'bundle.js'}",
            "--log-level=warning",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    shutil.copy(JS / "app.html", out_dir / "app.html")
    return out_dir


class _Quiet(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
        pass


class AppSite:
    """Serves the bundled app on ``http://localhost:<port>`` (a secure context for getUserMedia,
    and another origin than openkvs on ``https://127.0.0.1``)."""

    def __init__(self, directory: Path) -> None:
        handler = functools.partial(_Quiet, directory=str(directory))
        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.port = self.httpd.server_address[1]
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://localhost:{self.port}/app.html"

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


def api_config(server: ServerThread, channel_name: str) -> dict[str, Any]:
    akid, secret = server.keys
    return {
        "endpoint": server.endpoint,
        "region": server.settings.region,
        "accessKeyId": akid,
        "secretAccessKey": secret,
        "channelName": channel_name,
    }


def drive(config: dict[str, Any], timeout: float = 180) -> dict[str, Any]:
    proc = subprocess.run(
        ["node", str(JS / "drive.js"), json.dumps(config)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = proc.stdout.strip().splitlines()
    assert lines, proc.stderr[-3000:]
    return dict(json.loads(lines[-1]))
