"""Per-request context and the handler registry (``@handlers.operation("Name")``)."""

from __future__ import annotations

import dataclasses
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from aiohttp import web

from ..auth.credentials import Principal
from ..errors import AccessDeniedException
from ..services import Services

HandlerResult = Mapping[str, Any] | web.StreamResponse | None
Handler = Callable[["RequestContext", dict[str, Any]], Awaitable[HandlerResult]]


@dataclasses.dataclass
class RequestContext:
    request: web.Request
    request_id: str
    service: str
    operation: str
    principal: Principal | None  # None when authentication is disabled
    services: Services

    def authorize(self, resource: str, action: str | None = None) -> None:
        """Raise AccessDenied unless the caller's policy allows ``action`` on ``resource``."""
        if self.principal is None:
            return
        action = action or f"kinesisvideo:{self.operation}"
        if not self.principal.allows(action, resource):
            raise AccessDeniedException(
                f"User: {self.principal.access_key_id} is not authorized to perform: {action} "
                f"on resource: {resource}"
            )


class Handlers:
    """A service's operation handlers, registered by wire name."""

    def __init__(self, service: str) -> None:
        self.service = service
        self.table: dict[str, Handler] = {}

    def operation(self, name: str) -> Callable[[Handler], Handler]:
        def register(fn: Handler) -> Handler:
            if name in self.table:
                raise RuntimeError(f"{self.service}:{name} registered twice")
            self.table[name] = fn
            return fn

        return register
