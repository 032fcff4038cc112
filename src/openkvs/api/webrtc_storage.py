"""JoinStorageSession / JoinStorageSessionAsViewer (``kinesis-video-webrtc-storage``).

Status codes follow the seed contract (480–483) unless ``--aws-error-codes`` is set; see
``protocol.SEED_STATUS``. The call answers 200 with an empty body as soon as the join is
accepted; the storage session then offers to the participant over its signaling connection. With
several nodes the join runs on the node that runs the channel's sessions (``signaling/cluster.py``).
"""

from __future__ import annotations

from typing import Any

from ..errors import (
    ClientLimitExceededException,
    InvalidArgumentException,
    ResourceNotFoundException,
)
from ..ops.events import STORAGE_SESSION_STARTED
from ..records import Channel, Stream
from .context import Handlers, RequestContext

handlers = Handlers("kinesis-video-webrtc-storage")


def _resolve(ctx: RequestContext, channel_arn: str) -> tuple[Channel, Stream]:
    ctx.services.health.refuse_if_draining()
    control = ctx.services.control
    channel = control.channel_by_arn(channel_arn)
    if channel is None:
        raise ResourceNotFoundException(f"The channel {channel_arn} does not exist.")
    ctx.authorize(channel.arn)
    if channel.storage_status != "ENABLED":
        raise InvalidArgumentException(
            f"Media storage is not ENABLED for channel {channel.name}: call "
            "UpdateMediaStorageConfiguration first."
        )
    stream = control.storage_stream(channel)
    if stream is None:
        raise InvalidArgumentException(
            f"The stream configured for media storage on channel {channel.name} no longer exists."
        )
    if not ctx.services.join_limiter.allow(channel.arn):
        raise ClientLimitExceededException(
            f"Too many JoinStorageSession calls for channel {channel.name}; try again later."
        )
    return channel, stream


@handlers.operation("JoinStorageSession")
async def join_storage_session(ctx: RequestContext, p: dict[str, Any]) -> None:
    channel, stream = _resolve(ctx, p["channelArn"])
    await ctx.services.joins.join_master(channel, stream)
    ctx.services.events.publish(
        STORAGE_SESSION_STARTED, ChannelARN=channel.arn, StreamARN=stream.arn, role="master"
    )


@handlers.operation("JoinStorageSessionAsViewer")
async def join_storage_session_as_viewer(ctx: RequestContext, p: dict[str, Any]) -> None:
    client_id = p["clientId"]
    if client_id.upper().startswith("AWS_"):
        raise InvalidArgumentException("clientId must not start with AWS_.")
    channel, stream = _resolve(ctx, p["channelArn"])
    await ctx.services.joins.join_viewer(channel, stream, client_id)
    ctx.services.events.publish(
        STORAGE_SESSION_STARTED,
        ChannelARN=channel.arn,
        StreamARN=stream.arn,
        role="viewer",
        clientId=client_id,
    )
