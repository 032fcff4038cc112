"""The embedded TURN server: coturn run as a supervised child process.

openkvs writes ``<data-dir>/turn/turnserver.conf`` (mode 0600: it holds the shared secret, which
therefore never shows on a command line) and runs ``turnserver -c <that file>``:

- TURN REST API authentication (``use-auth-secret``) with a secret generated once into
  ``<data-dir>/turn-secret.key`` (mode 0600), the realm ``openkvs``;
- listening where openkvs listens (``host``; every address of the machine for a wildcard bind)
  on ``turn_port`` and ``turn_port + 1`` (the two server sets), UDP and TCP; no TLS/DTLS
  listeners, no CLI, no web admin;
- relay ports ``turn_relay_port_min``..``turn_relay_port_max`` on the same addresses (the
  non-loopback ones, when there are any);
- peers: when openkvs binds to loopback, the relay reaches loopback peers and nothing else;
  otherwise loopback peers are refused (coturn's default), and so are multicast, 0.0.0.0/8 and
  link-local addresses (169.254.0.0/16 holds cloud metadata services);
- pid file and user database under ``<data-dir>/turn/``; the log goes to stdout and from there,
  line by line, into openkvs's log (logger ``openkvs.turn``).

If coturn exits it is started again after a delay that doubles from 0.5 s up to 30 s (and
starts over after a minute of running). ``stop()`` ends it (SIGTERM, then SIGKILL after 5 s). It
runs in its own session, so a terminal's Ctrl-C reaches only openkvs, which then stops it. If
openkvs dies without stopping it, the kernel sends it SIGTERM (``setpriv --pdeathsig``, where
util-linux has it), and a coturn still left over is found through the pid file and stopped at
the next start.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import os
import re
import secrets
import shutil
import signal
import socket
import time
from collections.abc import Sequence
from pathlib import Path

from .. import ids
from ..privatefile import SecretSource, read_or_create, write_private
from . import stun, turn

logger = logging.getLogger("openkvs.turn")

SECRET_FILE = "turn-secret.key"
TURN_DIR = "turn"
CONF_FILE = "turnserver.conf"
PID_FILE = "turnserver.pid"
REALM = "openkvs"
FIRST_BACKOFF = 0.5
MAX_BACKOFF = 30.0
STABLE_AFTER = 60.0
STOP_TIMEOUT = 5.0
READY_TIMEOUT = 10.0
MAX_LOG_LINE = 4096
# coturn prints these on every start in the setups openkvs runs, or whenever a client tries a
# peer that the peer rules refuse (a camera offering its LAN address to a loopback TURN server):
# they are not news.
_ROUTINE = (
    "allow_loopback_peers opens a possible security vulnerability",
    "cannot support STUN CHANGE_REQUEST",
    "socket: Protocol not supported",
    "denied in the range",
)
# Warnings and errors forwarded per minute at their level; more go to debug (a taken port makes
# coturn retry, and say so, every second).
_LOUD_LINES_PER_MINUTE = 10


_LOG_PREFIX = re.compile(r"^\d+: (?:\(\d+\))?: ?")


def log_line(raw: str) -> tuple[int, str] | None:
    """The level and text of one line of coturn's log (its uptime prefix cut), or None when it
    holds nothing: errors at ERROR, warnings at WARNING, routine and other lines at DEBUG."""
    line = _LOG_PREFIX.sub("", raw.strip()).strip()
    if not line:
        return None
    if any(known in line for known in _ROUTINE):
        return logging.DEBUG, line
    if "ERROR" in line or "Cannot bind" in line:
        return logging.ERROR, line
    if "WARNING" in line:
        return logging.WARNING, line
    return logging.DEBUG, line


def new_secret_text() -> str:
    return ids.random_bytes(32).hex()


def parse_secret(text: str, where: str) -> str:
    secret = text.strip()
    if len(secret) < 32 or not secret.isalnum():
        raise ValueError(f"{where} does not hold a TURN secret (32+ letters and digits)")
    return secret


def load_or_create_secret(data_dir: Path) -> str:
    """The REST API shared secret from ``<data-dir>/turn-secret.key``, created (0600) if absent.

    Blocking: call it in a thread."""
    path = data_dir / SECRET_FILE
    return parse_secret(read_or_create(path, new_secret_text()), str(path))


async def shared_secret(secrets: SecretSource) -> str:
    """The REST API shared secret every node uses, created on first use."""
    return parse_secret(await secrets(SECRET_FILE, new_secret_text()), SECRET_FILE)


def listen_addresses(host: str) -> list[str]:
    """The addresses behind ``host`` (blocking: DNS); ``[]`` for a wildcard bind."""
    if host in ("", "0.0.0.0", "::", "[::]"):
        return []
    host = host.strip("[]")
    out: list[str] = []
    for *_, sockaddr in socket.getaddrinfo(host, None, type=socket.SOCK_DGRAM):
        address = str(sockaddr[0]).split("%")[0]
        if address not in out:
            out.append(address)
    return out


def interface_addresses(ipv6: bool) -> list[str]:
    """This machine's addresses (IPv4, and IPv6 without link-local ones when ``ipv6``), for a
    coturn that is to listen on every address: it needs them spelled out for its second port."""
    import ifaddr  # aioice's dependency

    out: list[str] = []
    for adapter in ifaddr.get_adapters():
        for ip in adapter.ips:
            if isinstance(ip.ip, str):
                address = ip.ip
            elif ipv6 and not ipaddress.ip_address(ip.ip[0]).is_link_local:
                address = ip.ip[0]
            else:
                continue
            if address not in out:
                out.append(address)
    return out


def is_loopback(addresses: Sequence[str]) -> bool:
    return bool(addresses) and all(ipaddress.ip_address(a).is_loopback for a in addresses)


def coturn_config(
    *,
    listen: Sequence[str],
    port: int,
    relay_min: int,
    relay_max: int,
    secret: str,
    turn_dir: Path,
) -> str:
    """The text of turnserver.conf (one option per line, as coturn reads it).

    coturn listens on ``port`` and, as an auxiliary server on every address, on ``port + 1``:
    the second TURN server set. Two sets on one address and port would be one 5-tuple for a
    client that allocates on both from one socket (Chromium does), and coturn refuses the second
    allocation (437) while the client waits for it to time out."""
    # Relayed addresses are handed to peers: never a loopback one next to a reachable one.
    relay = [a for a in listen if not ipaddress.ip_address(a).is_loopback] or list(listen)
    lines = [f"listening-ip={a}" for a in listen]
    lines += [f"relay-ip={a}" for a in relay]
    lines += [f"aux-server={turn.uri_host(a)}:{port + 1}" for a in listen]
    lines += [
        f"listening-port={port}",
        "no-rfc5780",
        f"min-port={relay_min}",
        f"max-port={relay_max}",
        "use-auth-secret",
        f"static-auth-secret={secret}",
        f"realm={REALM}",
        "fingerprint",
        "no-tls",
        "no-dtls",
        "no-cli",
        "no-software-attribute",
        "no-multicast-peers",
        f"pidfile={turn_dir / PID_FILE}",
        f"userdb={turn_dir / 'turndb'}",
        "log-file=stdout",
        "simple-log",
    ]
    if is_loopback(listen):
        # A TURN server on loopback relays between local peers only.
        lines += [
            "allow-loopback-peers",
            "denied-peer-ip=0.0.0.0-255.255.255.255",
            "denied-peer-ip=::-ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff",
            "allowed-peer-ip=127.0.0.0-127.255.255.255",
            "allowed-peer-ip=::1",
        ]
    else:
        lines += [
            "denied-peer-ip=0.0.0.0-0.255.255.255",
            "denied-peer-ip=169.254.0.0-169.254.255.255",
            "denied-peer-ip=fe80::-febf:ffff:ffff:ffff:ffff:ffff:ffff:ffff",
        ]
    return "\n".join(lines) + "\n"


def free_port_pair(address: str) -> int:
    """A port p with p and p + 1 free for both UDP and TCP on ``address`` (``turn_port = 0``)."""
    for _ in range(100):
        with socket.socket(socket.AF_INET6 if ":" in address else socket.AF_INET) as probe:
            probe.bind((address, 0))
            port = int(probe.getsockname()[1])
        if port < 65535 and not port_in_use(address, port) and not port_in_use(address, port + 1):
            return port
    raise OSError(f"no two consecutive ports free for UDP and TCP on {address}")


def port_in_use(address: str, port: int) -> bool:
    """True when UDP or TCP ``port`` cannot be bound on ``address`` (blocking, instant)."""
    family = socket.AF_INET6 if ":" in address else socket.AF_INET
    for kind in (socket.SOCK_DGRAM, socket.SOCK_STREAM):
        with socket.socket(family, kind) as sock:
            if kind == socket.SOCK_STREAM:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                sock.bind((address, port))
            except OSError:
                return True
    return False


def stop_leftover(turn_dir: Path) -> None:
    """Stop a coturn of this data dir that an earlier openkvs left running (blocking)."""
    pidfile = turn_dir / PID_FILE
    try:
        pid = int(pidfile.read_text().strip())
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except (OSError, ValueError):
        return
    if str(turn_dir / CONF_FILE).encode() not in cmdline:
        return
    logger.warning("stopping coturn (pid %d) left running by an earlier openkvs", pid)
    with contextlib.suppress(OSError):
        os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + STOP_TIMEOUT
    while time.monotonic() < deadline and Path(f"/proc/{pid}").exists():
        time.sleep(0.05)
    with contextlib.suppress(OSError):
        os.kill(pid, signal.SIGKILL)


async def stun_answers(address: str, port: int, within: float) -> bool:
    """True when a STUN Binding request to ``address:port`` (UDP) is answered in time."""
    loop = asyncio.get_running_loop()
    answered: asyncio.Future[None] = loop.create_future()
    transaction_id = secrets.token_bytes(12)

    class Probe(asyncio.DatagramProtocol):
        def datagram_received(self, data: bytes, addr: object) -> None:
            if data[8:20] == transaction_id and not answered.done():
                answered.set_result(None)

    family = socket.AF_INET6 if ":" in address else socket.AF_INET
    transport, _ = await loop.create_datagram_endpoint(
        Probe, remote_addr=(address, port), family=family
    )
    try:
        deadline = loop.time() + within
        while loop.time() < deadline:
            transport.sendto(stun.binding_request(transaction_id))
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.shield(answered), 0.1)
                return True
        return False
    finally:
        transport.close()


class Coturn:
    """coturn as a child process, kept running between ``start()`` and ``stop()``."""

    def __init__(
        self,
        *,
        binary: str,
        data_dir: Path,
        listen: Sequence[str],
        port: int,
        relay_min: int,
        relay_max: int,
        secret: str,
    ) -> None:
        self.binary = binary
        self.turn_dir = data_dir / TURN_DIR
        self.listen = list(listen)
        self.port = port
        self.relay_min, self.relay_max = relay_min, relay_max
        self._secret = secret
        self.conf = self.turn_dir / CONF_FILE
        self.process: asyncio.subprocess.Process | None = None
        self.starts = 0  # processes started so far
        self.running = asyncio.Event()  # a process is up and answers STUN
        self._stopping = False
        self._task: asyncio.Task[None] | None = None

    @property
    def probe_address(self) -> str:
        """An address of this coturn that a local client can use."""
        return self.listen[0] if self.listen else "127.0.0.1"

    @property
    def command(self) -> list[str]:
        command = [self.binary, "-c", str(self.conf)]
        # setpriv (util-linux) makes the kernel send coturn SIGTERM when openkvs dies, however
        # it dies (PR_SET_PDEATHSIG, kept across exec).
        setpriv = shutil.which("setpriv")
        return [setpriv, "--pdeathsig", "TERM", *command] if setpriv else command

    async def start(self, ready_timeout: float = READY_TIMEOUT) -> None:
        """Start coturn and wait (up to ``ready_timeout``) until it answers STUN."""
        await asyncio.to_thread(self._prepare)
        self._task = asyncio.ensure_future(self._supervise())
        self._task.set_name("coturn supervisor")
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.running.wait(), ready_timeout)
        if not self.running.is_set():
            logger.error(
                "coturn is not answering on port %d after %.0f s; TURN allocations will fail "
                "until it does",
                self.port,
                ready_timeout,
            )

    def _prepare(self) -> None:
        self.turn_dir.mkdir(parents=True, exist_ok=True)
        os.chmod(self.turn_dir, 0o700)
        stop_leftover(self.turn_dir)
        if self.port == 0:
            self.port = free_port_pair(self.probe_address)
        taken = [p for p in (self.port, self.port + 1) if port_in_use(self.probe_address, p)]
        if taken:
            logger.error(
                "TURN port %s is taken by another process (a system coturn? `systemctl disable "
                "--now coturn`); coturn keeps trying to bind it, and the credentials "
                "GetIceServerConfig hands out work only once it can. Choose another turn_port, "
                "or pass --no-turn.",
                " and ".join(map(str, taken)),
            )
        text = coturn_config(
            listen=self.listen,
            port=self.port,
            relay_min=self.relay_min,
            relay_max=self.relay_max,
            secret=self._secret,
            turn_dir=self.turn_dir,
        )
        write_private(self.conf, text)

    async def _supervise(self) -> None:
        backoff = FIRST_BACKOFF
        while not self._stopping:
            started = time.monotonic()
            try:
                code = await self._run_once()
            except OSError as exc:
                code = None
                logger.error("cannot start coturn (%s): %s", self.binary, exc)
            if self._stopping:
                return
            if time.monotonic() - started > STABLE_AFTER:
                backoff = FIRST_BACKOFF
            logger.error("coturn exited (status %s); starting it again in %.1f s", code, backoff)
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, MAX_BACKOFF)

    async def _run_once(self) -> int:
        process = await asyncio.create_subprocess_exec(
            *self.command,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
            cwd=self.turn_dir,
            env={},
            start_new_session=True,
            limit=MAX_LOG_LINE,
        )
        self.process = process
        self.starts += 1
        logger.info(
            "coturn started (pid %d): TURN on %s ports %d and %d (UDP and TCP), relay ports %d-%d",
            process.pid,
            ", ".join(self.listen),
            self.port,
            self.port + 1,
            self.relay_min,
            self.relay_max,
        )
        assert process.stdout is not None
        forward = asyncio.ensure_future(self._forward(process.stdout))
        probe = asyncio.ensure_future(self._probe(process))
        try:
            return await process.wait()
        finally:
            self.running.clear()
            probe.cancel()
            with contextlib.suppress(asyncio.CancelledError, TimeoutError):
                await asyncio.wait_for(forward, 1)

    async def _probe(self, process: asyncio.subprocess.Process) -> None:
        while process.returncode is None:
            if await stun_answers(self.probe_address, self.port, 1.0):
                if process.returncode is None:
                    self.running.set()
                return

    async def _forward(self, stream: asyncio.StreamReader) -> None:
        window_start, loud = time.monotonic(), 0
        while True:
            try:
                raw = await stream.readline()
            except ValueError:  # a line over MAX_LOG_LINE: skip what is buffered
                continue
            if not raw:
                return
            parsed = log_line(raw.decode("utf-8", "replace"))
            if parsed is None:
                continue
            level, line = parsed
            if level > logging.INFO:
                now = time.monotonic()
                if now - window_start > 60:
                    window_start, loud = now, 0
                loud += 1
                if loud > _LOUD_LINES_PER_MINUTE:
                    level = logging.DEBUG
            logger.log(level, "coturn: %s", line)

    async def stop(self) -> None:
        self._stopping = True
        await self._terminate()
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        await self._terminate()  # one started while the supervisor was being cancelled
        self.running.clear()

    async def _terminate(self) -> None:
        process = self.process
        if process is None or process.returncode is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            process.terminate()
        try:
            await asyncio.wait_for(process.wait(), STOP_TIMEOUT)
        except TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                process.kill()
            await process.wait()


__all__ = [
    "Coturn",
    "coturn_config",
    "free_port_pair",
    "interface_addresses",
    "log_line",
    "is_loopback",
    "listen_addresses",
    "load_or_create_secret",
    "shared_secret",
    "stun_answers",
]
