"""The GET resources of HLS and DASH sessions (``/hls/v1/...``, ``/dash/v1/...``).

They are authorised by the ``SessionToken`` query parameter alone (no SigV4) and are fetched by
players embedded on other origins, so every answer (errors included, through the app's error
middleware) carries CORS headers. Only the fixed resource names below are served; query values
are parsed strictly and only ever used to look up fragment metadata, never as paths.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from aiohttp import web

from ..errors import InvalidArgumentException, ResourceNotFoundException
from . import dash, hls
from .service import DASH, HLS, PlaybackService

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

M3U8 = "application/vnd.apple.mpegurl"
MP4 = "video/mp4"
MPEG_TS = "video/mp2t"
MPD = "application/dash+xml"
_MAX_DIGITS = 20


def _one(request: web.Request, name: str) -> str | None:
    values = request.query.getall(name, [])
    if len(values) > 1:
        raise InvalidArgumentException(f"The {name} parameter is given more than once.")
    return values[0] if values else None


def _int(request: web.Request, name: str, *, required: bool, low: int, high: int) -> int | None:
    raw = _one(request, name)
    if raw is None:
        if required:
            raise InvalidArgumentException(f"The {name} parameter is required.")
        return None
    if not raw.isascii() or not raw.isdigit() or len(raw) > _MAX_DIGITS:
        raise InvalidArgumentException(f"The {name} parameter must be a decimal number.")
    value = int(raw)
    if not low <= value <= high:
        raise InvalidArgumentException(f"The {name} parameter must be between {low} and {high}.")
    return value


def _track(request: web.Request, *, required: bool = True) -> int:
    value = _int(request, "TrackNumber", required=required, low=1, high=2)
    return 1 if value is None else value


def _respond(body: bytes | str, content_type: str, *, playlist: bool) -> web.Response:
    data = body.encode() if isinstance(body, str) else body
    response = web.Response(body=data, content_type=content_type)
    response.headers["Cache-Control"] = "no-cache" if playlist else "private, max-age=300"
    return response


def add_routes(router: web.UrlDispatcher, playback: PlaybackService) -> None:
    async def hls_resource(request: web.Request) -> web.StreamResponse:
        name = request.match_info["name"]
        token = _one(request, "SessionToken")
        if name not in HLS_RESOURCES:
            raise ResourceNotFoundException(f"No HLS resource is named {name[:64]!r}.")
        session, stream = playback.open_session(token, HLS)
        assert token is not None
        fmp4 = session.container != "MPEG_TS"
        if name == hls.MASTER:
            text = await playback.hls_master(session, stream, token)
            return _respond(text, M3U8, playlist=True)
        if name == hls.MEDIA:
            track = _track(request, required=fmp4) if fmp4 else None
            msn = _int(request, "_HLS_msn", required=False, low=0, high=2**63 - 1)
            part = _int(request, "_HLS_part", required=False, low=0, high=2**31 - 1)
            text = await playback.hls_media(session, stream, token, track, msn, part)
            return _respond(text, M3U8, playlist=True)
        if name == hls.TS:
            if fmp4:
                raise InvalidArgumentException("This session serves fragmented MP4, not MPEG-TS.")
            number = _int(request, "FragmentNumber", required=True, low=0, high=2**63 - 1)
            assert number is not None
            fragment = await playback.fragment_by_number(session, stream, number)
            return _respond(await playback.ts(session, stream, fragment), MPEG_TS, playlist=False)
        if not fmp4:
            raise InvalidArgumentException("This session serves MPEG-TS, not fragmented MP4.")
        track = _track(request)
        if name == hls.INIT:
            _int(request, "SequenceNumber", required=False, low=0, high=2**31 - 1)
            return _respond(await playback.init(session, stream, track), MP4, playlist=False)
        number = _int(request, "FragmentNumber", required=True, low=0, high=2**63 - 1)
        assert number is not None
        if name == hls.PART:
            index = _int(request, "PartNumber", required=True, low=0, high=2**31 - 1)
            assert index is not None
            data = await playback.part(session, stream, number, index, track)
            return _respond(data, MP4, playlist=False)
        fragment = await playback.fragment_by_number(session, stream, number)
        data = await playback.media(session, stream, fragment, track)
        return _respond(data, MP4, playlist=False)

    async def dash_resource(request: web.Request) -> web.StreamResponse:
        name = request.match_info["name"]
        token = _one(request, "SessionToken")
        if name not in DASH_RESOURCES:
            raise ResourceNotFoundException(f"No DASH resource is named {name[:64]!r}.")
        session, stream = playback.open_session(token, DASH)
        assert token is not None
        if name == dash.MANIFEST:
            text = await playback.dash_manifest(session, stream, token)
            return _respond(text, MPD, playlist=True)
        track = _track(request)
        if name == dash.INIT:
            return _respond(await playback.init(session, stream, track), MP4, playlist=False)
        time_ms = _int(request, "Time", required=False, low=0, high=2**62)
        number = _int(request, "FragmentNumber", required=False, low=0, high=2**63 - 1)
        if number is not None:
            fragment = await playback.fragment_by_number(session, stream, number)
        elif time_ms is not None:
            fragment = await playback.fragment_at(session, stream, time_ms)
        else:
            raise InvalidArgumentException("Either Time or FragmentNumber is required.")
        data = await playback.media(session, stream, fragment, track)
        return _respond(data, MP4, playlist=False)

    router.add_get("/hls/v1/{name}", hls_resource)
    router.add_get("/dash/v1/{name}", dash_resource)


HLS_RESOURCES = frozenset({hls.MASTER, hls.MEDIA, hls.INIT, hls.FRAGMENT, hls.TS, hls.PART})
DASH_RESOURCES = frozenset({dash.MANIFEST, dash.INIT, dash.FRAGMENT})
