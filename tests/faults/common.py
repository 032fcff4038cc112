"""Shared pieces of the fault and load tests: the server as a process, its memory, ingest by
PutMedia paced like a camera, and reading a stream back through the archived-media API."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import subprocess
import urllib.parse
from pathlib import Path
from typing import Any

import aiohttp
from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials

from ..dataplane.ebmlcheck import split_chunks
from ..dataplane.mediafiles import clusters, header_part
from ..dataplane.producer import Producer
from ..webrtc.procserver import ProcessServer

# OPENKVS_LONG_FAULTS=1 (make faults-long) runs the longer variants: more clients, longer
# streams, more rounds. CI runs the short ones.
LONG = os.environ.get("OPENKVS_LONG_FAULTS", "") == "1"


def rss_kib(pid: int) -> int:
    """Resident memory of a process, in KiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError(f"no VmRSS for pid {pid}")


def server_pid(srv: ProcessServer) -> int:
    assert srv.proc is not None
    return srv.proc.pid


class PacedPut:
    """One PutMedia upload, cluster by cluster at a camera's pace, acks collected as they come."""

    def __init__(self, srv: ProcessServer, stream: str, data: bytes) -> None:
        self.producer = Producer(srv, stream_name=stream)  # type: ignore[arg-type]
        self.head = header_part(data)
        self.clusters = clusters(data)
        self.acks: list[dict[str, Any]] = []
        self.sent = 0  # clusters written to the socket
        self.reader: asyncio.Task[None] | None = None

    async def open(self) -> None:
        await self.producer.connect()
        status = await self.producer.read_head()
        assert status == 200, status
        self.reader = asyncio.ensure_future(self._read())
        await self.producer.send(self.head)

    async def _read(self) -> None:
        try:
            while (a := await self.producer.ack(timeout=60)) is not None:
                self.acks.append(a)
        except (ConnectionError, asyncio.IncompleteReadError, ValueError, TimeoutError):
            pass

    async def send_next(self, pause: float) -> bool:
        if self.sent >= len(self.clusters):
            return False
        try:
            await self.producer.send(self.clusters[self.sent])
        except (ConnectionError, RuntimeError):
            return False
        self.sent += 1
        await asyncio.sleep(pause)
        return True

    def numbers(self, event: str) -> list[str]:
        return [a["FragmentNumber"] for a in self.acks if a.get("EventType") == event]

    async def close(self) -> None:
        if self.reader is not None:
            self.reader.cancel()
            await asyncio.gather(self.reader, return_exceptions=True)
        await self.producer.close()


def archived(srv: ProcessServer, stream: str) -> Any:
    kv = srv.client("kinesisvideo")
    ep = kv.get_data_endpoint(StreamName=stream, APIName="LIST_FRAGMENTS")["DataEndpoint"]
    return srv.client("kinesis-video-archived-media", endpoint=ep)


def listed_fragments(srv: ProcessServer, stream: str) -> list[str]:
    am = archived(srv, stream)
    items = am.list_fragments(StreamName=stream, MaxResults=1000)["Fragments"]
    items.sort(key=lambda i: int(i["FragmentNumber"]))
    return [i["FragmentNumber"] for i in items]


def check_fragments_decode(srv: ProcessServer, stream: str, numbers: list[str], tmp: Path) -> int:
    """Every fragment comes back through GetMediaForFragmentList, parses, starts with a
    keyframe and decodes with ffmpeg without an error. Returns the number of video frames."""
    am = archived(srv, stream)
    frames = 0
    for n in numbers:
        raw = am.get_media_for_fragment_list(StreamName=stream, Fragments=[n])["Payload"].read()
        (chunk,) = split_chunks(raw)
        assert chunk.before["AWS_KINESISVIDEO_FRAGMENT_NUMBER"] == n
        path = tmp / f"{stream}-{n}.mkv"
        path.write_bytes(raw)
        frames += decoded_frames(path)
    return frames


def decoded_frames(path: Path) -> int:
    """Video frames ffmpeg decodes from ``path``; any decoding error fails."""
    res = subprocess.run(
        ["ffmpeg", "-v", "error", "-i", str(path), "-map", "0:v:0", "-f", "framemd5", "-"],
        capture_output=True,
        text=True,
    )
    assert res.returncode == 0 and res.stderr.strip() == "", res.stderr[-2000:]
    return sum(1 for line in res.stdout.splitlines() if line and not line.startswith("#"))


def signed_request(srv: Any, path: str, body: dict[str, Any]) -> tuple[str, dict[str, str], bytes]:
    """(url, headers, body) of a SigV4-signed API call on the server's plain-HTTP port (a
    ProcessServer or a ServerThread)."""
    url = f"http://127.0.0.1:{srv.http_port}{path}"
    data = json.dumps(body).encode()
    req = AWSRequest("POST", url, data=data, headers={"Content-Type": "application/json"})
    akid, secret = srv.keys
    SigV4Auth(Credentials(akid, secret), "kinesisvideo", srv.settings.region).add_auth(req)
    return url, dict(req.headers.items()), data


async def join_together(srv: Any, channel_arns: list[str]) -> list[int]:
    """Like ``join_at_once``, but every connection is open before any request is written, and
    all requests are written in one turn of the loop: the joins reach the server together, not
    spread over the client's connection set-up (which a loaded machine stretches)."""
    requests = [signed_request(srv, "/joinStorageSession", {"channelArn": a}) for a in channel_arns]
    conns: list[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = []
    try:
        for _ in requests:
            conns.append(await asyncio.open_connection("127.0.0.1", srv.http_port))
        for (url, headers, body), (_, writer) in zip(requests, conns, strict=True):
            head = [
                f"POST {urllib.parse.urlsplit(url).path} HTTP/1.1",
                f"Host: 127.0.0.1:{srv.http_port}",
                f"Content-Length: {len(body)}",
                "Connection: close",
                *(
                    f"{k}: {v}"
                    for k, v in headers.items()
                    if k.lower() not in ("host", "content-length")
                ),
            ]
            writer.write(("\r\n".join(head) + "\r\n\r\n").encode() + body)
        statuses = []
        for reader, _ in conns:
            line = await asyncio.wait_for(reader.readline(), 30)
            statuses.append(int(line.split()[1]))
        return statuses
    finally:
        # Closed before the test's loop ends: a socket left to the garbage collector fails
        # whichever test happens to run then (unraisable ResourceWarning).
        for _, writer in conns:
            writer.close()
        for _, writer in conns:
            with contextlib.suppress(OSError):
                await writer.wait_closed()


async def join_at_once(srv: Any, channel_arns: list[str]) -> list[int]:
    """One JoinStorageSession per entry of ``channel_arns``, signed beforehand and all sent at
    once on their own connections; returns the status codes."""
    requests = [signed_request(srv, "/joinStorageSession", {"channelArn": a}) for a in channel_arns]
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as http:

        async def one(req: tuple[str, dict[str, str], bytes]) -> int:
            async with http.post(req[0], headers=req[1], data=req[2]) as r:
                await r.read()
                return r.status

        return list(await asyncio.gather(*(one(r) for r in requests)))
