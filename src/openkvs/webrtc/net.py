"""The storage peer's networking: ICE servers, advertised addresses and the UDP port range.

aioice binds an ephemeral UDP port per host candidate and has no option for a range; the range is
enforced here, and only here, by wrapping the event loop's ``create_datagram_endpoint`` for
aioice's STUN sockets. Advertised hosts (a public or NAT address, a container's host address)
are added to the SDP as extra host candidates on the same ports, like a 1:1 NAT mapping.
"""

from __future__ import annotations

import asyncio
import ipaddress
import itertools
import logging
import random
import re
import socket
from collections.abc import Callable, Sequence
from typing import Any

from aiortc import RTCConfiguration, RTCIceServer

from ..config import Settings

logger = logging.getLogger(__name__)

_CANDIDATE = re.compile(r"^(a=)?candidate:(\S+) (\d+) (udp|UDP) (\d+) (\S+) (\d+) typ host(.*)$")


def ice_servers(
    settings: Settings, mint: Callable[[str], list[dict[str, Any]]] | None
) -> list[RTCIceServer]:
    """ICE servers for the storage peer: explicit URLs, plus the TURN server (the embedded coturn
    or the configured one) with credentials ``mint`` makes from the shared secret
    GetIceServerConfig uses."""
    servers: list[RTCIceServer] = []
    for url in settings.webrtc_ice_servers:
        servers.append(RTCIceServer(urls=url))
    if mint is not None:
        for entry in mint("openkvs-storage"):
            servers.append(
                RTCIceServer(
                    urls=list(entry["Uris"]),
                    username=entry["Username"],
                    credential=entry["Password"],
                )
            )
    return servers


def configuration(servers: Sequence[RTCIceServer]) -> RTCConfiguration:
    # An explicit (possibly empty) list: aiortc's default is a public STUN server.
    return RTCConfiguration(iceServers=list(servers))


def advertised_hosts(settings: Settings) -> tuple[str, ...]:
    """The addresses the storage peer adds as host candidates: this node's ``node_address``
    (where cameras and viewers reach it for media) when it is an IP address, then
    ``webrtc_advertised_hosts``. A host name in ``node_address`` names the node in TURN URIs
    only: candidates carry addresses."""
    hosts: list[str] = []
    node = (settings.node_address or "").strip("[]")
    if node:
        try:
            ipaddress.ip_address(node)
        except ValueError:
            pass
        else:
            hosts.append(node)
    hosts.extend(h for h in settings.webrtc_advertised_hosts if h not in hosts)
    return tuple(hosts)


def add_advertised_candidates(sdp: str, hosts: Sequence[str]) -> str:
    """Duplicate each host candidate line for every advertised address (same port)."""
    if not hosts:
        return sdp
    out: list[str] = []
    for line in sdp.splitlines():
        out.append(line)
        m = _CANDIDATE.match(line.strip())
        if m is None:
            continue
        for i, host in enumerate(hosts):
            foundation = f"{m.group(2)}x{i}"
            prio = max(1, int(m.group(5)) - 1 - i)
            out.append(
                f"a=candidate:{foundation} {m.group(3)} udp {prio} {host} {m.group(7)} typ host"
                f"{m.group(8)}"
            )
    return "\r\n".join(out) + "\r\n"


def advertised_candidate_lines(candidate: str, hosts: Sequence[str]) -> list[str]:
    """The extra candidate strings (no ``a=``) to trickle for one host candidate."""
    m = _CANDIDATE.match(candidate.strip())
    if m is None:
        return []
    return [
        f"candidate:{m.group(2)}x{i} {m.group(3)} udp {max(1, int(m.group(5)) - 1 - i)} {host} "
        f"{m.group(7)} typ host{m.group(8)}"
        for i, host in enumerate(hosts)
    ]


UDP_RECEIVE_BUFFER = 4 * 1024 * 1024


def configure_sockets(receive_buffer: int = UDP_RECEIVE_BUFFER) -> None:
    """Give every ICE socket a receive buffer that holds a whole burst-sent 1080p keyframe.

    aioice sizes its sockets from ``aioice.turn.UDP_SOCKET_BUFFER_SIZE`` (256 KB); senders that
    do not pace (many cameras, aiortc) send a keyframe of several hundred KB in one burst, and
    what overflows the buffer is lost beyond what NACK can repair. The kernel caps the value at
    net.core.rmem_max.
    """
    import aioice.turn

    if aioice.turn.UDP_SOCKET_BUFFER_SIZE < receive_buffer:
        aioice.turn.UDP_SOCKET_BUFFER_SIZE = receive_buffer


class PortRange:
    """Confine aioice's host-candidate sockets to [low, high] on the given loop."""

    def __init__(self, low: int, high: int) -> None:
        self.low, self.high = low, high
        self._loop: asyncio.AbstractEventLoop | None = None
        self._original: Any = None
        self._cursor = itertools.count(random.randrange(0, high - low + 1))

    def install(self, loop: asyncio.AbstractEventLoop) -> None:
        from aioice.ice import StunProtocol

        original = loop.create_datagram_endpoint
        self._loop, self._original = loop, original
        size = self.high - self.low + 1

        async def create_datagram_endpoint(factory: Any, local_addr: Any = None, **kw: Any) -> Any:
            if local_addr is None or local_addr[1] != 0 or kw:
                return await original(factory, local_addr=local_addr, **kw)
            probe = factory()
            if not isinstance(probe, StunProtocol):
                return await original(factory, local_addr=local_addr, **kw)
            last: OSError | None = None
            for _ in range(size):
                port = self.low + next(self._cursor) % size
                family = socket.AF_INET6 if ":" in local_addr[0] else socket.AF_INET
                sock = socket.socket(family, socket.SOCK_DGRAM)
                try:
                    sock.bind((local_addr[0], port))
                except OSError as exc:
                    sock.close()
                    last = exc
                    continue
                sock.setblocking(False)
                return await original(lambda: probe, sock=sock)
            raise OSError(f"no free UDP port in {self.low}-{self.high}") from last

        loop.create_datagram_endpoint = create_datagram_endpoint  # type: ignore[method-assign,assignment]
        logger.info("storage peer UDP ports confined to %d-%d", self.low, self.high)

    def uninstall(self) -> None:
        if self._loop is not None and self._original is not None:
            self._loop.create_datagram_endpoint = self._original  # type: ignore[method-assign]
            self._loop = None
