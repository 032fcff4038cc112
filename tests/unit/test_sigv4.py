"""SigV4 verification against botocore's signer as the oracle, in all three request forms."""

from __future__ import annotations

import hashlib
import time
from typing import Any

import pytest
from botocore.auth import SigV4Auth, SigV4QueryAuth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials

from openkvs.auth import sigv4
from openkvs.errors import AuthFailure

AKID, SECRET = "AKIDEXAMPLE", "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY"
CREDS = Credentials(AKID, SECRET)


def lookup(akid: str) -> tuple[str, str | None] | None:
    return (SECRET, None) if akid == AKID else None


def sign(
    method: str,
    url: str,
    body: bytes = b"",
    headers: dict[str, str] | None = None,
    region: str = "us-east-1",
    creds: Credentials = CREDS,
) -> AWSRequest:
    req = AWSRequest(method=method, url=url, data=body, headers=headers or {})
    SigV4Auth(creds, "kinesisvideo", region).add_auth(req)
    return req


def verify(
    req: AWSRequest,
    *,
    now: float | None = None,
    body: bytes | None = None,
    headers: list[tuple[str, str]] | None = None,
    **kw: Any,
) -> sigv4.Identity:
    from urllib.parse import urlsplit

    parts = urlsplit(req.url)
    data = req.body if body is None else body
    if isinstance(data, str):
        data = data.encode()
    data = data or b""
    hdrs = (
        headers
        if headers is not None
        else [(k, v if isinstance(v, str) else v.decode()) for k, v in req.headers.items()]
    )
    if not any(k.lower() == "host" for k, _ in hdrs):
        hdrs.append(("Host", parts.netloc))
    return sigv4.verify(
        method=req.method,
        raw_path=parts.path or "/",
        raw_query=parts.query,
        headers=hdrs,
        body_sha256=lambda: hashlib.sha256(data).hexdigest(),
        lookup=lookup,
        now=time.time() if now is None else now,
        **kw,
    )


@pytest.mark.parametrize(
    "url",
    [
        "https://example.com/createStream",
        "https://example.com/",
        "https://example.com/v1/get-ice-server-config",
        "https://example.com/a/./b/../c//d",
        "https://example.com/%E1%88%B4/x%20y",
        "https://example.com/path?b=2&a=1&a=0",
        "https://example.com/path?k=v%20w&emptyval=&k2=%2F%3A",
        "https://example.com/path?X-Amz-ChannelARN=arn%3Aaws%3Akinesisvideo%3Aus-east-1%3A1%3Achannel%2Fc%2F1",
        "https://example.com:8443/path?utf8=%E2%82%AC",
    ],
)
def test_header_form_matches_botocore(url: str) -> None:
    req = sign("POST", url, b'{"a":1}', {"Content-Type": "application/json"})
    ident = verify(req)
    assert ident.access_key_id == AKID and ident.form == "header"


def test_multi_value_and_whitespace_headers() -> None:
    req = sign(
        "POST",
        "https://example.com/x",
        b"{}",
        {"X-Amz-Meta": "  a   b  ", "Content-Type": "application/json"},
    )
    hdrs = [(k, v) for k, v in req.headers.items()]
    # Same header, different inner whitespace: canonical form collapses it.
    hdrs = [(k, "a b" if k == "X-Amz-Meta" else v) for k, v in hdrs]
    assert verify(req, headers=hdrs).form == "header"


def test_repeated_signed_header_values_joined() -> None:
    req = AWSRequest(method="POST", url="https://example.com/x", data=b"")
    req.headers["X-Custom"] = "one"
    SigV4Auth(CREDS, "kinesisvideo", "us-east-1").add_auth(req)
    auth = req.headers["Authorization"]
    assert "x-custom" in auth
    # A tampered value fails.
    hdrs = [(k, "two" if k == "X-Custom" else v) for k, v in req.headers.items()]
    with pytest.raises(AuthFailure):
        verify(req, headers=hdrs)


