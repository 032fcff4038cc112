"""Property-based fuzzing of the pure parsers that read client bytes.

Each parser may refuse its input only the documented way; nothing else (IndexError, KeyError,
RecursionError, struct.error, ...) may escape:

- the PutMedia Matroska push parser (media/mkvstream.py) never raises: a bad stream becomes a
  StreamRejected or FragmentRejected event; fed in any pieces it gives the same events as fed
  whole; what it accepts, ``assemble`` rewrites or refuses with ValueError;
- EBML readers (media/ebml.py) and Matroska block/track readers (media/mkv.py): ValueError;
- H.264 parsing (media/h264.py): ValueError;
- RTP frame reassembly (webrtc/reassembly.py) takes any packet sequence without raising, keeps
  its buffer bounded and emits frames made of the packets it was given;
- signaling frames (signaling/messages.py): FrameError; the storage peer's answer and ICE
  candidate payloads (webrtc/signaling_io.py, webrtc/peer.py): InvalidArgumentException.

``OPENKVS_FUZZ_EXAMPLES`` sets the number of cases per property (``make fuzz``).
"""

from __future__ import annotations

import base64
import json
import os
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from openkvs.errors import InvalidArgumentException
from openkvs.media import ebml, h264, mkv, mkvstream
from openkvs.signaling import messages
from openkvs.webrtc import reassembly, signaling_io

from .media import IDR, P_FRAME, PPS, SPS, producer_mkv

pytestmark = pytest.mark.fuzz

EXAMPLES = int(os.environ.get("OPENKVS_FUZZ_EXAMPLES", "0")) or None


def fuzz_settings(ci_examples: int) -> Any:
    return settings(
        max_examples=EXAMPLES or ci_examples,
        derandomize=True,
        database=None,
        deadline=None,
        suppress_health_check=list(HealthCheck),
        print_blob=True,
    )


# -- byte mutations -------------------------------------------------------------------------------


@st.composite
def mutated(draw: st.DrawFn, base: bytes) -> bytes:
    """``base`` with a few random edits: byte flips, insertions, deletions, cuts, repeats."""
    data = bytearray(base)
    for _ in range(draw(st.integers(0, 6))):
        kind = draw(st.sampled_from(["flip", "insert", "delete", "truncate", "repeat", "vint"]))
        at = draw(st.integers(0, max(0, len(data) - 1)))
        if kind == "flip" and data:
            data[at] = draw(st.integers(0, 255))
        elif kind == "insert":
            data[at:at] = draw(st.binary(min_size=1, max_size=16))
        elif kind == "delete" and data:
            del data[at : at + draw(st.integers(1, 16))]
        elif kind == "truncate":
            del data[at:]
        elif kind == "repeat" and data:
            n = draw(st.integers(1, 200))
            data[at:at] = data[at : at + n]
        elif kind == "vint" and data:
            # A size field set to an extreme: unknown (all ones), zero, or huge.
            data[at : at + 1] = draw(
                st.sampled_from([b"\x01\xff\xff\xff\xff\xff\xff\xff", b"\x80", b"\xff", b"\x08"])
            )
    return bytes(data)


MKV = producer_mkv(1_700_000_000_000, 3)
mkv_inputs = st.one_of(
    mutated(MKV),
    mutated(producer_mkv(0, 1, tags=False)),
    st.binary(max_size=300),
    st.builds(lambda a, b: a + b, st.just(MKV[:200]), st.binary(max_size=200)),
)


