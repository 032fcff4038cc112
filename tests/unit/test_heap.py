from __future__ import annotations

import gc

from openkvs import heap


def test_settle_freezes_what_survived_start_up() -> None:
    gc.unfreeze()  # whatever an earlier test froze
    assert gc.get_freeze_count() == 0
    survivor = [object() for _ in range(100)]
    try:
        heap.settle()
        assert gc.get_freeze_count() >= len(survivor)
        # The survivors sit in the permanent generation now, out of the collector's sight.
        assert not any(o is survivor for o in gc.get_objects())
        assert gc.isenabled()  # later garbage is still collected
    finally:
        gc.unfreeze()
