"""What happened in one storage session, and why it failed, in plain words.

A :class:`Timeline` is kept by every storage session (master and viewer). The session feeds it a
few facts (offer sent, answer taken or refused, candidates received, the ICE candidate pairs'
check states, connection states, its stats twice a second, its end); the timeline keeps a bounded
list of dated events, a bounded table of candidate pairs and, at the end, a
one-line ``verdict`` when the session failed (None when it ended normally). No aiortc objects are
kept: the SDP is read as text, states as strings.
"""

from __future__ import annotations

import datetime
import re
from collections import Counter
from typing import Any

from .. import clock
from ..ops.metrics import end_reason
from . import signaling_io

MAX_EVENTS = 64
MAX_PAIRS = 16  # candidate pairs kept per session (succeeded and nominated ones are kept first)
MAX_PAIR_EVENTS = 16  # timeline events about candidate pairs
_OMITTED_PAIRS_TRACKED = 1024
_CANDIDATE_TYPE = re.compile(r"\btyp\s+(host|srflx|prflx|relay)\b")
_RTPMAP = re.compile(r"^a=rtpmap:\d+\s+([\w-]+)/", re.M)
_MEDIA = re.compile(r"^m=(\w+)\s+(\d+)", re.M)
# End reasons that are not failures when media was recorded.
_NORMAL_ENDS = {
    "replaced",
    "signaling_closed",
    "peer_closed",
    "shutdown",
    "max_duration",
    "channel_closed",
}


def sdp_codecs(sdp: str) -> dict[str, list[str]]:
    """Codec names per live media line of an SDP (``{"video": ["H264", "rtx"], ...}``)."""
    out: dict[str, list[str]] = {}
    sections = re.split(r"(?=^m=)", sdp, flags=re.M)
    for section in sections:
        media = _MEDIA.match(section)
        if media is None or media.group(2) == "0":
            continue
        known = out.setdefault(media.group(1), [])
        known += [n for n in dict.fromkeys(_RTPMAP.findall(section)) if n not in known]
    return out


def selected_pair(pc: Any) -> str | None:
    """ "local -> remote" addresses of the ICE pair carrying the media, once one is selected."""
    from . import tap  # aioice's selected pair lives behind tap's internals check

    for transceiver in pc.getTransceivers():
        transport = getattr(transceiver.receiver, "transport", None)
        if transport is None:
            continue
        try:
            pair = tap.selected_pair(transport.transport.iceGatherer)
        except Exception:  # noqa: BLE001 - no connection yet, or already torn down
            return None
        if pair is not None:
            (lhost, lport), (rhost, rport) = pair
            return f"{lhost}:{lport} -> {rhost}:{rport}"
    return None


def dtls_state(pc: Any) -> str:
    """The DTLS transport's state, through aiortc's public objects ("new" before there is one)."""
    for transceiver in pc.getTransceivers():
        transport = getattr(transceiver.receiver, "transport", None)
        if transport is not None:
            return str(transport.state)
    return "new"


def candidate_types(text: str) -> Counter[str]:
    return Counter(_CANDIDATE_TYPE.findall(text))


def _types(counts: Counter[str]) -> str:
    return ", ".join(f"{n} {t}" for t, n in sorted(counts.items())) or "none"


