"""The app-wide objects that request handlers reach, built once by ``app.py``."""

from __future__ import annotations

import dataclasses
from typing import Any

from .auth.credentials import CredentialStore
from .config import Settings
from .control.fragments import FragmentStore
from .control.ratelimit import RateLimiter
from .control.resources import ControlPlane
from .control.sessions import StorageSessions


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
    # Filled in by the subsystems that exist: the signaling hub, the fragment store, playback.
    extras: dict[str, Any] = dataclasses.field(default_factory=dict)
