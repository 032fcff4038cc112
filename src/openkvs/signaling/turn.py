"""GetIceServerConfig's ICE server lists, and TURN credentials in coturn's REST-API scheme.

coturn and the server share a secret (``use-auth-secret``). The username is
``<expiry epoch seconds>:<client id>`` and the password is ``base64(HMAC-SHA1(secret, username))``;
coturn recomputes the password and refuses the allocation once the expiry has passed. Nothing is
stored.

Three shapes of list, all pure functions here:

- configured TURN (``turn_uris`` + ``turn_secret``): :func:`ice_server_list`;
- the embedded coturn: :func:`embedded_ice_server_list`, two server sets as AWS returns them
  (each on its own port, with a UDP and a TCP ``turn:`` URI, its own username, the password
  and ``Ttl``);
- no TURN at all: :func:`stun_ice_server_list`, two ``stun:`` entries. Clients such as the KVS
  WebRTC C SDK refuse an empty list (and a missing or short ``Ttl``), and sample apps take entry
  0 or a random one, so the list is never empty.

:func:`advertised_host` picks the host those URIs name.
"""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import hmac
import ipaddress
import re
from collections.abc import Sequence
from typing import Any
from urllib.parse import urlsplit

MIN_TTL = 30
MAX_TTL = 86_400
# The KVS C SDK keeps at most 4 URIs per ICE server (MAX_ICE_CONFIG_URI_COUNT); AWS hands out
# three per server. Longer lists are split into several entries with the same credentials.
URIS_PER_SERVER = 3
# AWS hands out two TURN server sets; sample apps use entry 0, or pick one at random.
SERVER_SETS = 2
# What a STUN-only entry carries as credentials: STUN ignores them, but some clients read the
# fields unconditionally.
STUN_USERNAME = "openkvs"
STUN_PASSWORD = "stun-only"
WILDCARD_HOSTS = frozenset({"", "0.0.0.0", "::", "[::]"})
_HOSTNAME = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9.-]{0,251}[A-Za-z0-9])?")


def turn_credentials(secret: str, client_id: str, expires_at: int) -> tuple[str, str]:
    """Return ``(username, password)`` valid until ``expires_at`` (epoch seconds)."""
    username = f"{expires_at}:{client_id}"
    digest = hmac.new(secret.encode(), username.encode(), hashlib.sha1).digest()
    return username, base64.b64encode(digest).decode()


def ice_server_list(
    *,
    uris: Sequence[str],
    secret: str | None,
    ttl: int,
    client_id: str,
    now: float,
) -> list[dict[str, Any]]:
    """GetIceServerConfig's ``IceServerList`` (wire names: Uris, Username, Password, Ttl).

    Empty when no TURN URI or no shared secret is configured. ``ttl`` is clamped to the model's
    30..86400 seconds.
    """
    if not uris or not secret:
        return []
    ttl = clamp_ttl(ttl)
    username, password = turn_credentials(secret, client_id, int(now) + ttl)
    return [
        {
            "Uris": list(uris[i : i + URIS_PER_SERVER]),
            "Username": username,
            "Password": password,
            "Ttl": ttl,
        }
        for i in range(0, len(uris), URIS_PER_SERVER)
    ]


def clamp_ttl(ttl: int) -> int:
    return max(MIN_TTL, min(MAX_TTL, int(ttl)))


def uri_host(host: str) -> str:
    """``host`` as it appears in a URI (IPv6 literals in brackets)."""
    host = host.strip("[]") if host.startswith("[") else host
    return f"[{host}]" if ":" in host else host


def embedded_ice_server_list(
    *, host: str, port: int, secret: str, ttl: int, client_id: str, now: float
) -> list[dict[str, Any]]:
    """Two TURN server sets for one coturn listening on ``port`` and ``port + 1``: ``turn:``
    over UDP and TCP, credentials per set (the usernames differ in their label, ``<client
    id>.1`` and ``<client id>.2``)."""
    ttl = clamp_ttl(ttl)
    h = uri_host(host)
    out = []
    for n in range(1, SERVER_SETS + 1):
        p = port + n - 1
        uris = [f"turn:{h}:{p}?transport=udp", f"turn:{h}:{p}?transport=tcp"]
        username, password = turn_credentials(secret, f"{client_id}.{n}", int(now) + ttl)
        out.append({"Uris": uris, "Username": username, "Password": password, "Ttl": ttl})
    return out


def stun_ice_server_list(*, host: str, port: int, ttl: int) -> list[dict[str, Any]]:
    """Two STUN-only entries (``stun:host:port``) with placeholder credentials and a ``Ttl``."""
    ttl = clamp_ttl(ttl)
    uri = f"stun:{uri_host(host)}:{port}"
    return [
        {"Uris": [uri], "Username": STUN_USERNAME, "Password": STUN_PASSWORD, "Ttl": ttl}
        for _ in range(SERVER_SETS)
    ]


def request_hostname(host_header: str | None) -> str | None:
    """The host part of a Host header when it is a plain name or an IP literal, else None."""
    if not host_header:
        return None
    if host_header.startswith("["):
        literal, _, _ = host_header[1:].partition("]")
        try:
            return str(ipaddress.IPv6Address(literal))
        except ValueError:
            return None
    name = host_header.rsplit(":", 1)[0] if host_header.count(":") == 1 else host_header
    return name if _HOSTNAME.fullmatch(name) else None


def advertised_host(
    *,
    bind_host: str,
    public_url: str | None,
    request_host: str | None,
    node_address: str | None = None,
) -> str:
    """The host a client is told to reach the embedded TURN (or STUN) server at.

    A TURN allocation lives on one node: with ``node_address`` set (where cameras and viewers
    reach this node for media), that address. Otherwise, the TURN server listening where openkvs
    listens, the client is sent to the address it already reached openkvs at: the ``public_url``
    host when set (openkvs behind a name or a proxy); else the bound ``host`` when it is a
    specific address (the only place the server answers); else, for a wildcard bind (0.0.0.0,
    ::), the host the request itself named (its Host header); else the loopback address. Never a
    wildcard address.
    """
    if node_address:
        return node_address.strip("[]")
    if public_url:
        name = urlsplit(public_url).hostname
        if name:
            return name
    if bind_host not in WILDCARD_HOSTS:
        return bind_host.strip("[]")
    name = request_hostname(request_host)
    if name is not None and name not in WILDCARD_HOSTS:
        return name
    return "127.0.0.1"


@dataclasses.dataclass(frozen=True)
class TurnAccess:
    """A TURN server the storage peer may use: its URIs and the REST-API shared secret."""

    uris: tuple[str, ...]
    secret: str = dataclasses.field(repr=False)  # never in a log line

    def ice_server_list(self, client_id: str, ttl: int, now: float) -> list[dict[str, Any]]:
        return ice_server_list(
            uris=self.uris, secret=self.secret, ttl=ttl, client_id=client_id, now=now
        )


__all__ = [
    "TurnAccess",
    "advertised_host",
    "embedded_ice_server_list",
    "ice_server_list",
    "request_hostname",
    "stun_ice_server_list",
    "turn_credentials",
    "uri_host",
]
