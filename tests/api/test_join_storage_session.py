"""JoinStorageSession / JoinStorageSessionAsViewer: the seed contract (status codes 480–483,
SigV4 in the Authorization header or as separate X-Amz-* headers) and the AWS-codes switch."""

from __future__ import annotations

import datetime as _dt
import json
import time
from typing import Any
from unittest import mock

import pytest
import requests
from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials
from botocore.exceptions import ClientError

from openkvs.control.sessions import RecordingSessions

from ..support import ServerThread


@pytest.fixture
def server(make_server: Any) -> ServerThread:
    # The API side only: joins are recorded by the sessions seam, no WebRTC peer is started.
    srv: ServerThread = make_server(webrtc_enabled=False)
    return srv


def setup_channel(server: ServerThread, name: str = "ch", storage: bool = True) -> tuple[str, str]:
    kv = server.client("kinesisvideo")
    ch = kv.create_signaling_channel(ChannelName=name)["ChannelARN"]
    st = kv.create_stream(StreamName=f"{name}-stream", DataRetentionInHours=1)["StreamARN"]
    if storage:
        kv.update_media_storage_configuration(
            ChannelARN=ch, MediaStorageConfiguration={"StreamARN": st, "Status": "ENABLED"}
        )
    return ch, st


def storage_client(server: ServerThread, **kw: Any) -> Any:
    kv = server.client("kinesisvideo")
    ch_arn = kv.list_signaling_channels()["ChannelInfoList"][0]["ChannelARN"]
    endpoint = next(
        e["ResourceEndpoint"]
        for e in kv.get_signaling_channel_endpoint(
            ChannelARN=ch_arn,
            SingleMasterChannelEndpointConfiguration={"Protocols": ["WEBRTC"], "Role": "MASTER"},
        )["ResourceEndpointList"]
    )
    return server.client("kinesis-video-webrtc-storage", endpoint=endpoint, **kw)


def seed_request(
    server: ServerThread,
    path: str,
    body: dict[str, Any],
    *,
    keys: tuple[str, str] | None = None,
    separate: bool = True,
    tamper: str | None = None,
    date_offset: float = 0,
) -> requests.Response:
    """Sign with botocore, then send the SigV4 parts the seed's way: separate X-Amz-* headers."""
    akid, secret = keys or server.keys
    data = json.dumps(body).encode()
    url = server.endpoint + path
    req = AWSRequest(
        method="POST", url=url, data=data, headers={"Content-Type": "application/json"}
    )
    signer = SigV4Auth(Credentials(akid, secret), "kinesisvideo", "us-east-1")
    if date_offset:
        # The client's clock is off: botocore reads it through get_current_datetime.
        skewed = _dt.datetime.now(_dt.UTC) + _dt.timedelta(seconds=date_offset)
        with mock.patch("botocore.auth.get_current_datetime", return_value=skewed):
            signer.add_auth(req)
    else:
        signer.add_auth(req)
    headers = {k: v for k, v in req.headers.items()}
    if separate:
        auth = headers.pop("Authorization")
        headers["X-Amz-Algorithm"] = "AWS4-HMAC-SHA256"
        headers["X-Amz-Credential"] = auth.split("Credential=")[1].split(",")[0]
        headers["X-Amz-SignedHeaders"] = auth.split("SignedHeaders=")[1].split(",")[0]
        headers["X-Amz-Signature"] = auth.split("Signature=")[1]
    if tamper == "signature":
        key = "X-Amz-Signature" if separate else "Authorization"
        headers[key] = headers[key][:-4] + ("0000" if not headers[key].endswith("0000") else "1111")
    if tamper == "body":
        data = data.replace(b"}", b" }")
    return requests.post(url, data=data, headers=headers, verify=server.ca, timeout=10)


def test_join_master_accepted_and_recorded(server: ServerThread) -> None:
    ch, st = setup_channel(server)
    client = storage_client(server)
    t0 = time.perf_counter()
    resp = client.join_storage_session(channelArn=ch)
    assert resp["ResponseMetadata"]["HTTPStatusCode"] == 200
    assert time.perf_counter() - t0 < 1.0
    sessions = server.services.sessions
    assert isinstance(sessions, RecordingSessions)
    assert sessions.joins[-1].channel_arn == ch and sessions.joins[-1].stream_arn == st
    assert sessions.joins[-1].client_id is None

    client.join_storage_session_as_viewer(channelArn=ch, clientId="viewer-1")
    assert sessions.joins[-1].client_id == "viewer-1"


def test_seed_headers_form_and_empty_body(server: ServerThread) -> None:
    ch, _ = setup_channel(server)
    r = seed_request(server, "/joinStorageSession", {"channelArn": ch})
    assert r.status_code == 200 and r.content == b""
    r = seed_request(server, "/joinStorageSession", {"channelArn": ch}, separate=False)
    assert r.status_code == 200


