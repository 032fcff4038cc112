"""Session tokens for HLS/DASH URLs: everything a session needs, signed, expiring.

A token is ``base64url(payload || HMAC-SHA256(key, domain || payload))``. The payload binds the
session to one stream (its id and a digest of its ARN, so a deleted and re-created stream does not
inherit old URLs), the playback mode and selection, the output options and the expiry. The key is
32 random bytes generated once and kept as the shared secret ``playback-token.key`` (by the
embedded store in ``<data-dir>/playback-token.key``, mode 0600), so URLs stay valid across
restarts, and on every node of a cluster, until they expire. Verification is constant-time
(``hmac.compare_digest``) and rejects any altered byte.
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import hashlib
import hmac
import logging
import struct
from pathlib import Path

from .. import ids
from ..privatefile import SecretSource, read_or_create

logger = logging.getLogger(__name__)

KEY_FILE = "playback-token.key"
_DOMAIN = b"openkvs-playback-session-v1\0"
_VERSION = 1
_FORMAT = ">BB9sQ8sBBBBBqqqqQqqH"
_PAYLOAD = struct.calcsize(_FORMAT)
_MAC = 32
MAX_TOKEN_CHARS = 4 * ((_PAYLOAD + _MAC + 2) // 3)

HLS = 1
DASH = 2
MODES = ("LIVE", "LIVE_REPLAY", "ON_DEMAND")
SELECTORS = ("SERVER_TIMESTAMP", "PRODUCER_TIMESTAMP")
CONTAINERS = ("FRAGMENTED_MP4", "MPEG_TS")
DISCONTINUITY = ("ALWAYS", "NEVER", "ON_DISCONTINUITY")


class InvalidToken(ValueError):
    """Not a token this server issued (garbled, forged or altered)."""


class ExpiredToken(ValueError):
    """A genuine token whose session has expired."""


@dataclasses.dataclass(frozen=True)
class Session:
    kind: int  # HLS or DASH
    session_id: bytes
    stream_id: int
    stream_tag: bytes  # first 8 bytes of SHA-256(stream ARN)
    mode: str
    selector: str
    start_ms: int | None  # selection bounds (selector timestamps, inclusive)
    end_ms: int | None
    origin_ms: int  # selector timestamp at media time 0
    anchor_ms: int  # LIVE_REPLAY: newest timestamp listed at creation (pacing)
    ref_number: int  # first fragment of the session when it was created
    created_ms: int
    expires_ms: int
    container: str = "FRAGMENTED_MP4"
    discontinuity: str = "NEVER"
    display_timestamp: bool = False
    display_number: bool = False
    max_results: int = 5

    def __post_init__(self) -> None:
        if self.kind not in (HLS, DASH):
            raise ValueError(f"bad session kind {self.kind}")
        for value, allowed in (
            (self.mode, MODES),
            (self.selector, SELECTORS),
            (self.container, CONTAINERS),
            (self.discontinuity, DISCONTINUITY),
        ):
            if value not in allowed:
                raise ValueError(f"bad session field {value!r}")
        if not 1 <= self.max_results <= 5000:
            raise ValueError("max_results out of range")
        if len(self.session_id) != 9 or len(self.stream_tag) != 8:
            raise ValueError("bad session id or stream tag")

    @property
    def key(self) -> str:
        """A stable identifier for per-session state (never shown to clients)."""
        return self.session_id.hex()


def stream_tag(arn: str) -> bytes:
    return hashlib.sha256(arn.encode()).digest()[:8]


def new_session_id() -> bytes:
    return ids.random_bytes(9)


def new_key_text() -> str:
    return ids.random_bytes(32).hex()


def parse_key(text: str, where: str) -> bytes:
    try:
        key = bytes.fromhex(text.strip())
    except ValueError as exc:
        raise ValueError(f"{where} does not hold a hex key") from exc
    if len(key) < 32:
        raise ValueError(f"{where} holds a key shorter than 32 bytes")
    return key


def load_or_create_key(data_dir: Path) -> bytes:
    """Read the token key from the data dir, creating it (mode 0600) on first use."""
    path = data_dir / KEY_FILE
    return parse_key(read_or_create(path, new_key_text()), str(path))


async def shared_key(secrets: SecretSource) -> bytes:
    """The token key every node shares, created on first use."""
    return parse_key(await secrets(KEY_FILE, new_key_text()), KEY_FILE)


class TokenSigner:
    def __init__(self, key: bytes) -> None:
        if len(key) < 32:
            raise ValueError("token key must be at least 32 bytes")
        self._key = key

    def _mac(self, payload: bytes) -> bytes:
        return hmac.new(self._key, _DOMAIN + payload, hashlib.sha256).digest()

    def digest(self, *parts: str) -> bytes:
        """A keyed digest of ``parts`` (for binding pagination tokens to their request)."""
        return hmac.new(self._key, "\0".join(parts).encode(), hashlib.sha256).digest()

    def issue(self, s: Session) -> str:
        flags = (
            (1 if s.display_timestamp else 0)
            | (2 if s.display_number else 0)
            | (4 if s.start_ms is not None else 0)
            | (8 if s.end_ms is not None else 0)
        )
        payload = struct.pack(
            _FORMAT,
            _VERSION,
            s.kind,
            s.session_id,
            s.stream_id,
            s.stream_tag,
            MODES.index(s.mode),
            SELECTORS.index(s.selector),
            CONTAINERS.index(s.container),
            DISCONTINUITY.index(s.discontinuity),
            flags,
            s.start_ms or 0,
            s.end_ms or 0,
            s.origin_ms,
            s.anchor_ms,
            s.ref_number,
            s.created_ms,
            s.expires_ms,
            s.max_results,
        )
        return base64.urlsafe_b64encode(payload + self._mac(payload)).rstrip(b"=").decode()

    def verify(self, token: str, now_ms: int) -> Session:
        if not token or len(token) > MAX_TOKEN_CHARS:
            raise InvalidToken("malformed session token")
        try:
            raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
        except (binascii.Error, ValueError) as exc:
            raise InvalidToken("malformed session token") from exc
        if len(raw) != _PAYLOAD + _MAC:
            raise InvalidToken("malformed session token")
        payload, mac = raw[:_PAYLOAD], raw[_PAYLOAD:]
        if not hmac.compare_digest(mac, self._mac(payload)):
            raise InvalidToken("session token signature does not match")
        (
            version,
            kind,
            sid,
            stream_id,
            tag,
            mode,
            selector,
            container,
            disc,
            flags,
            start,
            end,
            origin,
            anchor,
            ref,
            created,
            expires,
            max_results,
        ) = struct.unpack(_FORMAT, payload)
        if version != _VERSION:
            raise InvalidToken("unsupported session token version")
        try:
            session = Session(
                kind=kind,
                session_id=sid,
                stream_id=stream_id,
                stream_tag=tag,
                mode=MODES[mode],
                selector=SELECTORS[selector],
                start_ms=start if flags & 4 else None,
                end_ms=end if flags & 8 else None,
                origin_ms=origin,
                anchor_ms=anchor,
                ref_number=ref,
                created_ms=created,
                expires_ms=expires,
                container=CONTAINERS[container],
                discontinuity=DISCONTINUITY[disc],
                display_timestamp=bool(flags & 1),
                display_number=bool(flags & 2),
                max_results=max_results,
            )
        except (IndexError, ValueError) as exc:
            raise InvalidToken("malformed session token") from exc
        if now_ms >= session.expires_ms:
            raise ExpiredToken("the streaming session has expired")
        return session
