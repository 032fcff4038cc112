"""``openkvs demo`` as a newcomer runs it: a subprocess on embedded defaults (its own server) or
next to a running server; its HLS URL plays, its recording is the test pattern it sent, Ctrl-C
stops it cleanly, and the AWS CLI and boto3 commands it prints work as printed."""

from __future__ import annotations

import base64
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
import urllib.parse
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import requests

from openkvs import testpattern
from openkvs.media import h264, mkv

from ..playback.support import ffprobe_json, gray
from ..support import ServerThread, free_port, free_port_pair, need_tool

pytestmark = pytest.mark.slow

RESOLUTION = (192, 108)
VENV_BIN = Path(sys.executable).parent


def shell_env() -> dict[str, str]:
    """A user's shell: this venv's ``openkvs``, ``aws`` and ``python3`` first on PATH."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "OPENKVS_"))}
    env["PATH"] = f"{VENV_BIN}{os.pathsep}{env.get('PATH', '')}"
    env["PYTHONUNBUFFERED"] = "1"
    return env


class Demo:
    """``openkvs demo`` in a subprocess, its output collected line by line as it comes."""

    def __init__(self, *args: str) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "openkvs", "demo", *args],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env=shell_env(),
        )
        self.lines: list[str] = []
        self._changed = threading.Condition()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            with self._changed:
                self.lines.append(line.rstrip("\n"))
                self._changed.notify_all()
        with self._changed:
            self._changed.notify_all()

    @property
    def text(self) -> str:
        return "\n".join(self.lines)

    def wait_for(self, predicate: Callable[[str], bool], timeout: float) -> str:
        deadline = time.monotonic() + timeout
        with self._changed:
            while True:
                for line in self.lines:
                    if predicate(line):
                        return line
                left = deadline - time.monotonic()
                if left <= 0 or not self._reader.is_alive():
                    raise AssertionError(f"not seen in {timeout} s; output:\n{self.text}")
                self._changed.wait(min(left, 0.5))

    def finish(self, timeout: float) -> int:
        try:
            return self.proc.wait(timeout)
        finally:
            self.close()

    def close(self) -> None:
        """Kill the demo if it still runs, and collect its output."""
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        self._reader.join(10)
        assert self.proc.stdout is not None
        self.proc.stdout.close()

    def block_after(self, heading: str) -> str:
        """The commands printed after ``heading``, up to the next line that is not one."""
        start = self.lines.index(next(line for line in self.lines if line.startswith(heading)))
        out: list[str] = []
        in_heredoc = False
        for line in self.lines[start + 1 :]:
            if in_heredoc:
                out.append(line)
                in_heredoc = line != "PY"
                continue
            if not (line.startswith(("eval ", "aws ", "    ", "python3 "))):
                break
            out.append(line)
            in_heredoc = line.startswith("python3 - <<'PY'")
        return "\n".join(out)


def progress(text: str) -> list[tuple[float, int, float]]:
    return [
        (float(s), int(n), float(r))
        for s, n, r in re.findall(
            r"recording:\s+([\d.]+) s, (\d+) fragments, ([\d.]+) Mbit/s", text
        )
    ]


def summary(text: str) -> tuple[float, int]:
    m = re.search(r"Recorded ([\d.]+) s in (\d+) fragments \(([\d.]+) Mbit/s\)", text)
    assert m, text
    return float(m.group(1)), int(m.group(2))


def check_hls(url: str, tmp_path: Path) -> None:
    """The master playlist, a media playlist per track, and a first segment that decodes."""
    master = requests.get(url, timeout=30)
    assert master.status_code == 200, master.text
    assert master.text.startswith("#EXTM3U")
    tracks = [line for line in master.text.splitlines() if line and not line.startswith("#")]
    tracks += re.findall(r'URI="([^"]+)"', master.text)
    kinds = set()
    for track in tracks:
        playlist_url = urllib.parse.urljoin(url, track)
        playlist = requests.get(playlist_url, timeout=30).text
        init = re.findall(r'#EXT-X-MAP:URI="([^"]+)"', playlist)
        segments = [line for line in playlist.splitlines() if line and not line.startswith("#")]
        assert init and segments, playlist
        body = requests.get(urllib.parse.urljoin(playlist_url, init[0]), timeout=30).content
        body += requests.get(urllib.parse.urljoin(playlist_url, segments[0]), timeout=30).content
        path = tmp_path / f"segment-{len(kinds)}.mp4"
        path.write_bytes(body)
        for stream in ffprobe_json(path, "-show_streams")["streams"]:
            kinds.add(stream["codec_name"])
            if stream["codec_type"] == "video":
                assert (stream["width"], stream["height"]) == RESOLUTION
    assert kinds == {"h264", "aac"}


@pytest.fixture
def start_demo() -> Iterator[Callable[..., Demo]]:
    """Start demos that are killed when the test ends, however it ends."""
    started: list[Demo] = []

    def start(*args: str) -> Demo:
        started.append(Demo(*args))
        return started[-1]

    yield start
    for demo in started:
        demo.close()


def test_demo_on_embedded_defaults_records_the_test_pattern(
    make_server: Callable[..., ServerThread], tmp_path: Path, start_demo: Callable[..., Demo]
) -> None:
    if need_tool("ffprobe") is None:
        pytest.skip("ffprobe is not installed")
    data = tmp_path / "data"
    port, http_port = free_port(), free_port()
    width, height = RESOLUTION
    demo = start_demo(
        *("--data-dir", str(data), "--port", str(port), "--http-port", str(http_port)),
        *("--resolution", f"{width}x{height}", "--duration", "8"),
        *("--turn-port", str(free_port_pair())),  # its server runs coturn: not on the shared 3478
    )
    line = demo.wait_for(lambda s: s.startswith("HLS, live"), 120)
    url = line.split(": ", 1)[1]
    assert url.startswith(f"http://127.0.0.1:{http_port}/hls/v1/getHLSMasterPlaylist.m3u8?")
    check_hls(url, tmp_path)  # while the demo runs: its own server serves it
    assert demo.finish(60) == 0, demo.text
    out = demo.text
    assert f"Started an openkvs server at https://127.0.0.1:{port}" in out
    assert "Encoding the 192x108 test pattern once" in out
    assert out.rstrip().endswith("Server stopped."), out
    seen = progress(out)
    assert seen and seen[-1][1] >= 2 and seen[-1][2] > 0, out
    assert [s for s, _, _ in seen] == sorted(s for s, _, _ in seen)
    seconds, count = summary(out)
    assert 7.0 <= seconds <= 10.5 and count >= 4, out
    cache = testpattern.cache_path(data / "demo", width, height)
    assert cache.exists()

    # The recording stays in the data dir, and it is exactly the pattern that was sent: every
    # stored frame, byte for byte, from a keyframe of the loop on.
    server = make_server(data_dir=data)
    stream = server.services.control.get_stream(name="openkvs-demo")
    frags = server.call(server.services.fragments.list_fragments(stream, limit=1000))
    assert len(frags) == count
    # ``seconds`` was printed to 0.1 s: within half of that, plus float noise at the half.
    assert abs(sum(f.duration_ms for f in frags) / 1000 - seconds) <= 0.05 + 1e-9
    stored: list[bytes] = []
    for frag in sorted(frags, key=lambda f: f.producer_ts):
        parsed = mkv.read_fragment(server.call(server.services.fragments.read(frag)))
        stored += [b.data for b in parsed.blocks if b.track == 1]
        assert any(b.track == 2 for b in parsed.blocks), f"no audio in fragment {frag.number}"
    pattern = testpattern.read(cache)
    sent = [h264.to_avcc(h264.split_annexb(p.data)) for p in pattern.video]
    offset = sent.index(stored[0])
    assert offset % pattern.fps == 0  # starts at a keyframe
    assert stored == sent[offset : offset + len(stored)]
    assert len(stored) >= 7 * pattern.fps


def test_demo_next_to_a_running_server_stops_on_ctrl_c_and_its_commands_work(
    make_server: Callable[..., ServerThread], tmp_path: Path, start_demo: Callable[..., Demo]
) -> None:
    if need_tool("ffprobe") is None:
        pytest.skip("ffprobe is not installed")
    server = make_server()
    width, height = RESOLUTION
    demo = start_demo(
        *("--data-dir", str(server.settings.data_dir), "--port", str(server.port)),
        *("--http-port", str(server.http_port), "--resolution", f"{width}x{height}"),
        *("--channel", "front-door"),
    )
    demo.wait_for(lambda s: s.startswith("HLS, live"), 120)
    # Four stored fragments (8 s or more): the printed GetImages range asks for images at 0, 3
    # and 6 s after the first whole second of the recording, which must all be recorded by then.
    demo.wait_for(lambda s: any(n >= 4 for _, n, _ in progress(s)), 60)
    demo.proc.send_signal(signal.SIGINT)  # Ctrl-C
    assert demo.finish(30) == 0, demo.text
    out = demo.text
    assert f"Using the openkvs server running at https://127.0.0.1:{server.port}" in out
    assert "Server stopped." not in out  # not ours to stop
    seconds, count = summary(out)
    assert seconds >= 5 and count >= 3

    # The server saw the camera hang up: its storage session ended and kept its last fragment.
    sessions: Any = server.services.sessions
    assert not sessions.masters
    (ended,) = sessions.ended
    # The camera closes its peer connection, then its signaling WebSocket: either ends it.
    assert ended["end_reason"] in (
        "peer connection closed",
        "the master's signaling connection closed",
    ), ended
    assert ended["fragments"] == count and ended["store_errors"] == 0

    # Run the printed commands as printed, each block in a fresh directory of a bash shell.
    live = demo.block_after("Fetch a clip and images of the recording so far")
    final = demo.block_after("Fetch a clip and images of this recording")
    assert "python3 - <<'PY'" in live and "python3" not in final
    for name, block in (("live", live), ("final", final)):
        work = tmp_path / name
        work.mkdir()
        run = subprocess.run(
            ["bash", "-euo", "pipefail", "-c", block],
            cwd=work,
            env=shell_env(),
            capture_output=True,
            text=True,
            timeout=180,
        )
        assert run.returncode == 0, (block, run.stdout[-2000:], run.stderr[-3000:])
        clip = ffprobe_json(work / "clip.mp4", "-show_streams", "-show_format")
        video = next(s for s in clip["streams"] if s["codec_type"] == "video")
        assert video["codec_name"] == "h264" and (video["width"], video["height"]) == RESOLUTION
        assert any(s["codec_name"] == "aac" for s in clip["streams"])
        assert float(clip["format"]["duration"]) >= seconds - 2.5, clip["format"]
        images = json.loads((work / "images.json").read_text())["Images"]
        # The images start inside the recording: none is NO_MEDIA.
        assert len(images) == 3 if name == "live" else len(images) >= 2, images
        assert all("ImageContent" in i for i in images), [i.get("Error") for i in images]
        contents = [base64.b64decode(i["ImageContent"]) for i in images]
        assert all(gray(c).var() > 500 for c in contents)
    jpegs = sorted((tmp_path / "live").glob("image-*.jpg"))
    assert len(jpegs) == 3  # from the boto3 snippet
    assert all(gray(p.read_bytes()).var() > 500 for p in jpegs)