def test_seed_form_separate_headers() -> None:
    req = sign("POST", "https://example.com/joinStorageSession", b'{"channelArn":"x"}')
    auth = req.headers["Authorization"]
    cred = auth.split("Credential=")[1].split(",")[0]
    signed = auth.split("SignedHeaders=")[1].split(",")[0]
    signature = auth.split("Signature=")[1]
    hdrs = [(k, v) for k, v in req.headers.items() if k != "Authorization"]
    hdrs += [
        ("X-Amz-Algorithm", "AWS4-HMAC-SHA256"),
        ("X-Amz-Credential", cred),
        ("X-Amz-SignedHeaders", signed),
        ("X-Amz-Signature", signature),
    ]
    ident = verify(req, headers=hdrs)
    assert ident.form == "headers"
    bad = [(k, ("0" * 64 if k == "X-Amz-Signature" else v)) for k, v in hdrs]
    with pytest.raises(AuthFailure, match="signature we calculated does not match"):
        verify(req, headers=bad)
    incomplete = [(k, v) for k, v in hdrs if k != "X-Amz-SignedHeaders"]
    with pytest.raises(AuthFailure) as exc:
        verify(req, headers=incomplete)
    assert exc.value.auth_code == "IncompleteSignatureException"


def test_query_presign_matches_botocore() -> None:
    req = AWSRequest(
        method="GET",
        url="https://example.com/?X-Amz-ChannelARN=arn%3Aaws%3Akinesisvideo%3Aus-west-2%3A1%3Achannel%2Fc%2F1&X-Amz-ClientId=viewer-1",
    )
    SigV4QueryAuth(CREDS, "kinesisvideo", "us-west-2", expires=299).add_auth(req)
    ident = verify(req, headers=[("Host", "example.com")])
    assert ident.form == "query" and ident.region == "us-west-2"


def test_query_presign_expired() -> None:
    req = AWSRequest(method="GET", url="https://example.com/?a=b")
    SigV4QueryAuth(CREDS, "kinesisvideo", "us-east-1", expires=60).add_auth(req)
    with pytest.raises(AuthFailure, match="Signature expired"):
        verify(req, headers=[("Host", "example.com")], now=time.time() + 120)


def test_presign_url_helper_roundtrip() -> None:
    amz = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    url = sigv4.presign_url(
        method="GET",
        scheme="wss",
        host="h:1",
        path="/",
        params=[("X-Amz-ChannelARN", "arn:aws:kinesisvideo:us-east-1:1:channel/c/1")],
        access_key_id=AKID,
        secret=SECRET,
        region="us-east-1",
        amz_date=amz,
        expires=299,
        security_token="tok+/=",
    )
    query = url.split("?", 1)[1]
    ident = sigv4.verify(
        method="GET",
        raw_path="/",
        raw_query=query,
        headers=[("Host", "h:1")],
        body_sha256=None,
        lookup=lookup,
        now=time.time(),
    )
    assert ident.form == "query"


def test_tampered_body_and_path() -> None:
    req = sign("POST", "https://example.com/createStream", b'{"StreamName":"a"}')
    with pytest.raises(AuthFailure):
        verify(req, body=b'{"StreamName":"b"}')
    req2 = sign("POST", "https://example.com/createStream", b"{}")
    req2.url = "https://example.com/deleteStream"
    with pytest.raises(AuthFailure):
        verify(req2)


def test_clock_skew() -> None:
    req = sign("POST", "https://example.com/x", b"{}")
    with pytest.raises(AuthFailure, match="Signature expired"):
        verify(req, now=time.time() + 16 * 60)
    with pytest.raises(AuthFailure, match="Signature not yet current"):
        verify(req, now=time.time() - 16 * 60)
    assert verify(req, now=time.time() + 14 * 60).form == "header"


def test_unknown_key_and_wrong_secret() -> None:
    req = sign("POST", "https://example.com/x", b"{}", creds=Credentials("AKIDUNKNOWN", SECRET))
    with pytest.raises(AuthFailure) as exc:
        verify(req)
    assert exc.value.auth_code == "UnrecognizedClientException"
    req = sign("POST", "https://example.com/x", b"{}", creds=Credentials(AKID, "wrong"))
    with pytest.raises(AuthFailure, match="does not match"):
        verify(req)


