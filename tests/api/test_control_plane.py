"""The kinesisvideo control plane through real boto3 clients against the real server."""

from __future__ import annotations

import time
from typing import Any

import pytest
from botocore.exceptions import ClientError, ParamValidationError

from ..support import ServerThread


def code(exc: pytest.ExceptionInfo[ClientError]) -> str:
    return str(exc.value.response["Error"]["Code"])


def status(exc: pytest.ExceptionInfo[ClientError]) -> int:
    return int(exc.value.response["ResponseMetadata"]["HTTPStatusCode"])


@pytest.fixture
def kv(server: ServerThread) -> Any:
    return server.client("kinesisvideo")


def test_channel_lifecycle(server: ServerThread, kv: Any) -> None:
    before = time.time()
    arn = kv.create_signaling_channel(
        ChannelName="cam-1",
        SingleMasterConfiguration={"MessageTtlSeconds": 30},
        Tags=[{"Key": "site", "Value": "lab"}],
    )["ChannelARN"]
    prefix = f"arn:aws:kinesisvideo:us-east-1:{server.settings.account_id}:channel/cam-1/"
    assert arn.startswith(prefix)
    created_ms = int(arn.rsplit("/", 1)[1])
    info = kv.describe_signaling_channel(ChannelName="cam-1")["ChannelInfo"]
    assert info["ChannelARN"] == arn
    assert info["ChannelType"] == "SINGLE_MASTER" and info["ChannelStatus"] == "ACTIVE"
    assert info["SingleMasterConfiguration"]["MessageTtlSeconds"] == 30
    assert abs(info["CreationTime"].timestamp() * 1000 - created_ms) < 2
    assert before - 1 < info["CreationTime"].timestamp() < time.time() + 1
    assert kv.describe_signaling_channel(ChannelARN=arn)["ChannelInfo"]["ChannelName"] == "cam-1"

    with pytest.raises(ClientError) as exc:
        kv.create_signaling_channel(ChannelName="cam-1")
    assert code(exc) == "ResourceInUseException" and status(exc) == 400

    version = info["Version"]
    kv.update_signaling_channel(
        ChannelARN=arn, CurrentVersion=version, SingleMasterConfiguration={"MessageTtlSeconds": 90}
    )
    info2 = kv.describe_signaling_channel(ChannelARN=arn)["ChannelInfo"]
    assert info2["SingleMasterConfiguration"]["MessageTtlSeconds"] == 90
    assert info2["Version"] != version
    with pytest.raises(ClientError) as exc:
        kv.update_signaling_channel(
            ChannelARN=arn,
            CurrentVersion=version,
            SingleMasterConfiguration={"MessageTtlSeconds": 10},
        )
    assert code(exc) == "VersionMismatchException"

    assert kv.list_tags_for_resource(ResourceARN=arn)["Tags"] == {"site": "lab"}
    kv.tag_resource(ResourceARN=arn, Tags=[{"Key": "floor", "Value": "2"}])
    kv.untag_resource(ResourceARN=arn, TagKeyList=["site"])
    assert kv.list_tags_for_resource(ResourceARN=arn)["Tags"] == {"floor": "2"}

    with pytest.raises(ClientError) as exc:
        kv.delete_signaling_channel(ChannelARN=arn, CurrentVersion=version)
    assert code(exc) == "VersionMismatchException"
    kv.delete_signaling_channel(ChannelARN=arn)
    with pytest.raises(ClientError) as exc:
        kv.describe_signaling_channel(ChannelARN=arn)
    assert code(exc) == "ResourceNotFoundException" and status(exc) == 404


