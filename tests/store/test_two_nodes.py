"""Two real openkvs servers on one PostgreSQL database and one media folder: any node answers
any control-plane call, PutMedia on one node is listed (and its HLS session URL plays) on the
other, and both serve (and ``openkvs credentials`` prints) the same generated key."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
from botocore.exceptions import ClientError

from ..dataplane.mediafiles import producer_mkv
from ..dataplane.producer import put_media
from ..playback.support import get, hls_url, on_demand
from ..support import ServerThread

START_MS = 1_700_000_000_000  # where producer_mkv's timecodes start


@pytest.fixture
def nodes(
    make_server: Callable[..., ServerThread], postgres_url: str, tmp_path: Path
) -> tuple[ServerThread, ServerThread]:
    shared = {"database_url": postgres_url, "media_url": f"file://{tmp_path / 'media'}"}
    return make_server(**shared), make_server(**shared)


def error_code(exc: pytest.ExceptionInfo[ClientError]) -> str:
    return str(exc.value.response["Error"]["Code"])


def test_any_node_answers_for_channels_and_streams(
    nodes: tuple[ServerThread, ServerThread],
) -> None:
    a, b = nodes
    assert a.keys == b.keys  # one generated key for the cluster
    assert a.settings.data_dir != b.settings.data_dir
    kva, kvb = a.client("kinesisvideo"), b.client("kinesisvideo")

    arn = kva.create_signaling_channel(ChannelName="front-door")["ChannelARN"]
    info = kvb.describe_signaling_channel(ChannelName="front-door")["ChannelInfo"]
    assert info["ChannelARN"] == arn
    kvb.update_signaling_channel(
        ChannelARN=arn,
        CurrentVersion=info["Version"],
        SingleMasterConfiguration={"MessageTtlSeconds": 120},
    )
    seen_on_a = kva.describe_signaling_channel(ChannelARN=arn)["ChannelInfo"]
    assert seen_on_a["SingleMasterConfiguration"]["MessageTtlSeconds"] == 120
    with pytest.raises(ClientError) as stale:  # the version b replaced
        kva.update_signaling_channel(
            ChannelARN=arn,
            CurrentVersion=info["Version"],
            SingleMasterConfiguration={"MessageTtlSeconds": 30},
        )
    assert error_code(stale) == "VersionMismatchException"
    with pytest.raises(ClientError) as taken:
        kvb.create_signaling_channel(ChannelName="front-door")
    assert error_code(taken) == "ResourceInUseException"
    kvb.delete_signaling_channel(ChannelARN=arn, CurrentVersion=seen_on_a["Version"])
    with pytest.raises(ClientError) as gone:
        kva.describe_signaling_channel(ChannelARN=arn)
    assert error_code(gone) == "ResourceNotFoundException"

    kvb.create_stream(StreamName="cam-b", DataRetentionInHours=1)
    kva.create_stream(StreamName="cam-a", DataRetentionInHours=1)
    names_a = [s["StreamName"] for s in kva.list_streams()["StreamInfoList"]]
    names_b = [s["StreamName"] for s in kvb.list_streams()["StreamInfoList"]]
    assert names_a == names_b == ["cam-a", "cam-b"]
    kva.tag_stream(StreamName="cam-b", Tags={"site": "north"})
    assert kvb.list_tags_for_stream(StreamName="cam-b")["Tags"] == {"site": "north"}
    desc = kvb.describe_stream(StreamName="cam-a")["StreamInfo"]
    kva.delete_stream(StreamARN=desc["StreamARN"], CurrentVersion=desc["Version"])
    assert [s["StreamName"] for s in kvb.list_streams()["StreamInfoList"]] == ["cam-b"]


async def test_media_put_on_one_node_is_listed_on_the_other(
    nodes: tuple[ServerThread, ServerThread],
) -> None:
    a, b = nodes
    a.client("kinesisvideo").create_stream(StreamName="cam", DataRetentionInHours=1)
    b.client("kinesisvideo").create_stream(StreamName="cam2", DataRetentionInHours=1)
    data = producer_mkv()
    status, acks_b = await put_media(b, data, stream_name="cam")
    assert status == 200
    status, acks_a = await put_media(a, data, stream_name="cam2")
    assert status == 200
    numbers_b = [int(x["FragmentNumber"]) for x in acks_b if x["EventType"] == "PERSISTED"]
    numbers_a = [int(x["FragmentNumber"]) for x in acks_a if x["EventType"] == "PERSISTED"]
    assert len(numbers_b) == len(numbers_a) == 3
    assert numbers_b == sorted(numbers_b) and not set(numbers_a) & set(numbers_b)

    def listed(srv: ServerThread, name: str) -> list[Any]:
        stream = srv.services.control.get_stream(name=name)
        return srv.call(srv.services.fragments.list_fragments(stream))

    on_a = listed(a, "cam")
    assert [f.number for f in on_a] == numbers_b
    blob = a.call(a.services.fragments.read(on_a[0]))
    assert blob == b.call(b.services.fragments.read(listed(b, "cam")[0]))

    # A playback session URL from one node plays on the other (one token key for the cluster).
    url = hls_url(
        a,
        "cam",
        PlaybackMode="ON_DEMAND",
        HLSFragmentSelector=on_demand(START_MS, START_MS + 60_000),
    )
    on_b = url.replace(f":{a.http_port}/", f":{b.http_port}/")
    assert on_b != url
    playlist = await asyncio.to_thread(get, on_b)
    assert playlist.status_code == 200 and playlist.text.startswith("#EXTM3U")
    forged = await asyncio.to_thread(get, on_b.replace("SessionToken=", "SessionToken=A"))
    assert forged.status_code >= 400


def test_openkvs_credentials_prints_the_clusters_key_on_every_node(
    nodes: tuple[ServerThread, ServerThread], postgres_url: str, tmp_path: Path
) -> None:
    a, _ = nodes
    printed = []
    for data_dir in (tmp_path / "elsewhere1", tmp_path / "elsewhere2"):
        res = subprocess.run(
            [sys.executable, "-m", "openkvs", "credentials", "--data-dir", str(data_dir)],
            capture_output=True,
            text=True,
            timeout=60,
            env={**os.environ, "OPENKVS_DATABASE_URL": postgres_url},
        )
        assert res.returncode == 0, res.stderr
        printed.append([line for line in res.stdout.splitlines() if "AWS_" in line][:2])
    akid, secret = a.keys
    assert (
        printed[0]
        == printed[1]
        == [
            f"export AWS_ACCESS_KEY_ID={akid}",
            f"export AWS_SECRET_ACCESS_KEY={secret}",
        ]
    )


def test_of_concurrent_updates_through_both_nodes_one_wins(
    nodes: tuple[ServerThread, ServerThread],
) -> None:
    a, b = nodes
    clients = [a.client("kinesisvideo"), b.client("kinesisvideo")]
    clients[0].create_stream(StreamName="raced", DataRetentionInHours=1)
    version = clients[1].describe_stream(StreamName="raced")["StreamInfo"]["Version"]

    def update(i: int) -> str:
        try:
            clients[i % 2].update_stream(
                StreamName="raced", CurrentVersion=version, DeviceName=f"device-{i}"
            )
        except ClientError as exc:
            return str(exc.response["Error"]["Code"])
        return f"device-{i}"

    with ThreadPoolExecutor(8) as pool:
        results = list(pool.map(update, range(16)))
    winners = [r for r in results if r.startswith("device-")]
    assert len(winners) == 1, results
    assert set(results) - set(winners) == {"VersionMismatchException"}
    for client in clients:
        info = client.describe_stream(StreamName="raced")["StreamInfo"]
        assert info["DeviceName"] == winners[0] and info["Version"] != version
