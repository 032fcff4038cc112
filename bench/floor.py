"""The ingest floor: the work itself, with no network, no ICE/DTLS and no event loop.

The camera's media (the same 720p30 H.264 + Opus loops) is packetised once exactly as aiortc's
sender does it (``H264Encoder.pack``, Opus one packet per RTP packet) and SRTP-protected with a
random key (AEAD AES-256-GCM, aiortc's first choice) — none of that is timed. Timed, packet by
packet in arrival order: SRTP unprotect (pylibsrtp), ``RtpPacket.parse``, depayload
(``aiortc.codecs.depayload``), openkvs's ``FrameAssembler``, media clock and ``Fragmenter``, the
MKV writer (``FragmentData.to_mkv``); and for audio, as the storage session must do to store
AAC: Opus decode (aiortc's ``OpusDecoder``) and AAC encode (openkvs's ``AacEncoder``).

    python -m bench.floor --seconds 20      (prints one JSON line)
"""

from __future__ import annotations

import argparse
import fractions
import json
import os
import sys
import time
from typing import Any

import av
from aiortc.codecs import depayload
from aiortc.codecs.h264 import H264Encoder
from aiortc.codecs.opus import OpusDecoder
from aiortc.jitterbuffer import JitterFrame
from aiortc.rtcrtpparameters import RTCRtpCodecParameters
from aiortc.rtp import RtpPacket
from pylibsrtp import Policy, Session

from bench.media import LOOP_SECONDS, camera_media
from openkvs.media.aac import AacEncoder
from openkvs.media.fragmenter import Fragmenter
from openkvs.media.timeline import SessionClock
from openkvs.webrtc.reassembly import FrameAssembler
from openkvs.webrtc.tap import UnwrappingMapper

VIDEO_PT, AUDIO_PT = 102, 111
VIDEO_SSRC, AUDIO_SSRC = 0x1234, 0x5678
H264 = RTCRtpCodecParameters(
    mimeType="video/H264", clockRate=90000, payloadType=VIDEO_PT, parameters={}
)
AUDIO_BATCH = 5


PROFILE_NAMES = {
    Policy.SRTP_PROFILE_AEAD_AES_256_GCM: "AEAD AES-256-GCM",
    Policy.SRTP_PROFILE_AES128_CM_SHA1_80: "AES128_CM_HMAC_SHA1_80",
}


def _profile() -> tuple[int, int]:
    for prof, n in (
        (Policy.SRTP_PROFILE_AEAD_AES_256_GCM, 44),
        (Policy.SRTP_PROFILE_AES128_CM_SHA1_80, 30),
    ):
        try:
            Policy(srtp_profile=prof)
            return prof, n
        except Exception:  # noqa: BLE001
            continue
    raise RuntimeError("no SRTP profile available")


def capture(seconds: float) -> tuple[list[tuple[float, bytes]], bytes, int, int]:
    """The camera's SRTP packets for ``seconds`` in send order: (send time ms, packet)."""
    video, audio = camera_media()
    loops = max(1, round(seconds / LOOP_SECONDS))
    period = LOOP_SECONDS * 1000
    prof, keylen = _profile()
    key = os.urandom(keylen)
    tx = Session(Policy(key=key, ssrc_type=Policy.SSRC_ANY_OUTBOUND, srtp_profile=prof))
    enc = H264Encoder()
    plain: list[tuple[float, bytes]] = []
    vseq = aseq = 0
    media_bytes = 0
    for loop in range(loops):
        for f in video:
            pts_ms = f.pts_ms + loop * period
            pkt = av.Packet(f.data)
            pkt.pts = int(round(pts_ms * 90))
            pkt.time_base = fractions.Fraction(1, 90000)
            payloads, ts = enc.pack(pkt)
            media_bytes += len(f.data)
            for i, payload in enumerate(payloads):
                rtp = RtpPacket(
                    payload_type=VIDEO_PT,
                    sequence_number=vseq & 0xFFFF,
                    timestamp=ts & 0xFFFFFFFF,
                    ssrc=VIDEO_SSRC,
                    marker=int(i == len(payloads) - 1),
                    payload=payload,
                )
                vseq += 1
                plain.append((pts_ms, rtp.serialize()))
        for f in audio:
            pts_ms = f.pts_ms + loop * period
            rtp = RtpPacket(
                payload_type=AUDIO_PT,
                sequence_number=aseq & 0xFFFF,
                timestamp=int(round(pts_ms * 48)) & 0xFFFFFFFF,
                ssrc=AUDIO_SSRC,
                payload=f.data,
            )
            media_bytes += len(f.data)
            aseq += 1
            plain.append((pts_ms + 0.001, rtp.serialize()))
    plain.sort(key=lambda p: p[0])
    return [(t, tx.protect(p)) for t, p in plain], key, prof, media_bytes


