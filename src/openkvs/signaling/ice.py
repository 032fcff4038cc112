"""Where clients (and the storage peer) get their ICE servers from.

One of three, decided at start:

- ``external``: ``turn_uris`` + ``turn_secret`` are set; that coturn is used as configured;
- ``embedded``: openkvs runs coturn itself (``turnserver.Coturn``) on ``turn_port``;
- ``stun``: ``no_turn`` is set, or coturn is not installed (said loudly, once): a STUN Binding
  responder on UDP ``turn_port`` and two ``stun:`` entries, never an empty list.

GetIceServerConfig asks :meth:`IceServers.server_list`; the storage peer asks
:meth:`IceServers.storage_turn` for the TURN server it allocates on (with credentials it mints
from the same secret).
"""

from __future__ import annotations

import asyncio
import logging
import shutil
from typing import Any

from .. import clock
from ..config import Settings
from ..privatefile import SecretSource
from . import turn
from .stun import StunResponder
from .turnserver import (
    Coturn,
    interface_addresses,
    listen_addresses,
    load_or_create_secret,
    shared_secret,
)

logger = logging.getLogger("openkvs.turn")


def external_turn(settings: Settings) -> turn.TurnAccess | None:
    if settings.turn_uris and settings.turn_secret:
        return turn.TurnAccess(tuple(settings.turn_uris), settings.turn_secret)
    return None


class IceServers:
    def __init__(self, settings: Settings, secrets: SecretSource | None = None) -> None:
        self.settings = settings
        # Where the embedded server's secret is kept (the cluster's store); None: the data dir.
        self._secrets = secrets
        self.mode = "external" if external_turn(settings) else "stun"
        self.coturn: Coturn | None = None
        self.stun: StunResponder | None = None
        self.port = settings.turn_port
        self._secret: str | None = None
        self._local = "127.0.0.1"  # how this machine reaches the embedded server

    async def start(self) -> None:
        s = self.settings
        if self.mode == "external":
            logger.info("TURN: external server(s) %s", ", ".join(s.turn_uris))
            return
        addresses = await asyncio.to_thread(listen_addresses, s.host)
        if addresses:
            self._local = addresses[0]
        binary = None if s.no_turn else shutil.which(s.turn_binary)
        if s.no_turn:
            logger.info("TURN disabled (no_turn): GetIceServerConfig hands out STUN only")
        elif binary is None:
            logger.warning(
                "coturn (%s) is not installed: NO TURN SERVER. GetIceServerConfig hands out a "
                "STUN server only, so clients behind NAT cannot connect. Install coturn "
                "(Debian/Ubuntu: apt-get install coturn) or configure turn_uris + turn_secret.",
                s.turn_binary,
            )
        if binary is not None:
            if self._secrets is not None:
                self._secret = await shared_secret(self._secrets)
            else:
                self._secret = await asyncio.to_thread(load_or_create_secret, s.data_dir)
            listen = addresses or await asyncio.to_thread(
                interface_addresses, s.host.strip("[]") == "::"
            )
            self.coturn = Coturn(
                binary=binary,
                data_dir=s.data_dir,
                listen=listen,
                port=s.turn_port,
                relay_min=s.turn_relay_port_min,
                relay_max=s.turn_relay_port_max,
                secret=self._secret,
            )
            self.mode = "embedded"
            await self.coturn.start()
            self.port = self.coturn.port
            return
        if not addresses:
            addresses = ["::" if s.host.strip("[]") == "::" else "0.0.0.0"]
        self.stun = StunResponder(addresses, s.turn_port)
        try:
            await self.stun.start()
        except OSError as exc:
            logger.warning("STUN responder cannot listen on UDP port %d: %s", s.turn_port, exc)
            await self.stun.stop()
            self.stun = None
            return
        self.port = self.stun.port
        logger.info("STUN responder on %s UDP port %d", ", ".join(addresses), self.port)

    async def stop(self) -> None:
        if self.coturn is not None:
            await self.coturn.stop()
        if self.stun is not None:
            await self.stun.stop()

    def server_list(self, client_id: str, host_header: str | None) -> list[dict[str, Any]]:
        """GetIceServerConfig's IceServerList for a client that sent ``host_header``."""
        s = self.settings
        if self.mode == "external":
            assert s.turn_secret is not None
            return turn.ice_server_list(
                uris=s.turn_uris,
                secret=s.turn_secret,
                ttl=s.turn_ttl,
                client_id=client_id,
                now=clock.now(),
            )
        # This node's address (node_address) for its own TURN/STUN server; the API endpoints
        # stay those of public_url.
        host = turn.advertised_host(
            bind_host=s.host,
            public_url=s.public_url,
            request_host=host_header,
            node_address=s.node_address,
        )
        if self.mode == "embedded" and self._secret is not None:
            return turn.embedded_ice_server_list(
                host=host,
                port=self.port,
                secret=self._secret,
                ttl=s.turn_ttl,
                client_id=client_id,
                now=clock.now(),
            )
        return turn.stun_ice_server_list(host=host, port=self.port, ttl=s.turn_ttl)

    def storage_turn(self, live_only: bool = True) -> turn.TurnAccess | None:
        """The TURN server the storage peer allocates on, if any. With ``live_only``, not the
        embedded one while it does not answer (restarting): gathering would wait for nothing.
        Worker processes take it once, whatever its state (``live_only=False``)."""
        if self.mode == "external":
            return external_turn(self.settings)
        if self.mode == "embedded" and self._secret is not None:
            if live_only and (self.coturn is None or not self.coturn.running.is_set()):
                return None
            h = turn.uri_host(self._local)
            return turn.TurnAccess(
                (f"turn:{h}:{self.port}?transport=udp", f"turn:{h}:{self.port}?transport=tcp"),
                self._secret,
            )
        return None


__all__ = ["IceServers", "external_turn"]
