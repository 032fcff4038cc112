"""Hostile and absurd input: forged, altered and expired session tokens, path traversal in
resource URLs, out-of-range parameters and unusable media. Every answer is a documented 4xx in
the JSON error shape (x-amzn-ErrorType + {"message", "Message"}), never a 500."""

from __future__ import annotations

import http.client
import json
import re
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
import requests
from botocore import xform_name

from openkvs import clock

from ..support import ServerThread
from .media import append, recorded
from .support import archived, create_stream, get, hls_url, on_demand, resolve, uris
from .test_units import block, el, hand_mkv, track_entry, uint


def error_of(response: requests.Response | http.client.HTTPResponse, body: bytes) -> str:
    """The error code of a well-formed error answer (asserts the shape)."""
    assert 400 <= response.status < 500 if hasattr(response, "status") else True
    data = json.loads(body)
    assert set(data) == {"message", "Message"} and data["message"] == data["Message"]
    code = response.headers["x-amzn-ErrorType"]
    assert response.headers["x-amzn-RequestId"]
    return str(code)


def expect(url: str, status: int, code: str, **kwargs: Any) -> requests.Response:
    r = get(url, **kwargs)
    assert r.status_code == status, (url[:120], r.status_code, r.text)
    assert error_of(r, r.content) == code  # type: ignore[arg-type]
    return r


@pytest.fixture
def session(server: ServerThread) -> dict[str, Any]:
    create_stream(server, "cam")
    t0 = clock.now_ms() - 120_000
    stored = append(server, "cam", recorded(4, t0))
    url = hls_url(
        server, "cam", PlaybackMode="ON_DEMAND", HLSFragmentSelector=on_demand(t0, t0 + 60_000)
    )
    token = parse_qs(urlsplit(url).query)["SessionToken"][0]
    media = resolve(url, uris(get(url).text)[-1])
    segment = resolve(media, uris(get(media).text)[-1])
    return {
        "t0": t0,
        "url": url,
        "token": token,
        "media": media,
        "segment": segment,
        "stored": stored,
    }


def test_forged_altered_and_missing_tokens(server: ServerThread, session: dict[str, Any]) -> None:
    url, token, segment = session["url"], session["token"], session["segment"]
    assert get(url).status_code == get(segment).status_code == 200
    flipped = token[:40] + ("A" if token[40] != "A" else "B") + token[41:]
    for bad in (flipped, token[:-2], token + "AA", "x", "A" * len(token), "%00", "../../etc"):
        expect(url.replace(token, bad), 403, "NotAuthorizedException")
        expect(segment.replace(token, bad), 403, "NotAuthorizedException")
    expect(url.split("?")[0], 403, "NotAuthorizedException")
    expect(f"{url}&SessionToken={token}", 400, "InvalidArgumentException")
    # An HLS token does not open DASH resources.
    expect(
        url.replace("/hls/v1/getHLSMasterPlaylist.m3u8", "/dash/v1/getDASHManifest.mpd"),
        403,
        "NotAuthorizedException",
    )


