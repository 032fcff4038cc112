"""Prometheus metrics (``GET /metrics``, the Prometheus text format).

Request, fragment, upload and event counters are counted where they happen. What storage sessions
count (frames, bytes, NACK recoveries) is taken at scrape time from the stats their manager
already keeps, in this process or in the storage workers, plus the final stats of every session
that ended; those totals never go backwards. Labels are bounded: operations, roles, reasons,
kinds and pools are fixed sets, and channel names appear only with ``metrics_channel_labels``.
"""

from __future__ import annotations

import hmac
import inspect
import logging
import re
from collections import defaultdict
from collections.abc import Iterable, Iterator
from concurrent.futures import Executor
from typing import Any

from aiohttp import web
from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest
from prometheus_client.process_collector import ProcessCollector
from prometheus_client.registry import Collector

from .. import clock
from ..records import Fragment

logger = logging.getLogger(__name__)

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
DURABILITY_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 5.0, 10.0)

# What a storage session's end reason says, in a bounded set of words (first match wins).
END_REASONS: tuple[tuple[str, str], ...] = (
    ("replaced", "replaced"),
    ("signaling connection closed", "signaling_closed"),
    ("no media", "no_media"),
    ("maximum session duration", "max_duration"),
    ("did not connect", "connect_timeout"),
    ("peer connection closed", "peer_closed"),
    ("peer connection", "peer_failed"),
    ("offer failed", "offer_failed"),
    ("unusable answer", "answer_refused"),
    ("channel deleted", "channel_closed"),
    ("shutting down", "shutdown"),
)

# Operations that read recordings, by kind.
PLAYBACK_KINDS = {
    "HLS": "hls",
    "DASH": "dash",
    "GetHLSStreamingSessionURL": "hls_session",
    "GetDASHStreamingSessionURL": "dash_session",
    "GetClip": "clip",
    "GetImages": "images",
    "GetMedia": "media",
    "GetMediaForFragmentList": "media",
    "ListFragments": "list",
}

# Session stats fields summed into counters.
_SESSION_COUNTERS = {
    "frames_received": ("video_frames",),
    "frames_lost": ("frames_lost",),
    "frames_recovered": ("frames_recovered",),
    "nacks_sent": ("nacks_sent",),
    "rtx_packets_received": ("rtx_packets",),
    "plis_sent": ("plis_sent",),
    "webrtc_bytes": ("video_bytes",),
}


def end_reason(reason: str | None) -> str:
    text = (reason or "").lower()
    for needle, word in END_REASONS:
        if needle in text:
            return word
    return "other"


def session_role(stats: dict[str, Any]) -> str:
    """A session's role as published: master, or viewer."""
    return "master" if stats.get("role") == "master" else "viewer"


def _queue_depth(pool: Executor | None) -> int:
    queue = getattr(pool, "_work_queue", None)
    return int(queue.qsize()) if queue is not None else 0


class _SessionTotals:
    """Counter values of storage-session stats: ended sessions' finals + live sessions' current,
    kept from going backwards when a session moves from one side to the other."""

    def __init__(self) -> None:
        self.ended: dict[tuple[str, str], float] = defaultdict(float)  # (name, channel) -> sum
        self.shown: dict[tuple[str, str], float] = defaultdict(float)

    def add_ended(self, stats: dict[str, Any], channel: str) -> None:
        for name, fields in _SESSION_COUNTERS.items():
            self.ended[(name, channel)] += _sum(stats, fields)

    def totals(self, live: Iterable[tuple[dict[str, Any], str]]) -> dict[tuple[str, str], float]:
        now: dict[tuple[str, str], float] = defaultdict(float, self.ended)
        for stats, channel in live:
            for name, fields in _SESSION_COUNTERS.items():
                now[(name, channel)] += _sum(stats, fields)
        for key, value in now.items():
            self.shown[key] = max(self.shown[key], value)
        return dict(self.shown)


def _sum(stats: dict[str, Any], fields: tuple[str, ...]) -> float:
    total = 0.0
    for field in fields:
        value = stats.get(field)
        if isinstance(value, int | float) and not isinstance(value, bool):
            total += value
    return total


