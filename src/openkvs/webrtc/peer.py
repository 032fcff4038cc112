"""Plumbing shared by storage-session peers: offer, answer and ICE candidates via signaling."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Iterable
from typing import Any

from aiortc import RTCPeerConnection, RTCRtpReceiver, RTCSessionDescription
from aiortc.sdp import SessionDescription, candidate_from_sdp, candidate_to_sdp

from ..errors import InvalidArgumentException
from . import net, offer_sdp, signaling_io, tap

logger = logging.getLogger(__name__)

Send = Callable[[str, str | None], Awaitable[None]]  # (message_type, payload)

# Preferred order of the H.264 variants in our offers: high profiles first (better recordings).
H264_ORDER = ("640034", "640c34", "640834", "4d0034", "42e034", "420034", "42e01f", "42001f")


def parse_answer(payload: str) -> tuple[str, SessionDescription]:
    """An SDP_ANSWER payload → (SDP text, parsed); InvalidArgumentException for anything else."""
    sdp = signaling_io.session_description(payload, "answer")
    try:
        parsed = SessionDescription.parse(sdp)
    except Exception as exc:  # noqa: BLE001 - aiortc's parser raises assorted errors
        raise InvalidArgumentException(f"The SDP answer cannot be parsed: {exc!r}"[:300]) from exc
    return sdp, parsed


def parse_candidate(cand: str) -> Any:
    """An ICE candidate line (``candidate:…``, with or without ``a=``) → RTCIceCandidate, or
    None for the empty end-of-candidates one; InvalidArgumentException when it cannot be read."""
    text = cand.strip()
    if text.startswith("a="):
        text = text[2:]
    if not text:
        return None
    if text.startswith("candidate:"):
        text = text[len("candidate:") :]
    try:
        return candidate_from_sdp(text)
    except Exception as exc:  # noqa: BLE001 - aiortc's parser raises assorted errors
        raise InvalidArgumentException(
            f"The ICE candidate cannot be parsed: {exc!r}"[:300]
        ) from exc


def h264_preferences() -> list[Any]:
    caps = RTCRtpReceiver.getCapabilities("video")
    assert caps is not None
    h264 = [c for c in caps.codecs if c.mimeType.lower() == "video/h264"]
    h264.sort(
        key=lambda c: (
            H264_ORDER.index(str(c.parameters.get("profile-level-id", "")))
            if c.parameters.get("profile-level-id") in H264_ORDER
            else 99
        )
    )
    rtx = [c for c in caps.codecs if c.mimeType.lower() == "video/rtx"]
    return h264 + rtx


def opus_preferences() -> list[Any]:
    caps = RTCRtpReceiver.getCapabilities("audio")
    assert caps is not None
    return [c for c in caps.codecs if c.mimeType.lower() == "audio/opus"]


class OfferingPeer:
    """An RTCPeerConnection that offers over KVS signaling and takes the answer and candidates."""

    def __init__(
        self,
        pc: RTCPeerConnection,
        send: Send,
        advertised: tuple[str, ...],
        prefix: str,
        on_pair: tap.PairCallback | None = None,
    ) -> None:
        self.pc = pc
        self._on_pair = on_pair
        self._send = send
        self._advertised = advertised
        self._prefix = prefix
        self.answered = asyncio.Event()
        self._early_candidates: list[tuple[str, str | None, int | None]] = []
        self._trickling: set[asyncio.Task[None]] = set()

    async def offer(self) -> None:
        """Send the offer at once with the host candidates, then trickle the server-reflexive and
        relay candidates as the STUN/TURN servers answer (a slow or unreachable server never
        delays the offer).

        No end-of-candidates message follows the last one: KVS clients take an ICE_CANDIDATE
        with an empty candidate as an error (the C SDK's STATUS_ICE_CANDIDATE_MISSING_CANDIDATE).
        """
        gatherers = _unique(
            t.receiver.transport.transport.iceGatherer for t in self.pc.getTransceivers()
        )
        deferred = []
        for gatherer in gatherers:
            tap.nominate_regularly(gatherer)
            if self._on_pair is not None:
                tap.observe_pairs(gatherer, self._on_pair)
            held = tap.defer_server_candidates(gatherer)
            if held is not None:
                deferred.append(held)
        offer = await self.pc.createOffer()
        await self.pc.setLocalDescription(offer)
        local = self.pc.localDescription
        sdp = net.add_advertised_candidates(local.sdp, self._advertised)
        sdp = offer_sdp.storage_offer(sdp, more_candidates=bool(deferred))
        await self._send("SDP_OFFER", signaling_io.encode({"type": "offer", "sdp": sdp}))
        # Trickle the gathered candidates too: KVS clients expect ICE_CANDIDATE messages.
        parsed = SessionDescription.parse(sdp)
        for index, media in enumerate(parsed.media):
            for cand in media.ice_candidates:
                await self._send_candidate(candidate_to_sdp(cand), media.rtp.muxId, index)
        for held in deferred:
            task = asyncio.ensure_future(self._trickle(held, parsed))
            task.set_name(f"{self._prefix}trickle")
            self._trickling.add(task)
            task.add_done_callback(self._trickling.discard)

    async def _send_candidate(self, candidate: str, mid: str | None, index: int) -> None:
        await self._send(
            "ICE_CANDIDATE",
            signaling_io.encode(
                {"candidate": "candidate:" + candidate, "sdpMid": mid, "sdpMLineIndex": index}
            ),
        )

    async def _trickle(self, held: tap.DeferredGathering, offer: SessionDescription) -> None:
        """Send each server-reflexive or relay candidate for the media sections it serves."""
        sections = [
            (index, t.mid)
            for index, media in enumerate(offer.media)
            for t in self.pc.getTransceivers()
            if t.mid == media.rtp.muxId
            and t.receiver.transport.transport.iceGatherer is held.gatherer
        ]
        try:
            async with contextlib.aclosing(held.candidates()) as candidates:
                async for cand in candidates:
                    logger.info(
                        "%strickling %s candidate %s:%s",
                        self._prefix,
                        cand.type,
                        cand.ip,
                        cand.port,
                    )
                    for index, mid in sections:
                        await self._send_candidate(candidate_to_sdp(cand), mid, index)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # noqa: BLE001 - the peer may have closed meanwhile
            logger.info("%scandidate trickling ended: %s", self._prefix, exc)

    def check_answer(self, sdp: str) -> None:
        """Hook for subclasses: raise InvalidArgumentException if the answer is unusable."""

    async def on_answer(self, payload: str) -> None:
        sdp, parsed = parse_answer(payload)
        if self.answered.is_set():
            raise InvalidArgumentException("This storage session already has an answer.")
        if len(parsed.media) != len(self.pc.getTransceivers()):
            raise InvalidArgumentException("The SDP answer does not match the offer's media lines.")
        self.check_answer(sdp)
        try:
            await self.pc.setRemoteDescription(RTCSessionDescription(sdp=sdp, type="answer"))
        except Exception as exc:  # noqa: BLE001 - aiortc raises assorted errors for bad SDP
            raise InvalidArgumentException(f"The SDP answer was rejected: {exc}") from exc
        self.answered.set()
        early, self._early_candidates = self._early_candidates, []
        for cand in early:
            await self._add_candidate(*cand)

    async def on_candidate(self, payload: str) -> None:
        cand, mid, index = signaling_io.candidate(payload)
        if not self.answered.is_set():
            if len(self._early_candidates) < 64:
                self._early_candidates.append((cand, mid, index))
            return
        await self._add_candidate(cand, mid, index)

    async def _add_candidate(self, cand: str, mid: str | None, index: int | None) -> None:
        ice = parse_candidate(cand)
        if ice is None:
            return  # end of candidates
        ice.sdpMid = mid
        ice.sdpMLineIndex = index
        if mid is None and index is None:
            ice.sdpMLineIndex = 0
        with contextlib.suppress(Exception):
            await self.pc.addIceCandidate(ice)

    async def close(self) -> None:
        for task in list(self._trickling):
            task.cancel()
        with contextlib.suppress(Exception):
            await self.pc.close()


def _unique(items: Iterable[Any]) -> list[Any]:
    out: list[Any] = []
    for item in items:
        if not any(item is seen for seen in out):
            out.append(item)
    return out
