"""The control plane (``kinesisvideo``, 2017-09-30): wire work only; logic is in control/."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from ..control.resources import paginate
from ..errors import InvalidArgumentException, NoDataRetentionException
from ..ops.events import CHANNEL_CREATED, CHANNEL_DELETED, STREAM_CREATED, STREAM_DELETED
from ..records import Channel, Stream
from .context import Handlers, RequestContext
from .endpoints import base_url

handlers = Handlers("kinesisvideo")

# In the model, not served yet (answered with UnsupportedOperationException).
UNSUPPORTED = (
    "DeleteEdgeConfiguration",
    "DescribeEdgeConfiguration",
    "ListEdgeAgentConfigurations",
    "StartEdgeConfigurationUpdate",
)


def channel_info(c: Channel) -> dict[str, Any]:
    return {
        "ChannelName": c.name,
        "ChannelARN": c.arn,
        "ChannelType": c.channel_type,
        "ChannelStatus": c.status,
        "CreationTime": c.created,
        "SingleMasterConfiguration": {"MessageTtlSeconds": c.message_ttl},
        "Version": c.version,
    }


def stream_info(s: Stream) -> dict[str, Any]:
    return {
        "DeviceName": s.device_name,
        "StreamName": s.name,
        "StreamARN": s.arn,
        "MediaType": s.media_type,
        "KmsKeyId": s.kms_key_id,
        "Version": s.version,
        "Status": s.status,
        "CreationTime": s.created,
        "DataRetentionInHours": s.retention_hours,
    }


def _arn_prefix(ctx: RequestContext, kind: str, name: str) -> str:
    s = ctx.services.settings
    return f"arn:aws:kinesisvideo:{s.region}:{s.account_id}:{kind}/{name}/*"


def _tag_list(tags: list[dict[str, str]] | None) -> dict[str, str]:
    out: dict[str, str] = {}
    for t in tags or []:
        out[t["Key"]] = t["Value"]
    return out


# -- signaling channels ------


@handlers.operation("CreateSignalingChannel")
async def create_signaling_channel(ctx: RequestContext, p: dict[str, Any]) -> dict[str, Any]:
    ctx.authorize(_arn_prefix(ctx, "channel", p["ChannelName"]))
    cfg = p.get("SingleMasterConfiguration") or {}
    channel = await ctx.services.control.create_channel(
        name=p["ChannelName"],
        channel_type=p.get("ChannelType", "SINGLE_MASTER"),
        message_ttl=cfg.get("MessageTtlSeconds", 60),
        tags=_tag_list(p.get("Tags")),
    )
    ctx.services.events.publish(CHANNEL_CREATED, ChannelARN=channel.arn, ChannelName=channel.name)
    return {"ChannelARN": channel.arn}


@handlers.operation("DescribeSignalingChannel")
async def describe_signaling_channel(ctx: RequestContext, p: dict[str, Any]) -> dict[str, Any]:
    channel = ctx.services.control.get_channel(name=p.get("ChannelName"), arn=p.get("ChannelARN"))
    ctx.authorize(channel.arn)
    return {"ChannelInfo": channel_info(channel)}


@handlers.operation("ListSignalingChannels")
async def list_signaling_channels(ctx: RequestContext, p: dict[str, Any]) -> dict[str, Any]:
    ctx.authorize("*")
    cond = p.get("ChannelNameCondition") or {}
    prefix = cond.get("ComparisonValue") if cond else None
    channels = {c.name: c for c in ctx.services.control.list_channels(prefix)}
    page, token = paginate(sorted(channels), p.get("MaxResults", 500), p.get("NextToken"))
    return {"ChannelInfoList": [channel_info(channels[n]) for n in page], "NextToken": token}


@handlers.operation("UpdateSignalingChannel")
async def update_signaling_channel(ctx: RequestContext, p: dict[str, Any]) -> dict[str, Any]:
    channel = ctx.services.control.get_channel(arn=p["ChannelARN"])
    ctx.authorize(channel.arn)
    cfg = p.get("SingleMasterConfiguration") or {}
    await ctx.services.control.update_channel(
        arn=channel.arn,
        current_version=p["CurrentVersion"],
        message_ttl=cfg.get("MessageTtlSeconds"),
    )
    return {}


@handlers.operation("DeleteSignalingChannel")
async def delete_signaling_channel(ctx: RequestContext, p: dict[str, Any]) -> dict[str, Any]:
    channel = ctx.services.control.get_channel(arn=p["ChannelARN"])
    ctx.authorize(channel.arn)
    await ctx.services.control.delete_channel(
        arn=channel.arn, current_version=p.get("CurrentVersion")
    )
    ctx.services.events.publish(CHANNEL_DELETED, ChannelARN=channel.arn, ChannelName=channel.name)
    return {}


@handlers.operation("GetSignalingChannelEndpoint")
async def get_signaling_channel_endpoint(ctx: RequestContext, p: dict[str, Any]) -> dict[str, Any]:
    control = ctx.services.control
    channel = control.get_channel(arn=p["ChannelARN"])
    ctx.authorize(channel.arn)
    cfg = p.get("SingleMasterChannelEndpointConfiguration") or {}
    protocols = cfg.get("Protocols") or ["WSS", "HTTPS"]
    if "WEBRTC" in protocols and control.storage_stream(channel) is None:
        raise InvalidArgumentException(
            "The WEBRTC protocol is only available for channels with media storage ENABLED."
        )
    settings = ctx.services.settings
    endpoints = []
    for proto in dict.fromkeys(protocols):
        url = base_url(ctx.request, settings, websocket=proto == "WSS")
        endpoints.append({"Protocol": proto, "ResourceEndpoint": url})
    return {"ResourceEndpointList": endpoints}


# -- media storage ------


@handlers.operation("UpdateMediaStorageConfiguration")
async def update_media_storage_configuration(
    ctx: RequestContext, p: dict[str, Any]
) -> dict[str, Any]:
    control = ctx.services.control
    channel = control.get_channel(arn=p["ChannelARN"])
    ctx.authorize(channel.arn)
    cfg = p["MediaStorageConfiguration"]
    await control.update_media_storage(
        arn=channel.arn, status=cfg["Status"], stream_arn=cfg.get("StreamARN")
    )
    return {}


@handlers.operation("DescribeMediaStorageConfiguration")
async def describe_media_storage_configuration(
    ctx: RequestContext, p: dict[str, Any]
) -> dict[str, Any]:
    channel = ctx.services.control.get_channel(name=p.get("ChannelName"), arn=p.get("ChannelARN"))
    ctx.authorize(channel.arn)
    return {
        "MediaStorageConfiguration": {
            "Status": channel.storage_status,
            "StreamARN": channel.storage_stream_arn,
        }
    }


@handlers.operation("DescribeMappedResourceConfiguration")
async def describe_mapped_resource_configuration(
    ctx: RequestContext, p: dict[str, Any]
) -> dict[str, Any]:
    control = ctx.services.control
    stream = control.get_stream(name=p.get("StreamName"), arn=p.get("StreamARN"))
    ctx.authorize(stream.arn)
    channel = control.channel_for_stream(stream)
    items = [] if channel is None else [{"Type": "SIGNALING_CHANNEL", "ARN": channel.arn}]
    return {"MappedResourceConfigurationList": items}


# -- streams ------


@handlers.operation("CreateStream")
async def create_stream(ctx: RequestContext, p: dict[str, Any]) -> dict[str, Any]:
    ctx.authorize(_arn_prefix(ctx, "stream", p["StreamName"]))
    storage = p.get("StreamStorageConfiguration") or {}
    stream = await ctx.services.control.create_stream(
        name=p["StreamName"],
        device_name=p.get("DeviceName"),
        media_type=p.get("MediaType"),
        kms_key_id=p.get("KmsKeyId"),
        retention_hours=p.get("DataRetentionInHours", 0),
        tags=p.get("Tags"),
        storage_tier=storage.get("DefaultStorageTier", "HOT"),
    )
    ctx.services.events.publish(STREAM_CREATED, StreamARN=stream.arn, StreamName=stream.name)
    return {"StreamARN": stream.arn}


@handlers.operation("DescribeStream")
async def describe_stream(ctx: RequestContext, p: dict[str, Any]) -> dict[str, Any]:
    stream = ctx.services.control.get_stream(name=p.get("StreamName"), arn=p.get("StreamARN"))
    ctx.authorize(stream.arn)
    return {"StreamInfo": stream_info(stream)}


@handlers.operation("ListStreams")
async def list_streams(ctx: RequestContext, p: dict[str, Any]) -> dict[str, Any]:
    ctx.authorize("*")
    cond = p.get("StreamNameCondition") or {}
    prefix = cond.get("ComparisonValue") if cond else None
    streams = {s.name: s for s in ctx.services.control.list_streams(prefix)}
    page, token = paginate(sorted(streams), p.get("MaxResults", 10000), p.get("NextToken"))
    return {"StreamInfoList": [stream_info(streams[n]) for n in page], "NextToken": token}


@handlers.operation("UpdateStream")
async def update_stream(ctx: RequestContext, p: dict[str, Any]) -> dict[str, Any]:
    stream = ctx.services.control.get_stream(name=p.get("StreamName"), arn=p.get("StreamARN"))
    ctx.authorize(stream.arn)
    await ctx.services.control.update_stream(
        name=None,
        arn=stream.arn,
        current_version=p["CurrentVersion"],
        device_name=p.get("DeviceName"),
        media_type=p.get("MediaType"),
    )
    return {}


@handlers.operation("UpdateDataRetention")
async def update_data_retention(ctx: RequestContext, p: dict[str, Any]) -> dict[str, Any]:
    stream = ctx.services.control.get_stream(name=p.get("StreamName"), arn=p.get("StreamARN"))
    ctx.authorize(stream.arn)
    await ctx.services.control.update_retention(
        name=None,
        arn=stream.arn,
        current_version=p["CurrentVersion"],
        operation=p["Operation"],
        change_hours=p["DataRetentionChangeInHours"],
    )
    return {}


@handlers.operation("DeleteStream")
async def delete_stream(ctx: RequestContext, p: dict[str, Any]) -> dict[str, Any]:
    stream = ctx.services.control.get_stream(arn=p["StreamARN"])
    ctx.authorize(stream.arn)
    await ctx.services.control.delete_stream(
        arn=stream.arn, current_version=p.get("CurrentVersion")
    )
    ctx.services.events.publish(STREAM_DELETED, StreamARN=stream.arn, StreamName=stream.name)
    return {}


@handlers.operation("GetDataEndpoint")
async def get_data_endpoint(ctx: RequestContext, p: dict[str, Any]) -> dict[str, Any]:
    stream = ctx.services.control.get_stream(name=p.get("StreamName"), arn=p.get("StreamARN"))
    ctx.authorize(stream.arn)
    return {"DataEndpoint": base_url(ctx.request, ctx.services.settings)}


@handlers.operation("DescribeStreamStorageConfiguration")
async def describe_stream_storage_configuration(
    ctx: RequestContext, p: dict[str, Any]
) -> dict[str, Any]:
    stream = ctx.services.control.get_stream(name=p.get("StreamName"), arn=p.get("StreamARN"))
    ctx.authorize(stream.arn)
    return {
        "StreamName": stream.name,
        "StreamARN": stream.arn,
        "StreamStorageConfiguration": {"DefaultStorageTier": stream.storage_tier},
    }


@handlers.operation("UpdateStreamStorageConfiguration")
async def update_stream_storage_configuration(
    ctx: RequestContext, p: dict[str, Any]
) -> dict[str, Any]:
    control = ctx.services.control
    stream = control.get_stream(name=p.get("StreamName"), arn=p.get("StreamARN"))
    ctx.authorize(stream.arn)
    tier = p["StreamStorageConfiguration"]["DefaultStorageTier"]
    await control.update_stream_tier(arn=stream.arn, current_version=p["CurrentVersion"], tier=tier)
    return {}


# -- image generation and notification configurations ------
#
# Stored as sent. Image generation acts on the AWS_KINESISVIDEO_IMAGE_GENERATION events producers
# attach to fragments (playback/imagegen.py); AWS_KINESISVIDEO_NOTIFICATION events on a stream
# with an enabled notification configuration become fragment.notification webhook events
# (ops/events.py).

MIN_SAMPLING_INTERVAL_MS = 200
MAX_SAMPLING_INTERVAL_MS = 20_000


def _check_destination(stream: Stream, config: dict[str, Any], what: str) -> None:
    """What both configurations require: a destination, and stored media when enabled."""
    if not config["DestinationConfig"]["Uri"].strip():
        raise InvalidArgumentException("DestinationConfig Uri must not be empty.")
    if config["Status"] == "ENABLED" and stream.retention_hours == 0:
        raise NoDataRetentionException(
            f"The stream {stream.name} has no data retention; {what} need stored media."
        )


def _check_image_generation(stream: Stream, config: dict[str, Any]) -> None:
    interval = config["SamplingInterval"]
    if not MIN_SAMPLING_INTERVAL_MS <= interval <= MAX_SAMPLING_INTERVAL_MS:
        raise InvalidArgumentException(
            f"SamplingInterval must be between {MIN_SAMPLING_INTERVAL_MS} and "
            f"{MAX_SAMPLING_INTERVAL_MS} milliseconds."
        )
    fmt_config = config.get("FormatConfig") or {}
    quality = fmt_config.get("JPEGQuality")
    if quality is not None:
        if config["Format"] != "JPEG":
            raise InvalidArgumentException("FormatConfig JPEGQuality applies to the JPEG Format.")
        if not quality.isdigit() or not 1 <= int(quality) <= 100:
            raise InvalidArgumentException("JPEGQuality must be a number from 1 to 100.")
    _check_destination(stream, config, "images")


def _check_notification(stream: Stream, config: dict[str, Any]) -> None:
    _check_destination(stream, config, "notifications")


# kind (Stream field) -> (wire member, validation)
_STREAM_CONFIGS: dict[str, tuple[str, Callable[[Stream, dict[str, Any]], None]]] = {
    "image_generation": ("ImageGenerationConfiguration", _check_image_generation),
    "notification": ("NotificationConfiguration", _check_notification),
}


async def _update_stream_config(
    ctx: RequestContext, p: dict[str, Any], kind: str
) -> dict[str, Any]:
    member, check = _STREAM_CONFIGS[kind]
    control = ctx.services.control
    stream = control.get_stream(name=p.get("StreamName"), arn=p.get("StreamARN"))
    ctx.authorize(stream.arn)
    config = p.get(member)
    if config is not None:
        check(stream, config)
    await control.update_stream_config(arn=stream.arn, kind=kind, config=config)
    return {}


def _describe_stream_config(ctx: RequestContext, p: dict[str, Any], kind: str) -> dict[str, Any]:
    member, _ = _STREAM_CONFIGS[kind]
    stream = ctx.services.control.get_stream(name=p.get("StreamName"), arn=p.get("StreamARN"))
    ctx.authorize(stream.arn)
    config = getattr(stream, kind)
    return {} if config is None else {member: dict(config)}


@handlers.operation("UpdateImageGenerationConfiguration")
async def update_image_generation_configuration(
    ctx: RequestContext, p: dict[str, Any]
) -> dict[str, Any]:
    return await _update_stream_config(ctx, p, "image_generation")


@handlers.operation("DescribeImageGenerationConfiguration")
async def describe_image_generation_configuration(
    ctx: RequestContext, p: dict[str, Any]
) -> dict[str, Any]:
    return _describe_stream_config(ctx, p, "image_generation")


@handlers.operation("UpdateNotificationConfiguration")
async def update_notification_configuration(
    ctx: RequestContext, p: dict[str, Any]
) -> dict[str, Any]:
    return await _update_stream_config(ctx, p, "notification")


@handlers.operation("DescribeNotificationConfiguration")
async def describe_notification_configuration(
    ctx: RequestContext, p: dict[str, Any]
) -> dict[str, Any]:
    return _describe_stream_config(ctx, p, "notification")


# -- tags ------


@handlers.operation("TagResource")
async def tag_resource(ctx: RequestContext, p: dict[str, Any]) -> dict[str, Any]:
    resource = ctx.services.control.get_resource(p["ResourceARN"])
    ctx.authorize(resource.arn)
    await ctx.services.control.tag_resource(resource, _tag_list(p["Tags"]))
    return {}


@handlers.operation("UntagResource")
async def untag_resource(ctx: RequestContext, p: dict[str, Any]) -> dict[str, Any]:
    resource = ctx.services.control.get_resource(p["ResourceARN"])
    ctx.authorize(resource.arn)
    await ctx.services.control.untag_resource(resource, p["TagKeyList"])
    return {}


@handlers.operation("ListTagsForResource")
async def list_tags_for_resource(ctx: RequestContext, p: dict[str, Any]) -> dict[str, Any]:
    resource = ctx.services.control.get_resource(p["ResourceARN"])
    ctx.authorize(resource.arn)
    return {"Tags": dict(resource.tags)}


@handlers.operation("TagStream")
async def tag_stream(ctx: RequestContext, p: dict[str, Any]) -> dict[str, Any]:
    stream = ctx.services.control.get_stream(name=p.get("StreamName"), arn=p.get("StreamARN"))
    ctx.authorize(stream.arn)
    await ctx.services.control.tag_resource(stream, p["Tags"])
    return {}


@handlers.operation("UntagStream")
async def untag_stream(ctx: RequestContext, p: dict[str, Any]) -> dict[str, Any]:
    stream = ctx.services.control.get_stream(name=p.get("StreamName"), arn=p.get("StreamARN"))
    ctx.authorize(stream.arn)
    await ctx.services.control.untag_resource(stream, p["TagKeyList"])
    return {}


@handlers.operation("ListTagsForStream")
async def list_tags_for_stream(ctx: RequestContext, p: dict[str, Any]) -> dict[str, Any]:
    stream = ctx.services.control.get_stream(name=p.get("StreamName"), arn=p.get("StreamARN"))
    ctx.authorize(stream.arn)
    return {"Tags": dict(stream.tags)}
