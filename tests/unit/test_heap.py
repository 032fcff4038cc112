from __future__ import annotations

import gc

from openkvs import heap


def test_settle_freezes_what_survived_start_up() -> None:
    survivor = [object() for _ in range(100)]
    try:
        heap.settle()
        assert gc.get_freeze_count() >= len(survivor)
        assert gc.isenabled()  # later garbage is still collected
    finally:
        gc.unfreeze()
