"""``openkvs demo``: a newcomer's first recording, in one command.

It uses the openkvs server already running on the configured port (same data dir), or starts one
in-process; creates a signaling channel and a stream (both named ``--channel``) with media storage
enabled; and runs a synthetic camera that does what a KVS WebRTC master does, through the public
APIs only: GetSignalingChannelEndpoint, GetIceServerConfig, ConnectAsMaster (a presigned WSS),
JoinStorageSession (again if no offer comes within 6 s), then it answers the storage session's
offer with a pre-encoded H.264 test pattern and an Opus tone (``testpattern``: encoded once per
resolution and cached in the data dir, so the demo itself only sends packets).

While it records, a progress line shows the seconds recorded, fragments and bitrate (from
ListFragments); once the first fragment is stored it prints a live HLS URL and the AWS CLI and
boto3 commands that fetch a clip and images. ``--duration`` stops it after that many seconds of
streaming; Ctrl-C stops it cleanly at any time.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import dataclasses
import datetime as _dt
import json
import logging
import shlex
import shutil
import signal
import ssl
import sys
import threading
import urllib.parse
from collections.abc import Callable
from pathlib import Path
from typing import Any, TextIO

import aiohttp
from aiortc import (
    MediaStreamTrack,
    RTCConfiguration,
    RTCIceServer,
    RTCPeerConnection,
    RTCRtpSender,
    RTCSessionDescription,
)
from aiortc.mediastreams import MediaStreamError
from aiortc.sdp import candidate_from_sdp

from . import clock, testpattern
from .auth import sigv4
from .auth.credentials import Principal
from .cli import local_host
from .config import Settings
from .tls import local_ca

logger = logging.getLogger(__name__)

DEFAULT_CHANNEL = "openkvs-demo"
DEFAULT_RESOLUTION = "1280x720"
OFFER_WAIT = 6.0  # the KVS JS sample's wait for an offer before joining again
MAX_JOINS = 6
CONNECT_TIMEOUT = 45.0
RETENTION_HOURS = 24
BASELINE_PROFILES = ("42e01f", "42001f")


class DemoError(Exception):
    """Something the user can act on; printed without a traceback."""


@dataclasses.dataclass(frozen=True)
class DemoOptions:
    channel: str
    width: int
    height: int
    duration: float  # seconds of streaming; 0 = until Ctrl-C


def options_from(args: argparse.Namespace) -> DemoOptions:
    try:
        width, height = testpattern.parse_resolution(args.resolution or DEFAULT_RESOLUTION)
    except ValueError as exc:
        raise DemoError(str(exc)) from None
    channel = args.channel or DEFAULT_CHANNEL
    if not channel or len(channel) > 256 or not all(c.isalnum() or c in "_.-" for c in channel):
        raise DemoError("--channel must be 1-256 characters of [a-zA-Z0-9_.-]")
    if args.duration is not None and args.duration < 0:
        raise DemoError("--duration must not be negative")
    return DemoOptions(channel, width, height, float(args.duration or 0.0))


def main(settings: Settings, args: argparse.Namespace) -> int:
    """Entry point of ``openkvs demo`` (cli.py parses the flags)."""
    try:
        options = options_from(args)
        return asyncio.run(run(settings, options, sys.stdout))
    except DemoError as exc:
        print(f"openkvs demo: {exc}", file=sys.stderr)
        return 1


# -- the server: an existing one, or our own ------------------------------------------------


@dataclasses.dataclass
class Target:
    endpoint: str  # https://host:port
    http_endpoint: str | None  # http://host:port, for players that do not trust the local CA
    ssl: ssl.SSLContext
    verify: str | bool  # for botocore
    started: Any = None  # our own openkvs.server.Server, or None


def _tls(settings: Settings) -> tuple[ssl.SSLContext, str | bool]:
    if settings.tls_cert is not None:
        return ssl.create_default_context(), True
    ca = local_ca(settings.data_dir)
    if ca.exists():
        return ssl.create_default_context(cafile=str(ca)), str(ca.resolve())
    # No local CA yet: nothing of ours runs with this data dir (probing only).
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    return ctx, False


async def _probe(url: str, ctx: ssl.SSLContext | None) -> str:
    """'openkvs', 'refused', or a short description of what answers there."""
    timeout = aiohttp.ClientTimeout(total=3)
    try:
        async with aiohttp.ClientSession(timeout=timeout) as http:
            async with http.get(url, ssl=ctx if ctx is not None else False) as resp:
                data = await resp.json(content_type=None) if resp.status == 200 else None
    except aiohttp.ClientConnectorCertificateError:
        return "a TLS server whose certificate is not from this data dir's CA"
    except (aiohttp.ClientConnectorError, ConnectionError):
        return "refused"
    except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
        return f"something that is not openkvs ({type(exc).__name__})"
    if isinstance(data, dict) and data.get("service") == "openkvs":
        return "openkvs"
    return "something that is not openkvs"


async def find_or_start(settings: Settings, out: TextIO) -> Target:
    host = local_host(settings.host)
    endpoint = f"https://{host}:{settings.port}"
    ctx, verify = _tls(settings)
    found = await _probe(f"{endpoint}/health", ctx)
    if found == "openkvs" and verify is False:
        # This data dir has no CA yet, so that server runs on another one, with other keys.
        raise DemoError(
            f"port {settings.port} is taken by an openkvs server started with another "
            "--data-dir: pass the same --data-dir, or choose --port"
        )
    if found == "openkvs":
        http_endpoint = None
        if settings.http_port:
            plain = f"http://{host}:{settings.http_port}"
            if await _probe(f"{plain}/health", None) == "openkvs":
                http_endpoint = plain
        print(f"Using the openkvs server running at {endpoint}", file=out)
        return Target(endpoint, http_endpoint, ctx, verify)
    if found != "refused":
        raise DemoError(
            f"port {settings.port} is taken by {found}. If it is an openkvs server started "
            "with another --data-dir, pass the same --data-dir; otherwise choose --port."
        )
    from .server import Server

    server = Server(settings)
    try:
        bound = await server.start()
    except OSError as exc:
        raise DemoError(f"cannot start a server: {exc}") from exc
    endpoint = f"https://{host}:{bound.port}"
    http_endpoint = f"http://{host}:{bound.http_port}" if bound.http_port else None
    ctx, verify = _tls(settings)
    print(f"Started an openkvs server at {endpoint} (data in {settings.data_dir})", file=out)
    return Target(endpoint, http_endpoint, ctx, verify, started=server)


# -- AWS API calls (botocore, in threads) ----------------------------------------------------


class Api:
    def __init__(self, settings: Settings, target: Target, principal: Principal) -> None:
        import botocore.config
        import botocore.session

        self.keys = (principal.access_key_id, principal.secret_access_key)
        self.region = settings.region
        self.target = target
        self._session = botocore.session.get_session()
        self._config = botocore.config.Config(
            retries={"max_attempts": 2}, connect_timeout=5, read_timeout=30
        )
        self._clients: list[Any] = []

    def client(self, service: str, endpoint: str | None = None) -> Any:
        endpoint = endpoint or self.target.endpoint
        client = self._session.create_client(
            service,
            region_name=self.region,
            endpoint_url=endpoint,
            aws_access_key_id=self.keys[0],
            aws_secret_access_key=self.keys[1],
            verify=self.target.verify if endpoint.startswith("https") else False,
            config=self._config,
        )
        self._clients.append(client)
        return client

    async def call(self, client: Any, operation: str, **params: Any) -> dict[str, Any]:
        result: dict[str, Any] = await asyncio.to_thread(getattr(client, operation), **params)
        return result

    def close(self) -> None:
        for client in self._clients:
            client.close()


def error_code(exc: BaseException) -> str | None:
    response = getattr(exc, "response", None)
    if isinstance(response, dict):
        code = response.get("Error", {}).get("Code")
        return str(code) if code else None
    return None


async def setup_resources(api: Api, name: str, out: TextIO) -> tuple[str, str]:
    """The channel and stream ``name`` (created if needed) with media storage ENABLED."""
    kv = api.client("kinesisvideo")
    try:
        created = await api.call(kv, "create_signaling_channel", ChannelName=name)
        channel_arn = str(created["ChannelARN"])
        print(f"Created signaling channel {name}", file=out)
    except Exception as exc:
        if error_code(exc) != "ResourceInUseException":
            raise
        described = await api.call(kv, "describe_signaling_channel", ChannelName=name)
        channel_arn = str(described["ChannelInfo"]["ChannelARN"])
        print(f"Using signaling channel {name}", file=out)
    try:
        made = await api.call(
            kv, "create_stream", StreamName=name, DataRetentionInHours=RETENTION_HOURS
        )
        stream_arn = str(made["StreamARN"])
        print(f"Created stream {name} (retention {RETENTION_HOURS} h)", file=out)
    except Exception as exc:
        if error_code(exc) != "ResourceInUseException":
            raise
        info = (await api.call(kv, "describe_stream", StreamName=name))["StreamInfo"]
        stream_arn = str(info["StreamARN"])
        if not info.get("DataRetentionInHours"):
            raise DemoError(
                f"stream {name} keeps no data (retention 0 h); choose another --channel"
            ) from None
        print(f"Using stream {name}", file=out)
    await api.call(
        kv,
        "update_media_storage_configuration",
        ChannelARN=channel_arn,
        MediaStorageConfiguration={"StreamARN": stream_arn, "Status": "ENABLED"},
    )
    return channel_arn, stream_arn


# -- the synthetic camera --------------------------------------------------------------------


class LoopTrack(MediaStreamTrack):
    """Sends pre-encoded packets in a loop at real-time pace, timestamps running on."""

    def __init__(
        self, kind: str, packets: tuple[testpattern.Packet, ...], loop_ms: float, t0: list[float]
    ) -> None:
        super().__init__()
        self.kind = kind
        self._packets = packets
        self._loop_ms = loop_ms
        self._t0 = t0  # shared by the tracks of one connection: [start] once started
        self._i = 0

    async def recv(self) -> Any:  # an av.Packet: aiortc sends it as encoded
        if self.readyState != "live":
            raise MediaStreamError
        loop, index = divmod(self._i, len(self._packets))
        self._i += 1
        item = self._packets[index]
        pts_ms = loop * self._loop_ms + item.pts_ms
        if not self._t0:
            self._t0.append(clock.monotonic())
        delay = self._t0[0] + pts_ms / 1000 - clock.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
        return testpattern.encoded_packet(self.kind, item.data, pts_ms)


def _b64json(obj: dict[str, Any]) -> str:
    return base64.b64encode(json.dumps(obj, separators=(",", ":")).encode()).decode()


def _amz_date() -> str:
    return _dt.datetime.fromtimestamp(clock.now(), _dt.UTC).strftime("%Y%m%dT%H%M%SZ")


class SyntheticMaster:
    """A KVS WebRTC master for a storage session, on aiortc, through openkvs's public APIs."""

    def __init__(self, api: Api, channel_arn: str, pattern: testpattern.TestPattern) -> None:
        self.api = api
        self.channel_arn = channel_arn
        self.pattern = pattern
        self.connected = asyncio.Event()
        self.failed: str | None = None
        self._ws: aiohttp.ClientWebSocketResponse | None = None
        self._http: aiohttp.ClientSession | None = None
        self._pc: RTCPeerConnection | None = None
        self._ice: list[RTCIceServer] = []
        self._wss = ""
        self._storage: Any = None
        self._tasks: set[asyncio.Task[Any]] = set()
        self._offer_seen = asyncio.Event()
        self._closing = False
        self._correlation = 0

    def _spawn(self, coro: Any, name: str) -> None:
        task = asyncio.ensure_future(coro)
        task.set_name(name)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def start(self) -> None:
        api = self.api
        kv = api.client("kinesisvideo")
        eps = await api.call(
            kv,
            "get_signaling_channel_endpoint",
            ChannelARN=self.channel_arn,
            SingleMasterChannelEndpointConfiguration={
                "Protocols": ["WSS", "HTTPS", "WEBRTC"],
                "Role": "MASTER",
            },
        )
        endpoints = {e["Protocol"]: e["ResourceEndpoint"] for e in eps["ResourceEndpointList"]}
        signaling = api.client("kinesis-video-signaling", endpoints["HTTPS"])
        ice = await api.call(signaling, "get_ice_server_config", ChannelARN=self.channel_arn)
        self._ice = [
            RTCIceServer(urls=s["Uris"], username=s.get("Username"), credential=s.get("Password"))
            for s in ice.get("IceServerList", [])
        ]
        self._wss = endpoints["WSS"]
        self._storage = api.client("kinesis-video-webrtc-storage", endpoints["WEBRTC"])
        self._http = aiohttp.ClientSession()
        await self._connect()

    async def _connect(self) -> None:
        """ConnectAsMaster, then JoinStorageSession until an offer arrives."""
        assert self._http is not None
        parsed = urllib.parse.urlsplit(self._wss)
        url = sigv4.presign_url(
            method="GET",
            scheme=parsed.scheme,
            host=parsed.netloc,
            path=parsed.path or "/",
            params=[("X-Amz-ChannelARN", self.channel_arn)],
            access_key_id=self.api.keys[0],
            secret=self.api.keys[1],
            region=self.api.region,
            amz_date=_amz_date(),
            expires=299,
        )
        try:
            self._ws = await self._http.ws_connect(url, ssl=self.api.target.ssl, heartbeat=30)
        except aiohttp.ClientResponseError as exc:
            # Its text carries the presigned URL (access key id and signature): not for output.
            raise DemoError(f"ConnectAsMaster was refused (HTTP {exc.status})") from None
        except aiohttp.ClientError as exc:
            raise DemoError(f"ConnectAsMaster failed ({type(exc).__name__})") from None
        self._offer_seen.clear()
        self._spawn(self._read(self._ws), "demo signaling")
        self._spawn(self._join_until_offer(), "demo join")

    async def _join_until_offer(self) -> None:
        for _ in range(MAX_JOINS):
            if self._closing:
                return
            try:
                await self.api.call(
                    self._storage, "join_storage_session", channelArn=self.channel_arn
                )
            except Exception as exc:  # noqa: BLE001 - reported, then retried
                logger.warning("JoinStorageSession failed: %s", exc)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._offer_seen.wait(), OFFER_WAIT)
                return
        self.failed = f"no SDP offer after {MAX_JOINS} JoinStorageSession calls"

    async def _read(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        async for msg in ws:
            if msg.type != aiohttp.WSMsgType.TEXT:
                continue
            try:
                event = json.loads(msg.data)
            except ValueError:
                continue
            kind = event.get("messageType")
            try:
                if kind == "SDP_OFFER":
                    await self._answer(event["messagePayload"])
                elif kind == "ICE_CANDIDATE":
                    await self._candidate(event["messagePayload"])
                elif kind == "GO_AWAY" and not self._closing:
                    logger.info("signaling asked us to reconnect (GO_AWAY)")
                    self._spawn(self._reconnect(ws), "demo reconnect")
                elif kind == "STATUS_RESPONSE":
                    logger.warning("signaling refused a message: %s", event.get("statusResponse"))
            except Exception:  # noqa: BLE001 - one bad message must not stop the camera
                logger.exception("could not handle a %s message", kind)

    async def _reconnect(self, old: aiohttp.ClientWebSocketResponse) -> None:
        await old.close()
        if self._closing:
            return
        try:
            await self._connect()
        except DemoError as exc:
            self.failed = str(exc)  # the recording loop reports it and stops

    async def _answer(self, payload: str) -> None:
        offer = json.loads(base64.b64decode(payload))
        self._offer_seen.set()
        previous, self._pc = self._pc, None
        if previous is not None:
            await previous.close()
        pc = RTCPeerConnection(RTCConfiguration(iceServers=list(self._ice)))
        self._pc = pc
        t0: list[float] = []
        p = self.pattern
        video = pc.addTransceiver(LoopTrack("video", p.video, p.loop_ms, t0), "sendonly")
        caps = RTCRtpSender.getCapabilities("video")
        video.setCodecPreferences(
            [
                c
                for c in caps.codecs
                if c.mimeType.lower() == "video/h264"
                and c.parameters.get("profile-level-id") in BASELINE_PROFILES
            ]
        )
        pc.addTransceiver(LoopTrack("audio", p.audio, p.loop_ms, t0), "sendrecv")

        @pc.on("track")
        def on_track(track: MediaStreamTrack) -> None:
            self._spawn(_drain(track), "demo audio in")  # viewers' audio: heard by nobody

        @pc.on("connectionstatechange")
        def on_state() -> None:
            if pc.connectionState == "connected":
                self.connected.set()
            elif pc.connectionState in ("failed", "closed") and pc is self._pc:
                if not self._closing:  # the session ended on the server's side: join again
                    logger.warning("storage session %s; joining again", pc.connectionState)
                    self._offer_seen.clear()
                    self._spawn(self._join_until_offer(), "demo rejoin")

        await pc.setRemoteDescription(RTCSessionDescription(offer["sdp"], "offer"))
        await pc.setLocalDescription(await pc.createAnswer())
        await self._send("SDP_ANSWER", {"type": "answer", "sdp": pc.localDescription.sdp})

    async def _candidate(self, payload: str) -> None:
        data = json.loads(base64.b64decode(payload))
        text = str(data.get("candidate", ""))
        if self._pc is None or not text.startswith("candidate:"):
            return
        cand = candidate_from_sdp(text[len("candidate:") :])
        cand.sdpMid = data.get("sdpMid")
        cand.sdpMLineIndex = data.get("sdpMLineIndex")
        with contextlib.suppress(Exception):
            await self._pc.addIceCandidate(cand)

    async def _send(self, action: str, payload: dict[str, Any]) -> None:
        assert self._ws is not None
        self._correlation += 1
        await self._ws.send_json(
            {
                "action": action,
                "messagePayload": _b64json(payload),
                "correlationId": f"demo-{self._correlation}",
            }
        )

    async def stop(self) -> None:
        if self._closing:
            return
        self._closing = True
        if self._pc is not None:
            await self._pc.close()
        if self._ws is not None:
            await self._ws.close()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._http is not None:
            await self._http.close()


async def _drain(track: MediaStreamTrack) -> None:
    with contextlib.suppress(MediaStreamError):
        while True:
            await track.recv()


# -- progress, URLs and commands -------------------------------------------------------------


@dataclasses.dataclass
class Progress:
    fragments: int = 0
    seconds: float = 0.0
    bytes: int = 0
    first_ms: int | None = None
    last_ms: int | None = None

    @property
    def mbps(self) -> float:
        return self.bytes * 8 / self.seconds / 1e6 if self.seconds else 0.0

    def line(self) -> str:
        return (
            f"recording: {self.seconds:6.1f} s, {self.fragments} fragments, {self.mbps:.2f} Mbit/s"
        )


class Tally:
    """The recording's progress, kept up to date from ListFragments. Each update lists only
    the last ``LOOKBACK_S`` before the newest fragment seen (fragments can be listed a little out
    of order), so its cost does not grow with the recording."""

    LOOKBACK_S = 30.0

    def __init__(self, api: Api, am: Any, stream: str, since: float) -> None:
        self._api, self._am, self._stream = api, am, stream
        self._since = since
        self._seen: set[str] = set()
        self._progress = Progress()

    async def update(self) -> Progress:
        """A snapshot of the progress so far."""
        params: dict[str, Any] = {
            "StreamName": self._stream,
            "FragmentSelector": {
                "FragmentSelectorType": "SERVER_TIMESTAMP",
                "TimestampRange": {"StartTimestamp": self._since, "EndTimestamp": clock.now() + 60},
            },
        }
        p = self._progress
        while True:
            page = await self._api.call(self._am, "list_fragments", **params)
            for f in page.get("Fragments", []):
                if f["FragmentNumber"] in self._seen:
                    continue
                self._seen.add(f["FragmentNumber"])
                p.fragments += 1
                p.seconds += f["FragmentLengthInMilliseconds"] / 1000
                p.bytes += f["FragmentSizeInBytes"]
                start = int(f["ServerTimestamp"].timestamp() * 1000)
                end = start + int(f["FragmentLengthInMilliseconds"])
                p.first_ms = start if p.first_ms is None else min(p.first_ms, start)
                p.last_ms = end if p.last_ms is None else max(p.last_ms, end)
            token = page.get("NextToken")
            if not token:
                break
            params = {"StreamName": self._stream, "NextToken": token}
        if p.last_ms is not None:
            self._since = max(self._since, p.last_ms / 1000 - self.LOOKBACK_S)
        return dataclasses.replace(p)


def openkvs_command() -> list[str]:
    """How to run this openkvs from a shell: ``openkvs`` when it is on PATH."""
    if shutil.which("openkvs") is not None:
        return ["openkvs"]
    return [sys.executable, "-m", "openkvs"]


def server_flags(settings: Settings) -> list[str]:
    """The flags that name this server to ``openkvs serve`` and ``openkvs credentials``."""
    args = ["--data-dir", str(settings.data_dir.resolve())]  # works from any directory
    if settings.port != 8443:
        args += ["--port", str(settings.port)]
    if settings.http_port != 8080:
        args += ["--http-port", str(settings.http_port)]
    if settings.host != "127.0.0.1":
        args += ["--host", settings.host]
    return args


def credentials_command(settings: Settings) -> str:
    return shlex.join([*openkvs_command(), "credentials", *server_flags(settings)])


def fetch_commands(
    settings: Settings, stream: str, start_ms: int, end: int | None, *, boto3: bool = True
) -> str:
    """Shell commands (AWS CLI, then boto3) that fetch a clip and images of the recording that
    starts at ``start_ms`` (epoch ms) up to ``end`` (epoch seconds; None: until the moment the
    commands run). The clip's range starts at the second the recording starts in; the images
    start at the next whole second, inside the recording, so that the first one is not
    ``NO_MEDIA``."""
    start = start_ms // 1000
    first_image = -(-start_ms // 1000)
    shell_end = "$(date +%s)" if end is None else str(end)
    py_end = "int(time.time())" if end is None else str(end)
    selector = (
        "FragmentSelectorType=SERVER_TIMESTAMP,"
        f"TimestampRange={{StartTimestamp={start},EndTimestamp={shell_end}}}"
    )
    name = shlex.quote(stream)
    cli = [
        f'eval "$({credentials_command(settings)})"',
        f"aws kinesis-video-archived-media get-clip --stream-name {name} \\",
        f'    --clip-fragment-selector "{selector}" clip.mp4',
        f"aws kinesis-video-archived-media get-images --stream-name {name} \\",
        "    --image-selector-type SERVER_TIMESTAMP \\",
        f"    --start-timestamp {first_image} --end-timestamp {shell_end} \\",
        "    --sampling-interval 3000 --format JPEG --max-items 3 > images.json",
    ]
    if not boto3:
        return "\n".join(cli)
    return "\n".join(
        [
            *cli,
            "python3 - <<'PY'",
            "import base64, os, time, boto3",
            'am = boto3.client("kinesis-video-archived-media",'
            ' endpoint_url=os.environ["OPENKVS_ENDPOINT"])',
            f'span = {{"StartTimestamp": {start}, "EndTimestamp": {py_end}}}',
            f"clip = am.get_clip(StreamName={stream!r}, ClipFragmentSelector={{",
            '    "FragmentSelectorType": "SERVER_TIMESTAMP", "TimestampRange": span})',
            'open("clip.mp4", "wb").write(clip["Payload"].read())',
            f'images = am.get_images(StreamName={stream!r}, ImageSelectorType="SERVER_TIMESTAMP",',
            f'    StartTimestamp={first_image}, EndTimestamp=span["EndTimestamp"],',
            '    SamplingInterval=3000, Format="JPEG", MaxResults=3)["Images"]',
            "for i, image in enumerate(images):",
            '    if "ImageContent" in image:',
            '        open(f"image-{i}.jpg", "wb").write(base64.b64decode(image["ImageContent"]))',
            "PY",
        ]
    )


async def hls_url(api: Api, stream: str) -> str:
    """A LIVE HLS session URL, on the plain HTTP port when there is one (players need no CA)."""
    am = api.client("kinesis-video-archived-media", api.target.http_endpoint)
    resp = await api.call(
        am,
        "get_hls_streaming_session_url",
        StreamName=stream,
        PlaybackMode="LIVE",
        Expires=3600,
    )
    return str(resp["HLSStreamingSessionURL"])


# -- the whole run ---------------------------------------------------------------------------


class Printer:
    """The progress line: rewritten in place on a terminal, one line every few seconds in a
    log or pipe."""

    def __init__(self, out: TextIO) -> None:
        self.out = out
        self.tty = out.isatty()
        self._last = -1e9
        self._dirty = False

    def progress(self, text: str) -> None:
        if self.tty:
            self.out.write("\r" + text + "  (Ctrl-C to stop) ")
            self._dirty = True
        elif clock.monotonic() - self._last >= 2.0:
            self.out.write(text + "\n")
            self._last = clock.monotonic()
        self.out.flush()

    def say(self, text: str) -> None:
        if self._dirty:
            self.out.write("\n")
            self._dirty = False
        self.out.write(text + "\n")
        self.out.flush()


async def _unless_stopped(
    stop: asyncio.Event,
    load: Callable[[Path, int, int, threading.Event], tuple[testpattern.TestPattern, bool]],
    cache: Path,
    width: int,
    height: int,
) -> tuple[testpattern.TestPattern, bool] | None:
    """``load`` in a thread, called off if ``stop`` is set first (then None)."""
    cancel = threading.Event()
    work = asyncio.ensure_future(asyncio.to_thread(load, cache, width, height, cancel))
    stopped = asyncio.ensure_future(stop.wait())
    await asyncio.wait({work, stopped}, return_when=asyncio.FIRST_COMPLETED)
    stopped.cancel()
    if stop.is_set():
        cancel.set()
        with contextlib.suppress(testpattern.Cancelled):
            await work
        return None
    return work.result()


async def run(settings: Settings, options: DemoOptions, out: TextIO) -> int:
    printer = Printer(out)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    target: Target | None = None
    api: Api | None = None
    master: SyntheticMaster | None = None
    try:
        # The server and the resources first: a taken port or a wrong data dir shows at once,
        # not after the test pattern's first encoding.
        target = await find_or_start(settings, out)
        from .app import generated_principal

        api = Api(settings, target, await generated_principal(settings))
        channel_arn, _ = await setup_resources(api, options.channel, out)
        cache = settings.data_dir / "demo"
        if not testpattern.cache_path(cache, options.width, options.height).exists():
            printer.say(
                f"Encoding the {options.width}x{options.height} test pattern once "
                f"(cached in {cache})..."
            )
        loaded = await _unless_stopped(
            stop, testpattern.load_or_encode, cache, options.width, options.height
        )
        if loaded is None:
            return 0  # Ctrl-C while encoding: nothing was cached
        pattern, cached = loaded
        if cached:
            printer.say(f"Using the cached {options.width}x{options.height} test pattern")
        master = SyntheticMaster(api, channel_arn, pattern)
        return await _record(settings, options, api, master, printer, stop, target)
    except DemoError:
        raise
    except Exception as exc:
        code = error_code(exc)
        if code in ("AccessDeniedException", "NotAuthorizedException"):
            raise DemoError(
                f"the server refused this data dir's key ({code}): pass the --data-dir the "
                "running server uses"
            ) from exc
        raise DemoError(f"{type(exc).__name__}: {exc}") from exc
    finally:
        if master is not None:
            await master.stop()
        if api is not None:
            api.close()
        if target is not None and target.started is not None:
            await target.started.stop()
            printer.say("Server stopped.")
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)


async def _record(
    settings: Settings,
    options: DemoOptions,
    api: Api,
    master: SyntheticMaster,
    printer: Printer,
    stop: asyncio.Event,
    target: Target,
) -> int:
    stream = options.channel
    since = clock.now() - 1
    await master.start()
    printer.say("Camera connected to signaling (ConnectAsMaster); joining the storage session...")
    deadline = clock.monotonic() + CONNECT_TIMEOUT
    while not master.connected.is_set():
        if stop.is_set():
            return 0
        if master.failed:
            raise DemoError(master.failed)
        if clock.monotonic() > deadline:
            raise DemoError(f"the storage session did not connect within {CONNECT_TIMEOUT:g} s")
        await asyncio.sleep(0.1)
    connected_at = clock.monotonic()
    how_long = f"for {options.duration:g} s" if options.duration else "until Ctrl-C"
    printer.say(
        f"Streaming a {options.width}x{options.height} H.264 test pattern + Opus tone into "
        f"stream {stream} {how_long}."
    )
    kv = api.client("kinesisvideo")
    data = await api.call(kv, "get_data_endpoint", StreamName=stream, APIName="LIST_FRAGMENTS")
    am = api.client("kinesis-video-archived-media", data["DataEndpoint"])
    tally = Tally(api, am, stream, since)
    announced = False
    while not stop.is_set():
        if options.duration and clock.monotonic() - connected_at >= options.duration:
            break
        if master.failed:
            raise DemoError(master.failed)
        progress = await tally.update()
        printer.progress(progress.line())
        if not announced and progress.fragments and progress.first_ms is not None:
            announced = True
            url = await hls_url(api, stream)
            printer.say(f"HLS, live (valid 1 h): {url}")
            printer.say(f'  play it with: ffplay "{url}"   (or VLC, or hls.js in a page)')
            printer.say("Fetch a clip and images of the recording so far, from another shell:")
            printer.say(fetch_commands(settings, stream, progress.first_ms, None))
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), 1.0)
    # Hang up: the server ends the session and stores its last, partial fragment.
    await master.stop()
    progress = await tally.update()
    for _ in range(10):
        await asyncio.sleep(0.5)
        again = await tally.update()
        if again.fragments == progress.fragments and again.seconds == progress.seconds:
            break
        progress = again
    printer.say(
        f"Recorded {progress.seconds:.1f} s in {progress.fragments} fragments "
        f"({progress.mbps:.2f} Mbit/s) into stream {stream}."
    )
    if progress.first_ms is not None and progress.last_ms is not None:
        end = -(-progress.last_ms // 1000)
        if target.started is not None:
            serve = shlex.join([*openkvs_command(), "serve", *server_flags(settings)])
            printer.say(f"To look at it later, run the server again ({serve}), then:")
        else:
            printer.say("Fetch a clip and images of this recording:")
        printer.say(fetch_commands(settings, stream, progress.first_ms, end, boto3=False))
    return 0
