"""Atomic writes of files only their owner may read (keys, secrets, generated config)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import secrets
from collections.abc import Awaitable, Callable
from pathlib import Path

logger = logging.getLogger(__name__)

# ``secrets(name, candidate)``: the secret stored under ``name``, ``candidate`` stored first if
# there is none (the metadata store's ``secret``, reached through the control plane, or files).
SecretSource = Callable[[str, str], Awaitable[str]]


def _beside(path: Path, suffix: str) -> Path:
    """A hidden name next to ``path`` that no other writer (process or thread) uses."""
    return path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.{suffix}")


def write_private(path: Path, data: bytes | str, *, mode: int = 0o600) -> None:
    """Write ``data`` to ``path`` atomically, created with ``mode`` (0600: owner only): a
    temporary file beside it, fsync, then rename over ``path``. The temporary file is removed if
    anything fails. Blocking."""
    raw = data.encode() if isinstance(data, str) else data
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _beside(path, "tmp")
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
        with os.fdopen(fd, "wb") as fh:
            fh.write(raw)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise


def tighten(path: Path) -> None:
    """Make an existing private file 0600 if others could read it (with a warning)."""
    if path.stat().st_mode & 0o077:
        os.chmod(path, 0o600)
        logger.warning("tightened permissions of %s to 0600", path)


def read_or_create(path: Path, text: str) -> str:
    """The text of the private file ``path`` (stripped); if it does not exist, ``text`` is
    written there first (0600). Atomic across processes: the file appears whole, once, and every
    caller reads what the first one wrote. Blocking."""
    try:
        tighten(path)
        return path.read_text().strip()
    except FileNotFoundError:
        pass
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _beside(path, "new")
    write_private(tmp, text)
    try:
        os.link(tmp, path)  # fails if another process created it first
    except FileExistsError:
        return path.read_text().strip()
    finally:
        with contextlib.suppress(OSError):
            tmp.unlink()
    logger.info("generated %s", path)
    return text.strip()


def file_secrets(directory: Path) -> SecretSource:
    """A SecretSource keeping each secret in the file ``<directory>/<name>``."""

    async def secret(name: str, candidate: str) -> str:
        return await asyncio.to_thread(read_or_create, directory / name, candidate)

    return secret
