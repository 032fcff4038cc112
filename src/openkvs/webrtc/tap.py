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
- REMB feedback is limited to one report per ``REMB_MIN_INTERVAL_MS``: aiortc's estimator
  asks for one on every packet while it sees (or, on a loaded server, imagines) overuse, and each
  costs an SRTCP protect and a send.

Audio receivers keep aiortc's jitter buffer; their decoder queue is replaced by the same sink, so
the encoded Opus packets (with unwrapped RTP timestamps) reach a callback on the event loop and
are decoded in batches by ``opus_in`` instead of in aiortc's decoder thread.
``check_internals()`` fails loudly if a new aiortc release moves any of this; a test calls it.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import threading
from collections.abc import Callable
from typing import Any

import aiortc
import aiortc.codecs
from aiortc import RTCRtpReceiver
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
REMB_MIN_INTERVAL_MS = 500
ESTIMATOR_SAMPLE_MS = 5

# H.264 profile-level-ids KVS accepts (constrained-baseline, baseline, main, high,
# constrained-high, progressive-high), at level 5.2 so senders may go up to 1920x1920.
H264_PROFILES = ("42e034", "420034", "4d0034", "640034", "640c34", "640834")


@dataclasses.dataclass(frozen=True)
class SenderReport:
    ssrc: int
    ntp_seconds: float  # sender's wall clock (NTP epoch converted to Unix seconds)
    rtp_timestamp: int


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
    for attr in (_DECODER_QUEUE, _JITTER_BUFFER, _TIMESTAMP_MAPPER, _KIND, _ESTIMATOR):
        if attr not in names:
            raise RuntimeError(f"aiortc RTCRtpReceiver no longer sets {attr}")
    for method in ("_handle_rtp_packet", "_handle_rtcp_packet", "_send_rtcp_pli", "receive"):
        if not callable(getattr(probe, method, None)):
            raise RuntimeError(f"aiortc RTCRtpReceiver has no {method}()")
    if not hasattr(rr, "decoder_worker"):
        raise RuntimeError("aiortc.rtcrtpreceiver.decoder_worker is gone")
    if "video" not in aiortc.codecs.CODECS:
        raise RuntimeError("aiortc.codecs.CODECS changed shape")


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
                        ntp_seconds=info.ntp_timestamp / (1 << 32) - 2_208_988_800,
                        rtp_timestamp=info.rtp_timestamp,
                    )
                )
            except Exception:  # noqa: BLE001
                logger.exception("sender-report callback failed")
        await original(packet)

    receiver._handle_rtcp_packet = handle  # type: ignore[method-assign]


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
