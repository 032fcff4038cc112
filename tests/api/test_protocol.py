"""JSON output of the rest-json handlers: what ``json_response`` writes, byte for byte."""

from __future__ import annotations

import datetime as dt
import enum
import json
import random
from typing import Any

from openkvs.api import protocol


class Status(enum.StrEnum):
    ACTIVE = "ACTIVE"


def reference_clean(value: Any) -> Any:
    """The plain recursive definition the output must keep matching."""
    if isinstance(value, dict):
        return {k: reference_clean(v) for k, v in value.items() if v is not None}
    if isinstance(value, list | tuple):
        return [reference_clean(v) for v in value]
    if isinstance(value, dt.datetime):
        return value.timestamp()
    return value


def body(data: dict[str, Any] | None) -> bytes:
    response = protocol.json_response(data, "rid")
    assert response.headers["x-amzn-RequestId"] == "rid"
    assert isinstance(response.body, bytes)
    return response.body


def test_output_is_pinned() -> None:
    when = dt.datetime(2024, 1, 2, 3, 4, 5, 250000, tzinfo=dt.UTC)
    data = {
        "StreamInfo": {
            "StreamName": "cam",
            "KmsKeyId": None,
            "CreationTime": when,
            "Status": Status.ACTIVE,
            "DataRetentionInHours": 0,
            "Nested": {"Empty": None, "Flag": False, "Ratio": 0.5},
        },
        "Fragments": [
            {
                "FragmentNumber": "91343852333181432",
                "FragmentSizeInBytes": 1234,
                "ProducerTimestamp": 1700000000.123,
                "ServerTimestamp": 1700000000.5,
                "FragmentLengthInMilliseconds": 2000,
            },
            {"FragmentNumber": "2", "Missing": None},
        ],
        "Pair": ("a", None, when),
        "Items": [None, [], {}],
        "NextToken": None,
    }
    assert body(data) == (
        b'{"StreamInfo":{"StreamName":"cam","CreationTime":1704164645.25,"Status":"ACTIVE",'
        b'"DataRetentionInHours":0,"Nested":{"Flag":false,"Ratio":0.5}},'
        b'"Fragments":[{"FragmentNumber":"91343852333181432","FragmentSizeInBytes":1234,'
        b'"ProducerTimestamp":1700000000.123,"ServerTimestamp":1700000000.5,'
        b'"FragmentLengthInMilliseconds":2000},{"FragmentNumber":"2"}],'
        b'"Pair":["a",null,1704164645.25],"Items":[null,[],{}]}'
    )
    assert body({}) == b"{}"
    assert body(None) == b""
    # Input is never modified.
    assert data["NextToken"] is None and data["Fragments"][1]["Missing"] is None


def random_value(rnd: random.Random, depth: int) -> Any:
    scalars = [
        None,
        True,
        0,
        -7,
        2**70,
        1.5,
        "",
        "x",
        Status.ACTIVE,
        dt.datetime(2020, 5, 6, tzinfo=dt.UTC) + dt.timedelta(seconds=rnd.randrange(10**6)),
    ]
    kind = rnd.randrange(4) if depth else 0
    if kind == 1:
        return {f"k{i}": random_value(rnd, depth - 1) for i in range(rnd.randrange(5))}
    if kind == 2:
        return [random_value(rnd, depth - 1) for _ in range(rnd.randrange(5))]
    if kind == 3:
        return tuple(random_value(rnd, depth - 1) for _ in range(rnd.randrange(4)))
    return rnd.choice(scalars)


def test_output_matches_the_recursive_definition() -> None:
    rnd = random.Random(7)
    for _ in range(500):
        data = {"Root": random_value(rnd, 4), "Other": random_value(rnd, 2)}
        want = json.dumps(reference_clean(data), separators=(",", ":")).encode()
        assert body(data) == want
