"""Which storage session's offer does an answer (or candidate) belong to?

A participant answers whatever offer it received, and an offer sent just before its session was
replaced (a camera that calls JoinStorageSession again) can still be answered. Nothing in an SDP
answer names the offer it answers except the media identifiers (``a=mid``), which JSEP answerers
copy from the offer. So each session sends its offer with its own tag on every mid
(``<tag>-<mid>``, also in ``a=group:BUNDLE`` and in the ``sdpMid`` of its ICE candidates) and
takes the tag off what comes back. An answer or candidate that carries another session's tag is
for an offer that is no longer live. Answerers that number their mids themselves (the KVS C SDK
answers with ``0``, ``1``... whatever the offer said) send untagged mids, which are taken as is.

The peer connection itself keeps the untagged mids, so the offer does not offer the RTP mid
header extension (``sdes:mid``): packets carrying the tagged mid would not be routed, on either
side. Media is then told apart by SSRC and payload type, as before that extension existed.

Plain functions over SDP text.
"""

from __future__ import annotations

from collections.abc import Callable

TAG_SEPARATOR = "-"
_MID = "a=mid:"
_BUNDLE = "a=group:BUNDLE"
MID_EXTENSION = "urn:ietf:params:rtp-hdrext:sdes:mid"


class ForeignTag(ValueError):
    """The SDP or candidate answers the offer of another (replaced or ended) session."""


def session_tag(number: int) -> str:
    """A short tag for a session number: ``s`` and the number in base 36 (mids stay short)."""
    digits = "0123456789abcdefghijklmnopqrstuvwxyz"
    n, out = max(0, number), ""
    while True:
        n, r = divmod(n, 36)
        out = digits[r] + out
        if n == 0:
            return "s" + out


def tag_mid(mid: str, tag: str) -> str:
    return f"{tag}{TAG_SEPARATOR}{mid}"


def untag_mid(mid: str, tag: str) -> str:
    """The session's own mid without its tag; an untagged mid as is; ForeignTag for another's."""
    head, sep, rest = mid.partition(TAG_SEPARATOR)
    if not sep or not head.startswith("s") or not head[1:].isalnum():
        return mid
    if head != tag:
        raise ForeignTag(mid)
    return rest


def _map_lines(sdp: str, fn: Callable[[str], str], *, drop_mid_extension: bool = False) -> str:
    newline = "\r\n" if "\r\n" in sdp else "\n"
    lines = sdp.split(newline)
    out = []
    for line in lines:
        if drop_mid_extension and line.startswith("a=extmap:") and MID_EXTENSION in line:
            continue
        if line.startswith(_MID):
            line = _MID + fn(line[len(_MID) :].strip())
        elif line.startswith(_BUNDLE):
            items = line[len(_BUNDLE) :].split()
            line = " ".join([_BUNDLE, *(fn(item) for item in items)])
        out.append(line)
    return newline.join(out)


def tag_sdp(sdp: str, tag: str) -> str:
    """The offer with every mid (``a=mid`` and the BUNDLE group) tagged, and without the mid
    header extension."""
    return _map_lines(sdp, lambda mid: tag_mid(mid, tag), drop_mid_extension=True)


def untag_sdp(sdp: str, tag: str) -> str:
    """The answer with this session's tag taken off its mids; ForeignTag if any mid carries
    another session's tag."""
    return _map_lines(sdp, lambda mid: untag_mid(mid, tag))