def split(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({c % (len(data) + 1) for c in cuts})
    bounds = [0, *points, len(data)]
    return [data[a:b] for a, b in zip(bounds, bounds[1:], strict=False) if b > a]


def parse_all(pieces: list[bytes], max_fragment_bytes: int) -> list[mkvstream.Event]:
    parser = mkvstream.MkvStreamParser(max_fragment_bytes=max_fragment_bytes)
    events: list[mkvstream.Event] = []
    for piece in pieces:
        events += parser.feed(piece)
        assert parser.buffered_bytes <= max_fragment_bytes + 64 * 1024
    events += parser.finish()
    return events


@fuzz_settings(600)
@given(
    data=mkv_inputs,
    cuts=st.lists(st.integers(0, 10_000), max_size=8),
    limit=st.sampled_from([200, 1000, 1 << 20]),
)
def test_mkvstream_parser(data: bytes, cuts: list[int], limit: int) -> None:
    whole = parse_all([data], limit)
    pieces = parse_all(split(data, cuts), limit)
    assert pieces == whole
    assert sum(isinstance(e, mkvstream.StreamRejected) for e in whole) <= 1
    for ev in whole:
        if isinstance(ev, mkvstream.FragmentReady):
            try:
                out = mkvstream.assemble(ev)
            except ValueError:
                continue
            # What is stored reads back as one fragment.
            mkv.read_fragment(out)


def test_mkvstream_parser_accepts_the_valid_stream() -> None:
    events = parse_all(split(MKV, [1, 50, 51, 300, 777]), 1 << 20)
    assert [type(e).__name__ for e in events] == ["FragmentStarted", "FragmentReady"] * 3


# -- EBML and Matroska readers --------------------------------------------------------------------


@fuzz_settings(400)
@given(data=st.one_of(st.binary(max_size=64), mutated(MKV[:120])), pos=st.integers(0, 70))
def test_ebml_readers(data: bytes, pos: int) -> None:
    for call in (
        lambda: ebml.read_vint(data, pos),
        lambda: ebml.read_vint(data, pos, is_id=True),
        lambda: ebml.read_signed_vint(data, pos, len(data)),
        lambda: ebml.header_at(data, pos),
        lambda: list(ebml.iter_elements(data, min(pos, len(data)))),
        lambda: mkv.read_block(data, min(pos, len(data)), len(data)),
        lambda: mkv.parse_block(data),
        lambda: mkv.lace_sizes(data, min(pos, len(data)), len(data), pos % 4 * 2),
    ):
        try:
            call()
        except ValueError:
            pass
    for el in _elements(data):
        for read in (ebml.read_uint, ebml.read_float, ebml.read_string, ebml.read_bytes):
            try:
                read(data, el)
            except ValueError:
                pass
        try:
            mkv.read_track(data, el)
        except ValueError:
            pass


def _elements(data: bytes) -> list[ebml.Element]:
    try:
        return list(ebml.iter_elements(data))
    except ValueError:
        return []


@fuzz_settings(300)
@given(data=st.one_of(mutated(MKV), st.binary(max_size=200)))
def test_fragment_readers(data: bytes) -> None:
    for call in (lambda: mkv.read_fragment(data), lambda: mkv.scan_fragment(data)):
        try:
            call()
        except ValueError:
            pass


# -- H.264 ----------------------------------------------------------------------------------------

AVCC_RECORD = h264.avc_decoder_configuration([SPS], [PPS])


@fuzz_settings(400)
@given(
    sps=st.one_of(mutated(SPS), st.binary(max_size=40)),
    record=st.one_of(mutated(AVCC_RECORD), st.binary(max_size=40)),
    stream=st.one_of(mutated(h264.to_annexb([SPS, PPS, IDR, P_FRAME])), st.binary(max_size=80)),
)
def test_h264_parsers(sps: bytes, record: bytes, stream: bytes) -> None:
    for call in (
        lambda: h264.parse_sps(sps),
        lambda: h264.parse_avc_decoder_configuration(record),
        lambda: h264.split_avcc(stream),
        lambda: h264.split_avcc(stream, 2),
        lambda: h264.split_annexb(stream),
        lambda: h264.annexb_has_idr(stream),
        lambda: h264.is_keyframe(h264.split_annexb(stream)),
    ):
        try:
            call()
        except ValueError:
            pass


# -- RTP reassembly -------------------------------------------------------------------------------

packets = st.lists(
    st.tuples(
        st.integers(0, 0xFFFF),  # sequence number
        st.integers(0, 8),  # timestamp step
        st.booleans(),  # marker
        st.one_of(
            st.sampled_from([IDR, P_FRAME, b"\x7c\x85\x01", b"\x7c\x05\x02", b"\x7c\x45\x03"]),
            st.binary(max_size=8),
        ),
        st.floats(0, 0.6),  # time step
    ),
    max_size=120,
)


@fuzz_settings(400)
@given(pkts=packets, start=st.integers(0, 0xFFFF), mode=st.sampled_from(["seq", "random"]))
def test_frame_assembler(
    pkts: list[tuple[int, int, bool, bytes, float]], start: int, mode: str
) -> None:
    asm = reassembly.FrameAssembler(capacity=64, gap_timeout=0.5)
    now = 0.0
    ts = 0
    given = 0
    emitted = 0
    for i, (seq, step, marker, payload, dt) in enumerate(pkts):
        seq16 = (start + i) & 0xFFFF if mode == "seq" and seq % 5 else seq
        ts = (ts + step * 3000) & 0xFFFFFFFF
        now += dt
        data = b"\x00\x00\x00\x01" + payload
        given += len(data)
        _, frames = asm.add(seq16, ts, marker, payload, data, now)
        assert len(asm._packets) <= asm.capacity + 1
        for frame, _ts, key in frames:
            assert frame.startswith(b"\x00\x00\x00\x01") and isinstance(key, bool)
            emitted += len(frame)
    # Frames are made of the packets given, each used at most once.
    assert emitted <= given
    assert asm.stats.packets == len(pkts)


# -- signaling ------------------------------------------------------------------------------------

FRAME = {
    "action": "SDP_OFFER",
    "messagePayload": base64.b64encode(b'{"type":"offer","sdp":"v=0"}').decode(),
    "recipientClientId": "viewer-1",
    "correlationId": "c-1",
}
frames = st.one_of(
    st.text(max_size=200),
    st.builds(
        lambda d, k, v: json.dumps({**d, k: v}),
        st.just(FRAME),
        st.sampled_from([*FRAME, "MessagePayload", "RecipientClientId", "CorrelationId", "x"]),
        st.recursive(
            st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=30),
            lambda c: st.lists(c, max_size=3) | st.dictionaries(st.text(max_size=5), c, max_size=3),
            max_leaves=8,
        ),
    ),
    st.builds(
        lambda depth, kind: (
            json.dumps(FRAME)[:-1]
            + ', "x": '
            + ("[" * depth + "]" * depth if kind else '{"a":' * depth + "1" + "}" * depth)
            + "}"
        ),
        st.sampled_from([10, 64, 65, 900, 1000, 3000]),
        st.booleans(),
    ),
    mutated(json.dumps(FRAME).encode()).map(lambda b: b.decode("utf-8", "replace")),
)


