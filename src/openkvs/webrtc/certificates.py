"""The storage peer's DTLS certificate: one per process, replaced every ``lifetime`` seconds.

aiortc would generate a key and a self-signed certificate for every peer connection and hash it
for every offer; a burst of JoinStorageSession calls pays that once per session. Sessions share
the current certificate instead (as browsers share theirs across connections). What must stay
per session still is: every DTLS handshake is an ECDHE exchange, so each session's SRTP keys are
its own, and its ICE credentials are random per connection. A session keeps the certificate it
started with; new sessions get a new one once the current one is ``lifetime`` old (a day by
default; aiortc's certificates are valid for 30 days).
"""

from __future__ import annotations

from aiortc import RTCCertificate, RTCDtlsFingerprint

from .. import clock

LIFETIME = 86_400.0


class SharedCertificate(RTCCertificate):
    """An RTCCertificate whose fingerprints are computed once."""

    _fingerprints: list[RTCDtlsFingerprint] | None = None

    def getFingerprints(self) -> list[RTCDtlsFingerprint]:  # noqa: N802 - aiortc's name
        if self._fingerprints is None:
            self._fingerprints = super().getFingerprints()
        return [RTCDtlsFingerprint(f.algorithm, f.value) for f in self._fingerprints]


class CertificateRotation:
    """Hands out the current certificate, generating a new one when it is ``lifetime`` old."""

    def __init__(self, lifetime: float = LIFETIME) -> None:
        if lifetime <= 0:
            raise ValueError("the certificate lifetime must be positive")
        self.lifetime = lifetime
        self.generated = 0  # certificates generated so far
        self._current: SharedCertificate | None = None
        self._born = 0.0

    def current(self) -> SharedCertificate:
        now = clock.monotonic()
        if self._current is None or not 0 <= now - self._born < self.lifetime:
            self._current = SharedCertificate.generateCertificate()
            self._born = now
            self.generated += 1
        return self._current
