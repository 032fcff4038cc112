"""Assemble the aiohttp application: middlewares (outermost first), routes and lifecycles."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

from aiohttp import web
from aiohttp.abc import AbstractAccessLogger

from .api import archived_media, diagnostics, kinesisvideo, media, webrtc_storage
from .api import playback as playback_api
from .api import signaling as signaling_api
from .api.dispatch import REQUEST_ID_KEY, ROUTE_KEY, SERVICE_KEY, ApiDispatcher, request_id
from .api.models import Route
from .api.protocol import error_response, wire_error
from .auth.credentials import CredentialStore, Principal, default_principal, shared_principal
from .cluster.factory import open_cluster
from .config import Settings
from .control.fragments import CLUSTER_ORPHAN_MIN_AGE, FragmentStore
from .control.ratelimit import RateLimiter
from .control.resources import ControlPlane
from .control.retention import RetentionTask
from .control.sessions import RecordingSessions, StorageSessions
from .errors import InternalFailure, ServiceError
from .ops import events as ops_events
from .ops import health as ops_health
from .ops import metrics as ops_metrics
from .playback import routes as playback_routes
from .services import Services
from .signaling.ws import SignalingEndpoint
from .store.factory import metadata_store, open_backends
from .tls import local_ca
from .web import console

logger = logging.getLogger(__name__)

SERVICES_KEY = web.AppKey("openkvs.services", Services)
DISPATCHER_KEY = web.AppKey("openkvs.dispatcher", ApiDispatcher)

# Model operations that later parts of openkvs serve; until then they answer
# UnsupportedOperationException (400).
NOT_YET = (*kinesisvideo.UNSUPPORTED,)

CORS_ALLOW_HEADERS = (
    "Authorization, Content-Type, X-Amz-Date, X-Amz-Security-Token, X-Amz-Content-Sha256, "
    "X-Amz-Algorithm, X-Amz-Credential, X-Amz-SignedHeaders, X-Amz-Signature, X-Amz-User-Agent, "
    "X-Amz-Target, X-Amzn-Trace-Id, amz-sdk-invocation-id, amz-sdk-request, "
    "x-amzn-stream-name, x-amzn-stream-arn, x-amzn-fragment-timecode-type, "
    "x-amzn-producer-start-timestamp, x-amzn-fragment-acknowledgment-required, Range"
)
CORS_EXPOSE_HEADERS = (
    "x-amzn-RequestId, x-amzn-ErrorType, x-amz-RequestId, x-amzn-Remapped-Date, Content-Type, "
    "Content-Length, Date"
)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def _cors_headers(request: web.Request, response: web.StreamResponse) -> None:
    origin = request.headers.get("Origin")
    if origin is None:
        return
    response.headers["Access-Control-Allow-Origin"] = origin if origin != "null" else "*"
    response.headers["Vary"] = "Origin"
    response.headers["Access-Control-Expose-Headers"] = CORS_EXPOSE_HEADERS


@web.middleware
async def error_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Turn every ServiceError into the protocol's error shape; never leak a traceback."""
    try:
        response = await handler(request)
    except ServiceError as err:
        response = _error(request, err)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        response = _error(request, _http_error(exc))
    except Exception:
        logger.exception(
            "unhandled error serving %s %s (request %s)",
            request.method,
            request.path,
            request_id(request),
        )
        response = _error(
            request, InternalFailure(f"Internal server error (request id {request_id(request)}).")
        )
    if not response.prepared:
        _cors_headers(request, response)
    return response


# Paths whose requests are not counted as API requests (probes and scrapes).
_UNCOUNTED = frozenset({"/metrics", "/healthz", "/readyz", "/health"})
_GET_OPERATIONS = {"/": "Connect", "/hls/v1/{name}": "HLS", "/dash/v1/{name}": "DASH"}


def operation_label(request: web.Request) -> str:
    """A bounded name for what a request asked: the model operation, or a fixed word."""
    route: Route | None = request.get(ROUTE_KEY)
    if route is not None:
        return route.name
    if request.path == "/putMedia" and request.method == "POST":
        return "PutMedia"
    if request.path == diagnostics.PATH and request.method == "POST":
        return "DescribeStorageSessions"
    if request.method == "OPTIONS":
        return "Preflight"
    if request.method == "GET":
        resource = request.match_info.route.resource
        canonical = resource.canonical if resource is not None else ""
        return _GET_OPERATIONS.get(canonical, "unknown")
    return "unknown"


