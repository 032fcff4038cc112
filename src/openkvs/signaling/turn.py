"""Time-limited TURN credentials in coturn's REST-API scheme (``use-auth-secret``).

coturn and the server share a secret. The username is ``<expiry epoch seconds>:<client id>`` and
the password is ``base64(HMAC-SHA1(secret, username))``; coturn recomputes the password and
refuses the allocation once the expiry has passed. Nothing is stored.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
from collections.abc import Sequence
from typing import Any

MIN_TTL = 30
MAX_TTL = 86_400
# The KVS C SDK keeps at most 4 URIs per ICE server (MAX_ICE_CONFIG_URI_COUNT); AWS hands out
# three per server. Longer lists are split into several entries with the same credentials.
URIS_PER_SERVER = 3


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
    ttl = max(MIN_TTL, min(MAX_TTL, int(ttl)))
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


__all__ = ["ice_server_list", "turn_credentials"]
