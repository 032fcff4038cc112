"""GetImages: sample times → frames → JPEG/PNG, decoding only what is needed.

For each sampling time the covering fragment is found from the fragment metadata; inside it the
frame shown at that time (the last one presented at or before it) is decoded starting from the
nearest keyframe before it, in decode order, and nothing past the last wanted frame. Decoding
and encoding run in the playback worker pool; encoded images are cached by (fragment, frame,
format, quality, size).
"""

from __future__ import annotations

import asyncio
import base64
import bisect
import dataclasses
from fractions import Fraction
from typing import TYPE_CHECKING, Any

import av

from ..records import Fragment, Stream
from .codecs import H264_CODEC_IDS
from .mkv import ParsedFragment
from .timeline import select, ts_of

if TYPE_CHECKING:
    from .service import PlaybackService

MAX_FRAGMENT_MS = 20_000  # a fragment longer than this is not searched backwards for
MAX_FRAGMENTS = 20_000  # fragments looked at for one page (its range is at most 300 s)
MAX_IMAGE_CHARS = 6_291_456
NO_MEDIA = "NO_MEDIA"
MEDIA_ERROR = "MEDIA_ERROR"


@dataclasses.dataclass(frozen=True)
class ImageOptions:
    format: str  # JPEG or PNG
    quality: int = 80  # JPEGQuality, 1..100
    width: int | None = None
    height: int | None = None


def jpeg_qscale(quality: int) -> int:
    """Map a libjpeg-style quality (1..100) onto FFmpeg's MJPEG quantiser scale (1..31).

    libjpeg scales its base tables by ``5000/Q`` % below 50 and ``200 - 2Q`` % above; FFmpeg's
    MJPEG tables are the MPEG-1 intra matrix times ``qscale / 8``, which matches libjpeg's at
    about ``qscale = 12.8 × scale``.
    """
    q = min(100, max(1, quality))
    scale = (5000 / q if q < 50 else 200 - 2 * q) / 100
    return min(31, max(1, round(scale * 12.8)))


def output_size(width: int, height: int, want_w: int | None, want_h: int | None) -> tuple[int, int]:
    """Both given: exactly that size. One given: the other follows the source aspect ratio."""
    if want_w and want_h:
        return want_w, want_h
    if want_w:
        return want_w, max(1, round(height * want_w / width))
    if want_h:
        return max(1, round(width * want_h / height)), want_h
    return width, height


def pick_frames(parsed: ParsedFragment, track: int, offsets_ns: list[int]) -> list[int]:
    """Decode-order index of the frame presented at each offset (the last one at or before it)."""
    frames = parsed.frames.get(track, [])
    order = sorted(range(len(frames)), key=lambda i: frames[i].pts_ns)
    times = [frames[i].pts_ns for i in order]
    picks = []
    for t in offsets_ns:
        k = bisect.bisect_right(times, t) - 1
        picks.append(order[max(0, k)])
    return picks


def decode_frames(parsed: ParsedFragment, track: int, wanted: set[int]) -> dict[int, Any]:
    """Decode the frames at decode-order indices ``wanted``, each from its nearest keyframe."""
    info = parsed.tracks[track]
    frames = parsed.frames[track]
    ranges: list[list[int]] = []
    for j in sorted(wanted):
        k = j
        while k > 0 and not frames[k].key:
            k -= 1
        if ranges and k <= ranges[-1][1]:
            ranges[-1][1] = max(ranges[-1][1], j)
        else:
            ranges.append([k, j])
    out: dict[int, Any] = {}
    for first, last in ranges:
        ctx: Any = av.CodecContext.create("h264", "r")
        ctx.extradata = info.codec_private
        ctx.thread_count = 1
        decoded: list[Any] = []
        for i in range(first, last + 1):
            packet = av.Packet(frames[i].data)
            packet.pts = packet.dts = i
            packet.time_base = Fraction(1, 90_000)
            decoded += ctx.decode(packet)
        decoded += ctx.decode(None)
        for frame in decoded:
            if frame.pts in wanted:
                out[int(frame.pts)] = frame
    return out


def encode_image(frame: Any, options: ImageOptions) -> bytes:
    width, height = output_size(frame.width, frame.height, options.width, options.height)
    if options.format == "JPEG":
        image = frame.reformat(width=width, height=height, format="yuvj420p", interpolation="AREA")
        enc: Any = av.CodecContext.create("mjpeg", "w")
        enc.pix_fmt = "yuvj420p"
        q = jpeg_qscale(options.quality)
        enc.qmin = enc.qmax = q
    else:
        image = frame.reformat(width=width, height=height, format="rgb24", interpolation="AREA")
        enc = av.CodecContext.create("png", "w")
        enc.pix_fmt = "rgb24"
    enc.width = width
    enc.height = height
    enc.time_base = Fraction(1, 25)
    image.pts = 0
    packets = enc.encode(image) + enc.encode(None)
    return b"".join(bytes(p) for p in packets)


