"""The single adapter onto aiortc's private receive-path internals.

aiortc has no public hook for encoded frames (aiortc#449, #984), so this module — and only this
module — reaches into ``RTCRtpReceiver``:

- the decoder queue of a *video* receiver is replaced by :class:`_EncodedFrameSink`, which hands
  every reassembled H.264 access unit (Annex B bytes + extended RTP timestamp) to a callback on
  the event loop instead of decoding it;
- the video jitter buffer is replaced by :class:`~openkvs.webrtc.reassembly.FrameAssembler`
  (marker-bit completion, O(1) per packet, no one-frame delay, room for keyframes of several
  hundred KB), which delivers access units to the sink directly;
- the timestamp mapper is replaced by one that unwraps RTP timestamps without rebasing them, so
  they can be related to RTCP sender reports;
- RTCP sender reports are observed, and keyframes are requested with PLI;
- the NACKs and PLIs a video receiver sends and the RTX packets it receives are counted
  (:func:`count_feedback`), at no cost per ordinary packet;
- REMB feedback is limited to one report per ``REMB_MIN_INTERVAL_MS``: aiortc's estimator
  asks for one on every packet while it sees (or, on a loaded server, imagines) overuse, and each
  costs an SRTCP protect and a send.

Audio receivers keep aiortc's jitter buffer; their decoder queue is replaced by the same sink, so
the encoded Opus packets (with unwrapped RTP timestamps) reach a callback on the event loop and
are decoded in batches by ``opus_in`` instead of in aiortc's decoder thread.
It also holds the two ICE adjustments KVS cameras need, which reach into aioice's
``Connection`` (see the ICE section below): host candidates first with server-reflexive and relay
candidates trickled afterwards, and regular nomination of a single candidate pair; and it reports
the candidate pairs' check states (:func:`observe_pairs`) for the session's diagnostics.
And four shortcuts in setting up a peer connection, which a burst of joins multiplies (see the
set-up section below): a certificate passed in rather than generated per connection, the host's
addresses enumerated once a few seconds rather than per gatherer, a video receiver's bitrate
estimator built on its first packet rather than with the receiver, and ICE credentials drawn
with one CSPRNG call per string rather than per character.
On the send path it reaches into ``RTCRtpSender`` once: :func:`map_sender_reports` makes the
sender reports of a relayed track carry the capture times of the frames they describe (in the
clock of the peer that captured them) instead of the time the last packet left this server.
``check_internals()`` fails loudly if a new aiortc or aioice release moves any of this; a test
calls it.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import dis
import logging
import secrets
import string
import threading
from collections.abc import AsyncGenerator, Callable
from typing import Any

import aiortc
import aiortc.codecs
from aiortc import RTCRtpReceiver, RTCRtpSender
from aiortc.rtcrtpparameters import RTCRtcpFeedback, RTCRtpCodecParameters
from aiortc.rtp import RtcpSrPacket, RtpPacket

from .. import clock
from .reassembly import FrameAssembler

logger = logging.getLogger(__name__)

SUPPORTED_AIORTC = ("1.16",)
VIDEO_CAPACITY_PACKETS = 8192  # ~10 MB of 1200-byte packets: far beyond any real keyframe

_PREFIX = "_RTCRtpReceiver__"
_DECODER_QUEUE = _PREFIX + "decoder_queue"
_JITTER_BUFFER = _PREFIX + "jitter_buffer"
_TIMESTAMP_MAPPER = _PREFIX + "timestamp_mapper"
_KIND = _PREFIX + "kind"
_RTCP_SSRC = _PREFIX + "rtcp_ssrc"
_ESTIMATOR = _PREFIX + "remote_bitrate_estimator"
_RTX_SSRC = _PREFIX + "rtx_ssrc"
_SENDER = "_RTCRtpSender__"
_S_NTP = _SENDER + "ntp_timestamp"
_S_RTP = _SENDER + "rtp_timestamp"
_S_LSR = _SENDER + "lsr"
_S_PACKETS = _SENDER + "packet_count"
REMB_MIN_INTERVAL_MS = 500
NTP_UNIX_OFFSET = 2_208_988_800  # seconds from 1900-01-01 (NTP) to 1970-01-01 (Unix)
ESTIMATOR_SAMPLE_MS = 5

# H.264 profile-level-ids KVS accepts (constrained-baseline, baseline, main, high,
# constrained-high, progressive-high), at level 5.2 so senders may go up to 1920x1920.
H264_PROFILES = ("42e034", "420034", "4d0034", "640034", "640c34", "640834")


@dataclasses.dataclass(frozen=True)
class SenderReport:
    ssrc: int
    ntp_seconds: float  # sender's wall clock (NTP epoch converted to Unix seconds)
    rtp_timestamp: int

    def time_of(self, rtp_timestamp: int, clock_rate: int) -> float:
        """The sender's wall-clock time (Unix seconds) of an RTP timestamp of the same source
        (any width: compared modulo 2**32, within half the timestamp range of the report)."""
        delta = (rtp_timestamp - self.rtp_timestamp) & 0xFFFFFFFF
        if delta >= 0x80000000:
            delta -= 1 << 32
        return self.ntp_seconds + delta / clock_rate


# (Annex B access unit or Opus packet, its unwrapped RTP timestamp)
EncodedCallback = Callable[[bytes, int], None]
ReportCallback = Callable[[SenderReport], None]


class UnwrappingMapper:
    """Extends 32-bit RTP timestamps to a monotonic 64-bit count, without rebasing."""

    def __init__(self) -> None:
        self._last: int | None = None
        self._cycles = 0

    def map(self, timestamp: int) -> int:
        if self._last is not None:
            if timestamp < self._last and self._last - timestamp > 0x80000000:
                self._cycles += 1
            elif timestamp > self._last and timestamp - self._last > 0x80000000:
                # A late packet from before the wrap.
                return timestamp + ((self._cycles - 1) << 32)
        self._last = timestamp
        return timestamp + (self._cycles << 32)


class _AssemblingBuffer:
    """Stands in for the receiver's JitterBuffer: same ``add`` contract, frames go to a callback."""

    def __init__(self, on_frame: EncodedCallback) -> None:
        self.assembler = FrameAssembler(capacity=VIDEO_CAPACITY_PACKETS)
        self._mapper = UnwrappingMapper()
        self._on_frame = on_frame

    @property
    def capacity(self) -> int:
        return self.assembler.capacity

    def add(self, packet: RtpPacket) -> tuple[bool, None]:
        data: bytes = getattr(packet, "_data", b"")
        pli, frames = self.assembler.add(
            packet.sequence_number,
            packet.timestamp,
            bool(packet.marker),
            packet.payload,
            data,
            clock.monotonic(),
        )
        for frame, ts, _key in frames:
            try:
                self._on_frame(frame, self._mapper.map(ts))
            except Exception:  # noqa: BLE001 - a bad frame must not break aiortc's receive loop
                logger.exception("encoded-frame callback failed")
        return pli, None


