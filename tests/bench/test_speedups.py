"""The SigV4 fast paths used on every request give exactly what the plain versions give."""

from __future__ import annotations

import hashlib
import hmac
import random
from datetime import UTC, datetime

import pytest

from openkvs.auth import sigv4


def test_amz_date_to_epoch_matches_strptime() -> None:
    rnd = random.Random(7)
    for _ in range(2000):
        t = rnd.randint(0, 4_102_444_800)  # 1970 .. 2100
        text = datetime.fromtimestamp(t, tz=UTC).strftime("%Y%m%dT%H%M%SZ")
        expected = datetime.strptime(text, "%Y%m%dT%H%M%SZ").replace(tzinfo=UTC).timestamp()
        assert sigv4.amz_date_to_epoch(text) == expected == t


@pytest.mark.parametrize(
    "text",
    ["20261301T000000Z", "20260230T000000Z", "20260101T250000Z", "20260101T000060Z", "2026-01-01"],
)
def test_amz_date_to_epoch_rejects_what_strptime_rejects(text: str) -> None:
    with pytest.raises(ValueError):
        datetime.strptime(text, "%Y%m%dT%H%M%SZ")
    with pytest.raises(ValueError):
        sigv4.amz_date_to_epoch(text)


def _reference_key(secret: str, date: str, region: str, service: str) -> bytes:
    k = hmac.new(("AWS4" + secret).encode(), date.encode(), hashlib.sha256).digest()
    for part in (region, service, "aws4_request"):
        k = hmac.new(k, part.encode(), hashlib.sha256).digest()
    return k


def test_signing_key_cache_keys_on_every_input() -> None:
    args = [
        ("secret-a", "20260101", "us-east-1", "kinesisvideo"),
        ("secret-b", "20260101", "us-east-1", "kinesisvideo"),
        ("secret-a", "20260102", "us-east-1", "kinesisvideo"),
        ("secret-a", "20260101", "eu-west-1", "kinesisvideo"),
        ("secret-a", "20260101", "us-east-1", "s3"),
    ]
    for _ in range(2):  # the second round is served from the cache
        keys = [sigv4.signing_key(*a) for a in args]
        assert keys == [_reference_key(*a) for a in args]
        assert len(set(keys)) == len(args)
