"""rest-json: validate requests against the model's input shapes, serialize outputs and errors."""

from __future__ import annotations

import datetime as dt
import functools
import json
import math
from collections.abc import Mapping
from typing import Any

import regex
from aiohttp import web
from botocore.model import OperationModel, Shape

from ..errors import AuthFailure, InvalidArgumentException, ServiceError
from .models import service_model

SEED_STATUS = {
    "ClientLimitExceededException": 480,
    "InvalidArgumentException": 481,
    "AccessDeniedException": 482,
    "ResourceNotFoundException": 483,
}
SEED_SERVICE = "kinesis-video-webrtc-storage"
MAX_VALIDATION_ERRORS = 10


@functools.lru_cache(maxsize=512)
def _pattern(p: str) -> Any:
    return regex.compile(p)


class _Errors:
    def __init__(self) -> None:
        self.items: list[str] = []

    def add(self, value: Any, path: str, constraint: str) -> None:
        text = value if isinstance(value, str) else json.dumps(value, default=str)
        if isinstance(text, str) and len(text) > 100:
            text = text[:100] + "..."
        self.items.append(f"Value '{text}' at '{path}' failed to satisfy constraint: {constraint}")


def validate_input(op: OperationModel, body: Mapping[str, Any]) -> dict[str, Any]:
    """Check ``body`` against the operation's input shape; return it with timestamps as floats.

    Raises InvalidArgumentException naming every offending field (AWS's wording).
    """
    shape = op.input_shape
    if shape is None:
        return {}
    errors = _Errors()
    result = _validate(shape, body, "", errors)
    if errors.items:
        n = len(errors.items)
        shown = errors.items[:MAX_VALIDATION_ERRORS]
        raise InvalidArgumentException(
            f"{n} validation error{'s' if n > 1 else ''} detected: " + "; ".join(shown)
        )
    assert isinstance(result, dict)
    return result


def _member_path(parent: str, name: str) -> str:
    name = name[:1].lower() + name[1:]
    return f"{parent}.{name}" if parent else name


def _validate(shape: Shape, value: Any, path: str, errors: _Errors) -> Any:
    t = shape.type_name
    meta = shape.metadata
    if t == "structure":
        if not isinstance(value, dict):
            errors.add(value, path or "body", "Member must be an object")
            return None
        out: dict[str, Any] = {}
        for req in shape.required_members:
            if value.get(req) is None:
                errors.add(None, _member_path(path, req), "Member must not be null")
        for name, member in shape.members.items():
            if member.serialization.get("location") in ("header", "uri", "querystring"):
                continue
            if name in value and value[name] is not None:
                out[name] = _validate(member, value[name], _member_path(path, name), errors)
        return out
    if t == "list":
        if not isinstance(value, list):
            errors.add(value, path, "Member must be a list")
            return None
        _check_len(value, meta, path, errors, "length")
        return [_validate(shape.member, v, f"{path}.member", errors) for v in value]
    if t == "map":
        if not isinstance(value, dict):
            errors.add(value, path, "Member must be a map")
            return None
        _check_len(value, meta, path, errors, "length")
        out_map = {}
        for k, v in value.items():
            _validate(shape.key, k, f"{path}.key", errors)
            out_map[k] = _validate(shape.value, v, f"{path}.value", errors)
        return out_map
    if t == "string":
        if not isinstance(value, str):
            errors.add(value, path, "Member must be a string")
            return None
        _check_len(value, meta, path, errors, "length")
        if shape.enum and value not in shape.enum:
            errors.add(
                value, path, f"Member must satisfy enum value set: [{', '.join(shape.enum)}]"
            )
        elif "pattern" in meta and not _pattern(meta["pattern"]).fullmatch(value):
            errors.add(
                value, path, f"Member must satisfy regular expression pattern: {meta['pattern']}"
            )
        return value
    if t in ("integer", "long"):
        if isinstance(value, bool) or not isinstance(value, int):
            if isinstance(value, float) and value.is_integer():
                value = int(value)
            else:
                errors.add(value, path, "Member must be an integer")
                return None
        if "min" in meta and value < meta["min"]:
            errors.add(
                value, path, f"Member must have value greater than or equal to {meta['min']}"
            )
        if "max" in meta and value > meta["max"]:
            errors.add(value, path, f"Member must have value less than or equal to {meta['max']}")
        return value
    if t in ("float", "double"):
        if isinstance(value, bool) or not isinstance(value, int | float):
            errors.add(value, path, "Member must be a number")
            return None
        return float(value)
    if t == "boolean":
        if not isinstance(value, bool):
            errors.add(value, path, "Member must be a boolean")
            return None
        return value
    if t == "timestamp":
        parsed = parse_timestamp(value)
        if parsed is None:
            errors.add(value, path, "Member must be a timestamp (epoch seconds or ISO 8601)")
        return parsed
    if t == "blob":
        if not isinstance(value, str):
            errors.add(value, path, "Member must be base64 text")
            return None
        return value
    return value


