"""Signed bodies are read whole before their signature is checked, however the bytes arrive, and
bounded: past the limit the answer is 413 RequestEntityTooLargeException, whatever the framing.
Malformed JSON (including JSON nested deeper than any model allows) is a 400, never a 500."""

from __future__ import annotations

import json
import logging
from collections.abc import Callable

import pytest

from .. import rawhttp
from ..support import ServerThread


def assert_wire_error(r: rawhttp.RawResponse, status: int, code: str) -> None:
    assert r.status == status, (r.status, r.body[:300])
    assert r.headers["x-amzn-errortype"] == code
    body = r.json()
    assert body["message"]


@pytest.mark.parametrize("framing", ["length", "chunked"])
def test_body_in_two_writes(server: ServerThread, framing: str) -> None:
    body = json.dumps({"StreamName": f"split-{framing}", "DataRetentionInHours": 1}).encode()
    r = rawhttp.post(
        server.http_port,
        "/createStream",
        body,
        server.keys,
        splits=[len(body) // 2],
        delay=0.2,
        framing=framing,
    )
    assert r.status == 200, (r.status, r.body)
    assert "StreamARN" in r.json()


@pytest.mark.parametrize("framing", ["length", "chunked"])
def test_body_in_many_small_writes(server: ServerThread, framing: str) -> None:
    body = json.dumps({"StreamName": f"trickle-{framing}", "MediaType": "video/h264"}).encode()
    r = rawhttp.post(
        server.http_port,
        "/createStream",
        body,
        server.keys,
        splits=list(range(7, len(body), 7)),
        delay=0.02,
        framing=framing,
    )
    assert r.status == 200, (r.status, r.body)


def test_200_kb_body_in_one_write(server: ServerThread) -> None:
    # Large enough that the server's socket reads return it in several pieces.
    body = json.dumps({"StreamName": "big-body"}).encode()[:-1] + b" " * 200_000 + b"}"
    r = rawhttp.post(server.http_port, "/createStream", body, server.keys)
    assert r.status == 200, (r.status, r.body[:300])


def test_200_kb_body_over_tls(server: ServerThread) -> None:
    from .test_wire import signed_post

    body = json.dumps({"StreamName": "big-tls"}).encode()[:-1] + b" " * 200_000 + b"}"
    r = signed_post(server, "/createStream", body)
    assert r.status_code == 200, (r.status_code, r.text[:300])


def test_chunked_body_over_the_limit_is_413(server: ServerThread) -> None:
    body = b'{"StreamName": "x", "DeviceName": "' + b"a" * (3 * 1024 * 1024) + b'"}'
    r = rawhttp.post(
        server.http_port,
        "/createStream",
        body,
        server.keys,
        splits=list(range(65536, len(body), 65536)),
        framing="chunked",
    )
    assert_wire_error(r, 413, "RequestEntityTooLargeException")


def test_length_body_over_the_limit_is_413(server: ServerThread) -> None:
    body = b'{"StreamName": "x", "DeviceName": "' + b"a" * (3 * 1024 * 1024) + b'"}'
    r = rawhttp.post(server.http_port, "/createStream", body, server.keys)
    assert_wire_error(r, 413, "RequestEntityTooLargeException")


def test_chunked_body_at_the_limit_is_read(make_server: Callable[..., ServerThread]) -> None:
    srv = make_server(max_body_bytes=300_000)
    body = json.dumps({"StreamName": "at-limit"}).encode()[:-1]
    body += b" " * (300_000 - len(body) - 1) + b"}"
    assert len(body) == 300_000
    r = rawhttp.post(
        srv.http_port,
        "/createStream",
        body,
        srv.keys,
        splits=list(range(10_000, len(body), 10_000)),
        framing="chunked",
    )
    assert r.status == 200, (r.status, r.body[:300])
    over = body[:-1] + b" }"
    r = rawhttp.post(srv.http_port, "/createStream", over, srv.keys, framing="chunked")
    assert_wire_error(r, 413, "RequestEntityTooLargeException")


@pytest.mark.parametrize(
    "path, template",
    [
        ("/describeStream", "{}"),
        ("/describeMediaStorageConfiguration", '{"ChannelName": %s}'),
        ("/getImages", '{"StreamName": "s", "Extra": %s}'),
        ("/updateImageGenerationConfiguration", '{"StreamName": "s", "X": {"y": %s}}'),
    ],
)
def test_deeply_nested_json_is_400(server: ServerThread, path: str, template: str) -> None:
    deep = "[" * 2000 + "]" * 2000
    body = (deep if template == "{}" else template % deep).encode()
    r = rawhttp.post(server.http_port, path, body, server.keys)
    assert_wire_error(r, 400, "SerializationException")
    deep_obj = '{"a":' * 2000 + "1" + "}" * 2000
    r = rawhttp.post(server.http_port, path, deep_obj.encode(), server.keys)
    assert_wire_error(r, 400, "SerializationException")
    # The server is unharmed.
    r = rawhttp.post(server.http_port, "/listStreams", b"{}", server.keys)
    assert r.status == 200


def test_malformed_http_is_400_without_a_traceback(
    server: ServerThread, caplog: pytest.LogCaptureFixture
) -> None:
    """A request aiohttp cannot parse never reaches openkvs: aiohttp answers 400 and closes;
    the log gets one line, not a traceback."""
    caplog.set_level(logging.INFO, logger="aiohttp.server")
    for junk in (b"X-Junk: a\x00b", b"X-Junk: \x7f", b"Bad Header Line"):
        head = (
            b"POST /listStreams HTTP/1.1\r\nHost: x\r\n" + junk + b"\r\nContent-Length: 2\r\n\r\n{}"
        )
        r = rawhttp.send(server.http_port, [head])
        assert r.status == 400
    chunked = b"POST /listStreams HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n{}\r\n0\r\n\r\n"
    assert rawhttp.send(server.http_port, [chunked]).status == 400
    records = [r for r in caplog.records if r.name == "aiohttp.server"]
    assert records and not [r for r in records if r.exc_info], [r.getMessage() for r in records]
    assert rawhttp.post(server.http_port, "/listStreams", b"{}", server.keys).status == 200
