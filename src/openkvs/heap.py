"""Garbage-collector settings for long-running openkvs processes.

The cyclic collector's full (generation 2) passes walk every tracked object. A server holds
hundreds of thousands of them that never die: botocore's service models, aiortc, PyAV and numpy
modules, the app's routes. Walking them made a full pass take 40-70 ms, stalling the event loop
(and with it signaling, offers and media) at random moments. Once start-up is done, those
objects are moved out of the collector's sight with :func:`gc.freeze`, so a full pass only walks
what was made since — sessions, peers, requests.
"""

from __future__ import annotations

import gc


def settle() -> None:
    """Call once a process has finished starting: collect, then freeze what survived."""
    gc.collect()
    gc.freeze()
