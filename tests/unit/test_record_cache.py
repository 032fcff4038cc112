"""The in-memory channel/stream indexes shared by the SQLite and PostgreSQL stores."""

from __future__ import annotations

from openkvs.records import Channel, Stream
from openkvs.store.cache import RecordCache


def _channel(cid: int, name: str) -> Channel:
    return Channel(
        id=cid,
        arn=f"arn:aws:kinesisvideo:us-east-1:111122223333:channel/{name}/{cid}",
        name=name,
        channel_type="SINGLE_MASTER",
        status="ACTIVE",
        created=0.0,
        version="1",
        message_ttl=60,
        tags={},
    )


def _stream(sid: int, name: str) -> Stream:
    return Stream(
        id=sid,
        arn=f"arn:aws:kinesisvideo:us-east-1:111122223333:stream/{name}/{sid}",
        name=name,
        device_name=None,
        media_type=None,
        kms_key_id="k",
        version="1",
        status="ACTIVE",
        created=0.0,
        retention_hours=0,
        tags={},
    )


def test_indexes_follow_puts_renames_and_drops() -> None:
    cache = RecordCache()
    b, a = _channel(2, "b"), _channel(1, "a")
    cache._cache_channel(b)
    cache._cache_channel(a)
    assert [c.name for c in cache.channels()] == ["a", "b"]
    assert cache.channel_by_name("a") is a and cache.channel_by_arn(a.arn) is a

    renamed = a.replace(name="z")
    cache._cache_channel(renamed)
    assert cache.channel_by_name("a") is None
    assert cache.channel_by_name("z") is renamed
    assert [c.name for c in cache.channels()] == ["b", "z"]

    cache._uncache_channel(1)
    assert cache.channel_by_arn(a.arn) is None and cache.channel_by_name("z") is None
    cache._uncache_channel(1)  # dropping twice is harmless
    assert [c.name for c in cache.channels()] == ["b"]

    s = _stream(7, "cam")
    cache._cache_stream(s)
    assert cache.stream_by_id(7) is s and cache.stream_by_name("cam") is s
    cache._uncache_stream(7)
    assert cache.stream_by_id(7) is None and cache.stream_by_arn(s.arn) is None
    assert cache.streams() == []


def test_a_drop_keeps_a_newer_record_that_took_the_name() -> None:
    cache = RecordCache()
    old, new = _stream(1, "cam"), _stream(2, "cam")
    cache._cache_stream(old)
    cache._cache_stream(new)  # deleted and re-created on another node, seen in this order
    cache._uncache_stream(1)
    assert cache.stream_by_name("cam") is new

    cache._cache_channel(_channel(3, "x"))
    cache._clear_cache()
    assert cache.channels() == [] and cache.channel_by_name("x") is None
