"""The one home of randomness and identifiers: request ids, ARNs, keys, fragment numbers."""

from __future__ import annotations

import secrets
import string
import threading
import uuid

from . import clock

_ALNUM = string.ascii_uppercase + string.digits


def request_id() -> str:
    return str(uuid.uuid4())


def version() -> str:
    """An opaque resource version string (`[a-zA-Z0-9]+`)."""
    return secrets.token_hex(10)


def access_key_id() -> str:
    return "AKIA" + "".join(secrets.choice(_ALNUM) for _ in range(16))


def secret_access_key() -> str:
    alphabet = string.ascii_letters + string.digits + "+/"
    return "".join(secrets.choice(alphabet) for _ in range(40))


def token(nbytes: int = 32) -> str:
    return secrets.token_urlsafe(nbytes)


def random_bytes(n: int) -> bytes:
    return secrets.token_bytes(n)


def channel_arn(region: str, account: str, name: str, created_ms: int) -> str:
    return f"arn:aws:kinesisvideo:{region}:{account}:channel/{name}/{created_ms}"


def stream_arn(region: str, account: str, name: str, created_ms: int) -> str:
    return f"arn:aws:kinesisvideo:{region}:{account}:stream/{name}/{created_ms}"


class FragmentNumbers:
    """Ever-increasing fragment numbers: epoch milliseconds shifted left 16 bits, plus a counter.

    Rendered as decimal strings, they grow numerically and (at a fixed width of 18 digits for
    the next few centuries) lexically too. Thread-safe, and robust to the clock stepping back.
    """

    def __init__(self, floor: int = 0) -> None:
        self._last = floor
        self._lock = threading.Lock()

    def bump(self, floor: int) -> None:
        with self._lock:
            self._last = max(self._last, floor)

    def next(self) -> int:
        with self._lock:
            candidate = clock.now_ms() << 16
            self._last = max(self._last + 1, candidate)
            return self._last
