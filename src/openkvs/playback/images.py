"""GetImages: sample times → frames → JPEG/PNG, decoding only what is needed.

Each sampling time shows the frame presented nearest to it (the earlier of two equally near): a
time just before a fragment's first frame shows that frame (a keyframe) rather than the previous
fragment's last one, which would cost decoding that fragment's whole GOP. The fragment is found
from the fragment metadata (and, near a boundary, the two fragments' frame times); the frame is
decoded starting from the nearest keyframe before it, in decode order, and nothing past the last
wanted frame.
One decoder serves all of a fragment's images; frames that are neither wanted nor referenced by
another frame (non-reference B-frames) are skipped, which changes no decoded picture. Decoding
and encoding run in the playback worker pool. Encoded images are cached by (fragment, frame,
format, quality, size); decoded frames (the wanted ones and the keyframes decoding started from)
are cached by (fragment, frame), so another size, format or quality of the same frame is not
decoded again."""

from __future__ import annotations

import asyncio
import base64
import bisect
import dataclasses
from collections.abc import Iterator
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
    """Decode-order index of the frame presented nearest to each offset (the earlier of two
    equally near)."""
    frames = parsed.frames.get(track, [])
    order = sorted(range(len(frames)), key=lambda i: frames[i].pts_ns)
    times = [frames[i].pts_ns for i in order]
    picks = []
    for t in offsets_ns:
        k = bisect.bisect_right(times, t) - 1
        if k < 0 or (k + 1 < len(times) and times[k + 1] - t < t - times[k]):
            k += 1
        picks.append(order[k])
    return picks


def presented_span_ns(parsed: ParsedFragment, track: int) -> tuple[int, int] | None:
    """The first and last presentation times of the track's frames (ns into the fragment)."""
    frames = parsed.frames.get(track, [])
    if not frames:
        return None
    times = [f.pts_ns for f in frames]
    return min(times), max(times)


def decode_ranges(frames: list[Any], wanted: set[int]) -> list[tuple[int, int]]:
    """Decode-order ``(first, last)`` runs that decode ``wanted``, each from its keyframe."""
    ranges: list[list[int]] = []
    for j in sorted(wanted):
        k = j
        while k > 0 and not frames[k].key:
            k -= 1
        if ranges and k <= ranges[-1][1]:
            ranges[-1][1] = max(ranges[-1][1], j)
        else:
            ranges.append([k, j])
    return [(first, last) for first, last in ranges]


def iter_frames(
    parsed: ParsedFragment, track: int, wanted: set[int]
) -> Iterator[tuple[int, Any, bool]]:
    """``(index, frame, is_wanted)`` for each frame at a decode-order index in ``wanted``, and for
    the keyframe each run of decoding starts from, as soon as it is decoded.

    Decoding starts at the nearest keyframe before a wanted frame and stops at the last wanted
    frame of the run. Every other decoded frame is dropped at once, so its buffer goes back to
    the decoder's pool: holding a GOP's pictures until the end of a run costs more (a fresh
    picture to allocate and fault in each frame) than decoding them."""
    info = parsed.tracks[track]
    frames = parsed.frames[track]
    ctx: Any = av.CodecContext.create("h264", "r")
    ctx.extradata = info.codec_private
    ctx.thread_count = 1
    time_base = Fraction(1, 90_000)
    for n, (first, last) in enumerate(decode_ranges(frames, wanted)):
        if n:
            ctx.flush_buffers()  # the same decoder, restarted at the next keyframe
        for i in range(first, last + 2):
            packet: Any = None  # after the run's last frame: drain the decoder
            if i <= last:
                # Single-threaded, the setting applies to this packet alone: a frame nothing
                # else refers to is only decoded when it is one of the wanted frames.
                ctx.skip_frame = "DEFAULT" if i in wanted else "NONREF"
                packet = av.Packet(frames[i].data)
                packet.pts = packet.dts = i
                packet.time_base = time_base
            else:
                ctx.skip_frame = "DEFAULT"
            for frame in ctx.decode(packet):
                index = int(frame.pts)
                if index in wanted or index == first:
                    yield index, frame, index in wanted


class Encoder:
    """Encodes frames as one format/quality/size, reusing one encoder for every image."""

    def __init__(self, options: ImageOptions) -> None:
        self.options = options
        self._ctx: dict[tuple[int, int], Any] = {}
        self._pts = 0  # an encoder takes increasing timestamps

    def encode(self, frame: Any) -> bytes:
        options = self.options
        width, height = output_size(frame.width, frame.height, options.width, options.height)
        fmt = "yuvj420p" if options.format == "JPEG" else "rgb24"
        enc = self._ctx.get((width, height))
        if enc is None:
            if options.format == "JPEG":
                enc = av.CodecContext.create("mjpeg", "w")
                q = jpeg_qscale(options.quality)
                enc.qmin = enc.qmax = q
            else:
                enc = av.CodecContext.create("png", "w")
            enc.pix_fmt = fmt
            enc.width = width
            enc.height = height
            enc.time_base = Fraction(1, 25)
            self._ctx[(width, height)] = enc
        image = frame.reformat(width=width, height=height, format=fmt, interpolation="AREA")
        image.pts = self._pts
        image.time_base = enc.time_base
        self._pts += 1
        # Intra-only encoders return each image's packet at once (no flush, so no reopen).
        return b"".join(bytes(p) for p in enc.encode(image))


