"""The one home of wall-clock and monotonic time.

Everything that needs "now" calls these functions, so tests can move time by patching this module.
"""

from __future__ import annotations

import datetime as _dt
import time as _time


def now() -> float:
    """Wall-clock time in epoch seconds."""
    return _time.time()


def now_ms() -> int:
    """Wall-clock time in epoch milliseconds."""
    return int(_time.time() * 1000)


def monotonic() -> float:
    """Monotonic seconds, for timeouts and rates."""
    return _time.monotonic()


def utcnow() -> _dt.datetime:
    return _dt.datetime.fromtimestamp(now(), tz=_dt.UTC)
