"""Bounded JSON decoding: the nesting scan against vectors, and loads refusing deep input with a
ValueError (never RecursionError), whatever the encoding."""

from __future__ import annotations

import json

import pytest

from openkvs import safejson


@pytest.mark.parametrize(
    "text, depth",
    [
        ("", 0),
        ("1", 0),
        ('"[[[["', 0),
        ("[]", 1),
        ("{}", 1),
        ('{"a": [1, {"b": []}]}', 4),
        ('[[["\\"]]]"]]]', 3),  # an escaped quote does not end the string
        ('["\\\\", [[]]]', 3),  # an escaped backslash does not escape the quote after it
        ('["\\u0022[[[["]', 1),
        ("[][][][]", 1),
        ("]]]][", 1),  # stray closers do not go below zero
        ('["unterminated [[[[', 1),
        ("[" * 5000, 5000),
        ("[" * 3000 + "]" * 3000, 3000),
        ('{"a":' * 100 + "1" + "}" * 100, 100),
    ],
)
def test_nesting_depth(text: str, depth: int) -> None:
    assert safejson.nesting_depth(text) == depth


def test_scan_stops_past_the_limit() -> None:
    assert safejson.nesting_depth("[" * 10_000, stop_after=10) == 11


@pytest.mark.parametrize(
    "data",
    [
        "[" * 2000 + "]" * 2000,
        '{"a":' * 1800 + "1" + "}" * 1800,
        '{"ok": 1, "x": ' + "[" * 990 + "]" * 990 + "}",
        "[" * 100_000,
        ("[" * 2000 + "]" * 2000).encode(),
        ("[" * 2000 + "]" * 2000).encode("utf-16"),
        ("[" * 2000 + "]" * 2000).encode("utf-32-le"),
        "[" * (safejson.MAX_DEPTH + 1) + "]" * (safejson.MAX_DEPTH + 1),
    ],
)
def test_deep_input_is_a_value_error(data: str | bytes) -> None:
    with pytest.raises(safejson.JsonDepthError):
        safejson.loads(data)


def test_nesting_up_to_the_limit_is_decoded() -> None:
    text = "[" * safejson.MAX_DEPTH + "]" * safejson.MAX_DEPTH
    assert safejson.loads(text) == json.loads(text)
    brackets_in_strings = json.dumps({"s": "[{" * 5000})
    assert safejson.loads(brackets_in_strings) == {"s": "[{" * 5000}


@pytest.mark.parametrize(
    "data",
    [b"\xff\xfe\xfa", b'{"a": "\xc3"}', "NaN", '{"a": Infinity}', "[-Infinity]", "{", ""],
)
def test_other_malformed_input_is_a_value_error(data: str | bytes) -> None:
    with pytest.raises(ValueError):
        safejson.loads(data)


def test_same_values_as_json() -> None:
    for text in ['{"a": [1, 2.5, "x", null, true]}', '"\\ud83d\\ude00"', "1e400", "-0"]:
        assert safejson.loads(text) == json.loads(text)
        assert safejson.loads(text.encode()) == json.loads(text.encode())


def test_untrusted_decoders_refuse_deep_input() -> None:
    """Every decoder of client-supplied JSON goes through safejson: signaling payloads that the
    storage peer decodes and the NextTokens of the list operations."""
    import base64

    from openkvs.control.resources import decode_token
    from openkvs.errors import InvalidArgumentException
    from openkvs.webrtc import signaling_io

    deep = base64.b64encode(b'{"sdp":' * 1500 + b"1" + b"}" * 1500).decode()
    with pytest.raises(InvalidArgumentException):
        signaling_io.session_description(deep, "answer")
    with pytest.raises(InvalidArgumentException):
        signaling_io.candidate(deep)
    with pytest.raises(InvalidArgumentException):
        decode_token(deep)
