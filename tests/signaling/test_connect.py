"""ConnectAsMaster / ConnectAsViewer: presigned SigV4 query auth, policies, and the refusals made
before the WebSocket upgrade (status, x-amzn-ErrorType and JSON body)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
import requests

from ..support import ServerThread
from .kvs import Client, Rejected, amz_now, connect_rejected, presigned_url, setup_channel

ARN_SHAPE = "arn:aws:kinesisvideo:us-east-1:000000000000:channel/{}/1700000000000"


def assert_shape(r: Rejected, status: int, error_type: str) -> str:
    assert (r.status, r.error_type) == (status, error_type), r
    assert r.body["message"] == r.body["Message"] and r.body["message"]
    message: str = r.body["message"]
    return message


async def test_master_and_viewer_connect_on_both_ports(server: ServerThread) -> None:
    arn = setup_channel(server, "both")
    for tls in (True, False):
        master = await Client.connect(server, arn, tls=tls)
        viewer = await Client.connect(server, arn, "viewer-1", tls=tls)
        await viewer.send("SDP_OFFER", {"type": "offer", "sdp": "v=0"})
        event = await master.recv()
        assert event["senderClientId"] == "viewer-1" and event["messageType"] == "SDP_OFFER"
        await viewer.close()
        await master.close()


async def test_wss_subprotocol_is_echoed(server: ServerThread) -> None:
    """The KVS WebRTC C SDK asks for the ``wss`` subprotocol (libwebsockets); it is answered in
    Sec-WebSocket-Protocol. A client that asks for none gets none."""
    arn = setup_channel(server, "subprotocol")
    master = await Client.connect(server, arn, protocols=("wss",))
    viewer = await Client.connect(server, arn, "viewer-1", protocols=("wss",))
    plain = await Client.connect(server, arn, "viewer-2")
    try:
        assert master.ws.protocol == "wss" and viewer.ws.protocol == "wss"
        assert plain.ws.protocol is None
        await viewer.send("SDP_OFFER", {"type": "offer", "sdp": "v=0"})
        assert (await master.recv())["messageType"] == "SDP_OFFER"
    finally:
        for c in (plain, viewer, master):
            await c.close()


async def test_bad_channel_arn(server: ServerThread) -> None:
    for arn in ("not-an-arn", "arn:aws:kinesisvideo:us-east-1:000000000000:stream/s/1"):
        r = await connect_rejected(server, presigned_url(server, arn))
        assert "X-Amz-ChannelARN must be a signaling channel ARN" in assert_shape(
            r, 400, "InvalidArgumentException"
        )
    url = presigned_url(server, "", extra=[])
    r = await connect_rejected(server, url.replace("X-Amz-ChannelARN=&", ""))
    assert_shape(r, 400, "InvalidArgumentException")


async def test_unknown_channel(server: ServerThread) -> None:
    arn = ARN_SHAPE.format("nope")
    r = await connect_rejected(server, presigned_url(server, arn))
    assert assert_shape(r, 404, "ResourceNotFoundException") == (
        f"The requested channel is not found or not active: {arn}"
    )


async def test_expired_presigned_url(server: ServerThread) -> None:
    arn = setup_channel(server, "exp")
    url = presigned_url(server, arn, "v1", amz_date=amz_now(-300), expires=299)
    message = assert_shape(await connect_rejected(server, url), 403, "AccessDeniedException")
    # The C SDK treats a 403 mentioning "Signature expired" as clock skew.
    assert message.startswith("Signature expired: ")
    # The same age is fine with a longer expiry.
    ok = await Client.connect(server, arn, "v1", amz_date=amz_now(-300), expires=600)
    await ok.close()


async def test_presigned_url_from_the_future(server: ServerThread) -> None:
    arn = setup_channel(server, "future")
    url = presigned_url(server, arn, amz_date=amz_now(20 * 60))
    message = assert_shape(await connect_rejected(server, url), 403, "AccessDeniedException")
    assert message.startswith("Signature not yet current: ")


async def test_wrong_key(server: ServerThread) -> None:
    arn = setup_channel(server, "keys")
    akid, secret = server.keys
    unknown = presigned_url(server, arn, keys=("AKIAUNKNOWN000000000", secret))
    assert assert_shape(await connect_rejected(server, unknown), 403, "AccessDeniedException") == (
        "The security token included in the request is invalid."
    )
    wrong = presigned_url(server, arn, keys=(akid, secret[:-1] + "x"))
    message = assert_shape(await connect_rejected(server, wrong), 403, "AccessDeniedException")
    assert message.startswith("The request signature we calculated does not match")


async def test_query_changed_after_signing(server: ServerThread) -> None:
    arn = setup_channel(server, "tamper")
    url = presigned_url(server, arn, "viewer-a")
    tampered = url.replace("X-Amz-ClientId=viewer-a", "X-Amz-ClientId=viewer-b")
    assert tampered != url
    assert_shape(await connect_rejected(server, tampered), 403, "AccessDeniedException")


@pytest.mark.parametrize(
    "client_id", ["AWS_camera", "aws_Camera", "has space", "", "x" * 257, "semi;colon"]
)
async def test_viewer_client_id_rules(server: ServerThread, client_id: str) -> None:
    arn = setup_channel(server, "ids")
    r = await connect_rejected(server, presigned_url(server, arn, client_id))
    assert_shape(r, 400, "InvalidArgumentException")


async def test_policy_actions(make_server: Callable[..., ServerThread]) -> None:
    policy = {
        "Statement": [
            {
                "Effect": "Allow",
                "Action": ["kinesisvideo:ConnectAsViewer"],
                "Resource": "arn:aws:kinesisvideo:*:*:channel/cam-*",
            }
        ]
    }
    creds: list[dict[str, Any]] = [
        {
            "access_key_id": "AKIAVIEWERONLY000001",
            "secret_access_key": "viewer-secret",
            "policy": policy,
        }
    ]
    server = make_server(credentials=creds)
    cam = setup_channel(server, "cam-1")
    other = setup_channel(server, "lobby")
    keys = ("AKIAVIEWERONLY000001", "viewer-secret")
    viewer = await Client.connect(server, cam, "v1", keys=keys)
    await viewer.close()
    r = await connect_rejected(server, presigned_url(server, cam, keys=keys))
    message = assert_shape(r, 403, "AccessDeniedException")
    assert message == (
        "User: AKIAVIEWERONLY000001 is not authorized to perform: kinesisvideo:ConnectAsMaster "
        f"on resource: {cam}"
    )
    r = await connect_rejected(server, presigned_url(server, other, "v1", keys=keys))
    assert_shape(r, 403, "AccessDeniedException")


async def test_security_token_is_part_of_the_signed_query(
    make_server: Callable[..., ServerThread],
) -> None:
    creds = [
        {
            "access_key_id": "ASIATEMPORARY0000001",
            "secret_access_key": "temp-secret",
            "session_token": "session-token-123",
        }
    ]
    server = make_server(credentials=creds)
    arn = setup_channel(server, "tok")
    keys = ("ASIATEMPORARY0000001", "temp-secret")
    ok = await Client.connect(server, arn, keys=keys, token="session-token-123")
    await ok.close()
    missing = presigned_url(server, arn, keys=keys)
    assert_shape(await connect_rejected(server, missing), 403, "AccessDeniedException")
    # Appended after signing (the way some services accept it): not signed, so refused.
    unsigned = missing + "&X-Amz-Security-Token=session-token-123"
    assert_shape(await connect_rejected(server, unsigned), 403, "AccessDeniedException")
    wrong = presigned_url(server, arn, keys=keys, token="another-token")
    assert_shape(await connect_rejected(server, wrong), 403, "AccessDeniedException")


async def test_viewer_cap(make_server: Callable[..., ServerThread]) -> None:
    server = make_server(signaling_max_viewers=2)
    arn = setup_channel(server, "cap")
    a = await Client.connect(server, arn, "a")
    b = await Client.connect(server, arn, "b")
    r = await connect_rejected(server, presigned_url(server, arn, "c"))
    assert assert_shape(r, 400, "ClientLimitExceededException") == (
        "The maximum number of viewers (2) are already connected to channel cap."
    )
    # The master does not count, and a viewer reconnecting with its ClientId replaces itself.
    master = await Client.connect(server, arn)
    b2 = await Client.connect(server, arn, "b")
    assert (await b.recv())["messageType"] == "GO_AWAY"
    await a.close()
    c = await Client.connect(server, arn, "c")  # a's place is free again
    for client in (b, b2, c, master):
        await client.close()


def test_plain_get_is_not_a_websocket(server: ServerThread) -> None:
    arn = setup_channel(server, "plain")
    url = presigned_url(server, arn, tls=True).replace("wss://", "https://")
    r = requests.get(url, verify=server.ca, timeout=10)
    assert r.status_code == 400 and r.headers["x-amzn-ErrorType"] == "InvalidArgumentException"
    assert "open a WebSocket" in r.json()["message"]