class _ThrottledEstimator:
    """Wraps aiortc's RemoteBitrateEstimator: at most one REMB per interval, and one sample per
    ``ESTIMATOR_SAMPLE_MS`` of arrival time carrying the bytes since the previous one.

    The estimator groups packets sent within 5 ms and compares group send/arrival deltas, so one
    sample per group keeps its picture while cutting its cost (it was the largest single item in
    the receive path's profile) several-fold.
    """

    def __init__(self, inner: Any) -> None:
        self._inner = inner
        self._last_ms: int | None = None
        self._fed_ms: int | None = None
        self._bytes = 0

    def add(self, *, arrival_time_ms: int, payload_size: int, **kw: Any) -> Any:
        self._bytes += payload_size
        if self._fed_ms is not None and arrival_time_ms - self._fed_ms < ESTIMATOR_SAMPLE_MS:
            return None
        self._fed_ms = arrival_time_ms
        size, self._bytes = self._bytes, 0
        remb = self._inner.add(arrival_time_ms=arrival_time_ms, payload_size=size, **kw)
        if remb is None:
            return None
        if self._last_ms is not None and arrival_time_ms - self._last_ms < REMB_MIN_INTERVAL_MS:
            return None
        self._last_ms = arrival_time_ms
        return remb


class _EncodedFrameSink:
    """Stands in for the receiver's ``queue.Queue``: ``put`` runs on the event loop."""

    def __init__(self, callback: EncodedCallback) -> None:
        self._callback = callback
        self._stopped = threading.Event()

    def put(self, item: Any) -> None:
        if item is None:
            self._stopped.set()
            return
        _codec, frame = item
        try:
            self._callback(frame.data, frame.timestamp)
        except Exception:  # noqa: BLE001 - a bad frame must not break aiortc's receive loop
            logger.exception("encoded-frame callback failed")

    def get(self) -> Any:
        # aiortc's decoder thread blocks here until the receiver stops.
        self._stopped.wait()
        return None


def check_internals() -> None:
    """Raise RuntimeError if aiortc no longer has what this module relies on."""
    version = aiortc.__version__
    if not version.startswith(SUPPORTED_AIORTC):
        raise RuntimeError(
            f"openkvs's frame tap supports aiortc {SUPPORTED_AIORTC}, found {version}"
        )
    import aiortc.rtcrtpreceiver as rr

    probe = rr.RTCRtpReceiver.__new__(rr.RTCRtpReceiver)
    init = rr.RTCRtpReceiver.__init__
    code = init.__code__.co_names + init.__code__.co_consts
    names = set(n for n in code if isinstance(n, str))
    for attr in (_DECODER_QUEUE, _JITTER_BUFFER, _TIMESTAMP_MAPPER, _KIND, _ESTIMATOR, _RTX_SSRC):
        if attr not in names:
            raise RuntimeError(f"aiortc RTCRtpReceiver no longer sets {attr}")
    for method in (
        "_handle_rtp_packet",
        "_handle_rtcp_packet",
        "_send_rtcp_pli",
        "_send_rtcp_nack",
        "receive",
    ):
        if not callable(getattr(probe, method, None)):
            raise RuntimeError(f"aiortc RTCRtpReceiver has no {method}()")
    # count_feedback: NACKs and PLIs go out through the instance's methods, and the RTX map is
    # consulted (with get) for RTX packets only.
    handle = rr.RTCRtpReceiver._handle_rtp_packet.__code__
    for name in ("_send_rtcp_nack", "_send_rtcp_pli", _RTX_SSRC, "get", "unwrap_rtx"):
        if name not in handle.co_names:
            raise RuntimeError(f"aiortc RTCRtpReceiver._handle_rtp_packet no longer uses {name}")
    for name in ("receive", "_handle_rtp_packet"):
        stores = dis.get_instructions(getattr(rr.RTCRtpReceiver, name))
        if any(i.opname == "STORE_ATTR" and i.argval == _RTX_SSRC for i in stores):
            raise RuntimeError(f"aiortc RTCRtpReceiver.{name} replaces {_RTX_SSRC}")
    if not hasattr(rr, "decoder_worker"):
        raise RuntimeError("aiortc.rtcrtpreceiver.decoder_worker is gone")
    if "video" not in aiortc.codecs.CODECS:
        raise RuntimeError("aiortc.codecs.CODECS changed shape")
    _check_sender_internals()
    _check_ice_internals()
    _check_setup_internals()