def test_list_channels_pagination_and_prefix(kv: Any) -> None:
    for i in range(7):
        kv.create_signaling_channel(ChannelName=f"a-{i}")
    kv.create_signaling_channel(ChannelName="b-0")
    page = kv.list_signaling_channels(MaxResults=3)
    assert [c["ChannelName"] for c in page["ChannelInfoList"]] == ["a-0", "a-1", "a-2"]
    names = []
    paginator = kv.get_paginator("list_signaling_channels")
    for p in paginator.paginate(
        ChannelNameCondition={"ComparisonOperator": "BEGINS_WITH", "ComparisonValue": "a-"},
        PaginationConfig={"PageSize": 2},
    ):
        names += [c["ChannelName"] for c in p["ChannelInfoList"]]
    assert names == [f"a-{i}" for i in range(7)]
    with pytest.raises(ClientError) as exc:
        kv.list_signaling_channels(NextToken="bm90LWEtdG9rZW4=")
    assert code(exc) == "InvalidArgumentException"


def test_stream_lifecycle(server: ServerThread, kv: Any) -> None:
    arn = kv.create_stream(
        StreamName="s1",
        DeviceName="dev",
        MediaType="video/h264,audio/aac",
        DataRetentionInHours=24,
        Tags={"a": "b"},
    )["StreamARN"]
    assert arn.startswith(f"arn:aws:kinesisvideo:us-east-1:{server.settings.account_id}:stream/s1/")
    info = kv.describe_stream(StreamName="s1")["StreamInfo"]
    assert info["StreamARN"] == arn and info["DataRetentionInHours"] == 24
    assert info["MediaType"] == "video/h264,audio/aac" and info["Status"] == "ACTIVE"
    assert info["DeviceName"] == "dev" and info["KmsKeyId"]
    with pytest.raises(ClientError) as exc:
        kv.create_stream(StreamName="s1")
    assert code(exc) == "ResourceInUseException"

    kv.update_stream(StreamARN=arn, CurrentVersion=info["Version"], MediaType="video/h264")
    info2 = kv.describe_stream(StreamARN=arn)["StreamInfo"]
    assert info2["MediaType"] == "video/h264"
    with pytest.raises(ClientError) as exc:
        kv.update_stream(StreamARN=arn, CurrentVersion=info["Version"], MediaType="video/h265")
    assert code(exc) == "VersionMismatchException"

    kv.update_data_retention(
        StreamName="s1",
        CurrentVersion=info2["Version"],
        Operation="INCREASE_DATA_RETENTION",
        DataRetentionChangeInHours=6,
    )
    info3 = kv.describe_stream(StreamName="s1")["StreamInfo"]
    assert info3["DataRetentionInHours"] == 30
    with pytest.raises(ClientError) as exc:
        kv.update_data_retention(
            StreamName="s1",
            CurrentVersion=info3["Version"],
            Operation="DECREASE_DATA_RETENTION",
            DataRetentionChangeInHours=31,
        )
    assert code(exc) == "InvalidArgumentException"

    assert kv.list_tags_for_stream(StreamARN=arn)["Tags"] == {"a": "b"}
    kv.tag_stream(StreamName="s1", Tags={"c": "d"})
    kv.untag_stream(StreamName="s1", TagKeyList=["a"])
    assert kv.list_tags_for_stream(StreamName="s1")["Tags"] == {"c": "d"}
    assert kv.list_tags_for_resource(ResourceARN=arn)["Tags"] == {"c": "d"}

    for api in (
        "PUT_MEDIA",
        "GET_MEDIA",
        "LIST_FRAGMENTS",
        "GET_MEDIA_FOR_FRAGMENT_LIST",
        "GET_HLS_STREAMING_SESSION_URL",
        "GET_DASH_STREAMING_SESSION_URL",
        "GET_CLIP",
        "GET_IMAGES",
    ):
        ep = kv.get_data_endpoint(StreamName="s1", APIName=api)["DataEndpoint"]
        assert ep == server.endpoint, api

    names = [s["StreamName"] for s in kv.list_streams()["StreamInfoList"]]
    assert names == ["s1"]
    kv.delete_stream(StreamARN=arn)
    with pytest.raises(ClientError) as exc:
        kv.describe_stream(StreamARN=arn)
    assert code(exc) == "ResourceNotFoundException"