def _check_len(value: Any, meta: Mapping[str, Any], path: str, errors: _Errors, what: str) -> None:
    n = len(value)
    if "min" in meta and n < meta["min"]:
        errors.add(value, path, f"Member must have {what} greater than or equal to {meta['min']}")
    if "max" in meta and n > meta["max"]:
        errors.add(value, path, f"Member must have {what} less than or equal to {meta['max']}")


def parse_timestamp(value: Any) -> float | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int | float):
        f = float(value)
        return f if math.isfinite(f) and -1e11 < f < 1e11 else None
    if isinstance(value, str):
        try:
            f = float(value)
            return f if math.isfinite(f) and -1e11 < f < 1e11 else None
        except ValueError:
            pass
        try:
            parsed = dt.datetime.fromisoformat(value.replace("Z", "+00:00"))
        except ValueError:
            return None
        if parsed.tzinfo is None:
            parsed = parsed.replace(tzinfo=dt.UTC)
        return parsed.timestamp()
    return None


# Types that serialize as they are: nothing inside to drop or convert.
_PLAIN = frozenset({str, int, float, bool})


def _clean(value: Any) -> Any:
    """A handler's output made ready for JSON: members that are None are left out of objects,
    tuples become lists and datetimes epoch seconds. Plain scalars (by far most values, e.g. in
    a long ListFragments page) are taken as they are, without a call per value, and an object
    holding only those is not copied."""
    if isinstance(value, dict):
        if _PLAIN.issuperset(map(type, value.values())):
            return value  # no None, nothing nested: serialize it as it is (checked in C)
        return {k: v if type(v) in _PLAIN else _clean(v) for k, v in value.items() if v is not None}
    if isinstance(value, list | tuple):
        return [v if type(v) in _PLAIN else _clean(v) for v in value]
    if isinstance(value, dt.datetime):
        return value.timestamp()
    return value


def json_response(data: Mapping[str, Any] | None, request_id: str) -> web.Response:
    body = b"" if data is None else json.dumps(_clean(dict(data)), separators=(",", ":")).encode()
    headers = {"x-amzn-RequestId": request_id}
    if data is not None:
        headers["Content-Type"] = "application/json"
    return web.Response(body=body, status=200, headers=headers)


def error_shape_names(op: OperationModel | None) -> set[str]:
    if op is None:
        return set()
    return {s.name for s in op.error_shapes}


def wire_error(
    err: ServiceError,
    *,
    service: str | None,
    op: OperationModel | None,
    request_id: str,
    aws_error_codes: bool = False,
) -> tuple[int, str, str]:
    """Return (status, code, message) for an error raised while serving ``op`` of ``service``."""
    code = err.code
    if isinstance(err, AuthFailure):
        code = err.auth_code
    modeled = error_shape_names(op)
    if code not in modeled:
        for alias in err.aliases:
            if alias in modeled:
                code = alias
                break
    if service == SEED_SERVICE and isinstance(err, AuthFailure):
        code = "AccessDeniedException"
    status = err.status
    if service is not None:
        model = service_model(service)
        try:
            shape = model.shape_for(code)
            status = int(shape.metadata.get("error", {}).get("httpStatusCode", status))
        except Exception:  # noqa: BLE001 - shape unknown to this model: keep the class status
            pass
        if service == SEED_SERVICE and not aws_error_codes and code in SEED_STATUS:
            status = SEED_STATUS[code]
    return status, code, err.message


def error_response(status: int, code: str, message: str, request_id: str) -> web.Response:
    body = json.dumps({"message": message, "Message": message}).encode()
    return web.Response(
        body=body,
        status=status,
        headers={
            "x-amzn-ErrorType": code,
            "x-amzn-RequestId": request_id,
            "x-amz-RequestId": request_id,
            "Content-Type": "application/json",
        },
    )