def _check_sender_internals() -> None:
    import aiortc.rtcrtpsender as rs

    init = set(rs.RTCRtpSender.__init__.__code__.co_names)
    for attr in (_S_NTP, _S_RTP, _S_LSR, _S_PACKETS, "_ssrc"):
        if attr not in init:
            raise RuntimeError(f"aiortc RTCRtpSender no longer sets {attr}")
    # map_sender_reports: each frame comes through the instance's _next_encoded_frame, its
    # packets carry timestamp origin + frame.timestamp and the last one sent is kept in
    # __rtp_timestamp; the RTCP loop builds its SR from __ntp_timestamp/__rtp_timestamp, keeps
    # __lsr for the RTT and sends through the instance's _send_rtcp.
    for method in ("_next_encoded_frame", "_send_rtcp", "_run_rtp", "_run_rtcp"):
        if not callable(getattr(rs.RTCRtpSender, method, None)):
            raise RuntimeError(f"aiortc RTCRtpSender has no {method}()")
    rtp = set(rs.RTCRtpSender._run_rtp.__code__.co_names)
    for name in ("_next_encoded_frame", "timestamp", "uint32_add", _S_RTP, _S_PACKETS):
        if name not in rtp:
            raise RuntimeError(f"aiortc RTCRtpSender._run_rtp no longer uses {name}")
    rtcp = set(rs.RTCRtpSender._run_rtcp.__code__.co_names)
    for name in ("RtcpSrPacket", "RtcpSenderInfo", "_send_rtcp", _S_NTP, _S_RTP, _S_LSR):
        if name not in rtcp:
            raise RuntimeError(f"aiortc RTCRtpSender._run_rtcp no longer uses {name}")
    if "timestamp" not in rs.RTCEncodedFrame.__init__.__code__.co_names:
        raise RuntimeError("aiortc RTCEncodedFrame has no timestamp")


SUPPORTED_AIOICE = ("0.13",)
_CONNECTION_ATTRS = (
    "_check_list",
    "_closing",
    "_components",
    "_local_candidates",
    "_nominated",
    "_protocols",
    "_remote_candidates",
    "_transport_policy",
    "stun_server",
    "turn_server",
    "turn_username",
    "turn_password",
    "turn_ssl",
    "turn_transport",
    "ice_controlling",
    "remote_is_lite",
)
_CONNECTION_METHODS = (
    "build_request",
    "check_complete",
    "check_start",
    "check_start_task",
    "check_state",
    "sort_check_list",
    "switch_role",
    "_pair_remote_candidate",
)


def _check_ice_internals() -> None:
    import aioice
    import aioice.ice as ice
    import aiortc.rtcicetransport as it

    if not aioice.__version__.startswith(SUPPORTED_AIOICE):
        raise RuntimeError(
            f"openkvs's ICE adjustments support aioice {SUPPORTED_AIOICE}, "
            f"found {aioice.__version__}"
        )
    names = set(ice.Connection.__init__.__code__.co_names)
    for attr in _CONNECTION_ATTRS:
        if attr not in names:
            raise RuntimeError(f"aioice Connection no longer sets {attr}")
    for method in _CONNECTION_METHODS:
        if not callable(getattr(ice.Connection, method, None)):
            raise RuntimeError(f"aioice Connection has no {method}()")
    # The checks must go through the instance's check_start/check_complete, which are replaced.
    if "check_start" not in ice.Connection.check_start_task.__code__.co_names:
        raise RuntimeError("aioice Connection.check_start_task no longer calls check_start")
    if "check_complete" not in ice.Connection.check_incoming.__code__.co_names:
        raise RuntimeError("aioice Connection.check_incoming no longer calls check_complete")
    # observe_pairs: aioice changes a pair's state and completes its check through the
    # instance's check_state/check_complete, and a pair names its two candidates.
    for name in ("check_state", "check_complete"):
        if name not in ice.Connection.check_start.__code__.co_names:
            raise RuntimeError(f"aioice Connection.check_start no longer calls {name}")
    pair_names = set(ice.CandidatePair.__init__.__code__.co_names)
    for attr in ("nominated", "remote_candidate", "state", "protocol"):
        if attr not in pair_names:
            raise RuntimeError(f"aioice CandidatePair no longer sets {attr}")
    if not isinstance(getattr(ice.CandidatePair, "local_candidate", None), property):
        raise RuntimeError("aioice CandidatePair.local_candidate is gone")
    candidate_names = set(aioice.Candidate.__init__.__code__.co_names)
    for attr in ("host", "port", "type"):
        if attr not in candidate_names:
            raise RuntimeError(f"aioice Candidate no longer sets {attr}")
    for fn in ("server_reflexive_candidate", "relayed_candidate", "StunProtocol"):
        if not callable(getattr(ice, fn, None)):
            raise RuntimeError(f"aioice.ice.{fn} is gone")
    if {s.name for s in ice.CandidatePair.State} != {
        "FROZEN",
        "WAITING",
        "IN_PROGRESS",
        "SUCCEEDED",
        "FAILED",
    }:
        raise RuntimeError("aioice CandidatePair.State changed")
    if not hasattr(ice, "TransportPolicy") or not callable(
        getattr(it, "candidate_from_aioice", None)
    ):
        raise RuntimeError("aioice/aiortc candidate helpers moved")
    if "_connection" not in it.RTCIceGatherer.__init__.__code__.co_names:
        raise RuntimeError("aiortc RTCIceGatherer no longer keeps its aioice _connection")


def video_assembler(receiver: RTCRtpReceiver) -> FrameAssembler | None:
    buf = getattr(receiver, _JITTER_BUFFER, None)
    return buf.assembler if isinstance(buf, _AssemblingBuffer) else None


