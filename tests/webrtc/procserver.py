"""The real server as a separate process (for kill -9 tests), with ServerThread's client helpers."""

from __future__ import annotations

import os
import signal
import ssl
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any

import boto3
from botocore.config import Config

from openkvs.auth.credentials import default_principal
from openkvs.config import Settings

from ..support import free_port


class ProcessServer:
    def __init__(self, data_dir: Path, **env: str) -> None:
        self.data_dir = data_dir
        self.port = free_port()
        self.http_port = free_port()
        self.settings = Settings.load({}, None, {"data_dir": data_dir})
        # No embedded coturn unless asked for: a kill -9 of the server would leave it running.
        self._env = {"no_turn": "true", "turn_port": "0", **env}
        self.proc: subprocess.Popen[str] | None = None
        self.log: list[str] = []
        self._clients: list[Any] = []

    def start(self) -> None:
        env = {**os.environ, **{f"OPENKVS_{k.upper()}": v for k, v in self._env.items()}}
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "openkvs",
                "serve",
                "--port",
                str(self.port),
                "--http-port",
                str(self.http_port),
                "--data-dir",
                str(self.data_dir),
            ],
            stderr=subprocess.PIPE,
            text=True,
            env=env,
        )
        assert self.proc.stderr is not None
        stderr = self.proc.stderr

        def read() -> None:
            for line in iter(stderr.readline, ""):
                self.log.append(line)

        threading.Thread(target=read, daemon=True).start()
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                break
            try:
                ctx = ssl.create_default_context(cafile=self.ca)
                with urllib.request.urlopen(self.endpoint + "/health", context=ctx, timeout=2):
                    return
            except (OSError, ValueError):
                time.sleep(0.1)
        raise RuntimeError("server did not start:\n" + "".join(self.log))

    def kill9(self) -> None:
        assert self.proc is not None
        os.kill(self.proc.pid, signal.SIGKILL)
        self.proc.wait(10)
        time.sleep(0.2)

    def stop(self) -> None:
        for c in self._clients:
            c.close()
        self._clients.clear()
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self.proc is not None and self.proc.stderr is not None:
            self.proc.stderr.close()

    @property
    def endpoint(self) -> str:
        return f"https://127.0.0.1:{self.port}"

    @property
    def ca(self) -> str:
        return str(self.data_dir / "tls" / "ca.pem")

    @property
    def keys(self) -> tuple[str, str]:
        p = default_principal(self.data_dir)
        return p.access_key_id, p.secret_access_key

    def client(self, service: str, *, endpoint: str | None = None, **config: Any) -> Any:
        akid, secret = self.keys
        c = boto3.client(
            service,
            endpoint_url=endpoint or self.endpoint,
            region_name="us-east-1",
            aws_access_key_id=akid,
            aws_secret_access_key=secret,
            verify=self.ca,
            config=Config(retries={"max_attempts": 1}, **config),
        )
        self._clients.append(c)
        return c