@web.middleware
async def metrics_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Count every API request by operation and status, with its latency."""
    if request.path in _UNCOUNTED:
        return await handler(request)
    started = time.perf_counter()
    status = 500
    try:
        response = await handler(request)
        status = response.status
        return response
    except web.HTTPException as exc:
        status = exc.status
        raise
    finally:
        metrics = request.app[SERVICES_KEY].metrics
        metrics.request(operation_label(request), status, time.perf_counter() - started)


def _http_error(exc: web.HTTPException) -> ServiceError:
    class _Http(ServiceError):
        code = exc.reason.replace(" ", "") + "Exception"
        status = exc.status

    return _Http(exc.text or exc.reason)


def _error(request: web.Request, err: ServiceError) -> web.Response:
    services = request.app[SERVICES_KEY]
    route: Route | None = request.get(ROUTE_KEY)
    status, code, message = wire_error(
        err,
        service=route.service if route else request.get(SERVICE_KEY),
        op=route.operation if route else None,
        request_id=request_id(request),
        aws_error_codes=services.settings.aws_error_codes,
    )
    if status >= 500:
        logger.error("%s %s -> %s %s", request.method, request.path, status, code)
    else:
        logger.debug("%s %s -> %s %s: %s", request.method, request.path, status, code, message)
    return error_response(status, code, message, request_id(request))


async def preflight(request: web.Request) -> web.Response:
    response = web.Response(status=204)
    origin = request.headers.get("Origin", "*")
    response.headers.update(
        {
            "Access-Control-Allow-Origin": origin if origin != "null" else "*",
            "Access-Control-Allow-Methods": "GET, POST, PUT, DELETE, OPTIONS, HEAD",
            "Access-Control-Allow-Headers": request.headers.get(
                "Access-Control-Request-Headers", CORS_ALLOW_HEADERS
            ),
            "Access-Control-Max-Age": "600",
            "Vary": "Origin",
        }
    )
    return response


class SafeAccessLogger(AbstractAccessLogger):
    """Access log lines without query strings: they carry signatures and session tokens."""

    def log(self, request: web.BaseRequest, response: web.StreamResponse, time: float) -> None:
        self.logger.info(
            '%s "%s %s" %s %s %.1fms %s',
            request.remote,
            request.method,
            request.path,
            response.status,
            response.body_length,
            time * 1000,
            request.get(REQUEST_ID_KEY, "-"),
        )


def build_services(settings: Settings, sessions: StorageSessions | None = None) -> Services:
    backends = open_backends(settings)
    store, blobs = backends.meta, backends.blobs
    control = ControlPlane(store, blobs, region=settings.region, account_id=settings.account_id)
    cluster = open_cluster(settings)
    # In a cluster another node may be writing a blob whose row is not committed yet: the start
    # sweep spares young orphans.
    orphan_age = CLUSTER_ORPHAN_MIN_AGE if cluster.distributed else None
    services = Services(
        settings=settings,
        control=control,
        credentials=CredentialStore.load(settings.credentials),
        sessions=sessions if sessions is not None else RecordingSessions(),
        fragments=FragmentStore(store, blobs, cluster.notifier, orphan_min_age=orphan_age),
        cluster=cluster,
        account_limiter=RateLimiter(settings.rate_limit_account),
        resource_limiter=RateLimiter(settings.rate_limit_resource),
        join_limiter=RateLimiter(settings.rate_limit_join_per_channel),
    )
    if sessions is None and settings.webrtc_enabled:
        # The WebRTC storage sessions (aiortc is imported only when they are on).
        if settings.webrtc_workers > 0:
            from .webrtc.workers import WorkerPool

            ice = services.ice
            services.sessions = WorkerPool(
                settings,
                services.fragments,
                services.hub,
                turn=lambda: ice.storage_turn(live_only=False),
                live=services.dataplane.live,
            )
        else:
            from .webrtc.manager import StorageSessionManager

            services.sessions = StorageSessionManager(
                settings,
                services.fragments,
                services.hub,
                turn=services.ice.storage_turn,
                live=services.dataplane.live,
            )
    return services


def build_app(settings: Settings, services: Services | None = None) -> web.Application:
    services = services or build_services(settings)
    app = web.Application(
        middlewares=[metrics_middleware, error_middleware],
        client_max_size=settings.max_body_bytes,
    )
    app[SERVICES_KEY] = services
    dispatcher = ApiDispatcher(
        services,
        [
            kinesisvideo.handlers,
            webrtc_storage.handlers,
            signaling_api.handlers,
            media.handlers,
            archived_media.handlers,
            playback_api.handlers,
        ],
        unsupported=NOT_YET,
    )
    dispatcher.add_streaming("/putMedia", media.put_media)
    app[DISPATCHER_KEY] = dispatcher

    async def health(request: web.Request) -> web.Response:
        return web.json_response({"service": "openkvs", "status": "ok"})

    app.router.add_get("/health", health)

    async def healthz(request: web.Request) -> web.Response:
        return web.json_response({"status": "alive"})

    async def readyz(request: web.Request) -> web.Response:
        ready, status = await services.health.readiness()
        return web.json_response({"status": status}, status=200 if ready else 503)

    # Unauthenticated on both ports (probes); they tell nothing but a status word.
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    # Prometheus metrics; 404 on a port they are not served on (metrics_listen).
    s = settings
    scrape = ops_metrics.metrics_handler(services.metrics, s.metrics_listen, s.metrics_token)
    app.router.add_get("/metrics", scrape)
    # ConnectAsMaster / ConnectAsViewer: the WSS endpoint is the server's root.
    app.router.add_get("/", SignalingEndpoint(services).handle)
    # HLS/DASH session resources: GET, authorised by their SessionToken (no SigV4).
    playback_routes.add_routes(app.router, services.playback)
    # The web console's static files (its API calls are ordinary signed requests).
    console.add_routes(app.router, settings.console_dir)
    app.router.add_route("OPTIONS", "/{tail:.*}", preflight)
    # Storage-session diagnostics (not in the service models; SigV4 all the same).
    app.router.add_post(diagnostics.PATH, diagnostics.handler(services))
    app.router.add_post("/{tail:.*}", dispatcher.handle)
    app.cleanup_ctx.append(_cluster_lifecycle(services))
    app.cleanup_ctx.append(_lifecycle(services))

    async def close_signaling(app: web.Application) -> None:
        # Before aiohttp waits for handlers: open WebSockets get GO_AWAY and are closed.
        await services.hub.shutdown()

    app.on_shutdown.append(close_signaling)

    async def close_media(app: web.Application) -> None:
        # Before aiohttp waits for handlers: live GetMedia and PutMedia connections end.
        await services.dataplane.shutdown()

    app.on_shutdown.append(close_media)
    return app


def _lifecycle(services: Services) -> Callable[[web.Application], AsyncIterator[None]]:
    async def ctx(app: web.Application) -> AsyncIterator[None]:
        control = services.control
        await services.events.start()
        await control.start()
        services.credentials.add_default(await shared_principal(control.secret))
        await services.fragments.start()
        # In a cluster, one node per interval enforces retention.
        cluster = services.cluster
        duties = cluster.duties if cluster.distributed else None
        retention = RetentionTask(control, services.settings.storage_retention_interval, duties)
        # Before the storage sessions: they allocate on the embedded TURN server.
        await services.ice.start()
        await services.sessions.start()
        control.on_channel_closed(services.joins.channel_closed)
        await services.hub.start()
        control.on_channel_closed(services.hub.channel_closed)
        await retention.start()
        await services.dataplane.start()
        await services.playback.start()
        await services.imagegen.start()
        _readiness_checks(services)
        services.metrics.attach(services)
        ops_events.attach(services.events, services)
        services.health.ready()
        try:
            yield
        finally:
            await services.imagegen.stop()
            await services.playback.stop()
            await services.dataplane.stop()
            await retention.stop()
            await services.hub.stop()
            await services.sessions.stop()
            await services.ice.stop()
            await services.fragments.stop()
            await control.stop()
            await services.events.stop()

    return ctx


def _cluster_lifecycle(services: Services) -> Callable[[web.Application], AsyncIterator[None]]:
    """Joins the cluster before anything else starts (a node without its bus does not start:
    ClusterUnavailable) and leaves it after everything else stopped."""

    async def ctx(app: web.Application) -> AsyncIterator[None]:
        await services.cluster.start()
        try:
            yield
        finally:
            await services.cluster.stop()

    return ctx


def _readiness_checks(services: Services) -> None:
    health = services.health
    health.add_check("store", ops_health.store_check(services.control))
    health.add_check("media", ops_health.media_check(services.control))
    if services.cluster.distributed:
        # The cluster's Redis client is the signaling bus's too: one check for both.
        health.add_check("cluster", services.cluster.reachable)


async def generated_principal(settings: Settings) -> Principal:
    """The generated access key the server serves (``openkvs credentials``): from the data dir
    for the embedded store, from the shared database for PostgreSQL (the same on every node)."""
    store = metadata_store(settings)
    if not store.shared:
        return await asyncio.to_thread(default_principal, settings.data_dir)
    await store.start()
    try:
        return await shared_principal(store.secret)
    finally:
        await store.stop()


def data_paths(settings: Settings) -> dict[str, Path]:
    return {
        "data_dir": settings.data_dir,
        "ca": local_ca(settings.data_dir),
        "credentials": settings.data_dir / "credentials.json",
    }


__all__ = ["build_app", "build_services", "SERVICES_KEY", "REQUEST_ID_KEY"]