def tap_video(receiver: RTCRtpReceiver, on_frame: EncodedCallback) -> None:
    """Deliver the receiver's encoded access units to ``on_frame`` instead of decoding them.

    Must be called before the receiver starts (i.e. before the remote description is applied).
    """
    if getattr(receiver, _KIND) != "video":
        raise ValueError("tap_video needs a video receiver")
    # Nothing reaches the decoder queue any more (the buffer returns no frames), but aiortc's
    # decoder thread still starts and waits on it until the receiver stops.
    setattr(receiver, _DECODER_QUEUE, _EncodedFrameSink(on_frame))
    setattr(receiver, _JITTER_BUFFER, _AssemblingBuffer(on_frame))
    estimator = getattr(receiver, _ESTIMATOR)
    if estimator is not None:
        setattr(receiver, _ESTIMATOR, _ThrottledEstimator(estimator))


def tap_audio(receiver: RTCRtpReceiver, on_packet: EncodedCallback) -> None:
    """Deliver the receiver's encoded audio packets to ``on_packet`` instead of decoding them,
    with unwrapped (not rebased) RTP timestamps. Call before the receiver starts."""
    if getattr(receiver, _KIND) != "audio":
        raise ValueError("tap_audio needs an audio receiver")
    setattr(receiver, _TIMESTAMP_MAPPER, UnwrappingMapper())
    setattr(receiver, _DECODER_QUEUE, _EncodedFrameSink(on_packet))


def observe_sender_reports(receiver: RTCRtpReceiver, on_report: ReportCallback) -> None:
    original = receiver._handle_rtcp_packet

    async def handle(packet: Any) -> None:
        if isinstance(packet, RtcpSrPacket):
            info = packet.sender_info
            try:
                on_report(
                    SenderReport(
                        ssrc=packet.ssrc,
                        ntp_seconds=info.ntp_timestamp / (1 << 32) - NTP_UNIX_OFFSET,
                        rtp_timestamp=info.rtp_timestamp,
                    )
                )
            except Exception:  # noqa: BLE001
                logger.exception("sender-report callback failed")
        await original(packet)

    receiver._handle_rtcp_packet = handle  # type: ignore[method-assign]


# A relayed frame's media timestamp (the track's pts in the codec's clock, as aiortc's encoder
# hands it to the sender, taken modulo 2**32) -> when it was captured (Unix seconds, in the
# capturing peer's clock), or None if that is not known.
CaptureClock = Callable[[int], float | None]


def ntp64(unix_seconds: float) -> int:
    """The 64-bit NTP timestamp of a Unix time."""
    return int(round((unix_seconds + NTP_UNIX_OFFSET) * (1 << 32))) & 0xFFFF_FFFF_FFFF_FFFF


class _ReportMapper:
    """Keeps what relates the sender's RTP timestamps to its track's frames."""

    def __init__(self, sender: RTCRtpSender, capture_time: CaptureClock) -> None:
        self._sender = sender
        self._capture_time = capture_time
        self._last_frame: int | None = None  # timestamp of the frame whose packets went last
        self.origin: int | None = None  # RTP timestamp = origin + frame timestamp (mod 2**32)
        self.mapped = 0  # sender reports sent with a capture time

    async def next_frame(self, original: Any, codec: Any) -> Any:
        if self._last_frame is not None and getattr(self._sender, _S_PACKETS):
            # The previous frame's packets are all out: the last one's timestamp gives the
            # sender's (random, fixed) timestamp origin.
            self.origin = (getattr(self._sender, _S_RTP) - self._last_frame) & 0xFFFFFFFF
        frame = await original(codec)
        if frame is not None:
            self._last_frame = frame.timestamp & 0xFFFFFFFF
        return frame

    def rewrite(self, packets: list[Any]) -> None:
        if self.origin is None:
            return
        for packet in packets:
            if not isinstance(packet, RtcpSrPacket) or packet.ssrc != self._sender._ssrc:
                continue
            info = packet.sender_info
            captured = self._capture_time((info.rtp_timestamp - self.origin) & 0xFFFFFFFF)
            if captured is None:
                continue
            info.ntp_timestamp = ntp64(captured)
            # The receiver's reports echo the middle 32 bits of the SR's NTP time (LSR): keep
            # aiortc's round-trip estimate matching them.
            setattr(self._sender, _S_LSR, (info.ntp_timestamp >> 16) & 0xFFFFFFFF)
            self.mapped += 1


def map_sender_reports(sender: RTCRtpSender, capture_time: CaptureClock) -> _ReportMapper:
    """Make the sender's RTCP sender reports map its RTP timestamps to capture times.

    aiortc's SR pairs the RTP timestamp of the last packet sent with the time it was sent, which
    for a relayed track is this server's send time, not when the camera captured the frame. Here
    the SR's NTP time becomes ``capture_time`` of the frame its RTP timestamp belongs to; while
    that is None (no report from the camera yet) the SR stays aiortc's. Call before the sender
    starts.
    """
    mapper = _ReportMapper(sender, capture_time)
    next_frame = sender._next_encoded_frame
    send_rtcp = sender._send_rtcp

    async def next_encoded_frame(codec: Any) -> Any:
        return await mapper.next_frame(next_frame, codec)

    async def send(packets: list[Any]) -> None:
        try:
            mapper.rewrite(packets)
        except Exception:  # noqa: BLE001 - a bad mapping must not stop the RTCP loop
            logger.exception("sender-report mapping failed")
        await send_rtcp(packets)

    sender._next_encoded_frame = next_encoded_frame  # type: ignore[method-assign]
    sender._send_rtcp = send  # type: ignore[method-assign]
    return mapper


