"""Log lines are written to stderr by a thread of their own, not by the event loop.

A write to stderr blocks while the pipe or terminal behind it is full or slow, and the loop that
logged would stall with it: every API call logs an access line, every storage session a few
more. Records go through a bounded queue to one writer thread instead; when the writer is
``QUEUE_LINES`` behind, the logging call waits for room (as a direct write would have), so no
line is dropped, reordered or held without bound.
"""

from __future__ import annotations

import atexit
import logging
import logging.handlers
import queue
import sys

QUEUE_LINES = 10_000
FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


class _BoundedQueueHandler(logging.handlers.QueueHandler):
    def __init__(self, records: queue.Queue[logging.LogRecord]) -> None:
        super().__init__(records)
        self._records = records

    def enqueue(self, record: logging.LogRecord) -> None:
        self._records.put(record)  # blocks only while the writer is QUEUE_LINES behind


class _Writer(logging.handlers.QueueListener):
    def enqueue_sentinel(self) -> None:
        self.queue.put(self._sentinel)  # type: ignore[attr-defined]  # waits for room, as lines do


_listener: logging.handlers.QueueListener | None = None
_handlers: tuple[logging.Handler, logging.Handler] | None = None  # (queue's, stream)


def setup(level: int, fmt: str = FORMAT, lines: int = QUEUE_LINES) -> None:
    """Route the root logger through the writer thread (idempotent; stopped at exit, after
    writing what is queued)."""
    global _listener, _handlers
    if _listener is not None:
        return
    stream = logging.StreamHandler(sys.stderr)
    stream.setFormatter(logging.Formatter(fmt))
    records: queue.Queue[logging.LogRecord] = queue.Queue(maxsize=lines)
    handler = _BoundedQueueHandler(records)
    root = logging.getLogger()
    root.setLevel(level)
    root.addHandler(handler)
    _handlers = (handler, stream)
    _listener = _Writer(records, stream, respect_handler_level=True)
    _listener.start()
    atexit.register(stop)


def stop() -> None:
    """Write what is queued and end the writer thread; later lines are written directly."""
    global _listener, _handlers
    listener, _listener = _listener, None
    handlers, _handlers = _handlers, None
    if handlers is not None:
        root = logging.getLogger()
        root.addHandler(handlers[1])
        root.removeHandler(handlers[0])
    if listener is not None:
        listener.stop()
