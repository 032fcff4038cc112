"""A raw-socket HTTP/1.1 client for requests a library would not send: a body split over several
TCP writes with pauses between them, chunked framing chosen by the test, headers left malformed.

Requests are signed with botocore's SigV4Auth (the signature covers the whole body, as the SDKs
compute it), then written by hand, so what reaches the server is exactly what the test says.
"""

from __future__ import annotations

import dataclasses
import json
import socket
import time
from collections.abc import Sequence
from typing import Any

from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials

_HOP_HEADERS = {"content-length", "transfer-encoding", "host", "connection"}


@dataclasses.dataclass
class RawResponse:
    status: int
    headers: dict[str, str]  # lower-case names
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


def sign(
    host: str,
    path: str,
    body: bytes,
    keys: tuple[str, str],
    *,
    headers: dict[str, str] | None = None,
    service: str = "kinesisvideo",
    region: str = "us-east-1",
) -> dict[str, str]:
    """The SigV4 headers (plus ``headers``) botocore sends for ``POST path`` with ``body``."""
    req = AWSRequest(method="POST", url=f"http://{host}{path}", data=body, headers=headers or {})
    SigV4Auth(Credentials(*keys), service, region).add_auth(req)
    return {k: v for k, v in req.headers.items() if k.lower() not in _HOP_HEADERS}


def chunked(parts: Sequence[bytes]) -> list[bytes]:
    """``parts`` as HTTP chunks (one chunk per part) followed by the last chunk."""
    out = [b"%x\r\n%s\r\n" % (len(p), p) for p in parts if p]
    out.append(b"0\r\n\r\n")
    return out


def head(path: str, host: str, headers: dict[str, str], framing: str) -> bytes:
    lines = [f"POST {path} HTTP/1.1", f"Host: {host}", "Connection: close"]
    lines += [f"{k}: {v}" for k, v in headers.items()]
    lines.append(framing)
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


def send(
    port: int,
    writes: Sequence[bytes],
    *,
    delay: float = 0.0,
    timeout: float = 30.0,
    head_only: bool = False,
) -> RawResponse:
    """Write ``writes`` one by one (``delay`` seconds apart, TCP_NODELAY), read the response.

    ``head_only`` stops at the headers of a successful response (a media stream that may go on).
    Raises ConnectionError if the server resets the connection or closes it without a response.
    """
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        for i, data in enumerate(writes):
            if i and delay:
                time.sleep(delay)
            try:
                sock.sendall(data)
            except (BrokenPipeError, ConnectionResetError):
                # The server answered early (413) and closed: its response may be readable.
                break
        return read_response(sock, head_only=head_only)


def read_response(sock: socket.socket, *, head_only: bool = False) -> RawResponse:
    data = b""
    while True:
        if (
            head_only
            and b"\r\n\r\n" in data
            and not data.startswith((b"HTTP/1.1 4", b"HTTP/1.1 5"))
        ):
            break
        try:
            got = sock.recv(65536)
        except ConnectionResetError:
            if b"\r\n\r\n" in data:
                break
            raise
        if not got:
            break
        data += got
        if _complete(data):
            break
    if head_only and b"\r\n\r\n" in data and data.startswith(b"HTTP/1.1 2"):
        data = data.split(b"\r\n\r\n", 1)[0] + b"\r\n\r\n"
        raw_head = data[:-4].decode("latin-1").split("\r\n")
        return RawResponse(int(raw_head[0].split()[1]), _headers(raw_head[1:]), b"")
    if b"\r\n\r\n" not in data:
        raise ConnectionError(f"no HTTP response (got {data[:80]!r})")
    raw_head, body = data.split(b"\r\n\r\n", 1)
    lines = raw_head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    headers = _headers(lines[1:])
    if headers.get("transfer-encoding", "").lower() == "chunked":
        body = _unchunk(body)
    return RawResponse(status, headers, body)


def _headers(lines: list[str]) -> dict[str, str]:
    headers: dict[str, str] = {}
    for line in lines:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    return headers


def _complete(data: bytes) -> bool:
    if b"\r\n\r\n" not in data:
        return False
    raw_head, body = data.split(b"\r\n\r\n", 1)
    for line in raw_head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            return len(body) >= int(value.strip())
        if name.strip().lower() == b"transfer-encoding" and b"chunked" in value.lower():
            return body.endswith(b"0\r\n\r\n")
    return False


def _unchunk(body: bytes) -> bytes:
    out = b""
    while body:
        size_line, _, rest = body.partition(b"\r\n")
        size = int(size_line.split(b";")[0], 16)
        if size == 0:
            break
        out += rest[:size]
        body = rest[size + 2 :]
    return out


def post(
    port: int,
    path: str,
    body: bytes,
    keys: tuple[str, str] | None,
    *,
    splits: Sequence[int] = (),
    delay: float = 0.0,
    framing: str = "length",
    headers: dict[str, str] | None = None,
    service: str = "kinesisvideo",
    timeout: float = 30.0,
    head_only: bool = False,
) -> RawResponse:
    """A POST with ``body`` written in pieces cut at the offsets ``splits``, ``delay`` apart.

    ``framing`` is ``"length"`` (Content-Length) or ``"chunked"`` (one HTTP chunk per piece).
    ``keys`` None sends the request unsigned, with only ``headers``.
    """
    host = f"127.0.0.1:{port}"
    base = {"Content-Type": "application/json", **(headers or {})}
    hdrs = sign(host, path, body, keys, headers=base, service=service) if keys else base
    cuts = [0, *sorted(s for s in splits if 0 < s < len(body)), len(body)]
    pieces = [body[a:b] for a, b in zip(cuts, cuts[1:], strict=False)]
    if framing == "chunked":
        first = head(path, host, hdrs, "Transfer-Encoding: chunked")
        body_writes = chunked(pieces)
        # The last chunk goes with the last piece: the pause falls inside the body.
        body_writes[-2:] = (
            [body_writes[-2] + body_writes[-1]] if len(body_writes) > 1 else [body_writes[-1]]
        )
    else:
        first = head(path, host, hdrs, f"Content-Length: {len(body)}")
        body_writes = [p for p in pieces if p]
    if body_writes:
        writes = [first + body_writes[0], *body_writes[1:]]
    else:
        writes = [first]
    return send(port, writes, delay=delay, timeout=timeout, head_only=head_only)