def test_stream_storage_configuration(kv: Any) -> None:
    kv.create_stream(StreamName="tier", DataRetentionInHours=1)
    out = kv.describe_stream_storage_configuration(StreamName="tier")
    assert out["StreamStorageConfiguration"]["DefaultStorageTier"] == "HOT"
    version = kv.describe_stream(StreamName="tier")["StreamInfo"]["Version"]
    kv.update_stream_storage_configuration(
        StreamName="tier",
        CurrentVersion=version,
        StreamStorageConfiguration={"DefaultStorageTier": "WARM"},
    )
    out = kv.describe_stream_storage_configuration(StreamName="tier")
    assert out["StreamStorageConfiguration"]["DefaultStorageTier"] == "WARM"


def test_media_storage_configuration(server: ServerThread, kv: Any) -> None:
    ch = kv.create_signaling_channel(ChannelName="ch")["ChannelARN"]
    st = kv.create_stream(StreamName="st", DataRetentionInHours=1)["StreamARN"]
    cold = kv.create_stream(StreamName="cold", DataRetentionInHours=0)["StreamARN"]

    cfg = kv.describe_media_storage_configuration(ChannelARN=ch)["MediaStorageConfiguration"]
    assert cfg["Status"] == "DISABLED" and "StreamARN" not in cfg

    with pytest.raises(ClientError) as exc:
        kv.get_signaling_channel_endpoint(
            ChannelARN=ch,
            SingleMasterChannelEndpointConfiguration={
                "Protocols": ["WSS", "HTTPS", "WEBRTC"],
                "Role": "MASTER",
            },
        )
    assert code(exc) == "InvalidArgumentException"

    with pytest.raises(ClientError) as exc:
        kv.update_media_storage_configuration(
            ChannelARN=ch, MediaStorageConfiguration={"StreamARN": cold, "Status": "ENABLED"}
        )
    assert code(exc) == "NoDataRetentionException"

    kv.update_media_storage_configuration(
        ChannelARN=ch, MediaStorageConfiguration={"StreamARN": st, "Status": "ENABLED"}
    )
    cfg = kv.describe_media_storage_configuration(ChannelName="ch")["MediaStorageConfiguration"]
    assert cfg == {"StreamARN": st, "Status": "ENABLED"}
    mapped = kv.describe_mapped_resource_configuration(StreamARN=st)[
        "MappedResourceConfigurationList"
    ]
    assert mapped == [{"Type": "SIGNALING_CHANNEL", "ARN": ch}]

    other = kv.create_signaling_channel(ChannelName="other")["ChannelARN"]
    with pytest.raises(ClientError) as exc:
        kv.update_media_storage_configuration(
            ChannelARN=other, MediaStorageConfiguration={"StreamARN": st, "Status": "ENABLED"}
        )
    assert code(exc) == "ResourceInUseException"

    eps = kv.get_signaling_channel_endpoint(
        ChannelARN=ch,
        SingleMasterChannelEndpointConfiguration={
            "Protocols": ["WSS", "HTTPS", "WEBRTC"],
            "Role": "MASTER",
        },
    )["ResourceEndpointList"]
    by = {e["Protocol"]: e["ResourceEndpoint"] for e in eps}
    assert by == {
        "WSS": f"wss://127.0.0.1:{server.port}",
        "HTTPS": server.endpoint,
        "WEBRTC": server.endpoint,
    }

    with pytest.raises(ClientError) as exc:
        kv.delete_stream(StreamARN=st)
    assert code(exc) == "ResourceInUseException"

    kv.update_media_storage_configuration(
        ChannelARN=ch, MediaStorageConfiguration={"Status": "DISABLED"}
    )
    assert (
        kv.describe_media_storage_configuration(ChannelARN=ch)["MediaStorageConfiguration"][
            "Status"
        ]
        == "DISABLED"
    )
    assert (
        kv.describe_mapped_resource_configuration(StreamName="st")[
            "MappedResourceConfigurationList"
        ]
        == []
    )


