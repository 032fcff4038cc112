"""The storage backends are chosen once, from settings: database_url and media_url."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from openkvs.config import ConfigError, Settings
from openkvs.records import Stream
from openkvs.store.factory import database_url, media_root, media_url, open_backends


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
        ("media_url", "s3://bucket/media", "needs the cluster backends"),
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


def test_serve_refuses_an_s3_url_at_start_up(tmp_path: Path) -> None:
    res = subprocess.run(
        [sys.executable, "-m", "openkvs", "serve", "--data-dir", str(tmp_path)]
        + ["--media-url", "s3://bucket/media"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert res.returncode == 2 and "media_url s3:// needs the cluster backends" in res.stderr
