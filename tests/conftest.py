from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from .engines import (  # noqa: F401 - fixtures for every test
    postgres_admin_url,
    postgres_url,
    postgres_urls,
    redis_prefix,
    redis_server,
)
from .support import ServerThread, make_settings

# SeaweedFS (S3) fixtures: seaweed, s3_env
pytest_plugins = ("tests.seaweed",)


@pytest.fixture(autouse=True)
def clean_environ(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in list(__import__("os").environ):
        if name.startswith(("AWS_", "OPENKVS_")) or name.lower().endswith("_proxy"):
            monkeypatch.delenv(name, raising=False)


@pytest.fixture
def make_server(tmp_path: Path) -> Iterator[Callable[..., ServerThread]]:
    started: list[ServerThread] = []

    def make(**overrides: Any) -> ServerThread:
        data_dir = overrides.pop("data_dir", tmp_path / f"data{len(started)}")
        srv = ServerThread(make_settings(data_dir, **overrides))
        started.append(srv)
        return srv

    yield make
    for srv in started:
        srv.close()


@pytest.fixture
def server(make_server: Callable[..., ServerThread]) -> ServerThread:
    return make_server()
