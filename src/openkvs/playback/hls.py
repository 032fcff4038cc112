"""HLS playlists as pure functions of a session and its current view.

URLs are relative to ``/hls/v1/`` and carry the session token, the track and the fragment
number, in the shape of the service's own playlists::

    #EXT-X-MAP:URI="getMP4InitFragment.mp4?SessionToken=...&TrackNumber=1&SequenceNumber=0"
    #EXTINF:1.000,
    getMP4MediaFragment.mp4?FragmentNumber=...&SessionToken=...&TrackNumber=1
"""

from __future__ import annotations

import dataclasses
import datetime as dt

from .fmp4 import TrackSpec
from .timeline import View
from .tokens import Session

MASTER = "getHLSMasterPlaylist.m3u8"
MEDIA = "getHLSMediaPlaylist.m3u8"
INIT = "getMP4InitFragment.mp4"
FRAGMENT = "getMP4MediaFragment.mp4"
TS = "getTSFragment.ts"
PART = "getMP4MediaPart.mp4"
AUDIO_GROUP = "audio"


def iso_ms(epoch_ms: int) -> str:
    t = dt.datetime.fromtimestamp(epoch_ms / 1000, tz=dt.UTC)
    return t.strftime("%Y-%m-%dT%H:%M:%S.") + f"{epoch_ms % 1000:03d}Z"


def master_playlist(
    session: Session, token: str, video: TrackSpec | None, audio: TrackSpec | None, bandwidth: int
) -> str:
    lines = [
        "#EXTM3U",
        "#EXT-X-VERSION:7" if session.container != "MPEG_TS" else "#EXT-X-VERSION:3",
    ]
    lines.append("#EXT-X-INDEPENDENT-SEGMENTS")
    codecs = ",".join(t.codec for t in (video, audio) if t is not None)
    attrs = [f"BANDWIDTH={max(1, bandwidth)}", f'CODECS="{codecs}"']
    if video is not None and video.width and video.height:
        attrs.append(f"RESOLUTION={video.width}x{video.height}")
    if session.container == "MPEG_TS":
        lines.append("#EXT-X-STREAM-INF:" + ",".join(attrs))
        lines.append(f"{MEDIA}?SessionToken={token}")
        return "\n".join(lines) + "\n"
    main = video if video is not None else audio
    assert main is not None
    if video is not None and audio is not None:
        lines.append(
            f'#EXT-X-MEDIA:TYPE=AUDIO,GROUP-ID="{AUDIO_GROUP}",NAME="audio",LANGUAGE="und",'
            f'DEFAULT=YES,AUTOSELECT=YES,CHANNELS="{audio.channels}",'
            f'URI="{MEDIA}?SessionToken={token}&TrackNumber={audio.track_id}"'
        )
        attrs.append(f'AUDIO="{AUDIO_GROUP}"')
    lines.append("#EXT-X-STREAM-INF:" + ",".join(attrs))
    lines.append(f"{MEDIA}?SessionToken={token}&TrackNumber={main.track_id}")
    return "\n".join(lines) + "\n"


@dataclasses.dataclass(frozen=True)
class PartLine:
    msn: int  # media sequence number of the segment the part belongs to
    fragment: int  # that segment's fragment number
    index: int  # the part's number within the segment, from 0
    duration_s: float
    independent: bool


@dataclasses.dataclass(frozen=True)
class LowLatency:
    """What an LL-HLS playlist adds to the plain one (see ``liveedge``)."""

    part_target_s: float
    parts: tuple[PartLine, ...]  # of the last listed segments and of the one in progress
    preload: tuple[int, int] | None  # (fragment, part) of the next part of the one in progress
    pending_discontinuity: bool = False  # the segment in progress will follow a discontinuity
    blocking_only: bool = False  # no parts: only blocking reloads (the audio rendition)

    @property
    def hold_back_s(self) -> float:
        return round(3 * self.part_target_s, 3)


def last_position(view: View, ll: LowLatency) -> tuple[int, int | None]:
    """(msn, part) of the newest media the playlist lists: the last part of the segment in
    progress, or (the last full segment, None)."""
    last_msn = view.entries[-1].seq if view.entries else view.first_seq - 1
    pending = [p for p in ll.parts if p.msn > last_msn]
    if pending:
        return pending[-1].msn, pending[-1].index
    return last_msn, None


