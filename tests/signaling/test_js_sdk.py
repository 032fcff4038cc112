"""The official KVS WebRTC JS SDK (amazon-kinesis-video-streams-webrtc, in Node with `ws`) as
master and viewer against openkvs; endpoints and ICE servers from the AWS SDK for JavaScript v3."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest

from ..support import CI, ServerThread, need_tool
from .kvs import setup_channel

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = Path(__file__).with_name("js") / "sdk_roundtrip.js"

OFFER = {
    "type": "offer",
    "sdp": (
        "v=0\r\no=- 4611731400430051336 2 IN IP4 127.0.0.1\r\ns=-\r\nt=0 0\r\n"
        "a=group:BUNDLE 0\r\nm=video 9 UDP/TLS/RTP/SAVPF 102\r\nc=IN IP4 0.0.0.0\r\n"
        "a=mid:0\r\na=recvonly\r\na=rtpmap:102 H264/90000\r\n"
    ),
}
ANSWER = {
    "type": "answer",
    "sdp": OFFER["sdp"].replace("recvonly", "sendonly").replace("2 IN", "3 IN"),
}


def candidate(n: int, port: int) -> dict[str, object]:
    return {
        "candidate": f"candidate:{n} 1 udp 2122260223 127.0.0.1 {port} typ host generation 0",
        "sdpMid": "0",
        "sdpMLineIndex": 0,
    }


@pytest.mark.node
def test_js_sdk_master_and_viewer(make_server: Callable[..., ServerThread]) -> None:
    node = need_tool("node")
    if node is None:
        pytest.skip("node is not installed")
    if not (ROOT / "node_modules" / "amazon-kinesis-video-streams-webrtc").is_dir():
        if CI:
            raise RuntimeError("node_modules is missing under CI=true: run npm ci")
        pytest.skip("npm packages are not installed (npm ci)")
    server = make_server(turn_uris=("turn:127.0.0.1:3478?transport=udp",), turn_secret="js-secret")
    setup_channel(server, "js-channel")
    akid, secret = server.keys
    burst = 8
    config = {
        "endpoint": server.endpoint,
        "region": server.settings.region,
        "accessKeyId": akid,
        "secretAccessKey": secret,
        "channelName": "js-channel",
        "viewerId": "viewer-js-1",
        "offer": OFFER,
        "answer": ANSWER,
        "viewerCandidates": [candidate(1, 50001), candidate(2, 50002)],
        "masterCandidates": [candidate(3, 50003)],
        "burst": burst,
    }
    env = {
        "PATH": os.environ.get("PATH", ""),
        "HOME": os.environ.get("HOME", "/tmp"),
        "NODE_EXTRA_CA_CERTS": server.ca,
        "NODE_NO_WARNINGS": "1",
    }
    proc = subprocess.run(
        [node, str(SCRIPT), json.dumps(config)],
        capture_output=True,
        text=True,
        env=env,
        cwd=ROOT,
        timeout=90,
    )
    assert proc.returncode == 0, (proc.stdout, proc.stderr[-3000:])
    out = json.loads(proc.stdout.strip().splitlines()[-1])

    port = server.port
    assert out["endpoints"]["master"] == {
        "WSS": f"wss://127.0.0.1:{port}",
        "HTTPS": f"https://127.0.0.1:{port}",
    }
    for role, label in (("master", None), ("viewer", "viewer-js-1")):
        (ice,) = out["iceServers"][role]
        assert ice["Uris"] == ["turn:127.0.0.1:3478?transport=udp"]
        expiry, client = ice["Username"].split(":")
        assert expiry.isdigit() and (label is None or client == label)
        digest = hmac.new(b"js-secret", ice["Username"].encode(), hashlib.sha1).digest()
        assert ice["Password"] == base64.b64encode(digest).decode()

    master, viewer = out["master"], out["viewer"]
    assert master["errors"] == [] and viewer["errors"] == []
    assert master["offers"][0] == {"offer": OFFER, "remoteClientId": "viewer-js-1"}
    assert master["candidates"] == [
        {"candidate": c, "remoteClientId": "viewer-js-1"} for c in config["viewerCandidates"]
    ]
    assert viewer["answers"] == [{"answer": ANSWER, "remoteClientId": None}]
    assert viewer["candidates"] == [
        {"candidate": c, "remoteClientId": None} for c in config["masterCandidates"]
    ]
    # The correlated message that failed; the successful correlated ones brought nothing back.
    (status,) = master["statusResponses"]
    assert status["correlationId"] == "no-recipient-1"
    assert (status["errorType"], status["statusCode"], status["success"]) == (
        "InvalidArgumentException",
        "400",
        False,
    )
    # Offers beyond 5 per second on one connection were refused, each with a STATUS_RESPONSE.
    refused = viewer["statusResponses"]
    assert out["burstDelivered"] + len(refused) == burst
    assert 1 <= out["burstDelivered"] <= 5 and refused
    assert {r["errorType"] for r in refused} == {"ClientLimitExceededException"}
    assert {r["correlationId"] for r in refused} <= {f"burst-{i}" for i in range(burst)}