@dataclasses.dataclass
class FeedbackCounts:
    """What a video receiver asked its sender for, and the retransmissions it got."""

    nacks_sent: int = 0  # RTCP NACK messages
    nacked_packets: int = 0  # sequence numbers they asked for (one asked again counts again)
    plis_sent: int = 0  # RTCP PLI messages (the recorder's keyframe requests included)
    rtx_packets: int = 0  # RTX retransmissions received

    def as_dict(self) -> dict[str, int]:
        return dataclasses.asdict(self)


class _CountingRtxMap(dict[int, int]):
    """The receiver's RTX SSRC -> media SSRC map; aiortc looks an SSRC up (``get``) only for a
    packet whose payload type is RTX, so each lookup is one retransmission received."""

    def __init__(self, counts: FeedbackCounts, items: dict[int, int]) -> None:
        super().__init__(items)
        self._counts = counts

    def get(self, key: int, default: Any = None) -> Any:
        self._counts.rtx_packets += 1
        return super().get(key, default)


def count_feedback(receiver: RTCRtpReceiver) -> FeedbackCounts:
    """Count the NACKs and PLIs the receiver sends and the RTX packets it receives. Nothing is
    added to the path of an ordinary packet. Call before the receiver starts."""
    counts = FeedbackCounts()
    setattr(receiver, _RTX_SSRC, _CountingRtxMap(counts, getattr(receiver, _RTX_SSRC)))
    send_nack = receiver._send_rtcp_nack
    send_pli = receiver._send_rtcp_pli

    async def nack(media_ssrc: int, lost: list[int]) -> None:
        if getattr(receiver, _RTCP_SSRC, None) is not None:
            counts.nacks_sent += 1
            counts.nacked_packets += len(lost)
        await send_nack(media_ssrc, lost)

    async def pli(media_ssrc: int) -> None:
        if getattr(receiver, _RTCP_SSRC, None) is not None:
            counts.plis_sent += 1
        await send_pli(media_ssrc)

    receiver._send_rtcp_nack = nack  # type: ignore[method-assign]
    receiver._send_rtcp_pli = pli  # type: ignore[method-assign]
    return counts


def request_keyframe(receiver: RTCRtpReceiver) -> bool:
    """Send an RTCP PLI for each of the receiver's sources; False if none is known yet."""
    sources = receiver.getSynchronizationSources()
    if not sources or getattr(receiver, _RTCP_SSRC, None) is None:
        return False
    for source in sources:
        asyncio.ensure_future(receiver._send_rtcp_pli(source.source))
    return True


_registered = False


def register_h264_profiles() -> None:
    """Add the KVS-accepted H.264 profiles to aiortc's codec table (idempotent).

    aiortc only lists constrained baseline and baseline at level 3.1; openkvs, as the offerer,
    must list main and high profiles too or cameras using them cannot negotiate. Video is never
    decoded, so any of them can be stored.
    """
    global _registered
    if _registered:
        return
    video = aiortc.codecs.CODECS["video"]
    used = {c.payloadType for kind in aiortc.codecs.CODECS.values() for c in kind}
    pt = 110
    for profile in H264_PROFILES:
        while pt in used or pt + 1 in used:
            pt += 2
        video.append(
            RTCRtpCodecParameters(
                mimeType="video/H264",
                clockRate=90000,
                payloadType=pt,
                rtcpFeedback=[
                    RTCRtcpFeedback(type="nack"),
                    RTCRtcpFeedback(type="nack", parameter="pli"),
                    RTCRtcpFeedback(type="goog-remb"),
                ],
                parameters={
                    "level-asymmetry-allowed": "1",
                    "packetization-mode": "1",
                    "profile-level-id": profile,
                },
            )
        )
        video.append(
            RTCRtpCodecParameters(
                mimeType="video/rtx", clockRate=90000, payloadType=pt + 1, parameters={"apt": pt}
            )
        )
        used.update((pt, pt + 1))
    _registered = True


# -- ICE (aioice) ----------------------------------------------------------------------------------
#
# aiortc gives no control over candidate gathering or nomination, so the two ICE behaviours KVS
# cameras need reach into aioice's ``Connection`` (behind ``RTCIceGatherer._connection``), here:
#
# Host candidates first. ``setLocalDescription`` gathers every candidate before the offer exists,
# and a slow or unreachable STUN/TURN server then holds the offer back for up to 5 s, close to the
# KVS C SDK's retry of JoinStorageSession. :func:`defer_server_candidates` makes that gathering
# host-only; :meth:`DeferredGathering.candidates` then queries the STUN/TURN servers, adds each
# server-reflexive or relay candidate to the connection (a relay's socket paired with the remote
# candidates already known, so it is checked like the others) and yields it to be trickled.
#
# One nominated pair (regular nomination, RFC 8445 section 8.1.1). aioice nominates aggressively as
# the controlling agent: every check carries USE-CANDIDATE and every pair whose check succeeds
# replaces the selected one, so the LAST to succeed wins — triggered checks answering the remote's
# checks of its relay candidates included, long after ICE completed. The KVS C SDK (controlled)
# selects the highest-priority nominated pair that succeeded on its side, frees its other TURN
# allocations and expects media and consent on that pair only; after aggressive nomination the two
# ends may pick different pairs (e.g. the SDK a host pair and openkvs the SDK's relay candidate),
# and the SDK declares the connection dead 30 s later. :class:`_RegularNomination` sends checks
# without USE-CANDIDATE, waits until no better pair is still being checked (at most
# ``NOMINATION_WAIT`` after the first success), and nominates exactly the best succeeded pair; that
# pair then carries RTP, RTCP and consent checks for the whole session. Once a component has its
# nominated pair it never changes: neither a later check nor a USE-CANDIDATE from the remote (which
# a controlled peer must not send, and aioice ignores while controlling) replaces it.