def test_plain_port_advertises_plain_endpoints(server: ServerThread) -> None:
    kv = server.client("kinesisvideo", endpoint=server.http_endpoint)
    ch = kv.create_signaling_channel(ChannelName="plain")["ChannelARN"]
    eps = kv.get_signaling_channel_endpoint(ChannelARN=ch)["ResourceEndpointList"]
    by = {e["Protocol"]: e["ResourceEndpoint"] for e in eps}
    assert by == {"WSS": f"ws://127.0.0.1:{server.http_port}", "HTTPS": server.http_endpoint}
    kv.create_stream(StreamName="plain-s")
    assert (
        kv.get_data_endpoint(StreamName="plain-s", APIName="GET_MEDIA")["DataEndpoint"]
        == server.http_endpoint
    )


def test_public_url(make_server: Any) -> None:
    srv = make_server(public_url="https://kvs.example.com/")
    kv = srv.client("kinesisvideo")
    ch = kv.create_signaling_channel(ChannelName="pub")["ChannelARN"]
    eps = kv.get_signaling_channel_endpoint(ChannelARN=ch)["ResourceEndpointList"]
    assert {e["Protocol"]: e["ResourceEndpoint"] for e in eps} == {
        "WSS": "wss://kvs.example.com",
        "HTTPS": "https://kvs.example.com",
    }


@pytest.mark.parametrize(
    "kwargs,fragment",
    [
        ({"ChannelName": "bad name"}, "channelName"),
        ({"ChannelName": "x" * 257}, "channelName"),
        (
            {"ChannelName": "ok", "SingleMasterConfiguration": {"MessageTtlSeconds": 1}},
            "singleMasterConfiguration.messageTtlSeconds",
        ),
        ({"ChannelName": "ok", "ChannelType": "NOPE"}, "channelType"),
    ],
)
def test_validation_names_the_field(
    server: ServerThread, kwargs: dict[str, Any], fragment: str
) -> None:
    # botocore validates min/max client-side; switch that off to reach the server.
    kv = server.client("kinesisvideo", parameter_validation=False)
    try:
        kv.create_signaling_channel(**kwargs)
    except ParamValidationError:
        pytest.fail("client-side validation should be off")
    except ClientError as err:
        assert err.response["Error"]["Code"] == "InvalidArgumentException"
        assert fragment in err.response["Error"]["Message"]
    else:
        pytest.fail("expected InvalidArgumentException")


def test_tag_limits(kv: Any) -> None:
    arn = kv.create_signaling_channel(
        ChannelName="tags", Tags=[{"Key": f"k{i}", "Value": "v"} for i in range(50)]
    )["ChannelARN"]
    with pytest.raises(ClientError) as exc:
        kv.tag_resource(ResourceARN=arn, Tags=[{"Key": "one-more", "Value": "v"}])
    assert code(exc) == "TagsPerResourceExceededLimitException"


def test_restart_keeps_state(server: ServerThread) -> None:
    kv = server.client("kinesisvideo")
    ch = kv.create_signaling_channel(ChannelName="keep")["ChannelARN"]
    st = kv.create_stream(StreamName="keep-s", DataRetentionInHours=2)["StreamARN"]
    kv.update_media_storage_configuration(
        ChannelARN=ch, MediaStorageConfiguration={"StreamARN": st, "Status": "ENABLED"}
    )
    keys = server.keys
    server.restart()
    assert server.keys == keys
    kv = server.client("kinesisvideo")
    assert kv.describe_signaling_channel(ChannelName="keep")["ChannelInfo"]["ChannelARN"] == ch
    assert kv.describe_stream(StreamName="keep-s")["StreamInfo"]["DataRetentionInHours"] == 2
    assert (
        kv.describe_media_storage_configuration(ChannelARN=ch)["MediaStorageConfiguration"][
            "StreamARN"
        ]
        == st
    )


