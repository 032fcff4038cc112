"""Property-based fuzzing of the whole API against a real server.

Every operation of the five botocore models, plus PutMedia, gets bodies built from its input
shape (valid, at and past the bounds) and then mutated: members dropped, retyped or added,
JSON nested thousands of levels deep, bodies that are not JSON at all, bodies around and past the
size limit, the body split over several TCP writes with pauses (Content-Length and chunked), and
headers changed (content type, signature). Each request is signed with botocore's SigV4Auth
(unless the mutation is about the signature) and written on its own connection.

Whatever the input: no 5xx, no reset or dropped connection, every 4xx in the AWS error shape
(``x-amzn-ErrorType`` and a JSON body with a message), no traceback in the server's log, and the
server healthy afterwards. ``OPENKVS_FUZZ_EXAMPLES`` sets the number of cases (``make fuzz``).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import time
from collections.abc import Iterator
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from openkvs.api.models import PUT_MEDIA_PATH, Route, routes
from openkvs.media import ebml, mkv

from .. import rawhttp
from ..support import ServerThread, make_settings
from . import shapes

pytestmark = pytest.mark.fuzz

EXAMPLES = int(os.environ.get("OPENKVS_FUZZ_EXAMPLES", "2000"))
MAX_BODY = 128 * 1024
STREAM = "fuzz-stream"
CHANNEL = "fuzz-channel"
ROUTES: list[Route] = sorted(routes().values(), key=lambda r: r.name)
PUT_MEDIA = "PutMedia"
OPERATIONS = [r.name for r in ROUTES] + [PUT_MEDIA] * 4  # PutMedia has its own mutations


@dataclasses.dataclass
class Case:
    op: str
    path: str
    body: bytes
    mutation: str
    headers: dict[str, str]
    service: str = "kinesisvideo"
    keys: str = "good"  # good | none | wrong
    framing: str = "length"
    splits: list[int] = dataclasses.field(default_factory=list)
    delay: float = 0.0
    head_only: bool = False
    expect: tuple[int, str] | None = None  # the exact answer, when the mutation decides it


class Stats:
    cases = 0
    by_status: dict[int, int] = {}
    server_errors: list[str] = []


@pytest.fixture(scope="module")
def fuzz_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerThread]:
    srv = ServerThread(
        make_settings(
            tmp_path_factory.mktemp("fuzz"),
            max_body_bytes=MAX_BODY,
            rate_limit_account=1e9,
            rate_limit_resource=1e9,
            putmedia_idle_timeout=5.0,
            putmedia_idle_ack_interval=1.0,
        )
    )
    kv = srv.client("kinesisvideo")
    stream_arn = kv.create_stream(StreamName=STREAM, DataRetentionInHours=1)["StreamARN"]
    # A short message TTL: a valid SendAlexaOfferToMaster waits that long for the (absent)
    # master's answer before it is refused, well inside the client's timeout.
    channel_arn = kv.create_signaling_channel(
        ChannelName=CHANNEL, SingleMasterConfiguration={"MessageTtlSeconds": 5}
    )["ChannelARN"]
    shapes.KNOWN.update(
        {"StreamName": [STREAM], "ChannelName": [CHANNEL], "ARN": [stream_arn, channel_arn]}
    )
    yield srv
    shapes.KNOWN.clear()
    srv.close()


# -- mutations of JSON bodies ---------------------------------------------------------------------


def nest(kind: str, depth: int, leaf: str = "1") -> str:
    if kind == "array":
        return "[" * depth + leaf + "]" * depth
    return '{"a":' * depth + leaf + "}" * depth


@st.composite
def api_case(draw: st.DrawFn, route: Route) -> Case:
    op = route.operation
    data: dict[str, Any] = draw(shapes.structure(op.input_shape)) if op.input_shape else {}
    names = list(op.input_shape.members) if op.input_shape else []
    mutation = draw(
        st.sampled_from(
            ["valid"] * 6
            + ["drop", "retype", "unknown", "deep-member", "deep-body", "not-json"]
            + ["oversize", "big-member", "headers", "signature", "http"]
        )
    )
    case = Case(route.name, op.http["requestUri"], b"", mutation, {})
    case.head_only = bool(op.has_streaming_output)
    body: str | bytes
    if mutation == "drop" and data:
        data.pop(draw(st.sampled_from(sorted(data))))
    elif mutation == "retype" and names:
        data[draw(st.sampled_from(names))] = draw(shapes.json_values)
    elif mutation == "unknown":
        data[draw(st.text(min_size=1, max_size=20))] = draw(shapes.json_values)
    if mutation == "deep-member":
        depth = draw(st.sampled_from([63, 64, 65, 200, 990, 1800, 5000]))
        member = draw(st.sampled_from(names)) if names and draw(st.booleans()) else "Extra"
        kind = draw(st.sampled_from(["array", "object"]))
        placeholder = "\u0000PLACEHOLDER\u0000"
        data[member] = placeholder
        body = json.dumps(data).replace(json.dumps(placeholder), nest(kind, depth))
        if depth >= 64:  # the member itself is one level inside the body's object
            case.expect = (400, "SerializationException")
    elif mutation == "deep-body":
        depth = draw(st.sampled_from([64, 65, 1000, 2000, 20000]))
        body = nest(draw(st.sampled_from(["array", "object"])), depth)
        if depth > 64:
            case.expect = (400, "SerializationException")
    elif mutation == "not-json":
        body = draw(
            st.one_of(
                st.binary(max_size=200),
                st.sampled_from(
                    [
                        b"",
                        b"null",
                        b"[]",
                        b"42",
                        b'"x"',
                        b"{",
                        b'{"a": NaN}',
                        b'{"StreamName": Infinity}',
                        b"\xef\xbb\xbf{}",
                        b'{"a": "\xff"}',
                        b'{"a": 1' + b"0" * 5000 + b"}",
                        b'{"a": "\\ud800"}',
                    ]
                ),
                st.just(json.dumps(data).encode()).map(lambda b: b[: max(1, len(b) // 2)]),
            )
        )
    elif mutation == "oversize":
        size = MAX_BODY + draw(st.integers(-2, 300_000))
        raw = json.dumps(data).encode()
        body = raw[:-1] + b" " * max(0, size - len(raw)) + b"}" if raw.endswith(b"}") else raw
        if len(body) > MAX_BODY:
            case.expect = (413, "RequestEntityTooLargeException")
    elif mutation == "big-member":
        member = draw(st.sampled_from(names)) if names else "Extra"
        data[member] = "x" * draw(st.integers(1000, MAX_BODY - 1000))
        body = json.dumps(data)
    else:
        body = json.dumps(data)
    case.body = body.encode("utf-8", "surrogatepass") if isinstance(body, str) else body
    if mutation == "headers":
        case.headers["Content-Type"] = draw(
            st.sampled_from(
                [
                    "",
                    "text/plain",
                    "application/x-www-form-urlencoded",
                    "application/x-amz-json-1.1",
                    "application/json; charset=utf-16",
                    "application/json" + "; x=y" * 200,
                ]
            )
        )
        case.expect = None
    if mutation == "http":
        # Not HTTP: aiohttp's parser answers a bare 400 (the request never reaches openkvs).
        case.headers["X-Junk"] = draw(st.sampled_from(["\x7f", "a\x00b", "\x01"]))
        case.expect = (400, "")
    if mutation == "signature":
        case.keys = draw(st.sampled_from(["none", "wrong"]))
        case.expect = None
    if draw(st.integers(0, 9)) == 0:
        # The same body over several writes with pauses, Content-Length or chunked.
        case.framing = draw(st.sampled_from(["length", "chunked"]))
        n = len(case.body)
        case.splits = draw(st.lists(st.integers(1, max(1, n - 1)), min_size=1, max_size=4))
        case.delay = draw(st.sampled_from([0.0, 0.01, 0.05]))
    elif draw(st.integers(0, 9)) == 0:
        case.framing = "chunked"
    return case


# -- PutMedia -------------------------------------------------------------------------------------


def _mkv(timecode_ms: int, clusters: int = 2) -> bytes:
    info = ebml.master(
        mkv.INFO, ebml.uint(mkv.TIMECODE_SCALE, 1_000_000), ebml.string(mkv.MUXING_APP, "fuzz")
    )
    tracks = mkv.tracks(
        [mkv.Track(1, mkv.CODEC_H264, b"\x01\x64\x00\x1f\xff\xe0\x00", width=64, height=64)]
    )
    out = mkv.ebml_header() + ebml.unknown_size_header(mkv.SEGMENT) + info + tracks
    for i in range(clusters):
        frames = b"".join(
            mkv.simple_block(1, 33 * k, b"\x00\x00\x00\x01\x65" + bytes(20), k == 0)
            for k in range(3)
        )
        out += ebml.element(mkv.CLUSTER, ebml.uint(mkv.TIMECODE, timecode_ms + i * 100) + frames)
    return out


@st.composite
def put_media_case(draw: st.DrawFn) -> Case:
    now_ms = int(time.time() * 1000)
    valid = _mkv(now_ms, draw(st.integers(1, 3)))
    mutation = draw(
        st.sampled_from(["valid", "truncate", "flip", "insert", "random", "empty", "repeat"])
    )
    body = valid
    if mutation == "truncate":
        body = valid[: draw(st.integers(0, len(valid)))]
    elif mutation == "flip":
        data = bytearray(valid)
        for _ in range(draw(st.integers(1, 8))):
            at = draw(st.integers(0, len(data) - 1))
            data[at] = draw(st.integers(0, 255))
        body = bytes(data)
    elif mutation == "insert":
        at = draw(st.integers(0, len(valid)))
        body = valid[:at] + draw(st.binary(min_size=1, max_size=64)) + valid[at:]
    elif mutation == "random":
        body = draw(st.binary(max_size=2000))
    elif mutation == "empty":
        body = b""
    elif mutation == "repeat":
        body = valid + valid
    headers = {"X-Amz-Content-SHA256": "STREAMING-AWS4-HMAC-SHA256-PAYLOAD"}
    name = draw(st.sampled_from([STREAM, STREAM, "no-such-stream", "bad name!", None]))
    if name is not None:
        headers["x-amzn-stream-name"] = name
    if draw(st.integers(0, 5)) == 0:
        headers["x-amzn-stream-arn"] = draw(
            st.sampled_from(shapes.KNOWN.get("ARN", ["x"]) + ["arn:aws:nope", "x" * 2000])
        )
    ttype = draw(st.sampled_from(["ABSOLUTE", "ABSOLUTE", "RELATIVE", "relative", "", None]))
    if ttype is not None:
        headers["x-amzn-fragment-timecode-type"] = ttype
    start = draw(
        st.sampled_from(
            [None, f"{now_ms / 1000:.3f}", "0", "1e9", "-5", "99999999999999", "x", " 17.5 "]
        )
    )
    if start is not None:
        headers["x-amzn-producer-start-timestamp"] = start
    if draw(st.booleans()):
        headers["x-amzn-fragment-acknowledgment-required"] = "1"
    headers["Content-Type"] = draw(st.sampled_from(["application/octet-stream", "video/webm"]))
    case = Case(PUT_MEDIA, PUT_MEDIA_PATH, body, f"putmedia-{mutation}", headers)
    case.framing = draw(st.sampled_from(["length", "chunked"]))
    if body and draw(st.integers(0, 3)) == 0:
        case.splits = draw(st.lists(st.integers(1, max(1, len(body) - 1)), max_size=4))
        case.delay = draw(st.sampled_from([0.0, 0.01, 0.05]))
    case.keys = draw(st.sampled_from(["good"] * 8 + ["none", "wrong"]))
    return case


@st.composite
def any_case(draw: st.DrawFn) -> Case:
    name = draw(st.sampled_from(OPERATIONS))
    if name == PUT_MEDIA:
        return draw(put_media_case())
    return draw(api_case(next(r for r in ROUTES if r.name == name)))


# -- the property ---------------------------------------------------------------------------------


def send(srv: ServerThread, case: Case) -> rawhttp.RawResponse:
    keys: tuple[str, str] | None = None
    if case.keys == "good":
        keys = srv.keys
    elif case.keys == "wrong":
        keys = (srv.keys[0], "not-the-secret-key-at-all-000000000000000")
    headers = dict(case.headers)
    if "Content-Type" not in headers:
        headers["Content-Type"] = "application/json"
    return rawhttp.post(
        srv.http_port,
        case.path,
        case.body,
        keys,
        splits=case.splits,
        delay=case.delay,
        framing=case.framing,
        headers=headers,
        timeout=30,
        head_only=case.head_only,
    )


def check(case: Case, r: rawhttp.RawResponse) -> None:
    where = f"{case.op} [{case.mutation}, {case.framing}, {len(case.body)} bytes]"
    assert r.status < 500, f"{where}: {r.status} {r.body[:300]!r}"
    if case.mutation == "http":
        assert r.status == 400, where
        return
    if r.status >= 400:
        assert r.headers.get("x-amzn-errortype"), f"{where}: {r.status} without x-amzn-ErrorType"
        assert r.headers.get("x-amzn-requestid"), f"{where}: {r.status} without a request id"
        body = r.json()
        assert isinstance(body, dict) and body.get("message"), f"{where}: {r.body[:300]!r}"
    if case.expect is not None and case.keys == "good":
        status, code = case.expect
        assert (r.status, r.headers.get("x-amzn-errortype")) == (status, code), (
            f"{where}: expected {status} {code}, got {r.status} {r.body[:300]!r}"
        )


class _Tracebacks(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.records: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        if record.exc_info or "unhandled" in record.getMessage():
            self.records.append(self.format(record))


def test_api_fuzz(fuzz_server: ServerThread) -> None:
    tracebacks = _Tracebacks()
    for name in ("openkvs", "aiohttp"):
        logging.getLogger(name).addHandler(tracebacks)
    stats = Stats()
    stats.by_status = {}
    started = time.monotonic()

    @settings(
        max_examples=EXAMPLES,
        derandomize=True,
        database=None,
        deadline=None,
        suppress_health_check=list(HealthCheck),
        print_blob=True,
    )
    @given(case=any_case())
    def run(case: Case) -> None:
        r = send(fuzz_server, case)
        stats.cases += 1
        stats.by_status[r.status] = stats.by_status.get(r.status, 0) + 1
        check(case, r)

    try:
        run()
    finally:
        for name in ("openkvs", "aiohttp"):
            logging.getLogger(name).removeHandler(tracebacks)
    elapsed = time.monotonic() - started
    print(
        f"\nAPI fuzz: {stats.cases} cases in {elapsed:.0f} s, statuses "
        f"{dict(sorted(stats.by_status.items()))}"
    )
    assert stats.cases >= EXAMPLES
    assert not tracebacks.records, tracebacks.records[:3]
    # The server is healthy: it answers, and a normal client works.
    health = rawhttp.send(
        fuzz_server.http_port, [b"GET /health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"]
    )
    assert health.status == 200
    # (The fuzz stream may have been deleted or changed by the cases: a new one.)
    kv = fuzz_server.client("kinesisvideo")
    kv.create_stream(StreamName="after-fuzz", DataRetentionInHours=1)
    assert kv.describe_stream(StreamName="after-fuzz")["StreamInfo"]["StreamName"] == "after-fuzz"
    signed = rawhttp.post(fuzz_server.http_port, "/listStreams", b"{}", fuzz_server.keys)
    assert signed.status == 200


def test_known_vectors(fuzz_server: ServerThread) -> None:
    """The mutation classes once each, deterministic, with their exact answers."""
    keys = fuzz_server.keys
    port = fuzz_server.http_port
    deep = nest("array", 2000).encode()
    r = rawhttp.post(port, "/describeStream", deep, keys, splits=[100, 900], delay=0.05)
    assert (r.status, r.headers["x-amzn-errortype"]) == (400, "SerializationException")
    big = b'{"StreamName": "' + b"a" * (MAX_BODY + 10) + b'"}'
    r = rawhttp.post(port, "/describeStream", big, keys, framing="chunked", splits=[50_000])
    assert (r.status, r.headers["x-amzn-errortype"]) == (413, "RequestEntityTooLargeException")
    # PutMedia, its body in pieces: one fragment acknowledged as persisted. (A stream of its
    # own: the fuzz cases may have deleted the fuzz stream or set its retention to 0.)
    fuzz_server.client("kinesisvideo").create_stream(
        StreamName="known-vectors", DataRetentionInHours=1
    )
    headers = {
        "X-Amz-Content-SHA256": "STREAMING-AWS4-HMAC-SHA256-PAYLOAD",
        "x-amzn-stream-name": "known-vectors",
        "x-amzn-fragment-timecode-type": "ABSOLUTE",
        "Content-Type": "application/octet-stream",
    }
    body = _mkv(int(time.time() * 1000), 1)
    r = rawhttp.post(
        port,
        PUT_MEDIA_PATH,
        body,
        keys,
        headers=headers,
        framing="chunked",
        splits=list(range(7, len(body), 50)),
        delay=0.01,
    )
    assert r.status == 200, r.body
    events = [json.loads(line)["EventType"] for line in r.body.split(b"\n") if line.strip()]
    assert "PERSISTED" in events, events