NOMINATION_WAIT = 0.6  # seconds after the first succeeded check before nominating the best pair
SERVER_CANDIDATE_TIMEOUT = 5.0  # like aioice's own gathering timeout


def _ice_connection(gatherer: Any) -> Any:
    return gatherer._connection


class DeferredGathering:
    """A gatherer's STUN/TURN queries, held back from ``gather()`` to run after the offer."""

    def __init__(self, gatherer: Any, stun_server: Any, turn_server: Any) -> None:
        self.gatherer = gatherer
        self._stun_server = stun_server
        self._turn_server = turn_server

    async def candidates(
        self, limit: float = SERVER_CANDIDATE_TIMEOUT
    ) -> AsyncGenerator[Any, None]:
        """Gather the server-reflexive and relay candidates; yield each (as an aiortc
        ``RTCIceCandidate``) once it is part of the connection. Failures and timeouts just
        yield nothing; servers are given ``limit`` seconds in all."""
        from aioice import ice
        from aiortc.rtcicetransport import candidate_from_aioice

        conn = _ice_connection(self.gatherer)
        conn.stun_server, conn.turn_server = self._stun_server, self._turn_server
        tasks: list[asyncio.Task[Any]] = []
        for component in sorted(conn._components):
            hosts = [
                p
                for p in conn._protocols
                if p.local_candidate.type == "host" and p.local_candidate.component == component
            ]
            if self._stun_server is not None:
                for protocol in hosts:
                    if ":" not in protocol.local_candidate.host:  # IPv4 only, like aioice
                        tasks.append(
                            asyncio.ensure_future(
                                ice.server_reflexive_candidate(protocol, self._stun_server)
                            )
                        )
            if self._turn_server is not None:
                tasks.append(
                    asyncio.ensure_future(
                        ice.relayed_candidate(
                            component=component,
                            hide_related_address=(
                                conn._transport_policy == ice.TransportPolicy.RELAY
                            ),
                            protocol_factory=lambda: ice.StunProtocol(conn),
                            turn_server=self._turn_server,
                            turn_username=conn.turn_username,
                            turn_password=conn.turn_password,
                            turn_ssl=conn.turn_ssl,
                            turn_transport=conn.turn_transport,
                        )
                    )
                )
        loop = asyncio.get_running_loop()
        deadline = loop.time() + limit
        pending: set[asyncio.Task[Any]] = set(tasks)
        try:
            while pending:
                done, pending = await asyncio.wait(
                    pending,
                    timeout=max(0.0, deadline - loop.time()),
                    return_when=asyncio.FIRST_COMPLETED,
                )
                if not done:
                    break
                for task in done:
                    if task.cancelled() or task.exception() is not None:
                        continue
                    candidate, relay = task.result()
                    if conn._closing:
                        if relay is not None:
                            await relay.close()
                        continue
                    conn._local_candidates.append(candidate)
                    if relay is not None:
                        conn._protocols.append(relay)
                        for remote in conn._remote_candidates:
                            conn._pair_remote_candidate(remote)
                        conn.sort_check_list()
                    yield candidate_from_aioice(candidate)
        finally:
            for task in pending:
                task.cancel()
            # A relay allocated after the connection closed is released, not leaked.
            for task in pending:
                with contextlib.suppress(BaseException):
                    result = await task
                    if result[1] is not None:
                        await result[1].close()


def defer_server_candidates(gatherer: Any) -> DeferredGathering | None:
    """Make the gatherer's ``gather()`` collect host candidates only (fast: no network round
    trip); returns what was held back, or None if there is nothing to hold back (no STUN/TURN
    server, or gathering already started)."""
    conn = _ice_connection(gatherer)
    if gatherer.state != "new" or (conn.stun_server is None and conn.turn_server is None):
        return None
    deferred = DeferredGathering(gatherer, conn.stun_server, conn.turn_server)
    conn.stun_server = conn.turn_server = None
    return deferred


