"""Kinesis Video archived media (``kinesis-video-archived-media``, 2017-09-30): ListFragments and
GetMediaForFragmentList. (HLS, DASH, GetClip and GetImages are served by ``playback``.)"""

from __future__ import annotations

from typing import Any

from aiohttp import web

from ..dataplane import chunks, getmedia, listing
from ..errors import ResourceNotFoundException
from .context import Handlers, RequestContext
from .media import finish_stream, prepare_stream

handlers = Handlers("kinesis-video-archived-media")


@handlers.operation("ListFragments")
async def list_fragments(ctx: RequestContext, p: dict[str, Any]) -> dict[str, Any]:
    services = ctx.services
    stream = services.control.get_stream(name=p.get("StreamName"), arn=p.get("StreamARN"))
    ctx.authorize(stream.arn)
    selector = p.get("FragmentSelector")
    kind = start_ms = end_ms = None
    if selector is not None:
        kind = selector["FragmentSelectorType"]
        rng = selector["TimestampRange"]
        start_ms = listing.to_ms(rng["StartTimestamp"], up=True)
        end_ms = listing.to_ms(rng["EndTimestamp"], up=False)
    page, token = await listing.list_page(
        services.fragments,
        stream,
        selector=kind,
        start_ms=start_ms,
        end_ms=end_ms,
        max_results=p.get("MaxResults", listing.DEFAULT_MAX_RESULTS),
        token=p.get("NextToken"),
    )
    return {"Fragments": [listing.fragment_info(f) for f in page], "NextToken": token}


@handlers.operation("GetMediaForFragmentList")
async def get_media_for_fragment_list(ctx: RequestContext, p: dict[str, Any]) -> web.StreamResponse:
    services = ctx.services
    stream = services.control.get_stream(name=p.get("StreamName"), arn=p.get("StreamARN"))
    ctx.authorize(stream.arn)
    wanted: list[str] = p["Fragments"]
    numbers = sorted({int(n) for n in wanted if len(n) <= 19 and int(n) < 2**63})
    found = {f.number: f for f in await services.fragments.get(stream, numbers)}
    missing = [n for n in wanted if len(n) > 19 or int(n) not in found]
    if missing:
        more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
        raise ResourceNotFoundException(
            f"Fragment {missing[0][:128]}{more} was not found in the stream {stream.name}."
        )
    response = web.StreamResponse(status=200, headers={"Content-Type": chunks.CONTENT_TYPE})
    await prepare_stream(ctx, response)
    await getmedia.stream_fragment_list(
        services.dataplane, response, stream, [found[int(n)] for n in wanted]
    )
    return await finish_stream(response)
