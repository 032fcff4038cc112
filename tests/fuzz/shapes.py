"""Hypothesis strategies for request bodies, driven by botocore's input shapes: values that fit
the model, values at and just past its bounds (lengths, ranges, enums, patterns), and arbitrary
JSON in their place."""

from __future__ import annotations

import functools
import re
from typing import Any

from botocore.model import Shape
from hypothesis import strategies as st

# Names the fuzz server has resources under, so valid inputs reach past the lookups.
KNOWN: dict[str, list[str]] = {}

_NAME_MEMBERS = ("StreamName", "ChannelName")
_ARN_MEMBERS = ("StreamARN", "ChannelARN", "ResourceARN", "StreamArn", "ChannelArn")

json_scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=40)
)
json_values = st.recursive(
    json_scalars,
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=12), inner, max_size=4)
    ),
    max_leaves=12,
)


def _length_strategy(meta: dict[str, Any]) -> st.SearchStrategy[int]:
    lo = int(meta.get("min", 0))
    hi = int(meta.get("max", lo + 64))
    bounds = {max(0, lo - 1), lo, min(hi, lo + 64), hi, hi + 1}
    return st.sampled_from(sorted(bounds)) | st.integers(lo, min(hi, lo + 64))


@functools.cache
def _regex(pattern: str) -> st.SearchStrategy[str] | None:
    try:
        re.compile(pattern)
        return st.from_regex(pattern, fullmatch=True)
    except (re.error, Exception):  # noqa: BLE001 - a pattern Python's re cannot take
        return None


def _string(shape: Shape, member: str) -> st.SearchStrategy[Any]:
    meta = shape.metadata
    options: list[st.SearchStrategy[Any]] = []
    if shape.enum:
        options.append(st.sampled_from(list(shape.enum)))
        options.append(st.sampled_from(list(shape.enum)).map(lambda v: v.lower() + "x"))
    else:
        pattern = meta.get("pattern")
        if pattern:
            gen = _regex(pattern)
            if gen is not None:
                options.append(gen.map(lambda v: v[: int(meta.get("max", 4096))]))
        # Any characters (at most 200: hypothesis draws no more), and exactly-sized strings.
        options.append(
            _length_strategy(meta).flatmap(
                lambda n: st.text(
                    alphabet=st.characters(codec="utf-8"),
                    min_size=min(n, 200),
                    max_size=min(n, 200),
                )
            )
        )
        options.append(_length_strategy(meta).map(lambda n: "a" * n))
    if member in _NAME_MEMBERS and KNOWN.get(member):
        options.append(st.sampled_from(KNOWN[member]))
    if member in _ARN_MEMBERS and KNOWN.get("ARN"):
        options.append(st.sampled_from(KNOWN["ARN"]))
    return st.one_of(options)


def _number(shape: Shape) -> st.SearchStrategy[Any]:
    meta = shape.metadata
    lo, hi = meta.get("min"), meta.get("max")
    bounds = [v for v in (lo, hi) if v is not None]
    edges = [b + d for b in bounds for d in (-1, 0, 1)] + [0, -1, 2**31, 2**63, -(2**63)]
    if shape.type_name in ("double", "float"):
        return st.sampled_from(edges) | st.floats(allow_nan=False, allow_infinity=False)
    return st.sampled_from(edges) | st.integers(
        min_value=lo if lo is not None else -(2**40),
        max_value=hi if hi is not None else 2**40,
    )


def value_for(shape: Shape, member: str = "", depth: int = 0) -> st.SearchStrategy[Any]:
    """A value for ``shape``: mostly what the model allows, often at or past its bounds."""
    t = shape.type_name
    if depth > 6:
        return json_scalars
    if t == "structure":
        return structure(shape, depth)
    if t == "list":
        meta = shape.metadata
        lo = int(meta.get("min", 0))
        hi = min(int(meta.get("max", 4)), lo + 4)
        return st.lists(
            value_for(shape.member, member, depth + 1), min_size=max(0, lo - 1), max_size=hi + 1
        )
    if t == "map":
        return st.dictionaries(
            value_for(shape.key, "", depth + 1).filter(lambda k: isinstance(k, str)),
            value_for(shape.value, "", depth + 1),
            max_size=4,
        )
    if t == "string":
        return _string(shape, member)
    if t in ("integer", "long", "double", "float"):
        return _number(shape)
    if t == "boolean":
        return st.booleans()
    if t == "timestamp":
        return (
            st.integers(-(2**33), 2**35)
            | st.floats(0, 4e9, allow_nan=False)
            | st.sampled_from(["2024-01-01T00:00:00Z", "not a time", "", "1e400"])
        )
    if t == "blob":
        return st.binary(max_size=64).map(lambda b: __import__("base64").b64encode(b).decode())
    return json_values


def structure(shape: Shape, depth: int = 0) -> st.SearchStrategy[dict[str, Any]]:
    required: dict[str, st.SearchStrategy[Any]] = {}
    optional: dict[str, st.SearchStrategy[Any]] = {}
    for name, member in shape.members.items():
        if member.serialization.get("location") in ("header", "uri", "querystring"):
            continue
        gen = value_for(member, name, depth + 1)
        (required if name in shape.required_members else optional)[name] = gen
    return st.fixed_dictionaries(required, optional=optional)
