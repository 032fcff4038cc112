"""Background enforcement of each stream's DataRetentionInHours.

With a duty lock (a cluster), one node per interval does the work.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

from ..cluster.base import DutyLock
from .resources import ControlPlane

logger = logging.getLogger(__name__)


class RetentionTask:
    def __init__(
        self, control: ControlPlane, interval: float, duties: DutyLock | None = None
    ) -> None:
        self._control = control
        self._interval = interval
        self._duties = duties
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        if self._interval > 0:
            self._task = asyncio.create_task(self._run(), name="openkvs-retention")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def run_once(self) -> int:
        removed = 0
        for stream in self._control.list_streams():
            try:
                removed += await self._control.enforce_retention(stream)
            except Exception:  # noqa: BLE001 - keep enforcing the other streams
                logger.exception("retention failed for %s", stream.arn)
        if removed:
            logger.info("retention removed %d fragments", removed)
        return removed

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self._interval)
            if self._duties is None:
                await self.run_once()
                continue
            try:
                await self._duties.run("retention", self._interval, self.run_once)
            except Exception as exc:  # noqa: BLE001 - tried again at the next interval
                logger.warning("retention duty lock failed: %s", exc or type(exc).__name__)
