"""Playback operations of ``kinesis-video-archived-media``: GetHLSStreamingSessionURL,
GetDASHStreamingSessionURL, GetClip and GetImages.

Parameters arrive validated against the model (types, enums, ranges); the rules the model cannot
express (which selector fields each PlaybackMode needs, range lengths, defaults) are checked here,
and the work is done by ``playback.service.PlaybackService``.
"""

from __future__ import annotations

import base64
import binascii
import struct
from typing import Any

from aiohttp import web

from .. import clock
from ..errors import InvalidArgumentException, NoDataRetentionException
from ..playback import clip, images
from ..playback.service import DASH, HLS, PlaybackService
from ..records import Stream
from .context import Handlers, RequestContext
from .endpoints import base_url

handlers = Handlers("kinesis-video-archived-media")

DAY_MS = 24 * 3600 * 1000
FUTURE_TOLERANCE_MS = 10_000
IMAGES_MAX_RANGE_MS = 300_000
IMAGES_MIN_INTERVAL_MS = 200
# SamplingInterval is optional in the model and its default undocumented; 3 s was the
# documented minimum (and the usual value) before 200 ms was allowed.
IMAGES_DEFAULT_INTERVAL_MS = 3000
IMAGES_PAGE = 25


def _playback(ctx: RequestContext) -> PlaybackService:
    return ctx.services.playback


def _stream(ctx: RequestContext, p: dict[str, Any]) -> Stream:
    stream = ctx.services.control.get_stream(name=p.get("StreamName"), arn=p.get("StreamARN"))
    ctx.authorize(stream.arn)
    if stream.retention_hours <= 0:
        raise NoDataRetentionException(
            f"The stream {stream.name} does not retain data (DataRetentionInHours is 0)."
        )
    return stream


def _ms(seconds: float) -> int:
    return int(round(seconds * 1000))


def _session_params(p: dict[str, Any], selector_field: str) -> dict[str, Any]:
    mode = p.get("PlaybackMode", "LIVE")
    sel = p.get(selector_field) or {}
    selector = sel.get("FragmentSelectorType", "SERVER_TIMESTAMP")
    rng = sel.get("TimestampRange")
    start_ms = end_ms = None
    if mode == "LIVE":
        if rng is not None:
            raise InvalidArgumentException(
                f"{selector_field}.TimestampRange must not be set when PlaybackMode is LIVE."
            )
    else:
        if rng is None or rng.get("StartTimestamp") is None:
            raise InvalidArgumentException(
                f"PlaybackMode {mode} requires {selector_field} with a TimestampRange that has "
                "a StartTimestamp."
            )
        start_ms = _ms(rng["StartTimestamp"])
        if rng.get("EndTimestamp") is not None:
            end_ms = _ms(rng["EndTimestamp"])
        elif mode == "ON_DEMAND":
            raise InvalidArgumentException(
                "EndTimestamp is required when PlaybackMode is ON_DEMAND."
            )
        if end_ms is not None:
            _check_range(start_ms, end_ms, selector)
    default_max = 1000 if mode == "ON_DEMAND" else 5
    return {
        "mode": mode,
        "selector": selector,
        "start_ms": start_ms,
        "end_ms": end_ms,
        "expires_s": p.get("Expires", 300),
        "default_max": default_max,
    }


def _check_range(start_ms: int, end_ms: int, selector: str) -> None:
    if end_ms <= start_ms:
        raise InvalidArgumentException("EndTimestamp must be later than StartTimestamp.")
    if end_ms - start_ms > DAY_MS:
        raise InvalidArgumentException("EndTimestamp must be within 24 hours of StartTimestamp.")
    if selector == "SERVER_TIMESTAMP" and end_ms > clock.now_ms() + FUTURE_TOLERANCE_MS:
        raise InvalidArgumentException(
            "EndTimestamp must be in the past when FragmentSelectorType is SERVER_TIMESTAMP."
        )


@handlers.operation("GetHLSStreamingSessionURL")
async def get_hls_streaming_session_url(ctx: RequestContext, p: dict[str, Any]) -> dict[str, Any]:
    params = _session_params(p, "HLSFragmentSelector")
    stream = _stream(ctx, p)
    default_disc = "ALWAYS" if params["selector"] == "SERVER_TIMESTAMP" else "NEVER"
    token = await _playback(ctx).create_session(
        kind=HLS,
        stream=stream,
        mode=params["mode"],
        selector=params["selector"],
        start_ms=params["start_ms"],
        end_ms=params["end_ms"],
        container=p.get("ContainerFormat", "FRAGMENTED_MP4"),
        discontinuity=p.get("DiscontinuityMode", default_disc),
        display_timestamp=p.get("DisplayFragmentTimestamp", "NEVER") == "ALWAYS",
        display_number=False,
        max_results=p.get("MaxMediaPlaylistFragmentResults", params["default_max"]),
        expires_s=params["expires_s"],
    )
    base = base_url(ctx.request, ctx.services.settings)
    return {
        "HLSStreamingSessionURL": f"{base}/hls/v1/getHLSMasterPlaylist.m3u8?SessionToken={token}"
    }