@fuzz_settings(500)
@given(text=frames)
def test_signaling_frames(text: str) -> None:
    try:
        msg = messages.parse_client_frame(text)
    except messages.FrameError as exc:
        assert isinstance(exc.error, InvalidArgumentException)
        return
    assert msg.action in messages.ACTIONS


SDP_ANSWER = (
    "v=0\r\no=- 1 1 IN IP4 0.0.0.0\r\ns=-\r\nt=0 0\r\na=group:BUNDLE 0\r\n"
    "a=msid-semantic:WMS *\r\nm=video 9 UDP/TLS/RTP/SAVPF 102\r\nc=IN IP4 0.0.0.0\r\n"
    "a=rtcp:9 IN IP4 0.0.0.0\r\na=mid:0\r\na=recvonly\r\na=rtcp-mux\r\n"
    "a=rtpmap:102 H264/90000\r\na=fmtp:102 packetization-mode=1;profile-level-id=42e01f\r\n"
    "a=rtcp-fb:102 nack\r\na=ice-ufrag:abcd\r\na=ice-pwd:0123456789abcdef0123456789\r\n"
    "a=fingerprint:sha-256 " + ":".join(["AB"] * 32) + "\r\na=setup:active\r\n"
    "a=candidate:1 1 udp 2122260223 192.168.1.2 50000 typ host\r\n"
)
CANDIDATE = "candidate:1 1 udp 2122260223 192.168.1.2 50000 typ host generation 0"