def test_wrong_service_scope() -> None:
    req = AWSRequest(method="POST", url="https://example.com/x", data=b"")
    SigV4Auth(CREDS, "s3", "us-east-1").add_auth(req)
    with pytest.raises(AuthFailure, match="correct service"):
        verify(req)


def test_payload_hash_header() -> None:
    body = b'{"x":1}'
    req = AWSRequest(
        method="POST",
        url="https://example.com/x",
        data=body,
        headers={"X-Amz-Content-SHA256": hashlib.sha256(body).hexdigest()},
    )
    SigV4Auth(CREDS, "kinesisvideo", "us-east-1").add_auth(req)
    assert verify(req).form == "header"
    with pytest.raises(AuthFailure, match="x-amz-content-sha256"):
        verify(req, body=b'{"x":2}')
    req = AWSRequest(
        method="POST",
        url="https://example.com/putMedia",
        data=b"",
        headers={"X-Amz-Content-SHA256": "STREAMING-AWS4-HMAC-SHA256-PAYLOAD"},
    )
    SigV4Auth(CREDS, "kinesisvideo", "us-east-1").add_auth(req)
    with pytest.raises(AuthFailure, match="only accepted by PutMedia"):
        verify(req)
    assert verify(req, allow_streaming=True).form == "header"


def test_missing_auth() -> None:
    req = AWSRequest(method="POST", url="https://example.com/x", data=b"")
    with pytest.raises(AuthFailure) as exc:
        verify(req, headers=[("Host", "example.com")])
    assert exc.value.auth_code == "MissingAuthenticationTokenException"


@pytest.mark.parametrize(
    "path,expected",
    [
        ("/", "/"),
        ("", "/"),
        ("/a/./b", "/a/b"),
        ("/a/../b", "/b"),
        ("//a//b/", "/a/b/"),
        ("/a%20b", "/a%2520b"),
        ("/~user", "/~user"),
    ],
)
def test_canonical_uri(path: str, expected: str) -> None:
    assert sigv4.canonical_uri(path) == expected


def _verify_streamed(req: AWSRequest, **kw: Any) -> sigv4.Identity:
    """Verify ``req`` as the dispatcher verifies a streaming operation: the body is never hashed."""
    hdrs = [(k, v if isinstance(v, str) else v.decode()) for k, v in req.headers.items()]
    hdrs.append(("Host", "example.com"))
    return sigv4.verify(
        method=req.method,
        raw_path="/putMedia",
        raw_query="",
        headers=hdrs,
        body_sha256=None,
        lookup=lookup,
        now=time.time(),
        **kw,
    )


def test_streamed_body_signed_as_empty_without_payload_header() -> None:
    # The KVS Producer SDK's PutMedia: payload hash of "" and no x-amz-content-sha256 header.
    req = AWSRequest(method="POST", url="https://example.com/putMedia", data=b"")
    SigV4Auth(CREDS, "kinesisvideo", "us-east-1").add_auth(req)
    assert "X-Amz-Content-SHA256" not in req.headers
    assert _verify_streamed(req, allow_streaming=True).form == "header"
    with pytest.raises(AuthFailure, match="streams its body"):
        _verify_streamed(req)
    # The signature still covers the headers.
    req.headers["X-Amz-Date"] = req.headers["X-Amz-Date"][:-2] + "00"
    with pytest.raises(AuthFailure, match="does not match"):
        _verify_streamed(req, allow_streaming=True)


def test_non_streamed_body_signed_as_empty_is_refused() -> None:
    # The same relaxation does not apply when the body is read and hashed.
    req = AWSRequest(method="POST", url="https://example.com/describeStream", data=b"")
    SigV4Auth(CREDS, "kinesisvideo", "us-east-1").add_auth(req)
    assert verify(req, body=b"").form == "header"
    with pytest.raises(AuthFailure, match="does not match"):
        verify(req, body=b'{"StreamName":"x"}')
    with pytest.raises(AuthFailure, match="does not match"):
        verify(req, body=b'{"StreamName":"x"}', allow_streaming=True)
