"""POST dispatch for the five rest-json services: catch up with other nodes → route → read →
authenticate → limit → validate → handler → serialize. Errors raised anywhere become wire errors
in ``app.error_middleware``."""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Iterable
from typing import Any

from aiohttp import web

from .. import clock, ids, safejson
from ..auth import sigv4
from ..errors import (
    ClientLimitExceededException,
    SerializationException,
    ServiceError,
    UnknownOperationException,
)
from ..services import Services
from .context import Handler, Handlers, RequestContext
from .models import Route, routes
from .protocol import json_response, validate_input

logger = logging.getLogger(__name__)

ROUTE_KEY = web.RequestKey("openkvs.route", Route)
REQUEST_ID_KEY = web.RequestKey("openkvs.request_id", str)
SERVICE_KEY = web.RequestKey("openkvs.service", str)
_RESOURCE_FIELDS = (
    "ChannelARN",
    "channelArn",
    "ChannelName",
    "StreamARN",
    "StreamName",
    "ResourceARN",
)


class UnsupportedOperationException(ServiceError):
    code = "UnsupportedOperationException"
    status = 400


class RequestEntityTooLargeException(ServiceError):
    code = "RequestEntityTooLargeException"
    status = 413


def request_id(request: web.Request) -> str:
    rid = request.get(REQUEST_ID_KEY)
    if rid is None:
        rid = ids.request_id()
        request[REQUEST_ID_KEY] = rid
    return str(rid)


def authenticate(
    request: web.Request,
    services: Services,
    body: bytes | None,
    *,
    allow_streaming: bool = False,
) -> Any:
    """Verify the request's SigV4 signature; return the Principal (None with --no-auth)."""
    if services.settings.no_auth:
        return None
    identity = sigv4.verify(
        method=request.method,
        raw_path=request.rel_url.raw_path,
        raw_query=request.rel_url.raw_query_string,
        headers=list(request.headers.items()),
        body_sha256=(lambda: hashlib.sha256(body).hexdigest()) if body is not None else None,
        lookup=services.credentials.lookup,
        now=clock.now(),
        max_skew=services.settings.clock_skew_seconds,
        allow_streaming=allow_streaming,
    )
    return services.credentials.principal(identity.access_key_id)


async def read_body(request: web.Request, limit: int) -> bytes:
    """The whole request body, however it is framed and however its bytes arrive.

    A read returns what has arrived so far, so the body is read until its end (the signature
    covers all of it). Past ``limit`` bytes the request is refused with 413, whether the
    Content-Length announced it or a chunked body grew beyond it."""
    too_large = RequestEntityTooLargeException(f"Request body is larger than {limit} bytes.")
    if request.content_length is not None and request.content_length > limit:
        raise too_large
    parts: list[bytes] = []
    size = 0
    while True:
        part = await request.content.read(limit + 1 - size)
        if not part:
            return b"".join(parts)
        size += len(part)
        if size > limit:
            raise too_large
        parts.append(part)


def parse_json_body(request: web.Request, body: bytes) -> dict[str, Any]:
    if not body.strip():
        return {}
    ctype = request.headers.get("Content-Type", "")
    if ctype and "json" not in ctype.lower():
        raise SerializationException(
            f"Unsupported Content-Type {ctype[:60]!r}: send application/json."
        )
    try:
        data = safejson.loads(body)
    except ValueError as exc:  # UnicodeDecodeError and JsonDepthError included
        raise SerializationException(f"Request body is not valid JSON: {exc}") from exc
    if not isinstance(data, dict):
        raise SerializationException("Request body must be a JSON object.")
    return data


class ApiDispatcher:
    def __init__(
        self,
        services: Services,
        handler_sets: Iterable[Handlers],
        unsupported: Iterable[str] = (),
    ) -> None:
        self.services = services
        self.routes: dict[str, Route] = routes()
        self.handlers: dict[tuple[str, str], Handler] = {}
        for hs in handler_sets:
            for name, fn in hs.table.items():
                self.handlers[(hs.service, name)] = fn
        known = {(r.service, r.name) for r in self.routes.values()}
        stray = set(self.handlers) - known
        if stray:
            raise RuntimeError(f"handlers for operations no model defines: {sorted(stray)}")
        declared = set(unsupported)
        missing = {n for s, n in known - set(self.handlers)} - declared
        if missing:
            raise RuntimeError(
                f"operations neither implemented nor declared unsupported: {sorted(missing)}"
            )
        self.streaming: dict[str, Handler] = {}

    def implemented(self) -> set[tuple[str, str]]:
        return set(self.handlers)

    def add_streaming(self, path: str, handler: Handler) -> None:
        """Serve ``path`` with a handler that reads the request body itself (PutMedia)."""
        self.streaming[path] = handler

    async def handle(self, request: web.Request) -> web.StreamResponse:
        rid = request_id(request)
        services = self.services
        # What any node committed before this request is what the request sees.
        await services.control.sync()
        if request.path in self.streaming:
            principal = authenticate(request, services, None, allow_streaming=True)
            self._limit(principal, request.path, {})
            ctx = RequestContext(
                request, rid, "kinesis-video-media", "PutMedia", principal, services
            )
            result = await self.streaming[request.path](ctx, {})
            assert isinstance(result, web.StreamResponse)
            return result
        route = self.routes.get(request.path)
        if route is None:
            raise UnknownOperationException(f"No operation is served at POST {request.path[:100]}")
        request[ROUTE_KEY] = route
        body = await read_body(request, services.settings.max_body_bytes)
        principal = authenticate(request, services, body)
        data = parse_json_body(request, body)
        self._limit(principal, route.name, data)
        handler = self.handlers.get((route.service, route.name))
        if handler is None:
            raise UnsupportedOperationException(f"openkvs does not implement {route.name} yet.")
        params = validate_input(route.operation, data)
        ctx = RequestContext(request, rid, route.service, route.name, principal, services)
        result = await handler(ctx, params)
        if isinstance(result, web.StreamResponse):
            return result
        if route.operation.output_shape is None:
            return json_response(None, rid)
        return json_response(result or {}, rid)

    def _limit(self, principal: Any, op: str, data: dict[str, Any]) -> None:
        account = principal.access_key_id if principal is not None else "anonymous"
        if not self.services.account_limiter.allow(account):
            raise ClientLimitExceededException(
                "Kinesis Video Streams has throttled the request because you have exceeded the "
                "limit of allowed client calls. Try making the call later."
            )
        for field in _RESOURCE_FIELDS:
            value = data.get(field)
            if isinstance(value, str):
                if not self.services.resource_limiter.allow(f"{op}:{value[:300]}"):
                    raise ClientLimitExceededException(
                        f"Kinesis Video Streams has throttled the request: too many {op} calls "
                        "for this resource. Try making the call later."
                    )
                break
