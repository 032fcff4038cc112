"""Private files: written whole with mode 0600, no temporary file left behind, created once."""

from __future__ import annotations

import os
import stat
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from openkvs.privatefile import file_secrets, read_or_create, tighten, write_private


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_write_private_replaces_the_file_whole(tmp_path: Path) -> None:
    path = tmp_path / "sub" / "key.pem"
    write_private(path, b"one")
    write_private(path, "two")
    assert path.read_text() == "two" and mode(path) == 0o600
    write_private(tmp_path / "image.jpg", b"jpeg", mode=0o644)
    assert mode(tmp_path / "image.jpg") == 0o644
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["image.jpg", "key.pem", "sub"]


def test_a_failed_write_leaves_the_old_file_and_no_temporary(tmp_path: Path) -> None:
    path = tmp_path / "key"
    write_private(path, "old")
    with pytest.raises(TypeError):
        write_private(path, 12)  # type: ignore[arg-type]
    assert path.read_text() == "old" and os.listdir(tmp_path) == ["key"]


def test_read_or_create_keeps_the_first_value(tmp_path: Path) -> None:
    path = tmp_path / "secret.key"
    with ThreadPoolExecutor(8) as pool:
        values = list(pool.map(lambda i: read_or_create(path, f"candidate-{i}\n"), range(32)))
    assert len(set(values)) == 1 and values[0].startswith("candidate-")
    assert path.read_text().strip() == values[0] and mode(path) == 0o600
    assert os.listdir(tmp_path) == ["secret.key"]


def test_an_open_private_file_is_tightened(tmp_path: Path) -> None:
    path = tmp_path / "credentials.json"
    path.write_text("{}")
    os.chmod(path, 0o644)
    tighten(path)
    assert mode(path) == 0o600
    assert read_or_create(path, "ignored") == "{}"


async def test_file_secrets_keep_each_name_in_its_file(tmp_path: Path) -> None:
    secrets = file_secrets(tmp_path)
    assert await secrets("turn-secret.key", "abc") == "abc"
    assert await secrets("turn-secret.key", "xyz") == "abc"
    assert (tmp_path / "turn-secret.key").read_text() == "abc"
