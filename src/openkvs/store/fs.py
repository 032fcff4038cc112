"""Filesystem blob store, the embedded default.

A blob becomes visible only once complete and durable: it is written to a temporary file in the
same directory, fsynced, atomically renamed into place, and the directory is fsynced. Keys are
validated so that nothing outside the store's root can be named.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

from .base import BlobNotFound

T = TypeVar("T")
_KEY = re.compile(r"[a-z0-9][a-z0-9_.-]*(/[a-z0-9][a-z0-9_.-]*)*")


def check_key(key: str) -> str:
    if len(key) > 512 or not _KEY.fullmatch(key) or ".." in key:
        raise ValueError(f"invalid blob key: {key[:80]!r}")
    return key


class FsBlobStore:
    def __init__(self, root: Path, threads: int = 4) -> None:
        self._root = root
        self._pool = ThreadPoolExecutor(threads, thread_name_prefix="openkvs-fs")

    def path(self, key: str) -> Path:
        return self._root / check_key(key)

    async def start(self) -> None:
        await self._run(self._sweep_tmp)

    async def stop(self) -> None:
        self._pool.shutdown(wait=True)

    async def reachable(self) -> bool:
        """The media folder exists and is writable (readiness)."""
        root = self._root
        return await self._run(lambda: root.is_dir() and os.access(root, os.W_OK))

    async def _run(self, fn: Callable[..., T], *args: Any) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._pool, fn, *args)

    def _sweep_tmp(self) -> None:
        self._root.mkdir(parents=True, exist_ok=True)
        for dirpath, _dirs, files in os.walk(self._root):
            for name in files:
                if name.endswith(".tmp"):
                    os.unlink(os.path.join(dirpath, name))

    def put_sync(self, key: str, data: bytes) -> None:
        path = self.path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        try:
            try:
                view = memoryview(data)
                while view:
                    n = os.write(fd, view)
                    view = view[n:]
                os.fsync(fd)
            finally:
                os.close(fd)
            os.replace(tmp, path)
        except BaseException:
            # A failed write (a full disk) leaves no partial file holding on to space.
            with contextlib.suppress(OSError):
                tmp.unlink()
            raise
        dfd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)

    async def put(self, key: str, data: bytes) -> None:
        await self._run(self.put_sync, key, data)

    def get_sync(self, key: str) -> bytes:
        try:
            return self.path(key).read_bytes()
        except FileNotFoundError as exc:
            raise BlobNotFound(key) from exc

    async def get(self, key: str) -> bytes:
        return await self._run(self.get_sync, key)

    def _delete(self, keys: Sequence[str]) -> None:
        for key in keys:
            try:
                self.path(key).unlink()
            except FileNotFoundError:
                pass

    async def delete(self, keys: Sequence[str]) -> None:
        if keys:
            await self._run(self._delete, list(keys))

    def _keys(self) -> set[str]:
        out: set[str] = set()
        if not self._root.exists():
            return out
        for dirpath, _dirs, files in os.walk(self._root):
            for name in files:
                if not name.endswith(".tmp"):
                    out.add(os.path.relpath(os.path.join(dirpath, name), self._root))
        return out

    async def keys(self) -> set[str]:
        return await self._run(self._keys)
