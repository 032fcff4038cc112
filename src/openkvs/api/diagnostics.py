"""``POST /describeStorageSessions`` (WEBRTC endpoint, SigV4 for ``kinesisvideo``): what the
channel's current and recent storage sessions did, and why the failed ones failed.

Body ``{"ChannelARN": "..."}``; policy action ``kinesisvideo:DescribeStorageSessions``. The answer
is ``{"ChannelARN", "StorageSessions": [...]}``, current sessions first, then ended ones, newest
first (the last 100 ended sessions of the server are kept).
"""

from __future__ import annotations

import inspect
from typing import Any

from aiohttp import web

from ..errors import AccessDeniedException, InvalidArgumentException, ResourceNotFoundException
from ..services import Services
from .dispatch import SERVICE_KEY, authenticate, parse_json_body, read_body, request_id
from .protocol import json_response

PATH = "/describeStorageSessions"
ACTION = "kinesisvideo:DescribeStorageSessions"


def handler(services: Services) -> Any:
    async def handle(request: web.Request) -> web.Response:
        request[SERVICE_KEY] = "kinesisvideo"  # errors with their plain HTTP statuses
        body = await read_body(request, services.settings.max_body_bytes)
        principal = authenticate(request, services, body)
        data = parse_json_body(request, body)
        arn = data.get("ChannelARN")
        if not isinstance(arn, str) or not arn:
            raise InvalidArgumentException("ChannelARN is required (a signaling channel's ARN).")
        channel = services.control.channel_by_arn(arn[:2048])
        if channel is None:
            raise ResourceNotFoundException(f"The channel {arn[:200]} does not exist.")
        if principal is not None and not principal.allows(ACTION, channel.arn):
            raise AccessDeniedException(
                f"User: {principal.access_key_id} is not authorized to perform: {ACTION} on "
                f"resource: {channel.arn}"
            )
        describe = getattr(services.sessions, "describe", None)
        sessions: list[dict[str, Any]] = []
        if describe is not None:
            result = describe(channel.arn)
            sessions = list(await result if inspect.isawaitable(result) else result)
        return json_response(
            {"ChannelARN": channel.arn, "StorageSessions": sessions}, request_id(request)
        )

    return handle