def frame_bytes(frame: Any) -> int:
    """Memory a decoded video frame holds (its planes)."""
    return sum(int(plane.buffer_size) for plane in frame.planes)


def render(
    parsed: ParsedFragment,
    track: int,
    wanted: set[int],
    options: ImageOptions,
    decoded: dict[int, Any] | None = None,
    keep: dict[int, Any] | None = None,
    keep_bytes: int = 0,
) -> dict[int, bytes | None]:
    """Worker-pool job: images for the frames ``wanted`` (None where decoding failed).

    ``decoded`` holds frames already decoded (from the frame cache). Each frame is encoded as
    soon as it is decoded, so a job holds one decoded picture at a time, plus what it keeps:
    ``keep``, when given, receives the frames this job decoded (the wanted ones and the
    keyframes decoding started from), for the frame cache, up to ``keep_bytes`` of pictures."""
    encoder = Encoder(options)
    out: dict[int, bytes | None] = dict.fromkeys(wanted)
    kept = 0

    def encode(index: int, frame: Any) -> None:
        try:
            out[index] = encoder.encode(frame)
        except (av.FFmpegError, ValueError):
            out[index] = None

    have = decoded or {}
    for index in sorted(wanted & have.keys()):
        encode(index, have[index])
    todo = wanted - have.keys()
    if not todo:
        return out
    try:
        for index, frame, is_wanted in iter_frames(parsed, track, todo):
            if is_wanted:
                encode(index, frame)
            if keep is not None and kept + (size := frame_bytes(frame)) <= keep_bytes:
                keep[index] = frame
                kept += size
    except (av.FFmpegError, ValueError):
        pass  # the frames not decoded by then stay None
    return out


# How far before the next fragment's start a time is checked against that fragment's first frame
# (frames of a camera are well under a second apart).
BOUNDARY_MS = 1000


def _covering(fragments: list[Fragment], starts: list[int], t: int) -> int | None:
    """The index of the fragment whose time span holds ``t``, if any."""
    k = bisect.bisect_right(starts, t) - 1
    if k < 0:
        return None
    f = fragments[k]
    end = starts[k + 1] if k + 1 < len(starts) else None
    length = f.duration_ms if f.duration_ms > 0 else (end - starts[k] if end else 0)
    if t < starts[k] + max(length, 1):
        return k
    return None


async def _video_span(svc: PlaybackService, stream: Stream, f: Fragment) -> tuple[int, int] | None:
    try:
        parsed = await svc.parse(stream, f)
    except Exception:  # noqa: BLE001 - unreadable: it keeps its times (and gets MEDIA_ERROR)
        return None
    video = parsed.video()
    return None if video is None else presented_span_ns(parsed, video.number)


async def _nearer_in_next(
    svc: PlaybackService,
    stream: Stream,
    fragments: list[Fragment],
    starts: list[int],
    k: int,
    times: list[int],
) -> set[int]:
    """Which of ``times`` (in fragment ``k``, after its last frame) are nearer to the next
    fragment's first frame than to fragment ``k``'s last one."""
    here = await _video_span(svc, stream, fragments[k])
    there = await _video_span(svc, stream, fragments[k + 1])
    if here is None or there is None:
        return set()
    last_ns = starts[k] * 1_000_000 + here[1]
    first_ns = starts[k + 1] * 1_000_000 + there[0]
    return {t for t in times if first_ns - t * 1_000_000 < t * 1_000_000 - last_ns}


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
    starts = [ts_of(f, selector) for f in fragments]
    covering: dict[int, int] = {}
    results: dict[int, tuple[str, str]] = {}
    for i, t in enumerate(times_ms):
        k = _covering(fragments, starts, t)
        if k is None:
            results[i] = ("Error", NO_MEDIA)
        else:
            covering[i] = k
    # A time near the end of a fragment that another one follows may be nearer to the next
    # fragment's first frame (a keyframe) than to its own last frame.
    tails: dict[int, list[int]] = {}
    for i, k in covering.items():
        if k + 1 < len(fragments) and starts[k + 1] - times_ms[i] <= BOUNDARY_MS:
            tails.setdefault(k, []).append(i)
    decided = await asyncio.gather(
        *(
            _nearer_in_next(svc, stream, fragments, starts, k, [times_ms[i] for i in ix])
            for k, ix in tails.items()
        )
    )
    for (k, indices), moved in zip(tails.items(), decided, strict=True):
        for i in indices:
            if times_ms[i] in moved:
                covering[i] = k + 1
    groups: dict[int, tuple[Fragment, list[int]]] = {}
    for i, k in sorted(covering.items()):
        f = fragments[k]
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
        fkey = (stream.id, fragment.number)
        decoded: dict[int, Any] = {}
        for p in missing:
            frame = svc.frames.get((*fkey, p))
            if frame is not None:
                decoded[p] = frame
        keep: dict[int, Any] = {}
        rendered = await svc.run(
            render, parsed, video.number, missing, options, decoded, keep, svc.frames.max_bytes
        )
        for p, frame in keep.items():
            svc.frames.put((*fkey, p), frame)
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
