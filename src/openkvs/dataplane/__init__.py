"""The stream data plane: PutMedia ingestion, GetMedia live reads, archived-media listing and
fragment-list reads, all over the shared :class:`~openkvs.control.fragments.FragmentStore`.

``plane.DataPlane`` owns what is long-lived (the one-writer-per-stream registry and the shutdown
signal for open connections); ``putmedia``, ``getmedia`` and ``listing`` hold the per-request work;
``chunks`` and ``acks`` render the wire formats (MKV chunks with AWS_KINESISVIDEO_* tags, JSON
acknowledgements).
"""

from __future__ import annotations

from .plane import DataPlane

__all__ = ["DataPlane"]
