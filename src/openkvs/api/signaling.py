"""HTTPS signaling (``kinesis-video-signaling``, 2019-12-04): GetIceServerConfig and
SendAlexaOfferToMaster, served on the channel's HTTPS endpoint."""

from __future__ import annotations

from typing import Any

from .. import clock, ids
from ..errors import InvalidArgumentException
from ..signaling.messages import valid_base64
from ..signaling.turn import ice_server_list
from .context import Handlers, RequestContext

handlers = Handlers("kinesis-video-signaling")


@handlers.operation("GetIceServerConfig")
async def get_ice_server_config(ctx: RequestContext, p: dict[str, Any]) -> dict[str, Any]:
    """TURN servers from the configuration with coturn REST-API credentials; an empty list when
    no TURN server (or no shared secret) is configured."""
    channel = ctx.services.control.get_channel(arn=p["ChannelARN"])
    ctx.authorize(channel.arn)
    settings = ctx.services.settings
    # The username's second half only labels the allocation in coturn's logs and quotas; the
    # JS SDK sends no ClientId, so such callers get a random label.
    client_id = p.get("ClientId") or p.get("Username") or ids.token(9)
    return {
        "IceServerList": ice_server_list(
            uris=settings.turn_uris,
            secret=settings.turn_secret,
            ttl=settings.turn_ttl,
            client_id=client_id,
            now=clock.now(),
        )
    }


@handlers.operation("SendAlexaOfferToMaster")
async def send_alexa_offer_to_master(ctx: RequestContext, p: dict[str, Any]) -> dict[str, Any]:
    """Give the master the offer as an SDP_OFFER from ``SenderClientId`` and return its answer,
    waiting up to the channel's MessageTtlSeconds (then ResourceNotFoundException)."""
    channel = ctx.services.control.get_channel(arn=p["ChannelARN"])
    ctx.authorize(channel.arn)
    payload = p["MessagePayload"]
    if not valid_base64(payload):
        raise InvalidArgumentException("MessagePayload is not valid base64.")
    answer = await ctx.services.hub.alexa_offer(channel, p["SenderClientId"], payload)
    return {"Answer": answer}
