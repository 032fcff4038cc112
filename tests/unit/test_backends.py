"""The storage backends are chosen once, from settings: database_url and media_url."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from openkvs.config import ConfigError, Settings
from openkvs.records import Stream
from openkvs.store.base import BlobStoreError
from openkvs.store.factory import blob_store, database_url, media_root, media_url, open_backends
from openkvs.store.s3 import S3BlobStore


def test_defaults_live_under_the_data_dir(tmp_path: Path) -> None:
    settings = Settings.load({}, None, {"data_dir": tmp_path / "data"})
    assert database_url(settings) == f"sqlite:///{tmp_path}/data/openkvs.db"
    assert media_url(settings) == f"file://{tmp_path}/data/media"
    assert media_root(settings) == tmp_path / "data" / "media"
    relative = Settings.load({}, None, {"data_dir": Path("some-dir")})
    assert database_url(relative) == "sqlite:///some-dir/openkvs.db"
    assert media_root(relative) == Path("some-dir/media")


async def test_urls_from_the_environment_place_the_stores(tmp_path: Path) -> None:
    db, media = tmp_path / "meta" / "index.db", tmp_path / "blobs"
    db.parent.mkdir()
    env = {"OPENKVS_DATABASE_URL": f"sqlite:///{db}", "OPENKVS_MEDIA_URL": f"file://{media}"}
    settings = Settings.load(env, None, {"data_dir": tmp_path / "data"})
    backends = open_backends(settings)
    await backends.meta.start()
    await backends.blobs.start()
    try:
        stream = Stream(
            id=0,
            arn="arn:aws:kinesisvideo:us-east-1:000000000000:stream/s/1",
            name="s",
            device_name=None,
            media_type=None,
            kms_key_id="aws/kinesisvideo",
            version="1",
            status="ACTIVE",
            created=0.0,
            retention_hours=1,
            tags={},
        )
        await backends.meta.insert_stream(stream)
        await backends.blobs.put("s1/0/1.mkv", b"fragment")
    finally:
        await backends.blobs.stop()
        await backends.meta.stop()
    assert db.is_file() and (media / "s1" / "0" / "1.mkv").read_bytes() == b"fragment"
    assert not (tmp_path / "data").exists()


def test_toml_and_flags_take_the_urls(tmp_path: Path) -> None:
    cfg = tmp_path / "openkvs.toml"
    cfg.write_text(
        f'database_url = "sqlite:///{tmp_path}/a.db"\nmedia_url = "file://{tmp_path}/m"\n'
    )
    settings = Settings.load({}, cfg)
    assert settings.database_url == f"sqlite:///{tmp_path}/a.db"
    assert media_root(settings) == tmp_path / "m"


@pytest.mark.parametrize(
    ("setting", "url", "message"),
    [
        ("database_url", "postgresql://db.example", "names no database"),
        ("database_url", "postgres://u:pw@db.example:5433/", "names no database: db.example:5433/"),
        ("media_url", "s3://B/media", "names no valid S3 bucket"),
        ("media_url", "s3://bucket/a/../b", "key prefix may hold only"),
        ("database_url", "mysql://db.example/openkvs", "must be sqlite:///<path>"),
        ("media_url", "/plain/path", "must be file://<path>"),
        ("database_url", "sqlite:///", "names no path"),
    ],
)
def test_other_schemes_fail_with_a_clear_message(
    tmp_path: Path, setting: str, url: str, message: str
) -> None:
    settings = Settings.load({}, None, {"data_dir": tmp_path, setting: url})
    with pytest.raises(ConfigError, match=message) as info:
        open_backends(settings)
    assert setting in str(info.value)


def test_a_postgresql_url_names_the_shared_store(tmp_path: Path) -> None:
    for url in ("postgresql://kvs@db.example:5433/openkvs", "postgres://db.example/openkvs"):
        settings = Settings.load({}, None, {"data_dir": tmp_path, "database_url": url})
        meta = open_backends(settings).meta
        assert meta.shared and type(meta).__name__ == "PostgresMetadataStore"
    assert not open_backends(Settings.load({}, None, {"data_dir": tmp_path})).meta.shared


def test_serve_fails_fast_when_postgresql_is_unreachable(tmp_path: Path) -> None:
    # Nothing listens on port 1: the connection is refused at once; no password is printed.
    url = "postgresql://kvs:hunter2@127.0.0.1:1/openkvs"
    res = subprocess.run(
        [sys.executable, "-m", "openkvs", "serve", "--data-dir", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "OPENKVS_DATABASE_URL": url},
    )
    assert res.returncode == 2, res.stderr
    assert "database_url: cannot use PostgreSQL at 127.0.0.1:1/openkvs" in res.stderr
    assert "Traceback" not in res.stderr and "hunter2" not in res.stderr


def test_an_s3_media_url_names_bucket_prefix_and_endpoint(tmp_path: Path) -> None:
    env = {
        "OPENKVS_MEDIA_URL": "s3://kvs-media/cluster/a/",
        "OPENKVS_S3_ENDPOINT_URL": "http://127.0.0.1:9000",
    }
    blobs = open_backends(Settings.load(env, None, {"data_dir": tmp_path})).blobs
    assert isinstance(blobs, S3BlobStore)
    assert (blobs.bucket, blobs.prefix, blobs.endpoint_url) == (
        "kvs-media",
        "cluster/a/",
        "http://127.0.0.1:9000",
    )
    bare = blob_store(
        Settings.load({}, None, {"data_dir": tmp_path, "media_url": "s3://kvs-media"})
    )
    assert isinstance(bare, S3BlobStore)
    assert (bare.prefix, bare.endpoint_url) == ("", None)
    assert not (tmp_path / "media").exists()


def test_s3_endpoint_url_needs_an_s3_media_url(tmp_path: Path) -> None:
    env = {"OPENKVS_S3_ENDPOINT_URL": "http://127.0.0.1:9000"}
    settings = Settings.load(env, None, {"data_dir": tmp_path})
    assert settings.s3_endpoint_url == "http://127.0.0.1:9000"
    with pytest.raises(ConfigError, match="s3_endpoint_url is set, but media_url is not s3://"):
        open_backends(settings)
    for bad in ("localhost:9000", "http://", "http://exa mple:9000", "http://host:port"):
        with pytest.raises(ConfigError, match="s3_endpoint_url must start with http"):
            Settings.load({}, None, {"data_dir": tmp_path, "s3_endpoint_url": bad})


def _serve_s3(tmp_path: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    with socket.socket() as sock:  # a port that nothing listens on
        sock.bind(("127.0.0.1", 0))
        closed = sock.getsockname()[1]
    base = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "OPENKVS_"))}
    return subprocess.run(
        [sys.executable, "-m", "openkvs", "serve", "--data-dir", str(tmp_path)]
        + ["--port", "0", "--http-port", "0", "--no-turn", "--media-url", "s3://bucket/media"]
        + ["--s3-endpoint-url", f"http://127.0.0.1:{closed}"],
        capture_output=True,
        text=True,
        timeout=90,
        env={
            **base,
            # No shared config files or instance metadata: only what the test gives.
            "AWS_CONFIG_FILE": str(tmp_path / "none"),
            "AWS_SHARED_CREDENTIALS_FILE": str(tmp_path / "none"),
            "AWS_EC2_METADATA_DISABLED": "true",
            **env,
        },
    )


def test_serve_fails_at_start_up_when_s3_is_unreachable_or_has_no_credentials(
    tmp_path: Path,
) -> None:
    keys = {"AWS_ACCESS_KEY_ID": "AKIDEXAMPLE", "AWS_SECRET_ACCESS_KEY": "not-a-secret"}
    res = _serve_s3(tmp_path, keys)
    assert res.returncode == 2, res.stderr
    assert "media_url s3://bucket/media: cannot reach http://127.0.0.1:" in res.stderr
    assert "Traceback" not in res.stderr and "not-a-secret" not in res.stderr
    res = _serve_s3(tmp_path, {})
    assert res.returncode == 2, res.stderr
    assert "media_url s3://bucket/media: no AWS credentials for S3" in res.stderr
    assert "Traceback" not in res.stderr


async def test_a_silent_s3_endpoint_fails_within_the_timeouts(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIDEXAMPLE")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "not-a-secret")
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    with socket.socket() as silent:  # accepts connections (the backlog), never answers
        silent.bind(("127.0.0.1", 0))
        silent.listen(16)
        endpoint = f"http://127.0.0.1:{silent.getsockname()[1]}"
        store = S3BlobStore(
            "bucket", "media/", endpoint_url=endpoint, read_timeout=0.5, max_attempts=2
        )
        started = time.monotonic()
        try:
            with pytest.raises(ConfigError, match=r"cannot reach http://127\.0\.0\.1:\d+ \(Read"):
                await store.start()
            assert time.monotonic() - started < 10
            with pytest.raises(BlobStoreError, match="S3 PutObject in s3://bucket/media failed"):
                await store.put("s1/0/1.mkv", b"x")
            assert time.monotonic() - started < 30
        finally:
            await store.stop()