def render(
    parsed: ParsedFragment, track: int, wanted: set[int], options: ImageOptions
) -> dict[int, bytes | None]:
    """Worker-pool job: images for the frames ``wanted`` (None where decoding failed)."""
    try:
        frames = decode_frames(parsed, track, wanted)
    except (av.FFmpegError, ValueError):
        frames = {}
    out: dict[int, bytes | None] = {}
    for index in wanted:
        frame = frames.get(index)
        if frame is None:
            out[index] = None
            continue
        try:
            out[index] = encode_image(frame, options)
        except (av.FFmpegError, ValueError):
            out[index] = None
    return out


def _covering(fragments: list[Fragment], selector: str, t: int) -> Fragment | None:
    starts = [ts_of(f, selector) for f in fragments]
    k = bisect.bisect_right(starts, t) - 1
    if k < 0:
        return None
    f = fragments[k]
    end = starts[k + 1] if k + 1 < len(starts) else None
    length = f.duration_ms if f.duration_ms > 0 else (end - starts[k] if end else 0)
    if t < starts[k] + max(length, 1):
        return f
    return None


async def get_images(
    svc: PlaybackService,
    stream: Stream,
    selector: str,
    times_ms: list[int],
    options: ImageOptions,
) -> list[dict[str, Any]]:
    """One ``Image`` entry per sampling time: ImageContent, or Error NO_MEDIA / MEDIA_ERROR."""
    if not times_ms:
        return []
    fragments = await select(
        svc.fragments,
        stream,
        selector,
        times_ms[0] - MAX_FRAGMENT_MS,
        times_ms[-1],
        MAX_FRAGMENTS,
    )
    groups: dict[int, tuple[Fragment, list[int]]] = {}
    results: dict[int, tuple[str, str]] = {}
    for i, t in enumerate(times_ms):
        f = _covering(fragments, selector, t)
        if f is None:
            results[i] = ("Error", NO_MEDIA)
        else:
            groups.setdefault(f.number, (f, []))[1].append(i)
    # Fragments are decoded side by side, as many at once as the playback pool has workers (FFmpeg
    # releases the GIL while it decodes and encodes); one request never fills the pool's queue.
    lanes = asyncio.Semaphore(max(1, svc.settings.playback_workers))

    async def one(f: Fragment, indices: list[int]) -> list[tuple[int, tuple[str, str]]]:
        async with lanes:
            return await _fragment_images(svc, stream, f, indices, times_ms, selector, options)

    # A failure (say, a full pool) fails the request with its own error and cancels the other
    # fragments' work (a TaskGroup would wrap the error in an ExceptionGroup).
    tasks = [asyncio.ensure_future(one(f, ix)) for f, ix in groups.values()]
    try:
        per_fragment = await asyncio.gather(*tasks)
    except BaseException:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        raise
    for values in per_fragment:
        for i, value in values:
            results[i] = value
    out = []
    for i, t in enumerate(times_ms):
        field, text = results[i]
        out.append({"TimeStamp": t / 1000, field: text})
    return out


async def _fragment_images(
    svc: PlaybackService,
    stream: Stream,
    fragment: Fragment,
    indices: list[int],
    times_ms: list[int],
    selector: str,
    options: ImageOptions,
) -> list[tuple[int, tuple[str, str]]]:
    error = ("Error", MEDIA_ERROR)
    try:
        parsed = await svc.parse(stream, fragment)
    except Exception:  # noqa: BLE001 - an unreadable fragment is a per-image MEDIA_ERROR
        return [(i, error) for i in indices]
    video = parsed.video()
    if video is None or video.codec_id not in H264_CODEC_IDS or not video.codec_private:
        return [(i, error) for i in indices]
    start = ts_of(fragment, selector)
    offsets = [(times_ms[i] - start) * 1_000_000 for i in indices]
    picks = pick_frames(parsed, video.number, offsets)
    if not parsed.frames.get(video.number):
        return [(i, error) for i in indices]
    base = (stream.id, fragment.number, options)
    images: dict[int, bytes | None] = {}
    missing: set[int] = set()
    for p in picks:
        cached = svc.images.get((*base, p))
        if cached is not None:
            images[p] = cached
        else:
            missing.add(p)
    if missing:
        rendered = await svc.run(render, parsed, video.number, missing, options)
        for p, data in rendered.items():
            if data is not None:
                svc.images.put((*base, p), data)
                svc.images_decoded += 1
            images[p] = data
    out: list[tuple[int, tuple[str, str]]] = []
    for i, p in zip(indices, picks, strict=True):
        data = images.get(p)
        text = base64.b64encode(data).decode() if data is not None else None
        if text is None or len(text) > MAX_IMAGE_CHARS:
            out.append((i, error))
        else:
            out.append((i, ("ImageContent", text)))
    return out
