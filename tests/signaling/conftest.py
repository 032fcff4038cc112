from __future__ import annotations

import time

import pytest

from openkvs import clock


class FakeMonotonic:
    """openkvs.clock.monotonic, moved by hand: ``advance`` jumps, ``freeze`` stops it."""

    def __init__(self) -> None:
        self.offset = 0.0
        self.frozen_at: float | None = None

    def __call__(self) -> float:
        base = self.frozen_at if self.frozen_at is not None else time.monotonic()
        return base + self.offset

    def advance(self, seconds: float) -> None:
        self.offset += seconds

    def freeze(self) -> None:
        self.frozen_at = time.monotonic()

    def thaw(self) -> None:
        if self.frozen_at is not None:
            self.offset -= time.monotonic() - self.frozen_at
        self.frozen_at = None


@pytest.fixture
def monotonic(monkeypatch: pytest.MonkeyPatch) -> FakeMonotonic:
    fake = FakeMonotonic()
    monkeypatch.setattr(clock, "monotonic", fake)
    return fake
