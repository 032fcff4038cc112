"""A lossy UDP relay for WebRTC tests: the camera talks to the relay, the relay to the server.

SRTP and SRTCP packets (RFC 7983: first byte 128-191) are dropped at random at the given rate in
both directions; STUN and DTLS pass untouched, so the connection comes up the same way each run
and the loss hits the media path. RTP/RTCP headers are sent in the clear under SRTP, so the
relay also counts what crosses it: RTP packets per payload type, and the RTCP feedback the
server sends back (NACK: RTPFB 205/1, PLI: PSFB 206/1).
"""

from __future__ import annotations

import asyncio
import collections
import random
from typing import Any

Addr = tuple[str, int]


class _Side(asyncio.DatagramProtocol):
    def __init__(self, on_packet: Any) -> None:
        self.on_packet = on_packet
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def datagram_received(self, data: bytes, addr: Addr) -> None:
        self.on_packet(data, addr)


class LossyRelay:
    """Listens on 127.0.0.1:<port> for the camera; forwards to ``server`` from its own socket."""

    def __init__(self, server: Addr, loss: float, seed: int = 1) -> None:
        self.server = server
        self.loss = loss
        self._rng = random.Random(seed)
        self.camera: Addr | None = None
        self.port = 0
        self.rtp_up = collections.Counter[int]()  # camera → server RTP packets by payload type
        self.dropped_up = 0
        self.dropped_down = 0
        self.nacks = 0
        self.plis = 0
        self._down: _Side | None = None  # faces the camera
        self._up: _Side | None = None  # faces the server

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        _, self._down = await loop.create_datagram_endpoint(
            lambda: _Side(self._from_camera), local_addr=("127.0.0.1", 0)
        )
        _, self._up = await loop.create_datagram_endpoint(
            lambda: _Side(self._from_server), local_addr=("0.0.0.0", 0)
        )
        assert self._down.transport is not None
        self.port = self._down.transport.get_extra_info("sockname")[1]

    def _lose(self, data: bytes) -> bool:
        return 128 <= data[0] <= 191 and self._rng.random() < self.loss

    def _from_camera(self, data: bytes, addr: Addr) -> None:
        self.camera = addr
        if data and 128 <= data[0] <= 191 and len(data) > 1 and not 192 <= data[1] <= 223:
            self.rtp_up[data[1] & 0x7F] += 1
        if data and self._lose(data):
            self.dropped_up += 1
            return
        assert self._up is not None and self._up.transport is not None
        self._up.transport.sendto(data, self.server)

    def _from_server(self, data: bytes, addr: Addr) -> None:
        if self.camera is None or not data:
            return
        if 128 <= data[0] <= 191 and len(data) > 1:
            fmt, pt = data[0] & 0x1F, data[1]
            if pt == 205 and fmt == 1:
                self.nacks += 1
            elif pt == 206 and fmt == 1:
                self.plis += 1
        if self._lose(data):
            self.dropped_down += 1
            return
        assert self._down is not None and self._down.transport is not None
        self._down.transport.sendto(data, self.camera)

    def close(self) -> None:
        for side in (self._down, self._up):
            if side is not None and side.transport is not None:
                side.transport.close()
