"""A STUN binding responder (RFC 5389): what clients get when no TURN server runs.

``binding_response(request, addr)`` is a pure function over bytes: a Binding success response
carrying the sender's transport address as XOR-MAPPED-ADDRESS (and FINGERPRINT), or ``None`` for
anything that is not a well-formed Binding request (other STUN methods, responses, indications,
garbage). :class:`StunResponder` answers on one UDP socket, statelessly, one datagram out per
datagram in, at most 52 bytes (so it amplifies nothing much).
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import struct
import zlib
from typing import Any, cast

logger = logging.getLogger("openkvs.turn")

MAGIC_COOKIE = 0x2112A442
BINDING_REQUEST = 0x0001
BINDING_SUCCESS = 0x0101
XOR_MAPPED_ADDRESS = 0x0020
FINGERPRINT = 0x8028
FINGERPRINT_XOR = 0x5354554E
HEADER = struct.Struct("!HHI12s")
MAX_REQUEST = 548  # RFC 5389 7.1: a STUN message over UDP fits the minimum IPv4 MTU


def xor_mapped_address(address: str, port: int, transaction_id: bytes) -> bytes:
    """The XOR-MAPPED-ADDRESS attribute (header included) for ``address:port``."""
    ip = ipaddress.ip_address(address)
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    xport = port ^ (MAGIC_COOKIE >> 16)
    if isinstance(ip, ipaddress.IPv4Address):
        value = struct.pack("!BBHI", 0, 1, xport, int(ip) ^ MAGIC_COOKIE)
    else:
        mask = int.from_bytes(struct.pack("!I", MAGIC_COOKIE) + transaction_id, "big")
        value = struct.pack("!BBH", 0, 2, xport) + (int(ip) ^ mask).to_bytes(16, "big")
    return struct.pack("!HH", XOR_MAPPED_ADDRESS, len(value)) + value


def fingerprint(message_so_far: bytes) -> bytes:
    """The FINGERPRINT attribute for a message whose header length already counts it."""
    crc = (zlib.crc32(message_so_far) & 0xFFFFFFFF) ^ FINGERPRINT_XOR
    return struct.pack("!HHI", FINGERPRINT, 4, crc)


def _well_formed(data: bytes) -> bool:
    if not HEADER.size <= len(data) <= MAX_REQUEST or data[0] & 0xC0:
        return False
    msg_type, length, cookie, _ = HEADER.unpack_from(data)
    if cookie != MAGIC_COOKIE or length % 4 or HEADER.size + length != len(data):
        return False
    pos = HEADER.size
    while pos < len(data):  # the attributes must tile the body exactly
        if pos + 4 > len(data):
            return False
        _, size = struct.unpack_from("!HH", data, pos)
        pos += 4 + size + (-size % 4)
    return pos == len(data) and msg_type == BINDING_REQUEST


def binding_response(request: bytes, address: str, port: int) -> bytes | None:
    """The Binding success response to ``request`` received from ``address:port``."""
    if not _well_formed(request):
        return None
    transaction_id = request[8:20]
    attrs = xor_mapped_address(address, port, transaction_id)
    length = len(attrs) + 8
    head = HEADER.pack(BINDING_SUCCESS, length, MAGIC_COOKIE, transaction_id)
    return head + attrs + fingerprint(head + attrs)


def binding_request(transaction_id: bytes) -> bytes:
    """A minimal Binding request (readiness probes, tests)."""
    return HEADER.pack(BINDING_REQUEST, 0, MAGIC_COOKIE, transaction_id)


def mapped_address(response: bytes) -> tuple[str, int] | None:
    """XOR-MAPPED-ADDRESS of a Binding success response, or ``None``."""
    if len(response) < HEADER.size:
        return None
    msg_type, length, cookie, transaction_id = HEADER.unpack_from(response)
    if msg_type != BINDING_SUCCESS or cookie != MAGIC_COOKIE:
        return None
    pos, end = HEADER.size, min(len(response), HEADER.size + length)
    while pos + 4 <= end:
        attr, size = struct.unpack_from("!HH", response, pos)
        value = response[pos + 4 : pos + 4 + size]
        if attr == XOR_MAPPED_ADDRESS and len(value) in (8, 20):
            port = struct.unpack_from("!H", value, 2)[0] ^ (MAGIC_COOKIE >> 16)
            if value[1] == 1:
                ip: Any = ipaddress.IPv4Address(int.from_bytes(value[4:8], "big") ^ MAGIC_COOKIE)
            else:
                mask = int.from_bytes(struct.pack("!I", MAGIC_COOKIE) + transaction_id, "big")
                ip = ipaddress.IPv6Address(int.from_bytes(value[4:20], "big") ^ mask)
            return str(ip), port
        pos += 4 + size + (-size % 4)
    return None


class _Protocol(asyncio.DatagramProtocol):
    def __init__(self) -> None:
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.DatagramTransport, transport)

    def datagram_received(self, data: bytes, addr: Any) -> None:
        response = binding_response(data, addr[0], addr[1])
        if response is not None and self.transport is not None:
            self.transport.sendto(response, addr)

    def error_received(self, exc: Exception) -> None:
        logger.debug("STUN responder: %s", exc)


class StunResponder:
    """Answers STUN Binding requests on UDP ``host:port`` (port 0: a free one, see ``port``)."""

    def __init__(self, hosts: list[str], port: int) -> None:
        self.hosts = hosts
        self.port = port
        self._transports: list[asyncio.DatagramTransport] = []

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        for host in self.hosts:
            transport, _ = await loop.create_datagram_endpoint(
                _Protocol, local_addr=(host, self.port)
            )
            self._transports.append(transport)
            # Every address listens on the same port: the first bind picks it when it is 0.
            self.port = transport.get_extra_info("sockname")[1]

    async def stop(self) -> None:
        for transport in self._transports:
            transport.close()
        self._transports.clear()


__all__ = [
    "StunResponder",
    "binding_request",
    "binding_response",
    "fingerprint",
    "mapped_address",
    "xor_mapped_address",
]
