"""HLS playlists as pure functions of a session and its current view.

URLs are relative to ``/hls/v1/`` and carry the session token, the track and the fragment
number, in the shape of the service's own playlists::

    #EXT-X-MAP:URI="getMP4InitFragment.mp4?SessionToken=...&TrackNumber=1&SequenceNumber=0"
    #EXTINF:1.000,
    getMP4MediaFragment.mp4?FragmentNumber=...&SessionToken=...&TrackNumber=1
"""

from __future__ import annotations

import datetime as dt

from .fmp4 import TrackSpec
from .timeline import View
from .tokens import Session

MASTER = "getHLSMasterPlaylist.m3u8"
MEDIA = "getHLSMediaPlaylist.m3u8"
INIT = "getMP4InitFragment.mp4"
FRAGMENT = "getMP4MediaFragment.mp4"
TS = "getTSFragment.ts"
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


def media_playlist(session: Session, token: str, view: View, track: int | None) -> str:
    """The media playlist of one track (fMP4) or of the muxed TS rendition (``track`` None)."""
    fmp4 = session.container != "MPEG_TS"
    lines = [
        "#EXTM3U",
        "#EXT-X-VERSION:7" if fmp4 else "#EXT-X-VERSION:3",
        f"#EXT-X-TARGETDURATION:{view.target_duration}",
        f"#EXT-X-MEDIA-SEQUENCE:{view.first_seq}",
    ]
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
        lines.append(f"#EXTINF:{e.duration_ms / 1000:.3f},")
        if fmp4:
            lines.append(
                f"{FRAGMENT}?FragmentNumber={e.fragment.number}&SessionToken={token}"
                f"&TrackNumber={track}"
            )
        else:
            lines.append(f"{TS}?FragmentNumber={e.fragment.number}&SessionToken={token}")
    if view.ended:
        lines.append("#EXT-X-ENDLIST")
    return "\n".join(lines) + "\n"
