"""botocore's service models: the single source of truth for routes, shapes and error codes."""

from __future__ import annotations

import dataclasses
import functools

import botocore.session
from botocore.model import OperationModel, ServiceModel

SERVICES = (
    "kinesisvideo",
    "kinesis-video-webrtc-storage",
    "kinesis-video-signaling",
    "kinesis-video-media",
    "kinesis-video-archived-media",
)

# PutMedia is in no botocore model (the Java and producer SDKs implement it); it is routed by hand.
PUT_MEDIA_PATH = "/putMedia"


@dataclasses.dataclass(frozen=True)
class Route:
    service: str
    operation: OperationModel

    @property
    def name(self) -> str:
        return str(self.operation.name)


@functools.cache
def service_model(name: str) -> ServiceModel:
    return botocore.session.get_session().get_service_model(name)


@functools.cache
def routes() -> dict[str, Route]:
    """``POST <path>`` → route, for every operation of the five KVS models."""
    table: dict[str, Route] = {}
    for svc in SERVICES:
        model = service_model(svc)
        for op_name in model.operation_names:
            op = model.operation_model(op_name)
            assert op.http["method"] == "POST", op_name
            path = op.http["requestUri"]
            if path in table:
                raise RuntimeError(f"route collision on {path}: {table[path].name} and {op_name}")
            table[path] = Route(svc, op)
    return table


def all_operations() -> list[tuple[str, str]]:
    return [(r.service, r.name) for r in routes().values()]