class _RegularNomination:
    """Regular nomination for one aioice ``Connection`` (see the section comment above)."""

    def __init__(self, conn: Any, wait: float) -> None:
        from aioice import stun
        from aioice.ice import CandidatePair

        self._conn = conn
        self._wait = wait
        self._states = CandidatePair.State
        self._transaction_error = stun.TransactionError
        self._check_start = conn.check_start
        self._check_complete = conn.check_complete
        self._valid: list[Any] = []  # succeeded checks waiting for the decision
        self._decision: asyncio.Future[Any] | None = None
        self._timer: asyncio.TimerHandle | None = None
        self.chosen: Any = None
        conn.check_start = self.check_start
        conn.check_complete = self.check_complete

    # The checks ------------------------------------------------------------------------------

    async def check_start(self, pair: Any) -> None:
        conn = self._conn
        if not conn.ice_controlling or conn.remote_is_lite:
            await self._check_start(pair)  # controlled (or lite peer): aioice's own behaviour
            return
        conn.check_state(pair, self._states.IN_PROGRESS)
        ok = await self._request(pair, nominate=False)
        if ok is None:  # role conflict: the role switched, check again in the new role
            await conn.check_start(pair)
            return
        if not ok:
            self._fail(pair)
            return
        if self.chosen is not None or self._decision_made():
            self._succeed(pair)  # the choice is made; a later success changes nothing
            return
        self._valid.append(pair)
        decision = self._pending_decision()
        self._maybe_decide()
        await decision
        if self.chosen is not pair:
            self._succeed(pair)
            return
        await self._nominate(pair)

    async def _nominate(self, pair: Any) -> None:
        ok = await self._request(pair, nominate=True)
        if ok:
            pair.nominated = True
            self._succeed(pair)
            return
        # The chosen pair stopped answering: choose the next best one before this failure can
        # end the check list.
        self._valid = [p for p in self._valid if p is not pair]
        if self._valid:
            nxt = self._best()
            self.chosen = nxt
            self._conn.check_state(nxt, self._states.IN_PROGRESS)
            nxt.task = asyncio.ensure_future(self._nominate(nxt))
        else:
            self.chosen = None
            self._decision = None
        self._fail(pair)

    async def _request(self, pair: Any, *, nominate: bool) -> bool | None:
        """One binding request on the pair: True on success, False on failure, None after a
        role conflict (the role has been switched)."""
        conn = self._conn
        request = conn.build_request(pair, nominate=nominate)
        try:
            _response, addr = await pair.protocol.request(
                request, pair.remote_addr, integrity_key=conn.remote_password.encode("utf8")
            )
        except self._transaction_error as exc:
            if exc.response is not None and exc.response.error_code == 487 and not nominate:
                conn.switch_role(ice_controlling="ICE-CONTROLLED" in request.attributes)
                return None
            return False
        return bool(addr == pair.remote_addr)

    def _succeed(self, pair: Any) -> None:
        self._conn.check_state(pair, self._states.SUCCEEDED)
        self._conn.check_complete(pair)

    def _fail(self, pair: Any) -> None:
        self._conn.check_state(pair, self._states.FAILED)
        self._conn.check_complete(pair)
        self._maybe_decide()

    # The decision ----------------------------------------------------------------------------

    def _decision_made(self) -> bool:
        return self._decision is not None and self._decision.done()

    def _pending_decision(self) -> asyncio.Future[Any]:
        if self._decision is None:
            self._decision = asyncio.get_running_loop().create_future()
        return self._decision

    def _best(self) -> Any:
        order = {id(p): i for i, p in enumerate(self._conn._check_list)}
        return min(self._valid, key=lambda p: order.get(id(p), len(order)))

    def _maybe_decide(self) -> None:
        if not self._valid or self._decision is None or self._decision.done():
            return
        best = self._best()
        pending = (self._states.FROZEN, self._states.WAITING, self._states.IN_PROGRESS)
        for pair in self._conn._check_list:
            if pair is best:
                break
            if pair.component == best.component and pair.state in pending:
                if pair in self._valid:
                    continue
                # A better pair is still being checked: give it a moment.
                if self._timer is None:
                    self._timer = asyncio.get_running_loop().call_later(self._wait, self._decide)
                return
        self._decide()

    def _decide(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if not self._valid or self._decision is None or self._decision.done():
            return
        self.chosen = self._best()
        self._decision.set_result(self.chosen)

    # Keeping the choice ----------------------------------------------------------------------

    def check_complete(self, pair: Any) -> None:
        current = self._conn._nominated.get(pair.component)
        if pair.nominated and current is not None and current is not pair:
            pair.nominated = False  # the component's pair is chosen for good
        self._check_complete(pair)


def nominate_regularly(gatherer: Any, wait: float = NOMINATION_WAIT) -> _RegularNomination:
    """Give the gatherer's ICE connection regular nomination (idempotent)."""
    conn = _ice_connection(gatherer)
    nomination = getattr(conn, "_openkvs_nomination", None)
    if not isinstance(nomination, _RegularNomination):
        nomination = conn._openkvs_nomination = _RegularNomination(conn, wait)
    return nomination


# (local candidate, remote candidate, check state, nominated); a candidate is "type host:port".
PairCallback = Callable[[str, str, str, bool], None]


def observe_pairs(gatherer: Any, on_pair: PairCallback) -> None:
    """Report every state change of the connection's candidate pairs (and their nomination) to
    ``on_pair``. Called on the event loop as checks progress; never on the media path."""
    conn = _ice_connection(gatherer)
    check_state = conn.check_state
    check_complete = conn.check_complete

    def report(pair: Any) -> None:
        try:
            local, remote = pair.local_candidate, pair.remote_candidate
            on_pair(
                f"{local.type} {local.host}:{local.port}",
                f"{remote.type} {remote.host}:{remote.port}",
                pair.state.name,
                bool(pair.nominated),
            )
        except Exception:  # noqa: BLE001 - diagnostics must never break the ICE checks
            logger.exception("candidate-pair callback failed")

    def state_changed(pair: Any, state: Any) -> None:
        check_state(pair, state)
        report(pair)

    def completed(pair: Any) -> None:
        check_complete(pair)
        report(pair)

    conn.check_state = state_changed
    conn.check_complete = completed


def selected_pair(gatherer: Any) -> tuple[tuple[str, int], tuple[str, int]] | None:
    """(local address, remote address) of the pair carrying the media, if one is selected."""
    pair = _ice_connection(gatherer)._nominated.get(1)
    return None if pair is None else (pair.local_addr, pair.remote_addr)


# -- Peer-connection set-up ------------------------------------------------------------------------
#
# What a storage session costs before its offer goes out, multiplied by a burst of joins (200 on
# 20 channels in ``bench/join_burst.py``), had four items that do not depend on the session:
#
# - aiortc's ``RTCPeerConnection()`` generates a DTLS key and self-signed certificate, and every
#   offer hashes it three ways per transport. :func:`new_peer_connection` hands the connection a
#   certificate instead (the storage peer's, shared and rotated: ``certificates.py``), by giving
#   the constructor a stand-in for ``RTCCertificate`` while it runs (synchronously, on the
#   caller's thread). DTLS still runs a fresh ECDHE handshake per session, so every session has
#   its own SRTP keys; ICE credentials are aioice's, random per connection.
# - aioice enumerates the host's interfaces (ifaddr: a netlink dump) in every gatherer's
#   ``gather_candidates``; the list is kept for ``HOST_ADDRESSES_TTL`` seconds.
# - a video receiver builds aiortc's ``RemoteBitrateEstimator`` with the receiver: 1000 rate
#   buckets, allocated objects that also wake the garbage collector. It is built on the first
#   packet that feeds it instead, with the same behaviour from then on.
# - aioice draws each character of a connection's ICE username fragment and password (and of
#   each candidate foundation) with its own ``secrets.choice``: a getrandom() system call per
#   character. :func:`_random_string` draws the same uniform characters from the same CSPRNG,
#   one ``secrets.token_bytes`` call per string.

HOST_ADDRESSES_TTL = 5.0
_PC_CERTIFICATES = "_RTCPeerConnection__certificates"


class _GivenCertificate:
    """Stands in for ``RTCCertificate`` in aiortc.rtcpeerconnection while a connection is built."""

    def __init__(self, certificate: aiortc.RTCCertificate) -> None:
        self._certificate = certificate

    def generateCertificate(self) -> aiortc.RTCCertificate:  # noqa: N802 - aiortc's name
        return self._certificate


def new_peer_connection(
    configuration: aiortc.RTCConfiguration, certificate: aiortc.RTCCertificate | None
) -> aiortc.RTCPeerConnection:
    """An RTCPeerConnection using ``certificate`` for DTLS (None: aiortc generates its own)."""
    import aiortc.rtcpeerconnection as rpc

    if certificate is None:
        return aiortc.RTCPeerConnection(configuration)
    original = vars(rpc)["RTCCertificate"]
    setattr(rpc, "RTCCertificate", _GivenCertificate(certificate))  # noqa: B010
    try:
        pc = rpc.RTCPeerConnection(configuration)
    finally:
        setattr(rpc, "RTCCertificate", original)  # noqa: B010
    if getattr(pc, _PC_CERTIFICATES) != [certificate]:
        raise RuntimeError("aiortc RTCPeerConnection did not take the given certificate")
    return pc


class _LazyBitrateEstimator:
    """aiortc's RemoteBitrateEstimator, built when the first packet feeds it."""

    def __init__(self) -> None:
        self._inner: Any = None

    def add(self, **kw: Any) -> Any:
        if self._inner is None:
            self._inner = _REAL_ESTIMATOR[0]()
        return self._inner.add(**kw)


_ALPHABET = string.ascii_letters + string.digits  # aioice's
_UNBIASED = 256 - 256 % len(_ALPHABET)  # bytes below this map uniformly onto the alphabet


def _random_string(length: int) -> str:
    """``length`` characters drawn uniformly from letters and digits with the OS's CSPRNG."""
    out: list[str] = []
    while len(out) < length:
        out += [_ALPHABET[b % len(_ALPHABET)] for b in secrets.token_bytes(length) if b < _UNBIASED]
    return "".join(out[:length])


_REAL_ESTIMATOR: list[Any] = []
_REAL_HOST_ADDRESSES: list[Callable[[bool, bool], list[str]]] = []
_host_addresses: dict[tuple[bool, bool], tuple[float, list[str]]] = {}


def _cached_host_addresses(use_ipv4: bool, use_ipv6: bool) -> list[str]:
    key = (use_ipv4, use_ipv6)
    now = clock.monotonic()
    hit = _host_addresses.get(key)
    if hit is None or now - hit[0] >= HOST_ADDRESSES_TTL or now < hit[0]:
        hit = (now, list(_REAL_HOST_ADDRESSES[0](use_ipv4, use_ipv6)))
        _host_addresses[key] = hit
    return list(hit[1])


def install_setup_shortcuts() -> None:
    """Cache the host's addresses for aioice, draw its random strings in one call each, and
    build video bitrate estimators on first use, for every connection in this process
    (idempotent)."""
    import aioice.ice as ice
    import aiortc.rtcrtpreceiver as rr

    if not _REAL_ESTIMATOR:
        _REAL_ESTIMATOR.append(vars(rr)["RemoteBitrateEstimator"])
        setattr(rr, "RemoteBitrateEstimator", _LazyBitrateEstimator)  # noqa: B010
    if not _REAL_HOST_ADDRESSES:
        _REAL_HOST_ADDRESSES.append(ice.get_host_addresses)
        ice.get_host_addresses = _cached_host_addresses
    setattr(ice, "random_string", _random_string)  # noqa: B010


def _check_setup_internals() -> None:
    import aioice.ice as ice
    import aiortc.rtcpeerconnection as rpc
    import aiortc.rtcrtpreceiver as rr

    init = rpc.RTCPeerConnection.__init__.__code__
    if vars(rpc).get("RTCCertificate") is not aiortc.RTCCertificate or not {
        "RTCCertificate",
        "generateCertificate",
        _PC_CERTIFICATES,
    } <= set(init.co_names):
        raise RuntimeError("aiortc RTCPeerConnection no longer generates its certificate")
    estimator = _REAL_ESTIMATOR[0] if _REAL_ESTIMATOR else vars(rr).get("RemoteBitrateEstimator")
    if "RemoteBitrateEstimator" not in rr.RTCRtpReceiver.__init__.__code__.co_names or not (
        callable(getattr(estimator, "add", None))
    ):
        raise RuntimeError("aiortc RTCRtpReceiver no longer builds a RemoteBitrateEstimator")
    if "get_host_addresses" not in ice.Connection.gather_candidates.__code__.co_names:
        raise RuntimeError("aioice Connection.gather_candidates no longer calls get_host_addresses")
    if "random_string" not in ice.Connection.__init__.__code__.co_names or not callable(
        vars(ice).get("random_string")
    ):
        raise RuntimeError("aioice Connection no longer draws its credentials with random_string")