@pytest.mark.parametrize(
    "case,status,code",
    [
        ("tampered-signature", 482, "AccessDeniedException"),
        ("tampered-body", 482, "AccessDeniedException"),
        ("expired", 482, "AccessDeniedException"),
        ("unknown-key", 482, "AccessDeniedException"),
        ("unknown-channel", 483, "ResourceNotFoundException"),
        ("bad-arn", 481, "InvalidArgumentException"),
        ("storage-disabled", 481, "InvalidArgumentException"),
    ],
)
def test_seed_status_codes(server: ServerThread, case: str, status: int, code: str) -> None:
    ch, _ = setup_channel(server, storage=case != "storage-disabled")
    body: dict[str, Any] = {"channelArn": ch}
    kw: dict[str, Any] = {}
    if case == "tampered-signature":
        kw["tamper"] = "signature"
    elif case == "tampered-body":
        kw["tamper"] = "body"
    elif case == "expired":
        kw["date_offset"] = -20 * 60
    elif case == "unknown-key":
        kw["keys"] = ("AKIAUNKNOWNKEY000000", "secret")
    elif case == "unknown-channel":
        body["channelArn"] = ch.rsplit("/", 1)[0] + "/1"
    elif case == "bad-arn":
        body["channelArn"] = "not-an-arn"
    r = seed_request(server, "/joinStorageSession", body, **kw)
    assert r.status_code == status, r.text
    assert r.headers["x-amzn-ErrorType"] == code
    assert r.json()["message"]
    if case == "expired":
        assert "Signature expired" in r.json()["message"]
    if case == "storage-disabled":
        assert "not ENABLED" in r.json()["message"]


def test_boto3_sees_error_names_with_seed_codes(server: ServerThread) -> None:
    ch, _ = setup_channel(server)
    client = storage_client(server)
    with pytest.raises(ClientError) as exc:
        client.join_storage_session(channelArn=ch.rsplit("/", 1)[0] + "/1")
    assert exc.value.response["Error"]["Code"] == "ResourceNotFoundException"
    assert exc.value.response["ResponseMetadata"]["HTTPStatusCode"] == 483


def test_aws_error_codes_switch(make_server: Any) -> None:
    srv = make_server(aws_error_codes=True, webrtc_enabled=False)
    ch, _ = setup_channel(srv)
    r = seed_request(srv, "/joinStorageSession", {"channelArn": ch.rsplit("/", 1)[0] + "/1"})
    assert r.status_code == 404 and r.headers["x-amzn-ErrorType"] == "ResourceNotFoundException"
    r = seed_request(srv, "/joinStorageSession", {"channelArn": ch}, tamper="signature")
    assert r.status_code == 403 and r.headers["x-amzn-ErrorType"] == "AccessDeniedException"
    r = seed_request(srv, "/joinStorageSession", {"channelArn": "x"})
    assert r.status_code == 400


def test_join_rate_limit(make_server: Any) -> None:
    srv = make_server(rate_limit_join_per_channel=2.0, webrtc_enabled=False)
    ch, _ = setup_channel(srv)
    statuses = [
        seed_request(srv, "/joinStorageSession", {"channelArn": ch}).status_code for _ in range(6)
    ]
    assert 480 in statuses and statuses[0] == 200
    r = seed_request(srv, "/joinStorageSession", {"channelArn": ch})
    if r.status_code == 480:
        assert r.headers["x-amzn-ErrorType"] == "ClientLimitExceededException"


def test_policy_denial(tmp_path: Any, make_server: Any) -> None:
    cfg = tmp_path / "openkvs.toml"
    cfg.write_text(
        """
[[credentials]]
access_key_id = "AKIALIMITED000000000"
secret_access_key = "limited-secret"
policy = { Statement = [
  { Effect = "Allow", Action = "kinesisvideo:*", Resource = "*" },
  { Effect = "Deny", Action = "kinesisvideo:JoinStorageSession", Resource = "arn:aws:kinesisvideo:*:*:channel/secret*" },
] }
"""
    )
    from openkvs.config import Settings

    creds = Settings.load({}, cfg).credentials
    srv = make_server(
        credentials=[
            {
                "access_key_id": c.access_key_id,
                "secret_access_key": c.secret_access_key,
                "policy": dict(c.policy or {}),
            }
            for c in creds
        ]
    )
    limited = ("AKIALIMITED000000000", "limited-secret")
    open_ch, _ = setup_channel(srv, "open")
    secret_ch, _ = setup_channel(srv, "secret-cam")
    assert (
        seed_request(srv, "/joinStorageSession", {"channelArn": open_ch}, keys=limited).status_code
        == 200
    )
    r = seed_request(srv, "/joinStorageSession", {"channelArn": secret_ch}, keys=limited)
    assert r.status_code == 482 and r.headers["x-amzn-ErrorType"] == "AccessDeniedException"
    assert "not authorized" in r.json()["message"]
    # The control plane maps a denial to the model's own error (401 there).
    deny_all = make_server(
        credentials=[
            {
                "access_key_id": "AKIADENY000000000000",
                "secret_access_key": "s",
                "policy": {
                    "Statement": [
                        {"Effect": "Allow", "Action": "kinesisvideo:Describe*", "Resource": "*"}
                    ]
                },
            }
        ]
    )
    kv = deny_all.client("kinesisvideo", keys=("AKIADENY000000000000", "s"))
    with pytest.raises(ClientError) as exc:
        kv.create_signaling_channel(ChannelName="nope")
    assert exc.value.response["Error"]["Code"] == "AccessDeniedException"
    assert exc.value.response["ResponseMetadata"]["HTTPStatusCode"] == 401
    with pytest.raises(ClientError) as exc:
        kv.list_streams()
    assert exc.value.response["Error"]["Code"] == "AccessDeniedException"
