"""Background enforcement of each stream's DataRetentionInHours.

When several nodes share the metadata store, one of them runs each pass: a pass takes the
store's ``retention`` duty, which one node holds at a time and which is due once per interval.
With the cluster's duty lock (a Redis bus) the pass also runs under that lock.
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

    async def run_once(self, every: float = 0.0) -> int:
        """One pass over every stream, unless another node is running one (or, with ``every``,
        ran one less than ``every`` seconds ago); the number of fragments removed."""
        async with self._control.duty("retention", every) as mine:
            if not mine:
                return 0
            return await self._pass()

    async def _pass(self) -> int:
        await self._control.sync()
        removed = 0
        for stream in self._control.list_streams():
            try:
                removed += await self._control.enforce_retention(stream)
            except Exception:  # noqa: BLE001 - keep enforcing the other streams
                logger.exception("retention failed for %s", stream.arn)
        if removed:
            logger.info("retention removed %d fragments", removed)
        return removed

    async def _due_pass(self) -> int:
        return await self.run_once(every=self._interval * 0.9)

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self._interval)
            try:
                if self._duties is None:
                    await self._due_pass()
                else:
                    await self._duties.run("retention", self._interval, self._due_pass)
            except Exception:  # noqa: BLE001 - the next interval tries again
                logger.exception("retention pass failed")
