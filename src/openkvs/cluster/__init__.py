"""Cluster coordination: what the nodes of one deployment agree on through the bus.

* fragment notifications (:class:`FragmentNotifier`): a fragment committed on one node wakes
  the live readers of its stream on every node;
* leases (:class:`Leases`): one PutMedia writer per stream, expiring with a dead node;
* duties (:class:`DutyLock`): background work (retention, orphan sweeps) one node at a time;
* storage sessions (:class:`SessionRegistry`): the node that runs a channel's storage sessions;
  a dead node's claim is taken over by the next join;
* nodes (:class:`NodeRegistry`): heartbeats that tell a live node from a dead one.

``bus_url = "local:"`` (the default) keeps all of it in this process; ``redis://...`` shares it
between nodes (see ``factory.py``).
"""

from __future__ import annotations

from .base import (
    Cluster,
    ClusterUnavailable,
    DutyLock,
    FragmentNotifier,
    Lease,
    Leases,
    NodeInfo,
    NodeRegistry,
    SessionRegistry,
)
from .local import LocalCluster, LocalHub, LocalNotifier

__all__ = [
    "Cluster",
    "ClusterUnavailable",
    "DutyLock",
    "FragmentNotifier",
    "Lease",
    "Leases",
    "LocalCluster",
    "LocalHub",
    "LocalNotifier",
    "NodeInfo",
    "NodeRegistry",
    "SessionRegistry",
]