def payload(obj: Any) -> str:
    return base64.b64encode(json.dumps(obj).encode()).decode()


sdp_texts = st.one_of(
    mutated(SDP_ANSWER.encode()).map(lambda b: b.decode("utf-8", "replace")),
    st.lists(st.sampled_from(SDP_ANSWER.split("\r\n")) | st.text(max_size=40), max_size=30).map(
        "\r\n".join
    ),
    st.builds(
        lambda line, junk: SDP_ANSWER + line.split(":")[0] + ":" + junk + "\r\n",
        st.sampled_from(SDP_ANSWER.split("\r\n")[4:]),
        st.text(max_size=30),
    ),
)


@fuzz_settings(500)
@given(
    sdp=sdp_texts,
    kind=st.sampled_from(["answer", "answer", "offer", None]),
    raw=st.one_of(st.none(), st.text(max_size=60)),
)
def test_sdp_answer_payloads(sdp: str, kind: str | None, raw: str | None) -> None:
    from openkvs.webrtc.peer import parse_answer

    body = raw if raw is not None else payload({"type": kind, "sdp": "v=0" + sdp[3:]})
    try:
        text, parsed = parse_answer(body)
    except InvalidArgumentException:
        return
    assert text.startswith("v=0") and parsed is not None


@fuzz_settings(500)
@given(
    cand=st.one_of(
        mutated(CANDIDATE.encode()).map(lambda b: b.decode("utf-8", "replace")),
        st.text(max_size=60),
        st.builds(lambda w: CANDIDATE.rsplit(" ", 1)[0] + " " + w, st.text(max_size=10)),
    ),
    extra=st.dictionaries(st.sampled_from(["sdpMid", "sdpMLineIndex"]), st.integers() | st.text()),
)
def test_ice_candidate_payloads(cand: str, extra: dict[str, Any]) -> None:
    from openkvs.webrtc.peer import parse_candidate

    try:
        text, mid, index = signaling_io.candidate(payload({"candidate": cand, **extra}))
        parse_candidate(text)
    except InvalidArgumentException:
        pass


@pytest.mark.parametrize(
    "sdp",
    [
        "v=0\r\nm=video x UDP/TLS/RTP/SAVPF 102\r\n",  # aiortc: AssertionError
        "v=0\r\nm=video\r\n",  # AssertionError
        "v=0\r\nc=IN\r\n",  # AssertionError
        "v=0\r\nm=video 9 UDP/TLS/RTP/SAVPF 102\r\na=rtpmap:102 H264\r\n",  # IndexError
        "v=0\r\nm=video 9 UDP/TLS/RTP/SAVPF 102\r\na=fingerprint:x\r\n",  # ValueError
    ],
)
def test_unparseable_answers_are_invalid_arguments(sdp: str) -> None:
    from openkvs.webrtc.peer import parse_answer

    with pytest.raises(InvalidArgumentException, match="cannot be parsed"):
        parse_answer(payload({"type": "answer", "sdp": sdp}))


@pytest.mark.parametrize("cand", ["c", "candidate:c", "a=candidate:1 1", "1 1 udp x 1.2.3.4 5"])
def test_unparseable_candidates_are_invalid_arguments(cand: str) -> None:
    from openkvs.webrtc.peer import parse_candidate

    with pytest.raises(InvalidArgumentException, match="cannot be parsed"):
        parse_candidate(cand)
    assert parse_candidate("  ") is None
    assert parse_candidate("a=" + CANDIDATE).port == 50000