IMAGE_CONFIG = {
    "Status": "ENABLED",
    "ImageSelectorType": "PRODUCER_TIMESTAMP",
    "DestinationConfig": {"Uri": "s3://bucket/images", "DestinationRegion": "us-west-2"},
    "SamplingInterval": 500,
    "Format": "JPEG",
    "FormatConfig": {"JPEGQuality": "80"},
    "WidthPixels": 320,
}
NOTIFY_CONFIG = {
    "Status": "ENABLED",
    "DestinationConfig": {"Uri": "arn:aws:sns:us-west-2:123456789012:topic"},
}


def test_image_generation_and_notification_configurations(server: ServerThread) -> None:
    kv = server.client("kinesisvideo")
    kv.create_stream(StreamName="events", DataRetentionInHours=1)
    for describe in (
        kv.describe_image_generation_configuration,
        kv.describe_notification_configuration,
    ):
        out = describe(StreamName="events")
        assert "ImageGenerationConfiguration" not in out and "NotificationConfiguration" not in out
    kv.update_image_generation_configuration(
        StreamName="events", ImageGenerationConfiguration=IMAGE_CONFIG
    )
    kv.update_notification_configuration(
        StreamName="events", NotificationConfiguration=NOTIFY_CONFIG
    )
    got = kv.describe_image_generation_configuration(StreamName="events")
    assert got["ImageGenerationConfiguration"] == IMAGE_CONFIG
    got = kv.describe_notification_configuration(StreamName="events")
    assert got["NotificationConfiguration"] == NOTIFY_CONFIG

    # They survive a restart.
    server.restart()
    kv = server.client("kinesisvideo")
    got = kv.describe_image_generation_configuration(StreamName="events")
    assert got["ImageGenerationConfiguration"] == IMAGE_CONFIG
    assert (
        kv.describe_notification_configuration(StreamName="events")["NotificationConfiguration"]
        == NOTIFY_CONFIG
    )

    # Bad values are refused with the field named; a stream without retention takes none.
    for change, text in (
        ({"SamplingInterval": 100}, "SamplingInterval"),
        ({"FormatConfig": {"JPEGQuality": "0"}}, "JPEGQuality"),
        ({"Format": "PNG"}, "JPEGQuality"),
    ):
        with pytest.raises(ClientError) as exc:
            kv.update_image_generation_configuration(
                StreamName="events", ImageGenerationConfiguration={**IMAGE_CONFIG, **change}
            )
        assert code(exc) == "InvalidArgumentException" and text in str(exc.value)
    kv.create_stream(StreamName="no-retention", DataRetentionInHours=0)
    with pytest.raises(ClientError) as exc:
        kv.update_image_generation_configuration(
            StreamName="no-retention", ImageGenerationConfiguration=IMAGE_CONFIG
        )
    assert code(exc) == "NoDataRetentionException"
    with pytest.raises(ClientError) as exc:
        kv.describe_notification_configuration(StreamName="missing")
    assert code(exc) == "ResourceNotFoundException"

    # Without a configuration in the update, the configuration is removed.
    kv.update_image_generation_configuration(StreamName="events")
    kv.update_notification_configuration(StreamName="events")
    assert "ImageGenerationConfiguration" not in kv.describe_image_generation_configuration(
        StreamName="events"
    )
    assert "NotificationConfiguration" not in kv.describe_notification_configuration(
        StreamName="events"
    )
    # Deleting a stream deletes its configurations with it.
    kv.update_notification_configuration(
        StreamName="events", NotificationConfiguration=NOTIFY_CONFIG
    )
    kv.delete_stream(StreamARN=kv.describe_stream(StreamName="events")["StreamInfo"]["StreamARN"])
    kv.create_stream(StreamName="events", DataRetentionInHours=1)
    assert "NotificationConfiguration" not in kv.describe_notification_configuration(
        StreamName="events"
    )
