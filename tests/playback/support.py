"""Helpers for playback tests: session URLs through boto3, plain HTTP for the resources,
ffprobe/ffmpeg runs, and a customer page (on another origin) that plays a session in Chromium."""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import http.server
import io
import json
import re
import shutil
import subprocess
import threading
import time
import urllib.parse
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import av
import numpy as np
import pytest
import requests

from ..support import CI, ServerThread, need_tool

ROOT = Path(__file__).resolve().parents[2]
JS = Path(__file__).parent / "js"
NODE_MODULES = ROOT / "node_modules"
LIBRARIES = {
    "/hls.min.js": NODE_MODULES / "hls.js" / "dist" / "hls.min.js",
    "/dash.all.min.js": NODE_MODULES / "dashjs" / "dist" / "modern" / "umd" / "dash.all.min.js",
    "/player.html": JS / "player.html",
}


def ms(epoch_ms: int) -> float:
    """Epoch milliseconds as the epoch seconds boto3 sends."""
    return epoch_ms / 1000


def create_stream(server: ServerThread, name: str, retention: int = 24) -> str:
    kv = server.client("kinesisvideo")
    return str(kv.create_stream(StreamName=name, DataRetentionInHours=retention)["StreamARN"])


def archived(server: ServerThread) -> Any:
    """An archived-media client on the plain HTTP port (so players need no CA)."""
    return server.client("kinesis-video-archived-media", endpoint=server.http_endpoint)


def hls_url(server: ServerThread, name: str, **params: Any) -> str:
    return str(
        archived(server).get_hls_streaming_session_url(StreamName=name, **params)[
            "HLSStreamingSessionURL"
        ]
    )


def dash_url(server: ServerThread, name: str, **params: Any) -> str:
    return str(
        archived(server).get_dash_streaming_session_url(StreamName=name, **params)[
            "DASHStreamingSessionURL"
        ]
    )


def on_demand(start_ms: int, end_ms: int, selector: str = "PRODUCER_TIMESTAMP") -> dict[str, Any]:
    return {
        "FragmentSelectorType": selector,
        "TimestampRange": {"StartTimestamp": ms(start_ms), "EndTimestamp": ms(end_ms)},
    }


def get(url: str, **kwargs: Any) -> requests.Response:
    return requests.get(url, timeout=30, **kwargs)


def resolve(base_url: str, relative: str) -> str:
    return urllib.parse.urljoin(base_url, relative)


def uris(playlist: str) -> list[str]:
    """Every URI in an m3u8: segment lines and URI="..." attributes."""
    out = re.findall(r'URI="([^"]+)"', playlist)
    out += [line for line in playlist.splitlines() if line and not line.startswith("#")]
    return out


def tool(name: str) -> str:
    path = need_tool(name)
    if path is None:
        pytest.skip(f"{name} is not installed")
    return path


