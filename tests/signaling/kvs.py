"""A small KVS signaling client for tests: presigned URLs the way the KVS SDKs build them, and a
WebSocket wrapper that speaks either client dialect."""

from __future__ import annotations

import asyncio
import base64
import datetime as _dt
import json
import ssl
from typing import Any

import aiohttp

from openkvs.auth import sigv4

from ..support import ServerThread


def b64json(obj: Any) -> str:
    return base64.b64encode(json.dumps(obj).encode()).decode()


def unb64json(payload: str) -> Any:
    return json.loads(base64.b64decode(payload))


def amz_now(offset: float = 0.0) -> str:
    when = _dt.datetime.now(_dt.UTC) + _dt.timedelta(seconds=offset)
    return when.strftime("%Y%m%dT%H%M%SZ")


def setup_channel(server: ServerThread, name: str = "ch", ttl: int = 60) -> str:
    kv = server.client("kinesisvideo")
    arn: str = kv.create_signaling_channel(
        ChannelName=name, SingleMasterConfiguration={"MessageTtlSeconds": ttl}
    )["ChannelARN"]
    return arn


def enable_storage(server: ServerThread, channel_arn: str, stream_name: str) -> str:
    kv = server.client("kinesisvideo")
    stream: str = kv.create_stream(StreamName=stream_name, DataRetentionInHours=1)["StreamARN"]
    kv.update_media_storage_configuration(
        ChannelARN=channel_arn,
        MediaStorageConfiguration={"StreamARN": stream, "Status": "ENABLED"},
    )
    return stream


def presigned_url(
    server: ServerThread,
    channel_arn: str,
    client_id: str | None = None,
    *,
    keys: tuple[str, str] | None = None,
    amz_date: str | None = None,
    expires: int = 299,
    tls: bool = False,
    extra: list[tuple[str, str]] | None = None,
    token: str | None = None,
) -> str:
    akid, secret = keys or server.keys
    params = [("X-Amz-ChannelARN", channel_arn)]
    if client_id is not None:
        params.append(("X-Amz-ClientId", client_id))
    params += extra or []
    port = server.port if tls else server.http_port
    return sigv4.presign_url(
        method="GET",
        scheme="wss" if tls else "ws",
        host=f"127.0.0.1:{port}",
        path="/",
        params=params,
        access_key_id=akid,
        secret=secret,
        region=server.settings.region,
        amz_date=amz_date or amz_now(),
        expires=expires,
        security_token=token,
    )


def client_ssl(server: ServerThread) -> ssl.SSLContext:
    return ssl.create_default_context(cafile=server.ca)


class Rejected(Exception):
    def __init__(self, status: int, error_type: str | None, body: dict[str, Any]) -> None:
        super().__init__(f"{status} {error_type}: {body}")
        self.status = status
        self.error_type = error_type
        self.body = body


class Client:
    """One signaling WebSocket (the master when client_id is None)."""

    def __init__(
        self, ws: aiohttp.ClientWebSocketResponse, session: aiohttp.ClientSession, tls: bool
    ) -> None:
        self.ws = ws
        self.session = session
        self.tls = tls

    @classmethod
    async def connect(
        cls,
        server: ServerThread,
        channel_arn: str,
        client_id: str | None = None,
        *,
        url: str | None = None,
        autoping: bool = True,
        protocols: tuple[str, ...] = (),
        **kw: Any,
    ) -> Client:
        url = url or presigned_url(server, channel_arn, client_id, **kw)
        session = aiohttp.ClientSession()
        try:
            ws = await session.ws_connect(
                url,
                ssl=client_ssl(server),
                autoping=autoping,
                autoclose=True,
                heartbeat=None,
                protocols=protocols,
            )
        except aiohttp.WSServerHandshakeError as exc:
            await session.close()
            raise await _rejection(server, url) from exc
        except BaseException:
            await session.close()
            raise
        return cls(ws, session, url.startswith("wss:"))

    async def send(
        self,
        action: str,
        payload: Any,
        recipient: str | None = None,
        correlation_id: str | None = None,
    ) -> None:
        """The JS SDK's dialect: lowerCamel keys, absent when undefined."""
        frame: dict[str, Any] = {
            "action": action,
            "messagePayload": payload if isinstance(payload, str) else b64json(payload),
        }
        if recipient:
            frame["recipientClientId"] = recipient
        if correlation_id:
            frame["correlationId"] = correlation_id
        await self.ws.send_str(json.dumps(frame))

    async def send_raw(self, text: str) -> None:
        await self.ws.send_str(text)

    async def recv(self, timeout: float = 5.0) -> dict[str, Any]:
        # One deadline for the whole wait: aiohttp restarts its own receive timeout after every
        # ping it answers.
        async with asyncio.timeout(timeout):
            while True:
                msg = await self.ws.receive()
                if msg.type is aiohttp.WSMsgType.TEXT:
                    data: dict[str, Any] = json.loads(msg.data)
                    return data
                if msg.type in (aiohttp.WSMsgType.PING, aiohttp.WSMsgType.PONG):
                    continue
                raise ConnectionError(f"websocket ended: {msg.type} {msg.data!r} {msg.extra!r}")

    async def expect_nothing(self, wait: float = 0.5) -> None:
        try:
            msg = await self.recv(timeout=wait)
        except TimeoutError:
            return
        raise AssertionError(f"unexpected event {msg}")

    async def wait_closed(self, timeout: float = 5.0) -> aiohttp.WSMessage:
        """Read until the server closes; return the close message."""
        async with asyncio.timeout(timeout):
            while True:
                msg = await self.ws.receive()
                if msg.type in (
                    aiohttp.WSMsgType.CLOSE,
                    aiohttp.WSMsgType.CLOSING,
                    aiohttp.WSMsgType.CLOSED,
                ):
                    return msg

    async def close(self) -> None:
        await self.ws.close()
        await self.session.close()
        if self.tls:
            # Let the TLS close_notify exchange finish before the test's loop goes away
            # (aiohttp's documented graceful-shutdown advice for SSL connections).
            await asyncio.sleep(0.25)


async def _rejection(server: ServerThread, url: str) -> Rejected:
    """Repeat the refused upgrade as plain HTTP to read the error response."""
    http_url = url.replace("wss://", "https://", 1).replace("ws://", "http://", 1)
    headers = {
        "Connection": "Upgrade",
        "Upgrade": "websocket",
        "Sec-WebSocket-Version": "13",
        "Sec-WebSocket-Key": base64.b64encode(b"0123456789abcdef").decode(),
    }
    async with aiohttp.ClientSession() as session:
        async with session.get(
            http_url, headers=headers, ssl=client_ssl(server), allow_redirects=False
        ) as resp:
            body = await resp.json(content_type=None)
            return Rejected(resp.status, resp.headers.get("x-amzn-ErrorType"), body)


async def connect_rejected(server: ServerThread, url: str) -> Rejected:
    try:
        client = await Client.connect(server, "", url=url)
    except Rejected as exc:
        return exc
    await client.close()
    raise AssertionError("the connection was accepted")
