"""A PutMedia producer for the tests: one HTTP/1.1 connection, a chunked SigV4-signed body sent
piece by piece, and the acknowledgements read as they arrive (full duplex, like the KVS producer
SDKs). Written on raw asyncio streams so nothing buffers the upload or the acks."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import ssl
import time
from typing import Any
from urllib.parse import urlsplit

from botocore.auth import SigV4Auth, SigV4QueryAuth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials

from ..support import ServerThread

STREAMING = "STREAMING-AWS4-HMAC-SHA256-PAYLOAD"


class Producer:
    def __init__(
        self,
        srv: ServerThread,
        *,
        stream_name: str | None = None,
        stream_arn: str | None = None,
        timecode_type: str = "ABSOLUTE",
        start_timestamp: str | None = None,
        keys: tuple[str, str] | None = None,
        payload_hash: str = STREAMING,
        headers: dict[str, str] | None = None,
        presign: bool = False,
    ) -> None:
        self.presign = presign
        self.srv = srv
        self.endpoint = srv.endpoint
        extra: dict[str, str] = {}
        if stream_name is not None:
            extra["x-amzn-stream-name"] = stream_name
        if stream_arn is not None:
            extra["x-amzn-stream-arn"] = stream_arn
        extra["x-amzn-fragment-timecode-type"] = timecode_type
        if start_timestamp is not None:
            extra["x-amzn-producer-start-timestamp"] = start_timestamp
        extra["x-amzn-fragment-acknowledgment-required"] = "1"
        extra["X-Amz-Content-SHA256"] = payload_hash
        extra.update(headers or {})
        self.keys = keys or srv.keys
        self.request_headers = extra
        self.status = 0
        self.response_headers: dict[str, str] = {}
        self.acks: list[dict[str, Any]] = []
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None
        self._pending = b""
        self.eof = False

    def _signed(self) -> tuple[str, dict[str, str]]:
        """(request target, headers): SigV4 in the headers, or in the query when presigned."""
        url = f"{self.endpoint}/putMedia"
        headers = dict(self.request_headers)
        akid, secret = self.keys
        creds = Credentials(akid, secret)
        region = self.srv.settings.region
        if self.presign:
            headers.pop("X-Amz-Content-SHA256", None)
            req = AWSRequest(method="POST", url=url, headers=headers)
            SigV4QueryAuth(creds, "kinesisvideo", region, expires=300).add_auth(req)
            parts = urlsplit(req.url)
            return f"{parts.path}?{parts.query}", dict(req.headers.items())
        req = AWSRequest(method="POST", url=url, headers=headers)
        SigV4Auth(creds, "kinesisvideo", region).add_auth(req)
        return "/putMedia", dict(req.headers.items())

    async def connect(self) -> None:
        """Open the connection and send the request line and headers (no body yet)."""
        parts = urlsplit(self.endpoint)
        ctx = ssl.create_default_context(cafile=self.srv.ca)
        self._reader, self._writer = await asyncio.open_connection(
            parts.hostname, parts.port, ssl=ctx
        )
        target, headers = self._signed()
        lines = [f"POST {target} HTTP/1.1", f"Host: {parts.netloc}"]
        lines += [f"{k}: {v}" for k, v in headers.items()]
        lines += [
            "Transfer-Encoding: chunked",
            "Connection: keep-alive",
            "User-Agent: test-producer",
        ]
        self._writer.write(("\r\n".join(lines) + "\r\n\r\n").encode())
        await self._writer.drain()

    async def read_head(self, timeout: float = 10) -> int:
        """Read the status line and headers of the response; return the status (an interim
        ``100 Continue`` is read past)."""
        assert self._reader is not None
        while True:
            line = await asyncio.wait_for(self._reader.readline(), timeout)
            self.status = int(line.split()[1])
            while True:
                line = await asyncio.wait_for(self._reader.readline(), timeout)
                if line in (b"\r\n", b""):
                    break
                k, _, v = line.decode().partition(":")
                self.response_headers[k.strip().lower()] = v.strip()
            if self.status != 100:
                return self.status

    async def read_error(self, timeout: float = 10) -> dict[str, Any]:
        """The JSON body of an error response (after ``read_head``)."""
        assert self._reader is not None
        if self.response_headers.get("transfer-encoding") == "chunked":
            body = b""
            while (chunk := await asyncio.wait_for(self._read_chunk(), timeout)) is not None:
                body += chunk
        else:
            n = int(self.response_headers.get("content-length", "0"))
            body = await asyncio.wait_for(self._reader.readexactly(n), timeout)
        return json.loads(body)

    async def send(self, data: bytes, piece: int = 16384, pause: float = 0.0) -> None:
        """Send ``data`` as chunks of at most ``piece`` bytes."""
        assert self._writer is not None
        for i in range(0, len(data), piece):
            part = data[i : i + piece]
            self._writer.write(f"{len(part):x}\r\n".encode() + part + b"\r\n")
            await self._writer.drain()
            if pause:
                await asyncio.sleep(pause)

    async def end(self) -> None:
        """Finish the body cleanly (the terminating zero-length chunk)."""
        assert self._writer is not None
        self._writer.write(b"0\r\n\r\n")
        await self._writer.drain()

    def abort(self) -> None:
        """Vanish: drop the TCP connection without finishing the body."""
        assert self._writer is not None
        transport = self._writer.transport
        transport.abort()

    async def end_and_close(self) -> None:
        """After an error response: finish the (empty) body as a client would, then close."""
        try:
            await self.end()
        except ConnectionError:
            pass
        await asyncio.sleep(0.05)
        await self.close()

    async def close(self) -> None:
        if self._writer is not None:
            self._writer.transport.abort()
            self._writer = None

    async def _read_chunk(self) -> bytes | None:
        assert self._reader is not None
        line = await self._reader.readline()
        if not line:
            self.eof = True
            return None
        size = int(line.split(b";")[0].strip(), 16)
        if size == 0:
            await self._reader.readline()
            self.eof = True
            return None
        data = await self._reader.readexactly(size)
        await self._reader.readexactly(2)
        return data

    async def ack(self, timeout: float = 15) -> dict[str, Any] | None:
        """The next acknowledgement, or None when the response has ended."""
        while b"\n" not in self._pending:
            if self.eof:
                return None
            chunk = await asyncio.wait_for(self._read_chunk(), timeout)
            if chunk is None:
                return None
            self._pending += chunk
        line, _, self._pending = self._pending.partition(b"\n")
        obj = json.loads(line)
        self.acks.append(obj)
        return obj

    async def acks_until_end(self, timeout: float = 15) -> list[dict[str, Any]]:
        out = []
        while (a := await self.ack(timeout)) is not None:
            out.append(a)
        return out


def sdk_sign(
    method: str,
    url: str,
    headers: dict[str, str],
    body: bytes | None,
    keys: tuple[str, str],
    region: str,
    now: float | None = None,
) -> dict[str, str]:
    """Sign a request the way the KVS Producer SDK (producer-c AwsV4Signer.c) does.

    The host header is the URL cut at the first ':' (no port); every header set so far is signed
    except x-amz-security-token, content-type, content-length and authorization; content-type is
    sent as application/json; a streamed body (``None``) is hashed as if it were empty, and no
    x-amz-content-sha256 header is sent. Returns the headers to send, in the SDK's order
    (alphabetical, as its header list keeps them)."""
    parts = urlsplit(url)
    amz_date = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(time.time() if now is None else now))
    hdrs = dict(headers)
    hdrs["host"] = url.split("://", 1)[1].split(":", 1)[0].split("/", 1)[0]
    hdrs["X-Amz-Date"] = amz_date
    hdrs["content-type"] = "application/json"
    if body is not None:
        hdrs["content-length"] = str(len(body))
    unsigned = ("x-amz-security-token", "content-type", "content-length", "authorization")
    signed = sorted(
        (k.lower(), " ".join(v.split())) for k, v in hdrs.items() if k.lower() not in unsigned
    )
    names = ";".join(k for k, _ in signed)
    creq = "\n".join(
        [
            method,
            parts.path or "/",
            parts.query,
            "".join(f"{k}:{v}\n" for k, v in signed),
            names,
            hashlib.sha256(body or b"").hexdigest(),
        ]
    )
    scope = f"{amz_date[:8]}/{region}/kinesisvideo/aws4_request"
    to_sign = "\n".join(
        ["AWS4-HMAC-SHA256", amz_date, scope, hashlib.sha256(creq.encode()).hexdigest()]
    )
    akid, secret = keys
    key = ("AWS4" + secret).encode()
    for part in (amz_date[:8], region, "kinesisvideo", "aws4_request"):
        key = hmac.new(key, part.encode(), hashlib.sha256).digest()
    signature = hmac.new(key, to_sign.encode(), hashlib.sha256).hexdigest()
    hdrs["Authorization"] = (
        f"AWS4-HMAC-SHA256 Credential={akid}/{scope}, SignedHeaders={names}, Signature={signature}"
    )
    return dict(sorted(hdrs.items(), key=lambda kv: kv[0].lower()))


SDK_USER_AGENT = "AWS-SDK-KVS-CPP-CLIENT/3.6.0/1.6.4 GCC/12.2.0 Linux/6.1.0 x86_64"


class SdkProducer(Producer):
    """PutMedia as the KVS Producer SDK (kvssink, producer-c CurlApiCallbacks.c putStream) sends
    it: its header set, signed by ``sdk_sign`` (Host without port, the body hashed as empty, no
    x-amz-content-sha256), with the ``Accept`` and ``Expect: 100-continue`` headers curl adds to
    a chunked POST."""

    def __init__(
        self,
        srv: ServerThread,
        *,
        stream_name: str,
        endpoint: str | None = None,
        start_timestamp: str = "1700000000.000",
        absolute: bool = True,
    ) -> None:
        super().__init__(srv, stream_name=stream_name)
        self.endpoint = endpoint or srv.endpoint
        self.sdk_headers = {
            "user-agent": SDK_USER_AGENT,
            "x-amzn-stream-name": stream_name,
            "x-amzn-producer-start-timestamp": start_timestamp,
            "x-amzn-fragment-acknowledgment-required": "1",
            "x-amzn-fragment-timecode-type": "ABSOLUTE" if absolute else "RELATIVE",
            "transfer-encoding": "chunked",
            "connection": "keep-alive",
        }

    async def connect(self) -> None:
        parts = urlsplit(self.endpoint)
        ctx = ssl.create_default_context(cafile=self.srv.ca)
        self._reader, self._writer = await asyncio.open_connection(
            parts.hostname, parts.port or 443, ssl=ctx
        )
        headers = sdk_sign(
            "POST",
            f"{self.endpoint}/putMedia",
            self.sdk_headers,
            None,
            self.keys,
            self.srv.settings.region,
        )
        self.sent_headers = headers
        lines = ["POST /putMedia HTTP/1.1"]
        lines += [f"{k}: {v}" for k, v in headers.items()]
        lines += ["Accept: */*", "Expect: 100-continue"]
        self._writer.write(("\r\n".join(lines) + "\r\n\r\n").encode())
        await self._writer.drain()


async def put_media(
    srv: ServerThread, data: bytes, *, piece: int = 16384, **kwargs: Any
) -> tuple[int, list[dict[str, Any]]]:
    """Stream ``data`` in one PutMedia request and collect every ack until the server ends."""
    p = Producer(srv, **kwargs)
    await p.connect()
    status = await p.read_head()
    if status != 200:
        error = await p.read_error()
        await p.end_and_close()
        error_type = p.response_headers.get("x-amzn-errortype", "")
        raise AssertionError(f"PutMedia answered {status} {error_type}: {error}")
    sender = asyncio.ensure_future(_send_all(p, data, piece))
    acks = await p.acks_until_end()
    await sender
    await p.close()
    return status, acks


async def _send_all(p: Producer, data: bytes, piece: int) -> None:
    try:
        await p.send(data, piece)
        await p.end()
    except (ConnectionError, RuntimeError):
        pass  # the server ended the request early (errors are in the acks)