class Timeline:
    def __init__(self, role: str, channel_arn: str, number: int) -> None:
        self.role = role
        self.channel_arn = channel_arn
        self.number = number
        self.client_id: str | None = None
        self.started = clock.now()
        self._t0 = clock.monotonic()
        self.events: list[dict[str, Any]] = []
        self.dropped_events = 0
        self.offered: dict[str, list[str]] = {}
        self.local_candidates: Counter[str] = Counter()
        self.remote_candidates: Counter[str] = Counter()
        self.answered = False
        self.refused: str | None = None
        self.states: dict[str, str] = {}
        self.reached: set[str] = set()  # "ice:connected", "dtls:connected", ... ever seen
        self.first: dict[str, float] = {}  # first rtp / frame / keyframe / fragment, seconds in
        self.stats: dict[str, Any] = {}
        self.ended_reason: str | None = None
        self.verdict: str | None = None
        self._bitrate_at: tuple[float, float] | None = None
        self.bitrate_kbps: float | None = None
        self.pair: str | None = None
        self.pairs: dict[tuple[str, str], dict[str, Any]] = {}
        self._omitted_pairs: set[tuple[str, str]] = set()
        self._pair_events = 0

    # -- facts ---------------------------------------------------------------------------------

    def note(self, what: str, detail: Any = None) -> None:
        if len(self.events) >= MAX_EVENTS:
            # Keep the beginning (how it started) and the latest; drop from the middle.
            del self.events[MAX_EVENTS // 2]
            self.dropped_events += 1
        event: dict[str, Any] = {"t": round(clock.monotonic() - self._t0, 3), "event": what}
        if detail is not None:
            event["detail"] = detail
        self.events.append(event)

    def offer_sent(self, sdp: str) -> None:
        self.offered = sdp_codecs(sdp)
        self.local_candidates = candidate_types(sdp)
        self.note(
            "offer sent",
            {"codecs": self.offered, "candidates": dict(self.local_candidates)},
        )

    def answer_received(self, sdp: str) -> None:
        self.answered = True
        self.remote_candidates.update(candidate_types(sdp))
        self.note("answer received", {"codecs": sdp_codecs(sdp)})

    def answer_refused(self, why: str) -> None:
        self.refused = why
        self.note("answer refused", why)

    def candidate_received(self, payload: str) -> None:
        try:
            text = signaling_io.candidate(payload)[0]
        except Exception:  # noqa: BLE001 - the session reports bad candidates itself
            return
        kinds = candidate_types(text)
        self.remote_candidates.update(kinds)
        if sum(self.remote_candidates.values()) <= 16:
            self.note("candidate received", next(iter(kinds), "end-of-candidates"))

    def state(self, layer: str, value: str) -> None:
        """A state of the connection (``connection``), ICE (``ice``) or DTLS (``dtls``)."""
        if self.states.get(layer) == value:
            return
        self.states[layer] = value
        self.reached.add(f"{layer}:{value}")
        self.note(f"{layer} {value}")

    def pair_checked(self, local: str, remote: str, state: str, nominated: bool) -> None:
        """A candidate pair's check changed state (``WAITING``, ``IN_PROGRESS``, ``SUCCEEDED``,
        ``FAILED``) or was nominated; candidates are ``"type host:port"``."""
        key = (local, remote)
        entry = self.pairs.get(key)
        if entry is None:
            if len(self.pairs) >= MAX_PAIRS and not self._make_room(state, nominated):
                if len(self._omitted_pairs) < _OMITTED_PAIRS_TRACKED:
                    self._omitted_pairs.add(key)
                return
            self._omitted_pairs.discard(key)
            entry = self.pairs[key] = {
                "Local": local,
                "Remote": remote,
                "State": None,
                "Nominated": False,
            }
        changed = entry["State"] != state
        newly_nominated = nominated and not entry["Nominated"]
        entry["State"], entry["Nominated"] = state, nominated
        if not (newly_nominated or (changed and state in ("SUCCEEDED", "FAILED"))):
            return
        if self._pair_events < MAX_PAIR_EVENTS:
            self._pair_events += 1
            what = "pair nominated" if newly_nominated else f"pair {state.lower()}"
            self.note(what, f"{local} -> {remote}")

    def _make_room(self, state: str, nominated: bool) -> bool:
        """The pair table is full: a succeeded or nominated pair takes the place of the oldest
        pair that is neither."""
        if state != "SUCCEEDED" and not nominated:
            return False
        for key, entry in self.pairs.items():
            if entry["State"] != "SUCCEEDED" and not entry["Nominated"]:
                del self.pairs[key]
                if len(self._omitted_pairs) < _OMITTED_PAIRS_TRACKED:
                    self._omitted_pairs.add(key)
                return True
        return False

    def selected(self, pair: str | None) -> None:
        """The selected ICE pair (when the connection is up)."""
        if pair is not None and pair != self.pair:
            self.pair = pair
            self.note("selected pair", pair)

    def observe(self, stats: dict[str, Any]) -> None:
        """The session's stats, twice a second: firsts, bitrate."""
        self.stats = stats
        self.client_id = stats.get("client_id") or self.client_id
        now = clock.monotonic() - self._t0
        for key, field in (
            ("rtp", "rtp_packets"),
            ("frame", "video_frames"),
            ("keyframe", "keyframes"),
            ("fragment", "fragments"),
        ):
            if key not in self.first and (stats.get(field) or 0) > 0:
                self.first[key] = round(now, 3)
                self.note(f"first {key}")
        sent = stats.get("video_bytes")
        if isinstance(sent, int | float):
            if self._bitrate_at is not None and now - self._bitrate_at[0] >= 2.0:
                seconds = now - self._bitrate_at[0]
                self.bitrate_kbps = round((sent - self._bitrate_at[1]) * 8 / seconds / 1000, 1)
                self._bitrate_at = (now, sent)
            elif self._bitrate_at is None:
                self._bitrate_at = (now, sent)

    def end(self, reason: str, stats: dict[str, Any]) -> str | None:
        self.observe(stats)
        self.ended_reason = reason
        self.verdict = self._verdict(reason)
        self.note("ended", reason)
        return self.verdict

    # -- the verdict ---------------------------------------------------------------------------

    def _verdict(self, reason: str) -> str | None:
        code = end_reason(reason)
        s = self.stats
        if code == "offer_failed":
            return f"The offer could not be sent to the participant ({reason})."
        if self.refused is not None or code == "answer_refused":
            why = self.refused or reason
            return f"The participant's SDP answer was refused: {why}"
        if not self.answered:
            if code == "signaling_closed":
                return "The participant left signaling before it answered the SDP offer."
            if code in ("replaced", "shutdown", "channel_closed"):
                return None
            return (
                "The participant never answered the SDP offer: it must be connected to the "
                "channel's signaling and answer the storage session's SDP_OFFER."
            )
        ice_up = bool({"ice:completed", "ice:connected"} & self.reached)
        if not ice_up:
            gone = code in (
                "replaced",
                "shutdown",
                "channel_closed",
                "signaling_closed",
                "peer_closed",
            )
            if gone and "ice:failed" not in self.reached:
                return f"The session ended while ICE was still checking ({reason})."
            if not self.remote_candidates:
                return (
                    "ICE failed: the participant sent no ICE candidates (none in its answer, "
                    "none as ICE_CANDIDATE messages)."
                )
            return (
                f"ICE failed: no candidate pair worked between the server "
                f"({_types(self.local_candidates)}) and the participant "
                f"({_types(self.remote_candidates)}); they cannot reach each other "
                "(a TURN server, or webrtc_advertised_hosts, may help)."
            )
        if "connection:connected" not in self.reached:
            dtls = self.states.get("dtls", "unknown")
            return f"ICE connected but the DTLS handshake did not complete (DTLS {dtls})."
        if self.role != "master":
            if code in _NORMAL_ENDS:
                return None
            return f"The viewer's connection ended: {reason}."
        packets = s.get("rtp_packets") or 0
        frames = s.get("video_frames") or 0
        if not packets and not frames:
            return (
                "Connected, but no video arrived: the participant sent no RTP on the video "
                f"track ({reason})."
            )
        if not s.get("keyframes"):
            return (
                f"Video arrived ({packets} RTP packets) but never a keyframe, so nothing could be "
                "recorded; the camera must send an IDR frame (and answer PLI requests with one)."
            )
        if not s.get("fragments"):
            errors = s.get("store_errors") or 0
            return f"Video arrived but no fragment was stored ({errors} store errors; {reason})."
        if code == "no_media":
            return (
                f"The participant stopped sending media ({reason}) after "
                f"{s.get('fragments')} fragments; the recording ends there."
            )
        if code in _NORMAL_ENDS:
            return None
        return f"The connection broke after {s.get('fragments')} fragments ({reason})."

    # -- the record ----------------------------------------------------------------------------

    def as_dict(self) -> dict[str, Any]:
        s = self.stats
        counts = {
            k: s[k]
            for k in (
                "rtp_packets",
                "video_frames",
                "keyframes",
                "fragments",
                "frames_lost",
                "frames_recovered",
                "late_packets",
                "keyframe_requests",
                "nacks_sent",
                "nacked_packets",
                "rtx_packets",
                "plis_sent",
                "audio_frames",
                "opus_frames",
                "video_frames_forwarded",
            )
            if k in s
        }
        started = datetime.datetime.fromtimestamp(self.started, datetime.UTC)
        out: dict[str, Any] = {
            "Role": self.role.upper(),
            "Session": self.number,
            "StartedAt": started.isoformat(timespec="milliseconds").replace("+00:00", "Z"),
            "State": "ENDED" if self.ended_reason is not None else "ACTIVE",
            "OfferedCodecs": self.offered,
            "LocalCandidates": dict(self.local_candidates),
            "RemoteCandidates": dict(self.remote_candidates),
            "States": dict(self.states),
            "CandidatePairs": [dict(p) for p in self.pairs.values()],
            "SelectedPair": self.pair,
            "Firsts": dict(self.first),
            "Counts": counts,
            "BitrateKbps": self.bitrate_kbps,
            "EndReason": self.ended_reason,
            "Verdict": self.verdict,
            "Timeline": list(self.events),
        }
        if self.client_id is not None:
            out["ClientId"] = self.client_id
        if self._omitted_pairs:
            out["CandidatePairsOmitted"] = len(self._omitted_pairs)
        if self.dropped_events:
            out["TimelineEventsOmitted"] = self.dropped_events
        return out


def recent_diagnostics(ended: list[dict[str, Any]], channel_arn: str) -> list[dict[str, Any]]:
    """The diagnostics kept with the final stats of a channel's ended sessions, newest first."""
    return [
        stats["diagnostics"]
        for stats in reversed(ended)
        if stats.get("channel_arn") == channel_arn and "diagnostics" in stats
    ]
