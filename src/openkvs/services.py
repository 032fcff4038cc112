"""The app-wide objects that request handlers reach, built once by ``app.py``."""

from __future__ import annotations

import dataclasses
from typing import Any

from .auth.credentials import CredentialStore
from .cluster.base import Cluster
from .cluster.factory import open_cluster
from .config import Settings
from .control.fragments import FragmentStore
from .control.ratelimit import RateLimiter
from .control.resources import ControlPlane
from .control.sessions import StorageSessions
from .dataplane import DataPlane
from .ops.events import Events
from .ops.health import Health
from .ops.metrics import Metrics
from .playback.imagegen import ImageGenerator
from .playback.service import PlaybackService
from .signaling.cluster import JoinRouter, make_bus
from .signaling.hub import SignalingHub
from .signaling.ice import IceServers


@dataclasses.dataclass
class Services:
    settings: Settings
    control: ControlPlane
    credentials: CredentialStore
    sessions: StorageSessions
    fragments: FragmentStore
    account_limiter: RateLimiter
    resource_limiter: RateLimiter
    join_limiter: RateLimiter
    # This node's cluster coordination (from ``bus_url`` when not given; not started).
    cluster: Cluster = dataclasses.field(default=None)  # type: ignore[assignment]
    # The signaling hub; built from settings and control when not given.
    hub: SignalingHub = dataclasses.field(default=None)  # type: ignore[assignment]
    # PutMedia/GetMedia state (writer slots, shutdown signal); built when not given.
    dataplane: DataPlane = dataclasses.field(default=None)  # type: ignore[assignment]
    # HLS/DASH sessions, GetClip and GetImages; built when not given.
    playback: PlaybackService = dataclasses.field(default=None)  # type: ignore[assignment]
    # Starting / ready / draining, and the readiness checks.
    health: Health = dataclasses.field(default_factory=Health)
    # Prometheus metrics; built from settings when not given.
    metrics: Metrics = dataclasses.field(default=None)  # type: ignore[assignment]
    # Webhook events (``events.publish(type, **fields)``); built from settings when not given.
    events: Events = dataclasses.field(default=None)  # type: ignore[assignment]
    # ICE servers for GetIceServerConfig and the storage peer (runs coturn); built when not given.
    ice: IceServers = dataclasses.field(default=None)  # type: ignore[assignment]
    # Runs storage-session joins on the node that runs the channel's sessions; built when not
    # given.
    joins: JoinRouter = dataclasses.field(default=None)  # type: ignore[assignment]
    # Images of fragments whose producer asked for them (IMAGE_GENERATION events); built when
    # not given.
    imagegen: ImageGenerator = dataclasses.field(default=None)  # type: ignore[assignment]
    # Filled in by the subsystems that exist: the signaling hub, the fragment store, playback.
    extras: dict[str, Any] = dataclasses.field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.cluster is None:
            self.cluster = open_cluster(self.settings)
        if self.hub is None:
            bus = make_bus(self.cluster)
            self.hub = SignalingHub(self.settings, self.control, bus, self.cluster.sessions)
        if self.joins is None:
            self.joins = JoinRouter(
                self.hub.bus, self.hub.registry, self.control, lambda: self.sessions
            )
        if self.dataplane is None:
            leases = self.cluster.leases if self.cluster.distributed else None
            self.dataplane = DataPlane(self.settings, self.control, self.fragments, leases)
        if self.metrics is None:
            self.metrics = Metrics(channel_labels=self.settings.metrics_channel_labels)
        if self.events is None:
            s = self.settings
            dropped = self.metrics.events_dropped
            self.events = Events(
                s.webhook_urls,
                s.webhook_secret,
                s.webhook_events,
                queue_size=s.webhook_queue,
                max_attempts=s.webhook_max_attempts,
                on_delivered=self.metrics.events_sent.inc,
                on_dropped=lambda cause: dropped.labels(cause).inc(),
            )
        if self.ice is None:
            self.ice = IceServers(self.settings, self.control.secret)
        if self.playback is None:
            self.playback = PlaybackService(
                self.settings, self.control, self.fragments, live=self.dataplane.live
            )
        if self.imagegen is None:
            self.imagegen = ImageGenerator(
                self.settings.data_dir, self.control, self.playback, self.dataplane.events
            )
