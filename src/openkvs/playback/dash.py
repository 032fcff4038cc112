"""The DASH manifest as a pure function of a session and its current view.

One AdaptationSet per track, each with a ``SegmentTemplate`` and an explicit ``SegmentTimeline``
in milliseconds of the session timeline. Media URLs address a segment by its start time
(``$Time$``), which names exactly one fragment of the session, so no per-session state is needed
to serve them::

    getMP4MediaFragment.mp4?SessionToken=...&TrackNumber=1&Time=$Time$

``DisplayFragmentNumber``/``DisplayFragmentTimestamp`` add ``kvs:fn`` (fragment number) and
``kvs:ts`` (fragment timestamp, epoch milliseconds) to each ``S`` element.
"""

from __future__ import annotations

from xml.sax.saxutils import quoteattr

from .fmp4 import TrackSpec
from .hls import iso_ms
from .timeline import LEAD_MS, View
from .tokens import Session

MANIFEST = "getDASHManifest.mpd"
INIT = "getMP4InitFragment.mp4"
FRAGMENT = "getMP4MediaFragment.mp4"
KVS_NS = "https://kinesisvideo.amazonaws.com/ns/dash"


def _duration(ms: int) -> str:
    return f"PT{max(0, ms) / 1000:.3f}S"


def _timeline(session: Session, view: View) -> str:
    parts = ["<SegmentTimeline>"]
    for e in view.entries:
        extra = ""
        if session.display_number:
            extra += f' kvs:fn="{e.fragment.number}"'
        if session.display_timestamp:
            extra += f' kvs:ts="{e.ts_ms}"'
        parts.append(f'<S t="{e.start_ms}" d="{e.duration_ms}"{extra}/>')
    parts.append("</SegmentTimeline>")
    return "".join(parts)


def manifest(
    session: Session,
    token: str,
    view: View,
    tracks: list[tuple[TrackSpec, int]],
    *,
    now_ms: int,
    availability_start_ms: int,
) -> str:
    """``tracks`` are (spec, bandwidth in bit/s) pairs."""
    dynamic = session.mode != "ON_DEMAND"
    end_ms = view.entries[-1].start_ms + view.entries[-1].duration_ms if view.entries else 0
    # On demand, presentation time 0 is the first fragment; live, it is availabilityStartTime.
    offset = 0 if dynamic else LEAD_MS
    attrs = [
        'xmlns="urn:mpeg:dash:schema:mpd:2011"',
        f'xmlns:kvs="{KVS_NS}"',
        'profiles="urn:mpeg:dash:profile:isoff-live:2011"',
        'minBufferTime="PT2S"',
    ]
    if dynamic:
        window = sum(e.duration_ms for e in view.entries)
        attrs += [
            'type="dynamic"',
            f'availabilityStartTime="{iso_ms(availability_start_ms)}"',
            f'publishTime="{iso_ms(now_ms)}"',
            f'timeShiftBufferDepth="{_duration(window + 2000)}"',
            f'suggestedPresentationDelay="{_duration(3 * window // max(1, len(view.entries)))}"',
        ]
        if view.ended:
            attrs.append(f'mediaPresentationDuration="{_duration(end_ms)}"')
        else:
            attrs.append('minimumUpdatePeriod="PT1S"')
    else:
        attrs += ['type="static"', f'mediaPresentationDuration="{_duration(end_ms - offset)}"']
    out = ['<?xml version="1.0" encoding="UTF-8"?>', f"<MPD {' '.join(attrs)}>"]
    out.append('<Period id="0" start="PT0S">')
    timeline = _timeline(session, view)
    for spec, bandwidth in tracks:
        n = spec.track_id
        init = quoteattr(f"{INIT}?SessionToken={token}&TrackNumber={n}")
        media = quoteattr(f"{FRAGMENT}?SessionToken={token}&TrackNumber={n}&Time=$Time$")
        template = (
            f'<SegmentTemplate timescale="1000" presentationTimeOffset="{offset}" '
            f"initialization={init} media={media}>{timeline}</SegmentTemplate>"
        )
        if spec.is_video:
            out.append(
                f'<AdaptationSet id="{n}" contentType="video" mimeType="video/mp4" '
                'segmentAlignment="true" startWithSAP="1">'
            )
            out.append(
                f'<Representation id="{n}" codecs="{spec.codec}" bandwidth="{max(1, bandwidth)}" '
                f'width="{spec.width}" height="{spec.height}">'
            )
        else:
            out.append(
                f'<AdaptationSet id="{n}" contentType="audio" mimeType="audio/mp4" lang="und" '
                'segmentAlignment="true" startWithSAP="1">'
            )
            out.append(
                f'<Representation id="{n}" codecs="{spec.codec}" bandwidth="{max(1, bandwidth)}" '
                f'audioSamplingRate="{spec.timescale}">'
            )
            out.append(
                '<AudioChannelConfiguration schemeIdUri="urn:mpeg:dash:23003:3:'
                f'audio_channel_configuration:2011" value="{spec.channels}"/>'
            )
        out.append(template)
        out.append("</Representation></AdaptationSet>")
    out.append("</Period>")
    if dynamic:
        out.append(
            f'<UTCTiming schemeIdUri="urn:mpeg:dash:utc:direct:2014" value="{iso_ms(now_ms)}"/>'
        )
    out.append("</MPD>")
    return "\n".join(out) + "\n"