def blocking_ready(view: View, ll: LowLatency, msn: int, part: int | None) -> bool:
    """Whether the playlist already holds segment ``msn`` (or its part ``part``): a blocking
    reload (``_HLS_msn``/``_HLS_part``) is answered as soon as it does."""
    last_msn = view.entries[-1].seq if view.entries else view.first_seq - 1
    if msn <= last_msn:
        return True
    if part is None:
        return False
    top_msn, top_part = last_position(view, ll)
    return top_part is not None and (msn < top_msn or (msn == top_msn and part <= top_part))


def too_far(view: View, msn: int) -> bool:
    """A blocking reload for a segment beyond the last one plus two is refused (400)."""
    last_msn = view.entries[-1].seq if view.entries else view.first_seq - 1
    return msn > last_msn + 2


def _part_uri(token: str, track: int | None, fragment: int, index: int) -> str:
    return (
        f"{PART}?FragmentNumber={fragment}&PartNumber={index}&SessionToken={token}"
        f"&TrackNumber={track}"
    )


def _part_lines(parts: list[PartLine], token: str, track: int | None) -> list[str]:
    out = []
    for p in parts:
        uri = _part_uri(token, track, p.fragment, p.index)
        line = f'#EXT-X-PART:DURATION={p.duration_s:.3f},URI="{uri}"'
        out.append(line + (",INDEPENDENT=YES" if p.independent else ""))
    return out


def media_playlist(
    session: Session, token: str, view: View, track: int | None, ll: LowLatency | None = None
) -> str:
    """The media playlist of one track (fMP4) or of the muxed TS rendition (``track`` None);
    with ``ll``, the LL-HLS tags, parts and preload hint are added."""
    fmp4 = session.container != "MPEG_TS"
    lines = [
        "#EXTM3U",
        "#EXT-X-VERSION:7" if fmp4 else "#EXT-X-VERSION:3",
        f"#EXT-X-TARGETDURATION:{view.target_duration}",
        f"#EXT-X-MEDIA-SEQUENCE:{view.first_seq}",
    ]
    if ll is not None and ll.blocking_only:
        lines.append("#EXT-X-SERVER-CONTROL:CAN-BLOCK-RELOAD=YES")
    elif ll is not None:
        lines.append(
            f"#EXT-X-SERVER-CONTROL:CAN-BLOCK-RELOAD=YES,PART-HOLD-BACK={ll.hold_back_s:.3f}"
        )
        lines.append(f"#EXT-X-PART-INF:PART-TARGET={ll.part_target_s:.3f}")
    if view.discontinuity_sequence:
        lines.append(f"#EXT-X-DISCONTINUITY-SEQUENCE:{view.discontinuity_sequence}")
    if session.mode == "ON_DEMAND":
        lines.append("#EXT-X-PLAYLIST-TYPE:VOD")
    lines.append("#EXT-X-INDEPENDENT-SEGMENTS")
    map_line = f'#EXT-X-MAP:URI="{INIT}?SessionToken={token}&TrackNumber={track}&SequenceNumber=0"'
    mapped = False
    for e in view.entries:
        if e.discontinuity:
            lines.append("#EXT-X-DISCONTINUITY")
        if fmp4 and not mapped:
            lines.append(map_line)
            mapped = True
        if session.display_timestamp:
            lines.append(f"#EXT-X-PROGRAM-DATE-TIME:{iso_ms(e.ts_ms)}")
        if ll is not None:
            lines.extend(_part_lines([p for p in ll.parts if p.msn == e.seq], token, track))
        lines.append(f"#EXTINF:{e.duration_ms / 1000:.3f},")
        if fmp4:
            lines.append(
                f"{FRAGMENT}?FragmentNumber={e.fragment.number}&SessionToken={token}"
                f"&TrackNumber={track}"
            )
        else:
            lines.append(f"{TS}?FragmentNumber={e.fragment.number}&SessionToken={token}")
    if ll is not None and view.entries:
        last = view.entries[-1].seq
        pending = [p for p in ll.parts if p.msn > last]
        if pending and ll.pending_discontinuity:
            lines.append("#EXT-X-DISCONTINUITY")
        lines.extend(_part_lines(pending, token, track))
        if ll.preload is not None:
            uri = _part_uri(token, track, *ll.preload)
            lines.append(f'#EXT-X-PRELOAD-HINT:TYPE=PART,URI="{uri}"')
    if view.ended:
        lines.append("#EXT-X-ENDLIST")
    return "\n".join(lines) + "\n"