def process(packets: list[tuple[float, bytes]], key: bytes, prof: int) -> dict[str, Any]:
    """Run the receive work over the packets; return counts (the caller times it)."""
    policy = Policy(key=key, ssrc_type=Policy.SSRC_ANY_INBOUND, srtp_profile=prof)
    policy.window_size = 1024
    rx = Session(policy)
    assembler = FrameAssembler()
    mapper = UnwrappingMapper()
    audio_mapper = UnwrappingMapper()
    clock = SessionClock()
    frag = Fragmenter(target_ms=2000)
    opus = OpusDecoder()
    aac = AacEncoder()
    frag.set_audio_config(aac.audio_specific_config, 48000, 2)
    base_ms = 1_700_000_000_000.0
    batch: list[Any] = []
    fragments = frames = 0
    stored = 0

    def emit(ready: list[Any]) -> None:
        nonlocal fragments, stored
        for f in ready:
            stored += len(f.to_mkv())
            fragments += 1

    for t_ms, data in packets:
        now_ms = base_ms + t_ms
        pkt = RtpPacket.parse(rx.unprotect(data))
        if pkt.payload_type == VIDEO_PT:
            payload_data = depayload(H264, pkt.payload)
            _pli, done = assembler.add(
                pkt.sequence_number,
                pkt.timestamp,
                bool(pkt.marker),
                pkt.payload,
                payload_data,
                now_ms / 1000,
            )
            for annexb, ts, _key in done:
                frames += 1
                emit(frag.video(clock.video_ms(mapper.map(ts), now_ms), annexb))
        else:
            ts = audio_mapper.map(pkt.timestamp)
            if clock.audio.anchor_ts is None:
                clock.audio_ms(ts, now_ms)
            batch.extend(opus.decode(JitterFrame(pkt.payload, ts)))
            if len(batch) >= AUDIO_BATCH:
                for aac_data, pts in aac.encode(batch):
                    emit(frag.audio(clock.audio_ms(pts, now_ms), aac_data))
                batch = []
    emit(frag.flush())
    return {"video_frames": frames, "fragments": fragments, "stored_bytes": stored}


def measure(seconds: float) -> dict[str, Any]:
    packets, key, prof, media_bytes = capture(seconds)
    # Video alone (same path, audio packets removed: SRTP leaves the RTP header readable, so
    # the payload type tells them apart) and the whole job.
    video_only = [(t, p) for t, p in packets if p[1] & 0x7F == VIDEO_PT]
    loops = max(1, round(seconds / LOOP_SECONDS))
    stream_seconds = loops * LOOP_SECONDS
    out: dict[str, Any] = {
        "stream_seconds": stream_seconds,
        "packets": len(packets),
        "srtp_profile": PROFILE_NAMES[prof],
    }
    for name, pkts in (("video_only", video_only), ("video_and_audio", packets)):
        process(pkts[:200], key, prof)  # warm up imports and codecs
        c0, w0 = time.process_time(), time.perf_counter()
        counts = process(pkts, key, prof)
        cpu, wall = time.process_time() - c0, time.perf_counter() - w0
        out[name] = {
            "packets": len(pkts),
            "cpu_s": round(cpu, 3),
            "wall_s": round(wall, 3),
            "cpu_per_stream_second": round(cpu / stream_seconds, 5),
            "us_per_packet": round(cpu / len(pkts) * 1e6, 1),
            **counts,
        }
    out["media_bytes"] = media_bytes
    return out


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--seconds", type=float, default=20.0)
    args = p.parse_args()
    print(json.dumps({"event": "floor", **measure(args.seconds)}), flush=True)


if __name__ == "__main__":
    sys.exit(main())
