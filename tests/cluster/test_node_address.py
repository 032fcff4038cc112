"""``node_address``: where cameras and viewers reach this node for media. The TURN/STUN URIs that
GetIceServerConfig hands out name it (a TURN allocation lives on one node), and the storage
session's offer carries it as a host candidate; the API endpoints stay those of public_url."""

from __future__ import annotations

import asyncio
import re
from typing import Any

from openkvs.config import Settings
from openkvs.webrtc import net

from ..mediagen import h264_clip
from ..signaling.test_embedded_turn import _STUN_URI, _TURN_URI, embedded, ice_server_config
from ..support import free_port
from ..webrtc.harness import Camera, storage_channel, wait_for

NODE = "127.0.0.2"


async def test_stun_uris_name_the_node_address(make_server: Any) -> None:
    srv = make_server(no_turn=True, turn_port=free_port(), node_address=NODE)
    servers = await ice_server_config(srv, "cam")
    hosts = {m.group(1) for e in servers for u in e["Uris"] if (m := _STUN_URI.fullmatch(u))}
    assert hosts == {NODE}
    # The API endpoints are not the media address.
    ch, _ = storage_channel(srv, "endpoints")
    kv = srv.client("kinesisvideo")
    got = await asyncio.to_thread(
        kv.get_signaling_channel_endpoint,
        ChannelARN=ch,
        SingleMasterChannelEndpointConfiguration={"Protocols": ["WSS", "HTTPS"], "Role": "MASTER"},
    )
    endpoints = [e["ResourceEndpoint"] for e in got["ResourceEndpointList"]]
    assert endpoints and not any(NODE in e for e in endpoints)


async def test_turn_uris_name_the_node_address(make_server: Any) -> None:
    srv = embedded(make_server, node_address=NODE)
    servers = await ice_server_config(srv, "cam")
    uris = [u for e in servers for u in e["Uris"]]
    turns = [m for u in uris if (m := _TURN_URI.fullmatch(u))]
    assert turns and {m.group(1) for m in turns} == {NODE}, uris


async def test_the_storage_sessions_offer_advertises_the_node_address(make_server: Any) -> None:
    srv = make_server(node_address=NODE)
    ch, _ = storage_channel(srv, "addr")
    cam = Camera(srv, ch, h264_clip(seconds=0.5), None)
    await cam.connect()
    try:
        await asyncio.to_thread(cam.join)
        await wait_for(lambda: cam.offers == 1, 10)
        (sdp,) = [p["sdp"] for _, kind, p in cam.messages if kind == "SDP_OFFER"]
        hosts = re.findall(r"a=candidate:\S+ \d+ udp \d+ (\S+) \d+ typ host", sdp)
        assert NODE in hosts, sdp
    finally:
        await cam.close()


def test_advertised_hosts() -> None:
    def hosts(**values: Any) -> tuple[str, ...]:
        return net.advertised_hosts(Settings.load({}, None, values))

    assert hosts() == ()
    assert hosts(node_address=NODE) == (NODE,)
    assert hosts(node_address="[::1]") == ("::1",)
    assert hosts(node_address="media.example.com") == ()  # a name is no candidate address
    assert hosts(node_address=NODE, webrtc_advertised_hosts=["10.0.0.1", NODE]) == (
        NODE,
        "10.0.0.1",
    )