def test_expired_session(
    server: ServerThread, session: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    now = clock.now_ms()
    monkeypatch.setattr(clock, "now_ms", lambda: now + 299_000)
    assert get(session["segment"]).status_code == 200
    monkeypatch.setattr(clock, "now_ms", lambda: now + 301_000)
    r = expect(session["segment"], 403, "NotAuthorizedException")
    assert "expired" in r.json()["message"]
    expect(session["url"], 403, "NotAuthorizedException")


def test_a_recreated_stream_does_not_inherit_sessions(
    server: ServerThread, session: dict[str, Any]
) -> None:
    kv = server.client("kinesisvideo")
    kv.delete_stream(StreamARN=kv.describe_stream(StreamName="cam")["StreamInfo"]["StreamARN"])
    create_stream(server, "cam")
    expect(session["url"], 404, "ResourceNotFoundException")


def raw_get(server: ServerThread, path: str) -> tuple[http.client.HTTPResponse, bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", server.http_port, timeout=30)
    conn.putrequest("GET", path, skip_accept_encoding=True)
    conn.endheaders()
    response = conn.getresponse()
    body = response.read()
    conn.close()
    return response, body


def test_path_traversal_never_reaches_the_filesystem(
    server: ServerThread, session: dict[str, Any]
) -> None:
    token = session["token"]
    secret = (server.settings.data_dir / "playback-token.key").read_bytes()
    paths = [
        "/hls/v1/../../openkvs.db",
        "/hls/v1/..%2F..%2Fplayback-token.key",
        "/hls/v1/%2e%2e%2f%2e%2e%2fcredentials.json",
        f"/hls/v1/..%2fplayback-token.key?SessionToken={token}",
        f"/dash/v1/getMP4MediaFragment.mp4/../../../credentials.json?SessionToken={token}",
        f"/hls/v1/getHLSMasterPlaylist.m3u8%00.key?SessionToken={token}",
        f"/hls/v1/getTSFragment.ts?SessionToken={token}&FragmentNumber=../../openkvs.db",
        f"/hls/v1/getMP4MediaFragment.mp4?SessionToken={token}&TrackNumber=1"
        "&FragmentNumber=%2e%2e%2fmedia",
        f"/hls/v2/getHLSMasterPlaylist.m3u8?SessionToken={token}",
        "/hls/v1/" + "A" * 4000,
        "/dash/v1/%ff%fe",
    ]
    for path in paths:
        response, body = raw_get(server, path)
        assert 400 <= response.status < 500, (path, response.status, body[:200])
        assert secret not in body and b"SQLite" not in body
        if response.status != 405:
            error_of(response, body)


def test_absurd_resource_parameters(server: ServerThread, session: dict[str, Any]) -> None:
    segment, stored = session["segment"], session["stored"]
    number = re.search(r"FragmentNumber=(\d+)", segment).group(1)  # type: ignore[union-attr]
    for bad in ("abc", "-1", "1e5", "9" * 30, "", "１２"):
        expect(
            segment.replace(f"FragmentNumber={number}", f"FragmentNumber={bad}"),
            400,
            "InvalidArgumentException",
        )
    for track in ("0", "3", "1&TrackNumber=2", "x"):
        expect(
            segment.replace("TrackNumber=1", f"TrackNumber={track}"),
            400,
            "InvalidArgumentException",
        )
    # A fragment that exists but is not part of the session, and one that does not exist.
    create_stream(server, "other")
    (foreign,) = append(server, "other", recorded(1, session["t0"]))
    for n in (foreign.number, stored[-1].number + 12345, 0):
        expect(
            segment.replace(f"FragmentNumber={number}", f"FragmentNumber={n}"),
            404,
            "ResourceNotFoundException",
        )
    # The session is fMP4: its TS resource is refused.
    ts = segment.replace("getMP4MediaFragment.mp4", "getTSFragment.ts")
    expect(ts, 400, "InvalidArgumentException")
    expect(
        session["url"].replace("getHLSMasterPlaylist.m3u8", "nothing.m3u8"),
        404,
        "ResourceNotFoundException",
    )


def test_cors_on_playback_resources(server: ServerThread, session: dict[str, Any]) -> None:
    origin = "https://customer.example"
    ok = get(session["segment"], headers={"Origin": origin})
    assert ok.status_code == 200 and ok.headers["Access-Control-Allow-Origin"] == origin
    assert ok.headers["Content-Type"] == "video/mp4"
    denied = get(session["url"].replace(session["token"], "x"), headers={"Origin": origin})
    assert denied.status_code == 403 and denied.headers["Access-Control-Allow-Origin"] == origin
    assert "x-amzn-ErrorType" in denied.headers["Access-Control-Expose-Headers"]
    pre = requests.options(
        session["url"],
        headers={
            "Origin": origin,
            "Access-Control-Request-Method": "GET",
            "Access-Control-Request-Headers": "range",
        },
        timeout=30,
    )
    assert pre.status_code == 204 and pre.headers["Access-Control-Allow-Origin"] == origin
    assert "GET" in pre.headers["Access-Control-Allow-Methods"]


def raw_api(server: ServerThread, op: str, body: dict[str, Any]) -> dict[str, Any]:
    """An archived-media call through botocore without client-side validation; its error."""
    client = server.client("kinesis-video-archived-media", parameter_validation=False)
    try:
        getattr(client, xform_name(op))(**body)
    except client.exceptions.ClientError as exc:
        return dict(exc.response)
    raise AssertionError(f"{op} {body} succeeded")


@pytest.mark.parametrize(
    ("op", "body", "status", "code"),
    [
        (
            "GetHLSStreamingSessionURL",
            {"StreamName": "cam", "Expires": 10},
            400,
            "InvalidArgumentException",
        ),
        (
            "GetHLSStreamingSessionURL",
            {"StreamName": "cam", "Expires": 100_000},
            400,
            "InvalidArgumentException",
        ),
        (
            "GetHLSStreamingSessionURL",
            {"StreamName": "cam", "MaxMediaPlaylistFragmentResults": 10_000},
            400,
            "InvalidArgumentException",
        ),
        (
            "GetDASHStreamingSessionURL",
            {"StreamName": "cam", "MaxManifestFragmentResults": 0},
            400,
            "InvalidArgumentException",
        ),
        (
            "GetHLSStreamingSessionURL",
            {"StreamName": "cam", "PlaybackMode": "REWIND"},
            400,
            "InvalidArgumentException",
        ),
        (
            "GetHLSStreamingSessionURL",
            {"StreamName": "cam", "ContainerFormat": "AVI"},
            400,
            "InvalidArgumentException",
        ),
        (
            "GetHLSStreamingSessionURL",
            {"StreamName": "cam", "PlaybackMode": "ON_DEMAND"},
            400,
            "InvalidArgumentException",
        ),
        (
            "GetHLSStreamingSessionURL",
            {"StreamName": "cam", "HLSFragmentSelector": on_demand(0, 1000)},
            400,
            "InvalidArgumentException",
        ),
        (
            "GetHLSStreamingSessionURL",
            {
                "StreamName": "cam",
                "PlaybackMode": "ON_DEMAND",
                "HLSFragmentSelector": {
                    "FragmentSelectorType": "SERVER_TIMESTAMP",
                    "TimestampRange": {"StartTimestamp": 1_700_000_000},
                },
            },
            400,
            "InvalidArgumentException",
        ),
        (
            "GetHLSStreamingSessionURL",
            {
                "StreamName": "cam",
                "PlaybackMode": "ON_DEMAND",
                "HLSFragmentSelector": on_demand(2_000_000, 1_000_000),
            },
            400,
            "InvalidArgumentException",
        ),
        (
            "GetHLSStreamingSessionURL",
            {
                "StreamName": "cam",
                "PlaybackMode": "ON_DEMAND",
                "HLSFragmentSelector": on_demand(0, 90_000_000),
            },
            400,
            "InvalidArgumentException",
        ),
        (
            "GetHLSStreamingSessionURL",
            {
                "StreamName": "cam",
                "PlaybackMode": "LIVE_REPLAY",
                "HLSFragmentSelector": on_demand(
                    4_102_444_800_000, 4_102_444_900_000, "SERVER_TIMESTAMP"
                ),
            },
            400,
            "InvalidArgumentException",
        ),
        (
            "GetHLSStreamingSessionURL",
            {
                "StreamName": "cam",
                "PlaybackMode": "ON_DEMAND",
                "HLSFragmentSelector": on_demand(1_000, 2_000),
            },
            404,
            "ResourceNotFoundException",
        ),
        ("GetHLSStreamingSessionURL", {"StreamName": "nope"}, 404, "ResourceNotFoundException"),
        ("GetHLSStreamingSessionURL", {}, 400, "InvalidArgumentException"),
        ("GetHLSStreamingSessionURL", {"StreamName": "zero"}, 400, "NoDataRetentionException"),
        ("GetDASHStreamingSessionURL", {"StreamName": "zero"}, 400, "NoDataRetentionException"),
        ("GetDASHStreamingSessionURL", {"StreamName": "stale"}, 404, "ResourceNotFoundException"),
        ("GetClip", {"StreamName": "cam"}, 400, "InvalidArgumentException"),
        (
            "GetImages",
            {
                "StreamName": "cam",
                "ImageSelectorType": "PRODUCER_TIMESTAMP",
                "StartTimestamp": 1,
                "EndTimestamp": 2,
                "Format": "JPEG",
                "MaxResults": 10_000,
            },
            400,
            "InvalidArgumentException",
        ),
        (
            "GetImages",
            {
                "StreamName": "cam",
                "ImageSelectorType": "PRODUCER_TIMESTAMP",
                "StartTimestamp": 1,
                "EndTimestamp": 2,
                "Format": "JPEG",
                "HeightPixels": 1_000_000,
            },
            400,
            "InvalidArgumentException",
        ),
    ],
)
def test_absurd_api_parameters(
    server: ServerThread, op: str, body: dict[str, Any], status: int, code: str
) -> None:
    create_stream(server, "cam")
    create_stream(server, "zero", retention=0)
    create_stream(server, "stale")
    append(server, "cam", recorded(2, clock.now_ms() - 10_000))
    append(server, "stale", recorded(2, clock.now_ms() - 600_000))  # nothing in the last 30 s
    response = raw_api(server, op, body)
    assert response["ResponseMetadata"]["HTTPStatusCode"] == status, response
    assert response["Error"]["Code"] == code


def hls_session_error(server: ServerThread, data: bytes, t0: int, duration_ms: int) -> str:
    """Store ``data`` as stream "cam"'s fragment at ``t0``; the error code an ON_DEMAND HLS
    session over it gets."""
    stream = server.services.control.get_stream(name="cam")
    server.call(
        server.services.fragments.append(stream, data, producer_ts_ms=t0, duration_ms=duration_ms)
    )
    response = raw_api(
        server,
        "GetHLSStreamingSessionURL",
        {
            "StreamName": "cam",
            "PlaybackMode": "ON_DEMAND",
            "HLSFragmentSelector": on_demand(t0, t0 + 1000),
        },
    )
    return str(response["Error"]["Code"])


@pytest.mark.parametrize(
    ("private", "code"),
    [
        (b"", "MissingCodecPrivateDataException"),
        (b"\x01\x64", "InvalidCodecPrivateDataException"),
    ],
)
def test_unusable_codec_private_data(server: ServerThread, private: bytes, code: str) -> None:
    create_stream(server, "cam")
    video = el(0xE0, uint(0xB0, 64) + uint(0xBA, 64))
    data = hand_mkv(
        track_entry(1, 1, "V_MPEG4/ISO/AVC", private, video=video),
        el(0x1F43B675, uint(0xE7, 0) + el(0xA3, block(1, 0, 0x80, b"\0\0\0\1\x65"))),
    )
    t0 = clock.now_ms() - 5000
    assert hls_session_error(server, data, t0, 1000) == code
    # GetImages reports the undecodable media per image instead.
    result = archived(server).get_images(
        StreamName="cam",
        ImageSelectorType="PRODUCER_TIMESTAMP",
        StartTimestamp=t0 / 1000,
        EndTimestamp=(t0 + 500) / 1000,
        SamplingInterval=500,
        Format="PNG",
    )
    assert [i["Error"] for i in result["Images"]] == ["MEDIA_ERROR", "MEDIA_ERROR"]


def test_unsupported_codec(server: ServerThread) -> None:
    create_stream(server, "cam")
    t0 = clock.now_ms() - 60_000
    (frag,) = recorded(1, t0)
    altered = frag.data.replace(b"V_MPEG4/ISO/AVC", b"V_MPEGH/ISO/HVC")
    stream = server.services.control.get_stream(name="cam")
    server.call(
        server.services.fragments.append(stream, altered, producer_ts_ms=t0, duration_ms=1000)
    )
    response = raw_api(
        server,
        "GetDASHStreamingSessionURL",
        {
            "StreamName": "cam",
            "PlaybackMode": "ON_DEMAND",
            "DASHFragmentSelector": on_demand(t0, t0 + 1000),
        },
    )
    assert response["Error"]["Code"] == "UnsupportedStreamMediaTypeException"


@pytest.mark.parametrize(
    ("private", "code"),
    [
        (b"", "MissingCodecPrivateDataException"),
        (b"OpusHead\x01", "InvalidCodecPrivateDataException"),
        (
            b"OpusHead\x01\x03\x00\x00\x80\xbb\x00\x00\x00\x00\x00",
            "InvalidCodecPrivateDataException",
        ),
    ],
)
def test_unusable_opus_head(server: ServerThread, private: bytes, code: str) -> None:
    """An audio-only stream whose A_OPUS track has no usable OpusHead (none, truncated, three
    channels with mapping family 0)."""
    from openkvs.media import mkv

    create_stream(server, "cam")
    track = mkv.Track(
        1, mkv.CODEC_OPUS, private, mkv.TRACK_TYPE_AUDIO, sample_rate=48000.0, channels=2
    )
    data = mkv.write_fragment(
        [track], [mkv.Block(1, 0, bytes([31 << 3, 1, 2, 3]), True)], timecode=0
    )
    assert hls_session_error(server, data, clock.now_ms() - 5000, 20) == code
