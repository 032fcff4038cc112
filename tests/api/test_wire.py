"""Wire-level behaviour: every bad request gets a clear 4xx in the rest-json error shape."""

from __future__ import annotations

import json
from typing import Any

import pytest
import requests
from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials

from ..support import ServerThread


def signed_post(
    server: ServerThread,
    path: str,
    data: bytes,
    content_type: str | None = "application/json",
    endpoint: str | None = None,
) -> requests.Response:
    url = (endpoint or server.endpoint) + path
    headers = {"Content-Type": content_type} if content_type else {}
    req = AWSRequest(method="POST", url=url, data=data, headers=headers)
    SigV4Auth(Credentials(*server.keys), "kinesisvideo", "us-east-1").add_auth(req)
    return requests.post(url, data=data, headers=dict(req.headers), verify=server.ca, timeout=10)


def assert_error(r: requests.Response, status: int, code: str) -> dict[str, Any]:
    assert r.status_code == status, (r.status_code, r.text)
    assert r.headers["x-amzn-ErrorType"] == code
    assert r.headers["x-amzn-RequestId"]
    body: dict[str, Any] = r.json()
    assert body["message"] == body["Message"] and body["message"]
    return body


def test_malformed_json(server: ServerThread) -> None:
    assert_error(
        signed_post(server, "/describeStream", b"{not json"), 400, "SerializationException"
    )
    assert_error(signed_post(server, "/describeStream", b"[1, 2]"), 400, "SerializationException")


def test_wrong_content_type(server: ServerThread) -> None:
    r = signed_post(
        server, "/createStream", b"StreamName=x", content_type="application/x-www-form-urlencoded"
    )
    assert_error(r, 400, "SerializationException")


def test_body_too_large(server: ServerThread) -> None:
    big = json.dumps({"StreamName": "x", "DeviceName": "a" * (1024 * 1024 + 10)}).encode()
    assert_error(signed_post(server, "/createStream", big), 413, "RequestEntityTooLargeException")


def test_unknown_path_and_unimplemented_operation(server: ServerThread) -> None:
    body = assert_error(
        signed_post(server, "/noSuchOperation", b"{}"), 404, "UnknownOperationException"
    )
    assert "/noSuchOperation" in body["message"]
    r = signed_post(server, "/describeEdgeConfiguration", b'{"StreamName":"x"}')
    body = assert_error(r, 400, "UnsupportedOperationException")
    assert "DescribeEdgeConfiguration" in body["message"]


def test_unsigned_request_refused(server: ServerThread) -> None:
    r = requests.post(server.endpoint + "/listStreams", data=b"{}", verify=server.ca, timeout=10)
    assert_error(r, 403, "MissingAuthenticationTokenException")


def test_type_errors_name_fields(server: ServerThread) -> None:
    r = signed_post(
        server, "/createStream", json.dumps({"StreamName": 5, "DataRetentionInHours": "x"}).encode()
    )
    body = assert_error(r, 400, "InvalidArgumentException")
    assert "2 validation errors" in body["message"]
    assert "'streamName'" in body["message"] and "'dataRetentionInHours'" in body["message"]


def test_cors_preflight_and_headers(server: ServerThread) -> None:
    r = requests.options(
        server.endpoint + "/describeSignalingChannel",
        headers={
            "Origin": "http://app.example",
            "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "authorization,x-amz-date,amz-sdk-invocation-id,content-type",
        },
        verify=server.ca,
        timeout=10,
    )
    assert r.status_code == 204
    assert r.headers["Access-Control-Allow-Origin"] == "http://app.example"
    assert "POST" in r.headers["Access-Control-Allow-Methods"]
    assert "amz-sdk-invocation-id" in r.headers["Access-Control-Allow-Headers"]
    r = requests.post(
        server.endpoint + "/listStreams",
        data=b"{}",
        headers={"Origin": "http://app.example"},
        verify=server.ca,
        timeout=10,
    )
    assert r.headers["Access-Control-Allow-Origin"] == "http://app.example"
    assert "x-amzn-ErrorType" in r.headers["Access-Control-Expose-Headers"]


def test_no_auth_mode(make_server: Any) -> None:
    srv = make_server(no_auth=True)
    r = requests.post(
        srv.endpoint + "/createStream", json={"StreamName": "anon"}, verify=srv.ca, timeout=10
    )
    assert r.status_code == 200 and r.json()["StreamARN"].endswith(
        r.json()["StreamARN"].rsplit("/", 1)[1]
    )


def test_account_rate_limit(make_server: Any) -> None:
    srv = make_server(rate_limit_account=3.0)
    kv = srv.client("kinesisvideo")
    codes = []
    for _ in range(8):
        try:
            kv.list_streams()
            codes.append("ok")
        except Exception as exc:  # noqa: BLE001
            codes.append(exc.response["Error"]["Code"])  # type: ignore[attr-defined]
    assert codes[0] == "ok" and "ClientLimitExceededException" in codes


def test_plain_http_port_serves_api(server: ServerThread) -> None:
    r = signed_post(server, "/listStreams", b"{}", endpoint=server.http_endpoint)
    assert r.status_code == 200 and r.json() == {"StreamInfoList": []}


@pytest.mark.parametrize("path", ["/health"])
def test_health(server: ServerThread, path: str) -> None:
    r = requests.get(server.endpoint + path, verify=server.ca, timeout=10)
    assert r.status_code == 200 and r.json()["service"] == "openkvs"
