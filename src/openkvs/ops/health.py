"""Liveness, readiness and the drain state.

``GET /healthz`` answers 200 while the process serves requests at all. ``GET /readyz`` answers
200 only when the server has finished starting, is not draining, and its metadata store, media
store (folder or bucket) and (when one is configured) signaling bus answer; otherwise 503.
Neither says more than its status word: no paths, versions or component settings.
"""

from __future__ import annotations

import asyncio
import enum
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from .. import clock
from ..errors import ClientLimitExceededException

logger = logging.getLogger(__name__)

CHECK_TIMEOUT = 2.0
DRAINING_MESSAGE = (
    "The server is shutting down and takes no new sessions or uploads; retry shortly "
    "(against another server, or this one once it has restarted)."
)


class Phase(enum.Enum):
    STARTING = "starting"
    READY = "ready"
    DRAINING = "draining"


Check = Callable[[], Awaitable[bool]]


class Health:
    """The server's phase plus the readiness checks of the parts it depends on."""

    def __init__(self) -> None:
        self.phase = Phase.STARTING
        self.drain_started: float | None = None
        self._checks: dict[str, Check] = {}

    def add_check(self, name: str, check: Check) -> None:
        self._checks[name] = check

    def ready(self) -> None:
        if self.phase is Phase.STARTING:
            self.phase = Phase.READY

    def drain(self) -> None:
        if self.phase is not Phase.DRAINING:
            self.phase = Phase.DRAINING
            self.drain_started = clock.monotonic()

    @property
    def draining(self) -> bool:
        return self.phase is Phase.DRAINING

    def refuse_if_draining(self) -> None:
        """Raised by the calls that start new work (sessions, uploads, signaling connections)."""
        if self.phase is Phase.DRAINING:
            raise ClientLimitExceededException(DRAINING_MESSAGE)

    async def readiness(self) -> tuple[bool, str]:
        """(ready, status word): the phase, then every check (each bounded in time)."""
        if self.phase is not Phase.READY:
            return False, self.phase.value
        results = await asyncio.gather(*(_run(n, c) for n, c in self._checks.items()))
        return (True, "ready") if all(results) else (False, "unavailable")


async def _run(name: str, check: Check) -> bool:
    try:
        async with asyncio.timeout(CHECK_TIMEOUT):
            ok = await check()
    except Exception as exc:  # noqa: BLE001 - a failing dependency means "not ready"
        logger.warning("readiness check %s failed: %s", name, exc or type(exc).__name__)
        return False
    if not ok:
        logger.warning("readiness check %s failed", name)
    return ok


def store_check(control: Any) -> Check:
    async def check() -> bool:
        # A real read through the metadata store's reader pool.
        await control.check_store()
        return True

    return check


def media_check(control: Any) -> Check:
    async def check() -> bool:
        # The media folder is writable, or the media bucket answers HeadBucket.
        return bool(await control.check_media())

    return check
