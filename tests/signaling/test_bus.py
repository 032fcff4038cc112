"""LocalBus on its own: presence, replacement, and the bounds on what it keeps."""

from __future__ import annotations

import pytest

from openkvs.errors import ClientLimitExceededException
from openkvs.signaling.bus import Delivery, LocalBus

from .conftest import FakeMonotonic

ARN = "arn:aws:kinesisvideo:us-east-1:000000000000:channel/c/1"


class ListPeer:
    """A Peer that keeps what it is given, up to ``room`` events."""

    def __init__(self, client_id: str | None, room: int = 1000) -> None:
        self.channel_arn = ARN
        self.client_id = client_id
        self.connection_id = f"conn-{client_id}"
        self.room = room
        self.got: list[str] = []

    def deliver(self, text: str) -> bool:
        if len(self.got) >= self.room:
            return False
        self.got.append(text)
        return True

    def go_away(self, grace: float | None = None) -> None:
        return None

    def close(self) -> None:
        return None


async def test_presence_and_replacement() -> None:
    bus = LocalBus()
    first, second, viewer = ListPeer(None), ListPeer(None), ListPeer("v")
    assert bus.attach(first) is None
    assert bus.attach(viewer) is None
    assert bus.attach(second) is first
    assert bus.current((ARN, None)) is second and bus.viewer_count(ARN) == 1
    assert not bus.detach(first)  # no longer current: nothing to forget
    assert bus.detach(second) and bus.current((ARN, None)) is None
    assert await bus.deliver((ARN, "v"), "x", ttl=5, origin="m", is_offer=False) is (
        Delivery.DELIVERED
    )
    assert viewer.got == ["x"]


async def test_bounds(monotonic: FakeMonotonic) -> None:
    bus = LocalBus(max_per_participant=3, max_bytes=10)
    for text in ("a", "b", "c", "d"):
        assert await bus.deliver((ARN, None), text, ttl=5, origin="v", is_offer=False) is (
            Delivery.BUFFERED
        )
    assert bus.pending_count((ARN, None)) == 3 and bus.pending_bytes == 3  # "a" went first
    with pytest.raises(ClientLimitExceededException):
        await bus.deliver((ARN, "w"), "x" * 8, ttl=5, origin="m", is_offer=False)
    assert await bus.deliver((ARN, "w"), "y", ttl=0, origin="m", is_offer=False) is (
        Delivery.DROPPED
    )
    monotonic.advance(6)
    bus.prune()
    assert bus.pending_bytes == 0 and bus.pending_count((ARN, None)) == 0
    # A peer that cannot take more leaves the rest of its messages for its next connection.
    full = ListPeer(None, room=0)
    bus.attach(full)
    assert await bus.deliver((ARN, None), "z", ttl=5, origin="v", is_offer=False) is (
        Delivery.BUFFERED
    )
    bus.detach(full)
    fresh = ListPeer(None)
    bus.attach(fresh)
    assert bus.flush(fresh) == 1 and fresh.got == ["z"] and bus.pending_bytes == 0