@handlers.operation("GetDASHStreamingSessionURL")
async def get_dash_streaming_session_url(ctx: RequestContext, p: dict[str, Any]) -> dict[str, Any]:
    params = _session_params(p, "DASHFragmentSelector")
    stream = _stream(ctx, p)
    token = await _playback(ctx).create_session(
        kind=DASH,
        stream=stream,
        mode=params["mode"],
        selector=params["selector"],
        start_ms=params["start_ms"],
        end_ms=params["end_ms"],
        container="FRAGMENTED_MP4",
        discontinuity="NEVER",
        display_timestamp=p.get("DisplayFragmentTimestamp", "NEVER") == "ALWAYS",
        display_number=p.get("DisplayFragmentNumber", "NEVER") == "ALWAYS",
        max_results=p.get("MaxManifestFragmentResults", params["default_max"]),
        expires_s=params["expires_s"],
    )
    base = base_url(ctx.request, ctx.services.settings)
    return {"DASHStreamingSessionURL": f"{base}/dash/v1/getDASHManifest.mpd?SessionToken={token}"}


@handlers.operation("GetClip")
async def get_clip(ctx: RequestContext, p: dict[str, Any]) -> web.StreamResponse:
    sel = p["ClipFragmentSelector"]
    rng = sel["TimestampRange"]
    start_ms, end_ms = _ms(rng["StartTimestamp"]), _ms(rng["EndTimestamp"])
    _check_range(start_ms, end_ms, sel["FragmentSelectorType"])
    stream = _stream(ctx, p)
    data = await clip.get_clip(
        _playback(ctx), stream, sel["FragmentSelectorType"], start_ms, end_ms
    )
    return web.Response(
        body=data,
        headers={"Content-Type": "video/mp4", "x-amzn-RequestId": ctx.request_id},
    )


def _images_digest(svc: PlaybackService, stream: Stream, p: dict[str, Any]) -> bytes:
    fields = [
        stream.arn,
        p["ImageSelectorType"],
        repr(p["StartTimestamp"]),
        repr(p["EndTimestamp"]),
        repr(p.get("SamplingInterval")),
        p["Format"],
        repr(sorted((p.get("FormatConfig") or {}).items())),
        repr(p.get("WidthPixels")),
        repr(p.get("HeightPixels")),
        repr(p.get("MaxResults")),
    ]
    return svc.signer.digest("GetImages", *fields)[:12]


def _next_token(digest: bytes, index: int, remaining: int) -> str:
    return base64.b64encode(struct.pack(">Ii", index, remaining) + digest).decode()


def _read_next_token(token: str, digest: bytes) -> tuple[int, int]:
    try:
        raw = base64.b64decode(token, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise InvalidArgumentException("NextToken is not valid.") from exc
    if len(raw) != 20 or raw[8:] != digest:
        raise InvalidArgumentException(
            "NextToken is not valid for this request: repeat the original parameters."
        )
    index, remaining = struct.unpack(">Ii", raw[:8])
    return index, remaining


@handlers.operation("GetImages")
async def get_images(ctx: RequestContext, p: dict[str, Any]) -> dict[str, Any]:
    start_ms, end_ms = _ms(p["StartTimestamp"]), _ms(p["EndTimestamp"])
    if end_ms < start_ms:
        raise InvalidArgumentException("EndTimestamp must not be earlier than StartTimestamp.")
    if end_ms - start_ms > IMAGES_MAX_RANGE_MS:
        raise InvalidArgumentException(
            "The range between StartTimestamp and EndTimestamp must not exceed 300 seconds."
        )
    interval = p.get("SamplingInterval", IMAGES_DEFAULT_INTERVAL_MS)
    if interval < IMAGES_MIN_INTERVAL_MS:
        raise InvalidArgumentException(
            f"SamplingInterval must be at least {IMAGES_MIN_INTERVAL_MS} milliseconds."
        )
    quality = 80
    raw_quality = (p.get("FormatConfig") or {}).get("JPEGQuality")
    if raw_quality is not None:
        if not raw_quality.isdigit() or not 1 <= int(raw_quality) <= 100:
            raise InvalidArgumentException("FormatConfig JPEGQuality must be an integer 1..100.")
        quality = int(raw_quality)
    options = images.ImageOptions(
        format=p["Format"],
        quality=quality,
        width=p.get("WidthPixels"),
        height=p.get("HeightPixels"),
    )
    stream = _stream(ctx, p)
    svc = _playback(ctx)
    count = (end_ms - start_ms) // interval + 1
    max_results = p.get("MaxResults")
    digest = _images_digest(svc, stream, p)
    index, remaining = 0, (max_results if max_results is not None else -1)
    if p.get("NextToken"):
        index, remaining = _read_next_token(p["NextToken"], digest)
    page = min(IMAGES_PAGE, max_results or IMAGES_PAGE)
    if remaining >= 0:
        page = min(page, remaining)
    stop = min(count, index + page)
    times = [start_ms + k * interval for k in range(index, stop)]
    result: dict[str, Any] = {
        "Images": await images.get_images(svc, stream, p["ImageSelectorType"], times, options)
    }
    left = remaining - len(times) if remaining >= 0 else -1
    if stop < count and left != 0:
        result["NextToken"] = _next_token(digest, stop, left)
    return result
