"""HTTPS signaling with boto3 (``kinesis-video-signaling``): GetIceServerConfig and
SendAlexaOfferToMaster, on the HTTPS endpoint that GetSignalingChannelEndpoint returns."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import time
from collections.abc import Callable
from typing import Any

import pytest
from botocore.exceptions import ClientError

from ..support import ServerThread
from .kvs import Client, b64json, enable_storage, setup_channel, unb64json

TURN_URIS = ("turn:127.0.0.1:3478?transport=udp", "turn:127.0.0.1:3478?transport=tcp")


def signaling_client(server: ServerThread, channel_arn: str, **kw: Any) -> Any:
    kv = server.client("kinesisvideo", **kw)
    endpoints = kv.get_signaling_channel_endpoint(
        ChannelARN=channel_arn,
        SingleMasterChannelEndpointConfiguration={"Protocols": ["HTTPS"], "Role": "VIEWER"},
    )["ResourceEndpointList"]
    https = next(e["ResourceEndpoint"] for e in endpoints if e["Protocol"] == "HTTPS")
    return server.client("kinesis-video-signaling", endpoint=https, **kw)


def error(exc: pytest.ExceptionInfo[ClientError]) -> tuple[int, str, str]:
    r = exc.value.response
    return (
        r["ResponseMetadata"]["HTTPStatusCode"],
        r["Error"]["Code"],
        r["Error"]["Message"],
    )


def test_no_turn_means_stun_entries(server: ServerThread) -> None:
    # The test fixture runs with no_turn: two STUN entries, never an empty list.
    arn = setup_channel(server, "noturn")
    sig = signaling_client(server, arn)
    servers = sig.get_ice_server_config(ChannelARN=arn)["IceServerList"]
    port = server.services.ice.port
    assert [s["Uris"] for s in servers] == [[f"stun:127.0.0.1:{port}"]] * 2
    assert all(s["Ttl"] == 3600 and s["Username"] and s["Password"] for s in servers)


def test_turn_credentials(make_server: Callable[..., ServerThread]) -> None:
    server = make_server(turn_uris=TURN_URIS, turn_secret="shared-secret", turn_ttl=300)
    arn = setup_channel(server, "turn")
    sig = signaling_client(server, arn)
    before = int(time.time())
    servers = sig.get_ice_server_config(ChannelARN=arn, ClientId="viewer-3", Service="TURN")[
        "IceServerList"
    ]
    after = int(time.time())
    assert len(servers) == 1
    (entry,) = servers
    assert entry["Uris"] == list(TURN_URIS) and entry["Ttl"] == 300
    expiry, client_id = entry["Username"].split(":")
    assert client_id == "viewer-3" and before + 300 <= int(expiry) <= after + 300
    digest = hmac.new(b"shared-secret", entry["Username"].encode(), hashlib.sha1).digest()
    assert entry["Password"] == base64.b64encode(digest).decode()
    # Without a ClientId (the JS SDK sends only the ARN) the username still has the scheme.
    anon = sig.get_ice_server_config(ChannelARN=arn)["IceServerList"][0]
    assert anon["Username"].split(":")[0].isdigit() and anon["Username"].split(":")[1]


def test_ice_config_errors(make_server: Callable[..., ServerThread]) -> None:
    policy = {
        "Statement": [{"Effect": "Allow", "Action": "kinesisvideo:GetSignalingChannelEndpoint"}]
    }
    creds = [{"access_key_id": "AKIANOICE00000000001", "secret_access_key": "s", "policy": policy}]
    server = make_server(credentials=creds, turn_uris=TURN_URIS, turn_secret="x")
    arn = setup_channel(server, "errs")
    sig = signaling_client(server, arn)
    missing = arn.replace("errs", "gone")
    with pytest.raises(ClientError) as info:
        sig.get_ice_server_config(ChannelARN=missing)
    assert error(info)[:2] == (404, "ResourceNotFoundException")
    denied = signaling_client(server, arn, keys=("AKIANOICE00000000001", "s"))
    with pytest.raises(ClientError) as info:
        denied.get_ice_server_config(ChannelARN=arn)
    assert error(info)[:2] == (401, "NotAuthorizedException")
    with pytest.raises(ClientError) as info:
        sig.get_ice_server_config(ChannelARN=arn, ClientId="bad id")
    assert error(info)[:2] == (400, "InvalidArgumentException")


async def answer_one_offer(master: Client, answer: dict[str, str]) -> dict[str, Any]:
    event = await master.recv(timeout=10)
    # Candidates for an Alexa client have nowhere to go: dropped without complaint.
    await master.send("ICE_CANDIDATE", {"candidate": ""}, event["senderClientId"], "ice")
    await master.send("SDP_ANSWER", answer, recipient=event["senderClientId"], correlation_id="a")
    return event


async def test_send_alexa_offer_to_master(server: ServerThread) -> None:
    arn = setup_channel(server, "alexa")
    sig = signaling_client(server, arn)
    master = await Client.connect(server, arn)
    offer, answer = {"type": "offer", "sdp": "alexa"}, {"type": "answer", "sdp": "master"}
    call = asyncio.to_thread(
        sig.send_alexa_offer_to_master,
        ChannelARN=arn,
        SenderClientId="alexa-1",
        MessagePayload=b64json(offer),
    )
    result, event = await asyncio.gather(call, answer_one_offer(master, answer))
    assert event == {
        "senderClientId": "alexa-1",
        "messageType": "SDP_OFFER",
        "messagePayload": b64json(offer),
    }
    assert unb64json(result["Answer"]) == answer
    await master.expect_nothing(0.3)  # no STATUS_RESPONSE for the candidate or the answer
    await master.close()


async def test_alexa_offer_waits_for_the_master(server: ServerThread) -> None:
    arn = setup_channel(server, "alexa-wait", ttl=10)
    sig = signaling_client(server, arn)
    call = asyncio.ensure_future(
        asyncio.to_thread(
            sig.send_alexa_offer_to_master,
            ChannelARN=arn,
            SenderClientId="alexa-2",
            MessagePayload=b64json({"type": "offer", "sdp": "o"}),
        )
    )
    await asyncio.sleep(1.0)
    assert not call.done()
    master = await Client.connect(server, arn)
    await answer_one_offer(master, {"type": "answer", "sdp": "late"})
    assert unb64json((await call)["Answer"]) == {"type": "answer", "sdp": "late"}
    await master.close()


def test_alexa_offer_times_out_after_the_channel_ttl(server: ServerThread) -> None:
    arn = setup_channel(server, "alexa-timeout", ttl=5)
    sig = signaling_client(server, arn)
    started = time.monotonic()
    with pytest.raises(ClientError) as info:
        sig.send_alexa_offer_to_master(
            ChannelARN=arn, SenderClientId="alexa-3", MessagePayload=b64json({"sdp": "o"})
        )
    assert 4.5 < time.monotonic() - started < 15
    assert error(info) == (
        404,
        "ResourceNotFoundException",
        "The master of channel alexa-timeout did not answer within 5 seconds (the channel's "
        "MessageTtlSeconds).",
    )


def test_alexa_offer_refusals(server: ServerThread) -> None:
    arn = setup_channel(server, "alexa-no")
    sig = signaling_client(server, arn)
    with pytest.raises(ClientError) as info:
        sig.send_alexa_offer_to_master(ChannelARN=arn, SenderClientId="a", MessagePayload="abc")
    assert error(info) == (400, "InvalidArgumentException", "MessagePayload is not valid base64.")
    enable_storage(server, arn, "alexa-no-stream")
    with pytest.raises(ClientError) as info:
        sig.send_alexa_offer_to_master(ChannelARN=arn, SenderClientId="a", MessagePayload="eA==")
    assert error(info)[:2] == (400, "InvalidArgumentException")
    assert "Media storage is enabled" in error(info)[2]
