"""KVS events a producer attached to its fragments, published once the fragment is stored.

The KVS Producer SDK's ``putKinesisVideoEventMetadata`` marks the edge of a fragment with
``AWS_KINESISVIDEO_IMAGE_GENERATION`` or ``AWS_KINESISVIDEO_NOTIFICATION`` (see
``media/mkvstream.py``). PutMedia publishes one ``FragmentEvent`` per event after the fragment is
durable; subscribers (image generation, a future webhook sender) must return quickly and never
raise into the upload: a failing subscriber is logged and the others still run.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable

from ..media.mkvstream import KvsEvent

logger = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class FragmentEvent:
    stream_id: int
    stream_name: str
    stream_arn: str
    fragment_number: int
    producer_ts_ms: int
    server_ts_ms: int
    duration_ms: int
    event: KvsEvent

    @property
    def kind(self) -> str:
        """``IMAGE_GENERATION`` or ``NOTIFICATION``."""
        return self.event.kind


Listener = Callable[[FragmentEvent], None]


class FragmentEvents:
    """Subscribers of ``FragmentEvent``s; called on the event loop, in subscription order."""

    def __init__(self) -> None:
        self._listeners: list[Listener] = []

    def subscribe(self, listener: Listener) -> Callable[[], None]:
        """Add ``listener``; the returned function removes it again."""
        self._listeners.append(listener)

        def unsubscribe() -> None:
            if listener in self._listeners:
                self._listeners.remove(listener)

        return unsubscribe

    def publish(self, event: FragmentEvent) -> None:
        logger.info(
            "stream %s fragment %d: %s event%s",
            event.stream_name,
            event.fragment_number,
            event.kind,
            f" (image prefix {event.event.image_prefix!r})" if event.event.image_prefix else "",
        )
        for listener in list(self._listeners):
            try:
                listener(event)
            except Exception:  # noqa: BLE001 - one subscriber's failure stays its own
                logger.exception("a %s event subscriber failed", event.kind)