class Metrics:
    """The server's metrics; ``render()`` is what ``GET /metrics`` answers."""

    def __init__(self, *, channel_labels: bool = False) -> None:
        self.channel_labels = channel_labels
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.api_requests = Counter(
            "openkvs_api_requests",
            "API requests by operation and HTTP status.",
            ["operation", "status"],
            registry=r,
        )
        self.api_latency = Histogram(
            "openkvs_api_request_duration_seconds",
            "API request latency (a streaming request lasts until its body and answer end).",
            ["operation"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.sessions_ended = Counter(
            "openkvs_storage_sessions_ended",
            "Storage sessions that ended, by role and reason.",
            ["role", "reason"],
            registry=r,
        )
        self.fragments = Counter(
            "openkvs_fragments_persisted", "Fragments made durable and visible.", registry=r
        )
        self.durability = Histogram(
            "openkvs_fragment_durability_seconds",
            "From a fragment's last media time (server clock) to its being durable and listed.",
            buckets=DURABILITY_BUCKETS,
            registry=r,
        )
        self.playback = Counter(
            "openkvs_playback_requests",
            "Requests that read recordings, by kind.",
            ["kind"],
            registry=r,
        )
        self.events_sent = Counter(
            "openkvs_webhook_events_delivered",
            "Webhook events a receiver accepted (2xx).",
            registry=r,
        )
        self.events_dropped = Counter(
            "openkvs_webhook_events_dropped",
            "Webhook events dropped: the queue was full, or every retry failed.",
            ["cause"],
            registry=r,
        )
        ProcessCollector(registry=r)  # process_cpu_seconds_total, process_resident_memory_bytes
        self._totals = _SessionTotals()
        self._live: list[dict[str, Any]] = []
        self._services: Any = None
        r.register(_ScrapeCollector(self))

    def attach(self, services: Any) -> None:
        """Where scrape-time values come from (the services of the running app)."""
        self._services = services
        services.fragments.on_commit.append(self.fragment_committed)
        sessions = services.sessions
        if hasattr(sessions, "on_session_end"):
            sessions.on_session_end = chain_hooks(sessions.on_session_end, self.session_ended)

    # -- events --------------------------------------------------------------------------------

    def request(self, operation: str, status: int, seconds: float) -> None:
        self.api_requests.labels(operation, str(status)).inc()
        self.api_latency.labels(operation).observe(seconds)
        kind = PLAYBACK_KINDS.get(operation)
        if kind is not None:
            self.playback.labels(kind).inc()

    def fragment_committed(self, fragment: Fragment) -> None:
        self.fragments.inc()
        end_ms = fragment.server_ts + fragment.duration_ms
        self.durability.observe(max(0.0, (clock.now_ms() - end_ms) / 1000))

    def session_ended(self, stats: dict[str, Any]) -> None:
        self.sessions_ended.labels(session_role(stats), end_reason(stats.get("end_reason"))).inc()
        self._totals.add_ended(stats, self._channel(stats))

    def _channel(self, stats: dict[str, Any]) -> str:
        return str(stats.get("channel", "")) if self.channel_labels else ""

    # -- scraping ------------------------------------------------------------------------------

    async def render(self) -> bytes:
        """Refresh the storage-session snapshot (workers answer over their links), then render."""
        live: list[dict[str, Any]] = []
        sessions = self._services.sessions if self._services is not None else None
        stats = getattr(sessions, "stats", None)
        if stats is not None:
            try:
                result = stats()
                live = list(await result if inspect.isawaitable(result) else result)
            except Exception as exc:  # noqa: BLE001 - a scrape never fails for a worker's sake
                logger.warning("storage session stats unavailable: %s", exc)
        self._live = live
        return generate_latest(self.registry)

    def _scrape(self) -> Iterator[Metric]:
        labels = ["channel"] if self.channel_labels else []
        active = GaugeMetricFamily(
            "openkvs_storage_sessions_active",
            "Storage sessions running, by role.",
            labels=["role", *labels],
        )
        viewers = GaugeMetricFamily(
            "openkvs_storage_viewers_connected",
            "Viewer storage sessions whose peer connection is up.",
            labels=labels,
        )
        counts: dict[tuple[str, ...], int] = defaultdict(int)
        connected: dict[tuple[str, ...], int] = defaultdict(int)
        for stats in self._live:
            key: tuple[str, ...] = (self._channel(stats),) if self.channel_labels else ()
            counts[(session_role(stats), *key)] += 1
            if session_role(stats) == "viewer" and stats.get("state") == "connected":
                connected[key] += 1
        for role in ("master", "viewer"):
            if not self.channel_labels:
                counts.setdefault((role,), 0)
        if not self.channel_labels:
            connected.setdefault((), 0)
        for key, n in sorted(counts.items()):
            active.add_metric(list(key), n)
        for key, n in sorted(connected.items()):
            viewers.add_metric(list(key), n)
        yield active
        yield viewers

        totals = self._totals.totals((s, self._channel(s)) for s in self._live)
        described = {
            "frames_received": "Video frames received by storage sessions (complete frames).",
            "frames_lost": "Video frames storage sessions lost (never completed, or dropped).",
            "frames_recovered": "Video frames completed by a late packet (NACK retransmission).",
            "nacks_sent": "RTCP NACKs storage sessions sent for missing video packets.",
            "rtx_packets_received": "Video retransmissions (RTX) storage sessions received.",
            "plis_sent": "RTCP PLIs (keyframe requests) storage sessions sent.",
        }
        for name, text in described.items():
            family = CounterMetricFamily(f"openkvs_{name}", text, labels=labels)
            values = {ch: v for (n, ch), v in totals.items() if n == name} or {"": 0.0}
            for channel, value in sorted(values.items()):
                family.add_metric([channel] if self.channel_labels else [], value)
            yield family
        ingested = CounterMetricFamily(
            "openkvs_ingested_bytes",
            "Media bytes ingested, by source (WebRTC: the video frames storage sessions "
            "received; PutMedia: request bodies).",
            labels=["source", *labels],
        )
        webrtc = {ch: v for (n, ch), v in totals.items() if n == "webrtc_bytes"} or {"": 0.0}
        for channel, value in sorted(webrtc.items()):
            ingested.add_metric(["webrtc", *([channel] if self.channel_labels else [])], value)
        services = self._services
        putmedia = int(getattr(services.dataplane, "ingested_bytes", 0)) if services else 0
        ingested.add_metric(["putmedia", *([""] if self.channel_labels else [])], putmedia)
        yield ingested

        signaling = GaugeMetricFamily(
            "openkvs_signaling_connections", "Open signaling WebSockets, by role.", labels=["role"]
        )
        roles = {"master": 0, "viewer": 0}
        pools = GaugeMetricFamily(
            "openkvs_pool_queue_depth", "Jobs waiting for a thread, by pool.", labels=["pool"]
        )
        decoded = 0
        if services is not None:
            for peer in services.hub.bus.peers():
                roles["master" if peer.client_id is None else "viewer"] += 1
            decoded = int(getattr(services.playback, "images_decoded", 0))
            for name, pool in _pools(services):
                pools.add_metric([name], _queue_depth(pool))
        for role, n in roles.items():
            signaling.add_metric([role], n)
        yield signaling
        images = CounterMetricFamily(
            "openkvs_getimages_decoded_images", "Images GetImages decoded and encoded (not cached)."
        )
        images.add_metric([], decoded)
        yield images
        yield pools


def _pools(services: Any) -> list[tuple[str, Executor | None]]:
    out: list[tuple[str, Executor | None]] = [
        ("playback", getattr(services.playback, "_pool", None)),
        *services.control.storage_pools(),
    ]
    media = getattr(services.sessions, "_pool", None)
    if media is not None:
        out.append(("media", media))
    return out


class _ScrapeCollector(Collector):
    def __init__(self, metrics: Metrics) -> None:
        self._metrics = metrics

    def collect(self) -> Iterable[Metric]:
        return list(self._metrics._scrape())

    def describe(self) -> Iterable[Metric]:
        return []


def chain_hooks(first: Any, second: Any) -> Any:
    if first is None:
        return second

    def both(stats: dict[str, Any]) -> None:
        first(stats)
        second(stats)

    return both


# -- the endpoint --------------------------------------------------------------------------------

_BEARER = re.compile(r"Bearer\s+(\S+)\Z", re.I)


def metrics_handler(metrics: Metrics, listen: str, token: str | None) -> Any:
    """GET /metrics on the port(s) ``listen`` names (http, tls, both), optionally with a token."""

    async def handle(request: web.Request) -> web.Response:
        port = "tls" if request.secure else "http"
        if listen not in (port, "both"):
            raise web.HTTPNotFound(text=f"No metrics are served on the {port} port.")
        if token is not None:
            match = _BEARER.match(request.headers.get("Authorization", ""))
            given = match.group(1) if match else ""
            if not hmac.compare_digest(given.encode(), token.encode()):
                raise web.HTTPUnauthorized(
                    text="Metrics need the header Authorization: Bearer <metrics_token>.",
                    headers={"WWW-Authenticate": "Bearer"},
                )
        body = await metrics.render()
        response = web.Response(body=body)
        response.content_type = CONTENT_TYPE_LATEST.split(";")[0]
        response.charset = "utf-8"
        return response

    return handle