def ffprobe_json(target: str | Path, *args: str) -> dict[str, Any]:
    out = subprocess.run(
        [tool("ffprobe"), "-v", "error", "-of", "json", *args, str(target)],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    return dict(json.loads(out.stdout))


def ffmpeg_decode_errors(target: str | Path, *args: str, output: Sequence[str] = ()) -> str:
    """Decode everything with FFmpeg; return what it reported at level error (empty = clean).
    ``args`` go before the input, ``output`` options after it."""
    out = subprocess.run(
        [tool("ffmpeg"), "-nostdin", "-v", "error", *args, "-i", str(target), *output]
        + ["-f", "null", "-"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode == 0, out.stderr
    return out.stderr.strip()


def dominant_hz(target: str | Path, *args: str) -> tuple[float, float]:
    """The strongest frequency of the decoded audio (mono mix), and the audio's length (s)."""
    out = subprocess.run(
        [tool("ffmpeg"), "-nostdin", "-v", "error", *args, "-i", str(target), "-map", "0:a:0"]
        + ["-ac", "1", "-ar", "48000", "-f", "f32le", "-"],
        capture_output=True,
        timeout=120,
        check=True,
    )
    pcm = np.frombuffer(out.stdout, dtype="<f4")
    assert len(pcm) > 4800, len(pcm)
    spectrum = np.abs(np.fft.rfft(pcm * np.hanning(len(pcm))))
    return float(np.argmax(spectrum)) * 48000 / len(pcm), len(pcm) / 48000


def gray(image: bytes) -> np.ndarray:
    """A JPEG or PNG decoded to 8-bit gray levels, as float64."""
    with av.open(io.BytesIO(image)) as container:
        frame = next(container.decode(video=0))
        arr: np.ndarray = frame.to_ndarray(format="gray").astype(np.float64)
        return arr


def packet_times(target: str | Path, stream: str) -> list[tuple[float, float]]:
    """(pts, duration) of every packet of ``stream`` (``v`` or ``a``), in presentation order."""
    data = ffprobe_json(
        target,
        "-select_streams",
        stream,
        "-show_entries",
        "packet=pts_time,duration_time",
    )
    rows = [
        (float(p["pts_time"]), float(p.get("duration_time", "nan")))
        for p in data["packets"]
        if p.get("pts_time") not in (None, "N/A")
    ]
    return sorted(rows)


class _Handler(http.server.SimpleHTTPRequestHandler):
    def do_GET(self) -> None:  # noqa: N802 - http.server's naming
        path = self.path.split("?", 1)[0]
        if path == "/favicon.ico":
            self.send_response(204)
            self.end_headers()
            return
        file = LIBRARIES.get(path)
        if file is None:
            self.send_error(404)
            return
        body = file.read_bytes()
        self.send_response(200)
        self.send_header(
            "Content-Type", "text/html" if path.endswith(".html") else "application/javascript"
        )
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
        pass


class CustomerPage:
    """The customer's site: another origin (``localhost:<port>``) than openkvs (127.0.0.1)."""

    def __init__(self) -> None:
        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
        self.port = self.httpd.server_address[1]
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def url(self, player: str, src: str, *, debug: bool = False, ll: bool = False) -> str:
        query = urllib.parse.urlencode(
            {"player": player, "src": src, "debug": int(debug), "ll": int(ll)}
        )
        return f"http://localhost:{self.port}/player.html?{query}"

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@functools.cache
def browser_missing(packages: tuple[str, ...] = ()) -> str | None:
    """Why the browser tests cannot run here (None when they can): Node, Chromium, the players
    and Playwright, and the npm ``packages`` a test needs besides."""
    if need_tool("node") is None:
        return "node is not installed"
    if not Path("/usr/bin/chromium").exists() and shutil.which("chromium") is None:
        if CI:
            raise RuntimeError("chromium is required under CI=true")
        return "chromium is not installed"
    needed = (*LIBRARIES.values(), *(NODE_MODULES / p for p in ("playwright-core", *packages)))
    for path in needed:
        if not path.exists():
            if CI:
                raise RuntimeError(f"{path} is missing under CI=true (run npm ci)")
            return f"{path} is missing (run npm ci)"
    return None


@pytest.fixture
def customer_page() -> Iterator[CustomerPage]:
    reason = browser_missing()
    if reason is not None:
        pytest.skip(reason)
    page = CustomerPage()
    yield page
    page.close()


def start_player(page_url: str, seconds: float) -> subprocess.Popen[str]:
    return subprocess.Popen(
        ["node", str(JS / "play.js"), json.dumps({"page": page_url, "seconds": seconds})],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def player_result(proc: subprocess.Popen[str], timeout: float = 120) -> dict[str, Any]:
    out, err = proc.communicate(timeout=timeout)
    assert proc.returncode == 0, err
    return dict(json.loads(out))


def media_playlists(master_url: str) -> tuple[str, dict[int, tuple[str, str]]]:
    """The master playlist, and each media playlist's (URL, text) by track number (0: none)."""
    master = get(master_url)
    assert master.status_code == 200, master.text
    out = {}
    for uri in uris(master.text):
        m = re.search(r"TrackNumber=(\d)", uri)
        url = resolve(master_url, uri)
        media = get(url)
        assert media.status_code == 200, media.text
        out[int(m.group(1)) if m else 0] = (url, media.text)
    return master.text, out


def track_file(path: Path, media_url: str, playlist: str) -> Path:
    """A media playlist's segments (behind its init segment) fetched into one file."""
    parts = []
    for uri in uris(playlist):
        r = get(resolve(media_url, uri))
        assert r.status_code == 200, (uri, r.text)
        parts.append(r.content)
    path.write_bytes(b"".join(parts))
    return path


# -- LL-HLS ----------------------------------------------------------------------------------

PART_RE = re.compile(
    r'#EXT-X-PART:DURATION=([0-9.]+),URI="([^"]*FragmentNumber=(\d+)&PartNumber=(\d+)[^"]*)"'
    r"(,INDEPENDENT=YES)?"
)
PartKey = tuple[int, int]  # (fragment number, part number)


def parse_parts(playlist: str) -> list[tuple[int, int, float, bool, str]]:
    """(fragment, part, duration, independent, URI) of each ``#EXT-X-PART``."""
    return [
        (int(m.group(3)), int(m.group(4)), float(m.group(1)), bool(m.group(5)), m.group(2))
        for m in PART_RE.finditer(playlist)
    ]


def segment_numbers(playlist: str) -> list[int]:
    return [
        int(m.group(1))
        for m in re.finditer(r"^getMP4MediaFragment\.mp4\?FragmentNumber=(\d+)", playlist, re.M)
    ]


def packets(init: bytes, media: bytes) -> list[tuple[int, bytes]]:
    """(pts, data) of each video sample of an fMP4 segment or part behind its init segment."""
    with av.open(io.BytesIO(init + media), "r") as container:
        return [
            (int(p.pts), bytes(p)) for p in container.demux(video=0) if p.size and p.pts is not None
        ]


async def live_hls_url(server: ServerThread, name: str, tries: int = 200, **params: Any) -> str:
    """A LIVE session URL, once the stream has a stored fragment (ResourceNotFound before)."""
    for _ in range(tries):
        try:
            return await asyncio.to_thread(hls_url, server, name, PlaybackMode="LIVE", **params)
        except Exception:  # noqa: BLE001 - ResourceNotFound until the first is stored
            await asyncio.sleep(0.1)
    raise AssertionError(f"no LIVE HLS session for {name}")


@dataclasses.dataclass
class Followed:
    """What a client following the LIVE video playlist's parts saw."""

    media_url: str = ""
    last: str = ""  # the last playlist
    seen: dict[PartKey, float] = dataclasses.field(default_factory=dict)  # first listed at
    fetched: dict[PartKey, tuple[float, bytes]] = dataclasses.field(default_factory=dict)
    pending: set[PartKey] = dataclasses.field(default_factory=set)  # listed before stored
    durations: dict[PartKey, float] = dataclasses.field(default_factory=dict)

    def init_segment(self) -> bytes:
        uri = re.search(r'#EXT-X-MAP:URI="([^"]+)"', self.last)
        assert uri is not None, self.last
        return get(resolve(self.media_url, uri.group(1))).content


async def follow_parts(server: ServerThread, name: str, done: Callable[[], bool]) -> Followed:
    """Chain blocking reloads (``_HLS_msn``/``_HLS_part``) of the LIVE fMP4 video playlist until
    ``done()``, fetching each part once as soon as it is first listed. Checks on the way what
    every LL-HLS playlist must show: once parts are listed they stay, the server control and
    part target tags, and only each fragment's first part independent."""
    out = Followed()
    url = await live_hls_url(server, name, ContainerFormat="FRAGMENTED_MP4")
    master = (await asyncio.to_thread(get, url)).text
    out.media_url = resolve(url, next(u for u in uris(master) if "TrackNumber=1" in u))
    query = ""
    low_latency = False
    while not done():
        r = await asyncio.to_thread(get, out.media_url + query)
        now = time.time()
        assert r.status_code == 200, r.text
        text = out.last = r.text
        if "#EXT-X-SERVER-CONTROL" not in text:
            # Parts start with the fragment after the first LIVE playlist request.
            assert not low_latency, text
            assert "#EXT-X-PART" not in text
            await asyncio.sleep(0.05)
            continue
        low_latency = True
        assert "#EXT-X-SERVER-CONTROL:CAN-BLOCK-RELOAD=YES,PART-HOLD-BACK=" in text
        assert "#EXT-X-PART-INF:PART-TARGET=0.334" in text
        stored = set(segment_numbers(text))
        parts = parse_parts(text)
        for frag, index, duration, independent, uri in parts:
            key = (frag, index)
            out.durations[key] = duration
            assert independent == (index == 0), (key, independent)
            if key in out.seen:
                continue
            out.seen[key] = now
            if frag not in stored:
                out.pending.add(key)
            got = await asyncio.to_thread(get, resolve(out.media_url, uri))
            assert got.status_code == 200, got.text
            out.fetched[key] = (time.time(), got.content)
        seq = re.search(r"#EXT-X-MEDIA-SEQUENCE:(\d+)", text)
        assert seq is not None, text
        last_msn = int(seq.group(1)) + len(segment_numbers(text)) - 1
        pending = [p for p in parts if p[0] not in stored]
        part = pending[-1][1] + 1 if pending else 0
        query = f"&_HLS_msn={last_msn + 1}&_HLS_part={part}"
    return out
