"""HTTPS signaling (``kinesis-video-signaling``, 2019-12-04): GetIceServerConfig and
SendAlexaOfferToMaster, served on the channel's HTTPS endpoint."""

from __future__ import annotations

from typing import Any

from .. import ids
from ..errors import InvalidArgumentException
from ..signaling.messages import valid_base64
from .context import Handlers, RequestContext

handlers = Handlers("kinesis-video-signaling")


@handlers.operation("GetIceServerConfig")
async def get_ice_server_config(ctx: RequestContext, p: dict[str, Any]) -> dict[str, Any]:
    """Two TURN server sets with coturn REST-API credentials (the embedded coturn, or the
    configured ``turn_uris``), or STUN-only entries when there is no TURN server: never empty."""
    channel = ctx.services.control.get_channel(arn=p["ChannelARN"])
    ctx.authorize(channel.arn)
    # The username's second half only labels the allocation in coturn's logs and quotas; the
    # JS SDK sends no ClientId, so such callers get a random label.
    client_id = p.get("ClientId") or p.get("Username") or ids.token(9)
    ice = ctx.services.ice
    return {"IceServerList": ice.server_list(client_id, ctx.request.headers.get("Host"))}


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
