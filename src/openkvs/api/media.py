"""Kinesis Video media (``kinesis-video-media``, 2017-09-30): GetMedia; and PutMedia, which no
botocore model describes and which the dispatcher serves as a streaming route (``/putMedia``).

Wire work only: the streaming itself is in ``dataplane/``.
"""

from __future__ import annotations

from typing import Any

from aiohttp import web

from ..dataplane import chunks, getmedia
from ..dataplane.listing import to_ms
from ..dataplane.putmedia import PutMediaRequest, PutMediaSession
from .context import Handlers, RequestContext

handlers = Handlers("kinesis-video-media")


async def prepare_stream(ctx: RequestContext, response: web.StreamResponse) -> web.StreamResponse:
    """Send the status line and headers of a streamed response (CORS headers included)."""
    from .. import app  # the app module imports this one; CORS headers live there

    response.headers["x-amzn-RequestId"] = ctx.request_id
    app._cors_headers(ctx.request, response)
    await response.prepare(ctx.request)
    return response


async def finish_stream(response: web.StreamResponse) -> web.StreamResponse:
    try:
        await response.write_eof()
    except (ConnectionError, RuntimeError):
        pass  # the client left; nothing more to say
    return response


@handlers.operation("GetMedia")
async def get_media(ctx: RequestContext, p: dict[str, Any]) -> web.StreamResponse:
    services = ctx.services
    stream = services.control.get_stream(name=p.get("StreamName"), arn=p.get("StreamARN"))
    ctx.authorize(stream.arn)
    selector = p["StartSelector"]
    ts = selector.get("StartTimestamp")
    start_ms = None if ts is None else to_ms(ts, up=False)
    start = await getmedia.resolve_start(services.fragments, stream, selector, start_ms)
    response = web.StreamResponse(status=200, headers={"Content-Type": chunks.CONTENT_TYPE})
    await prepare_stream(ctx, response)
    await getmedia.stream_get_media(services.dataplane, ctx.request, response, stream, start)
    return await finish_stream(response)


async def put_media(ctx: RequestContext, params: dict[str, Any]) -> web.StreamResponse:
    """POST /putMedia: validate the headers, take the stream's writer slot, stream acks."""
    services = ctx.services
    spec = PutMediaRequest.from_headers(ctx.request.headers)
    stream = services.control.get_stream(name=spec.stream_name, arn=spec.stream_arn)
    ctx.authorize(stream.arn)
    plane = services.dataplane
    async with plane.writer(stream) as slot:
        response = web.StreamResponse(status=200, headers={"Content-Type": "application/json"})
        await prepare_stream(ctx, response)
        await PutMediaSession(plane, stream, ctx.request, response, spec, slot).run()
    return response
