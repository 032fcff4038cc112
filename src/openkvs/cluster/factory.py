"""The one place that chooses the cluster coordination, from ``bus_url``.

``local:`` (the default) keeps everything in this process. ``redis://[user:password@]host[:port]
[/db][?prefix=<key prefix>]`` (or ``rediss://`` for TLS) coordinates with the other nodes that
name the same Redis and prefix (default prefix ``openkvs``). The Redis client library is imported
only for a Redis bus.
"""

from __future__ import annotations

import dataclasses
import re
import urllib.parse

from .. import clock
from ..config import ConfigError, Settings
from .base import NODE_TTL, Cluster, NodeInfo, new_node_id
from .local import LocalCluster

DEFAULT_PREFIX = "openkvs"
_PREFIX = re.compile(r"[A-Za-z0-9_.-]{1,64}")


@dataclasses.dataclass(frozen=True)
class BusUrl:
    kind: str  # "local" or "redis"
    url: str = ""  # the Redis URL without the prefix parameter
    prefix: str = DEFAULT_PREFIX
    display: str = "local:"  # the URL without its password, for messages


def parse_bus_url(url: str) -> BusUrl:
    """ConfigError for anything but ``local:`` or a Redis URL."""
    text = url.strip()
    if text in ("local:", "local"):
        return BusUrl("local")
    parts = urllib.parse.urlsplit(text)
    if parts.scheme not in ("redis", "rediss") or not parts.hostname:
        raise ConfigError(
            "bus_url must be local: or redis://host[:port][/db][?prefix=<key prefix>], "
            f"got {_redacted(parts)!r}"
        )
    try:
        parts.port  # noqa: B018 - raises on a port out of range or not a number
    except ValueError as exc:
        raise ConfigError(f"bus_url has an invalid port: {_redacted(parts)!r}") from exc
    query = urllib.parse.parse_qsl(parts.query, keep_blank_values=True)
    prefixes = [v for k, v in query if k == "prefix"]
    if len(prefixes) > 1:
        raise ConfigError("bus_url names prefix more than once")
    prefix = prefixes[0] if prefixes else DEFAULT_PREFIX
    if not _PREFIX.fullmatch(prefix):
        raise ConfigError("bus_url prefix must be 1 to 64 of A-Z a-z 0-9 _ . -")
    rest = urllib.parse.urlencode([(k, v) for k, v in query if k != "prefix"])
    redis_url = urllib.parse.urlunsplit(parts._replace(query=rest))
    return BusUrl("redis", redis_url, prefix, _redacted(parts._replace(query=rest)))


def _redacted(parts: urllib.parse.SplitResult) -> str:
    netloc = parts.netloc.rpartition("@")[2]
    return urllib.parse.urlunsplit(parts._replace(netloc=netloc))[:200]


def node_info(settings: Settings, node_id: str | None = None) -> NodeInfo:
    """This process's identity: a random id per start, and where it is reached."""
    return NodeInfo(
        node_id=node_id or new_node_id(),
        address=settings.node_address,
        port=settings.port,
        started=clock.now(),
    )


def open_cluster(settings: Settings, *, node_ttl: float = NODE_TTL) -> Cluster:
    """The coordination that ``bus_url`` names (not started: ``start`` connects)."""
    bus = parse_bus_url(settings.bus_url)
    node = node_info(settings)
    if bus.kind == "local":
        return LocalCluster(node, node_ttl=node_ttl)
    from .redisbus import RedisCluster

    return RedisCluster(bus.url, bus.prefix, node, display_url=bus.display, node_ttl=node_ttl)
