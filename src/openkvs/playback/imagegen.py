"""Image generation at the producer's request: ``AWS_KINESISVIDEO_IMAGE_GENERATION`` events.

A producer marks a fragment with the KVS Producer SDK's ``putKinesisVideoEventMetadata``; once
the fragment is stored, PutMedia publishes the event (``dataplane/events.py``). When the stream
has an ENABLED image generation configuration (UpdateImageGenerationConfiguration), the images of
that fragment are made the way GetImages makes them (``playback/images.py``, decoded in the
playback worker pool): one every ``SamplingInterval`` ms from the fragment's start (server or
producer timestamp, per ``ImageSelectorType``), in the configured ``Format``, ``JPEGQuality`` and
size. They are written to ``<data dir>/images/<stream name>/<image prefix><timestamp ms>.<ext>``
(the configuration's DestinationConfig is kept, not used: openkvs has no S3).

Work is bounded: at most ``MAX_PENDING`` fragments are in progress; events beyond that are
dropped with a warning.
"""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from ..control.resources import ControlPlane
from ..dataplane.events import FragmentEvent, FragmentEvents
from ..privatefile import write_private
from ..records import Stream
from .codecs import H264_CODEC_IDS
from .images import ImageOptions, pick_frames, render
from .service import PlaybackService
from .timeline import ts_of

logger = logging.getLogger(__name__)

MAX_PENDING = 16
MAX_PREFIX = 128
_UNSAFE = re.compile(r"[^A-Za-z0-9_.-]")


def image_dir(data_dir: Path, stream_name: str) -> Path:
    """Where the generated images of a stream go (a name of dots stays inside ``images``)."""
    safe = _UNSAFE.sub("_", stream_name)
    return data_dir / "images" / ("_" + safe if safe.startswith(".") else safe)


def image_name(prefix: str | None, ts_ms: int, fmt: str) -> str:
    safe = _UNSAFE.sub("_", prefix or "")[:MAX_PREFIX]
    return f"{safe}{ts_ms}.{'jpg' if fmt == 'JPEG' else 'png'}"


def options_of(config: Mapping[str, Any]) -> ImageOptions:
    quality = (config.get("FormatConfig") or {}).get("JPEGQuality")
    return ImageOptions(
        format=config["Format"],
        quality=int(quality) if quality else 80,
        width=config.get("WidthPixels"),
        height=config.get("HeightPixels"),
    )


class ImageGenerator:
    """Subscribes to fragment events between ``start`` and ``stop`` (the app's lifecycle)."""

    def __init__(
        self,
        data_dir: Path,
        control: ControlPlane,
        playback: PlaybackService,
        events: FragmentEvents,
    ) -> None:
        self.data_dir = data_dir
        self.control = control
        self.playback = playback
        self.events = events
        self._tasks: set[asyncio.Task[None]] = set()
        self._unsubscribe: Callable[[], None] | None = None
        self.written = 0  # images written since start

    async def start(self) -> None:
        self._unsubscribe = self.events.subscribe(self._on_event)

    async def stop(self) -> None:
        if self._unsubscribe is not None:
            self._unsubscribe()
            self._unsubscribe = None
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    async def idle(self) -> None:
        """Wait until no fragment's images are in progress."""
        while self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)

    def _on_event(self, event: FragmentEvent) -> None:
        if event.kind != "IMAGE_GENERATION":
            return
        stream = self.control.stream_by_id(event.stream_id)
        config = stream.image_generation if stream is not None else None
        if stream is None or config is None or config.get("Status") != "ENABLED":
            logger.debug(
                "stream %s has no enabled image generation configuration", event.stream_name
            )
            return
        if len(self._tasks) >= MAX_PENDING:
            logger.warning(
                "image generation busy: images of fragment %d of %s dropped",
                event.fragment_number,
                event.stream_name,
            )
            return
        task = asyncio.ensure_future(self._generate(stream, event, config))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _generate(
        self, stream: Stream, event: FragmentEvent, config: Mapping[str, Any]
    ) -> None:
        try:
            written = await self._images(stream, event, config)
        except asyncio.CancelledError:
            raise
        except Exception:  # noqa: BLE001 - one fragment's failure is logged, nothing more
            logger.exception(
                "image generation for fragment %d of %s failed",
                event.fragment_number,
                stream.name,
            )
            return
        self.written += written
        logger.info(
            "stream %s fragment %d: %d images generated",
            stream.name,
            event.fragment_number,
            written,
        )

    async def _images(self, stream: Stream, event: FragmentEvent, config: Mapping[str, Any]) -> int:
        found = await self.playback.fragments.get(stream, [event.fragment_number])
        if not found:
            return 0  # expired or deleted meanwhile
        fragment = found[0]
        parsed = await self.playback.parse(stream, fragment)
        video = parsed.video()
        if video is None or video.codec_id not in H264_CODEC_IDS or not video.codec_private:
            logger.info("fragment %d of %s has no H.264 video", fragment.number, stream.name)
            return 0
        if not parsed.frames.get(video.number):
            return 0
        interval = int(config["SamplingInterval"])
        duration = max(1, fragment.duration_ms)
        offsets = list(range(0, duration, interval))
        picks = pick_frames(parsed, video.number, [o * 1_000_000 for o in offsets])
        options = options_of(config)
        rendered = await self.playback.run(render, parsed, video.number, set(picks), options)
        start = ts_of(fragment, config["ImageSelectorType"])
        folder = image_dir(self.data_dir, stream.name)
        written = 0
        for offset, pick in zip(offsets, picks, strict=True):
            data = rendered.get(pick)
            if data is None:
                continue
            path = folder / image_name(event.event.image_prefix, start + offset, options.format)
            await asyncio.to_thread(write_private, path, data, mode=0o644)
            written += 1
        return written
