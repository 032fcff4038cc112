"""The web console at /console/: built with esbuild from the repository's sources and the npm
packages of the lockfile (into a temporary directory here, as `make run` does into
src/openkvs/web/console/dist), served by openkvs on both ports, driven in headless Chromium by
the accessible names of its controls (``js/console.js``; the Live, Sessions and settings pages,
with the synthetic camera of ``openkvs demo`` as a channel's master: ``js/console_live.js``).
Screenshots of each page at 1280 and 375 px are written under each test's temporary directory
(``screenshots/``)."""

from __future__ import annotations

import asyncio
import json
import re
import ssl
import statistics
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests

from openkvs import clock, demo, testpattern
from openkvs.auth.credentials import Principal
from openkvs.webrtc import tap

from ..playback.media import append, recorded
from ..playback.support import create_stream, ffprobe_json
from ..playback.test_players import LiveProducer
from ..signaling.kvs import enable_storage, setup_channel
from ..support import ServerThread, need_tool
from .browser import ROOT, browser_missing

JS = Path(__file__).parent / "js"
BUILD = ROOT / "src" / "openkvs" / "web" / "console" / "build.mjs"
PACKAGES = (
    "esbuild",
    "hls.js",
    "@aws-sdk/client-kinesis-video",
    "@aws-sdk/client-kinesis-video-archived-media",
    "@aws-sdk/client-kinesis-video-signaling",
    "@aws-sdk/client-kinesis-video-webrtc-storage",
    "@aws-crypto/sha256-js",
    "@smithy/signature-v4",
    "amazon-kinesis-video-streams-webrtc",
)
LIMITED = ("AKIANODELETE00000001", "no-delete-secret")
BEHIND = 0.7  # seconds the camera's clock is set behind while the console watches again


def build_console(out_dir: Path) -> Path:
    proc = subprocess.run(
        ["node", str(BUILD), str(out_dir)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert proc.returncode == 0, proc.stderr
    for name in ("index.html", "console.js", "console.css"):
        assert (out_dir / name).is_file(), name
    return out_dir


@pytest.fixture(scope="module")
def console_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    reason = browser_missing(PACKAGES)
    if reason is not None:
        pytest.skip(reason)
    return build_console(tmp_path_factory.mktemp("console") / "dist")


def limited_credentials() -> list[dict[str, Any]]:
    """A key that may do everything but DeleteStream."""
    return [
        {
            "access_key_id": LIMITED[0],
            "secret_access_key": LIMITED[1],
            "policy": {
                "Statement": [
                    {"Effect": "Allow", "Action": "kinesisvideo:*", "Resource": "*"},
                    {"Effect": "Deny", "Action": "kinesisvideo:DeleteStream", "Resource": "*"},
                ]
            },
        }
    ]


def test_console_served_on_both_ports(make_server: Any, console_dir: Path) -> None:
    server: ServerThread = make_server(console_dir=console_dir)
    for base, verify in ((server.endpoint, server.ca), (server.http_endpoint, True)):
        r = requests.get(f"{base}/console/", verify=verify, timeout=10)
        assert r.status_code == 200
        assert r.headers["Content-Type"].startswith("text/html")
        assert "default-src 'self'" in r.headers["Content-Security-Policy"]
        assert '<script src="console.js"' in r.text
        js = requests.get(f"{base}/console/console.js", verify=verify, timeout=10)
        assert js.status_code == 200 and js.headers["Content-Type"].startswith("text/javascript")
        bare = requests.get(f"{base}/console", verify=verify, timeout=10, allow_redirects=False)
        assert bare.status_code == 301 and bare.headers["Location"] == "/console/"
    # Only the built files: no way out of the directory, no dot-files.
    (console_dir / ".hidden").write_text("secret")
    for bad in ("..%2F..%2Fpyproject.toml", "%2e%2e/%2e%2e/pyproject.toml", ".hidden", "a/b/c.js"):
        r = requests.get(f"{server.http_endpoint}/console/{bad}", timeout=10)
        assert r.status_code == 404 and "secret" not in r.text, bad
    # (a client's own "../" resolves before sending: it never reaches the console's route)
    assert requests.get(f"{server.http_endpoint}/console/nope.js", timeout=10).status_code == 404


def test_console_not_built_explains(make_server: Any, tmp_path: Path) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    server: ServerThread = make_server(console_dir=empty)
    r = requests.get(f"{server.http_endpoint}/console/", timeout=10)
    assert r.status_code == 503
    assert "has not been built" in r.text and "make run" in r.text


@pytest.mark.browser
@pytest.mark.slow
def test_console_in_chromium(make_server: Any, console_dir: Path, tmp_path: Path) -> None:
    ffprobe = need_tool("ffprobe")
    if ffprobe is None:
        pytest.skip("ffprobe is not installed")
    server: ServerThread = make_server(console_dir=console_dir, credentials=limited_credentials())
    # A stream with two minutes of recording, for the Recordings page.
    create_stream(server, "yard")
    append(server, "yard", recorded(12, clock.now_ms() - 120_000))
    shots = tmp_path / "screenshots"
    downloads = tmp_path / "downloads"
    shots.mkdir()
    downloads.mkdir()
    akid, secret = server.keys
    config = {
        "url": f"{server.endpoint}/console/",
        "shots": str(shots),
        "downloads": str(downloads),
        "keys": [akid, secret],
        "limited": list(LIMITED),
        "channel": "front-door",
        "stream": "front-door-rec",
        "recorded": "yard",
    }
    proc = subprocess.run(
        ["node", str(JS / "console.js"), json.dumps(config)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    steps = result["steps"]
    assert "fatal" not in result, (result["fatal"], result.get("html"), steps)

    # Sign-in: a wrong secret shows the service's error, and nothing is stored.
    assert steps["wrongSecret"].startswith("InvalidSignatureException: The request signature")
    assert steps["unknownKey"].startswith("UnrecognizedClientException: "), steps["unknownKey"]
    assert steps["stillSignIn"] and steps["storedAfterFailure"] == 0
    assert steps["stored"] == ["openkvs.console.credentials"] and steps["secretInStorage"]
    assert steps["storedAfterSignOut"] == 0
    # The service's own validation message for a bad channel name.
    assert steps["invalidChannel"].startswith(("ValidationException", "InvalidArgumentException"))
    # Created, listed and linked, as the public API sees it too.
    assert "front-door" in steps["channels"] and {"front-door-rec", "yard"} <= set(steps["streams"])
    assert steps["linked"] == "front-door-rec"
    # The media storage form shows the chosen channel's current stream.
    assert steps["storageBefore"] == "" and steps["storageAfter"] == "front-door-rec"
    # Keyboard: the first Tab stops are the skip link and the navigation.
    assert steps["tabStops"] == ["Skip to content", "Channels and streams", "Recordings"]
    kv = server.client("kinesisvideo")
    channel = kv.describe_signaling_channel(ChannelName="front-door")["ChannelInfo"]
    storage = kv.describe_media_storage_configuration(ChannelARN=channel["ChannelARN"])
    stream = kv.describe_stream(StreamName="front-door-rec")["StreamInfo"]
    assert storage["MediaStorageConfiguration"] == {
        "StreamARN": stream["StreamARN"],
        "Status": "ENABLED",
    }
    assert stream["DataRetentionInHours"] == 48
    # Recordings: 12 fragments on the timeline, hls.js plays and scrubs, the clip is an MP4.
    assert steps["fragments"] == 12 and steps["timelineSpans"] == 12
    assert steps["video"]["width"] > 0 and steps["video"]["height"] > 0
    # GetImages thumbnails (160 px wide) every 1.5 s of the 12 s, and one plays from its time.
    assert steps["thumbnails"] == 8 and set(steps["thumbnailWidths"]) == {160}
    assert 7 <= steps["thumbnailSeek"] < 11, steps["thumbnailSeek"]
    assert steps["scrubbedTo"] >= 10 and steps["scrubbedHome"] < 3 and steps["position"]
    # The download reports its progress, then the size it received (the file's size).
    size_mb = Path(steps["clip"]).stat().st_size / 1e6
    assert steps["clipProgress"] == f"Downloaded {size_mb:.1f} MB", steps["clipProgress"]
    probe = ffprobe_json(steps["clip"], "-show_streams", "-show_format")
    assert any(s["codec_type"] == "video" for s in probe["streams"])
    assert float(probe["format"]["duration"]) > 10
    # The limited key: AccessDenied shown next to the streams, and the stream is still there.
    # (DeleteStream's model names NotAuthorizedException for a refusal, as AWS answers it)
    denied = steps["denied"]
    assert denied.startswith("Access denied. NotAuthorizedException: "), denied
    assert "kinesisvideo:DeleteStream" in denied, denied
    assert "front-door-rec" in steps["streamsAfterDenied"]
    kv.describe_stream(StreamName="front-door-rec")
    # Screenshots of each page at both widths, and nothing wider than a phone's screen.
    assert len(result["shots"]) == 10 and all(Path(p).stat().st_size > 0 for p in result["shots"])
    overflow = {k: v for k, v in steps.items() if k.startswith("overflow-") and v > 0}
    assert not overflow, overflow
    # No errors in the console but the browser's own lines for the expected 4xx answers.
    errors = [e for e in result["consoleErrors"] if "Failed to load resource" not in e]
    assert not errors and not result["pageErrors"], (errors, result["pageErrors"])


class Camera:
    """The synthetic camera of ``openkvs demo`` (an aiortc master sending the H.264 test pattern
    and an Opus tone in real time) on its own event loop, joined to a channel's storage session
    through the public APIs, as the demo runs next to a server."""

    def __init__(self, server: ServerThread, channel_arn: str, pattern_dir: Path) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self._thread.start()
        target = demo.Target(
            server.endpoint, None, ssl.create_default_context(cafile=server.ca), server.ca
        )
        akid, secret = server.keys
        self.api = demo.Api(server.settings, target, Principal(akid, secret))
        pattern, _ = testpattern.load_or_encode(pattern_dir, 320, 240)
        self.master = demo.SyntheticMaster(self.api, channel_arn, pattern)

    def _run(self, coro: Any, timeout: float) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def start(self, timeout: float = 45) -> None:
        self._run(self.master.start(), 30)

        async def connected() -> None:
            await asyncio.wait_for(self.master.connected.wait(), timeout)

        self._run(connected(), timeout + 5)

    def set_clock(self, offset: float) -> None:
        """Make the camera's video sender reports give capture times ``offset`` seconds off the
        real ones, as a camera whose clock is off would."""

        async def hook() -> None:
            pc = self.master._pc
            assert pc is not None
            sender = next(t.sender for t in pc.getTransceivers() if t.kind == "video")
            started = sender.track._t0  # the test pattern's start (monotonic), once it started

            def captured(timestamp: int) -> float | None:
                if not started:
                    return None
                return clock.now() - clock.monotonic() + started[0] + timestamp / 90000 + offset

            tap.map_sender_reports(sender, captured)

        self._run(hook(), 10)

    def close(self) -> None:
        try:
            self._run(self.master.stop(), 30)
        finally:
            self.api.close()
            self.loop.call_soon_threadsafe(self.loop.stop)
            self._thread.join(10)
            self.loop.close()


@pytest.fixture
def cameras() -> Iterator[list[Camera]]:
    started: list[Camera] = []
    yield started
    for camera in started:
        camera.close()


@pytest.mark.browser
@pytest.mark.slow
def test_console_live_sessions_and_settings(
    make_server: Any, console_dir: Path, tmp_path: Path, cameras: list[Camera]
) -> None:
    """Live, Sessions and a channel's and a stream's settings and tags, in Chromium, with the
    demo's synthetic camera recording into a channel with media storage. Live is watched twice:
    the second time with the camera's clock (in its sender reports) set behind."""
    no_sessions = ("AKIANOSESSIONS000001", "no-sessions-secret")
    server: ServerThread = make_server(
        console_dir=console_dir,
        credentials=[
            {
                "access_key_id": no_sessions[0],
                "secret_access_key": no_sessions[1],
                "policy": {
                    "Statement": [
                        {"Effect": "Allow", "Action": "kinesisvideo:*", "Resource": "*"},
                        {
                            "Effect": "Deny",
                            "Action": "kinesisvideo:DescribeStorageSessions",
                            "Resource": "*",
                        },
                    ]
                },
            }
        ],
    )
    channel_arn = setup_channel(server, "porch")
    enable_storage(server, channel_arn, "porch-rec")
    camera = Camera(server, channel_arn, tmp_path / "pattern")
    cameras.append(camera)
    camera.start()
    shots = tmp_path / "screenshots"
    shots.mkdir()
    akid, secret = server.keys
    config = {
        "url": f"{server.endpoint}/console/",
        "shots": str(shots),
        "keys": [akid, secret],
        "limited": list(no_sessions),
        "channel": "porch",
        "stream": "porch-rec",
        "shiftRequest": str(tmp_path / "shift-request"),
        "shiftDone": str(tmp_path / "shift-done"),
    }

    finished = threading.Event()

    def shift_on_request() -> None:
        # Once the page asks (the first watch done), the camera's clock goes BEHIND s behind.
        while not (tmp_path / "shift-request").exists():
            if finished.wait(0.1):
                return
        camera.set_clock(-BEHIND)
        (tmp_path / "shift-done").write_text("")

    shifter = threading.Thread(target=shift_on_request, daemon=True)
    shifter.start()
    proc = subprocess.run(
        ["node", str(JS / "console_live.js"), json.dumps(config)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=240,
    )
    finished.set()
    shifter.join(15)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    steps = result["steps"]
    assert "fatal" not in result, (result["fatal"], result.get("html"), steps)

    # Live: the master's video decodes in the <video> (the test pattern is 320x240), time runs,
    # the picture is not one flat colour, and every readout has a value.
    video = steps["video"]
    assert (video["width"], video["height"]) == (320, 240), video
    assert video["advanced"] > 1.0, video
    assert video["variance"] > 100, video
    readouts = steps["readouts"]
    assert set(readouts) == {"bitrate", "resolution", "fps", "latency", "delay"}, readouts
    assert all(v and v != "—" for v in readouts.values()), readouts
    assert readouts["resolution"] == "320×240"
    assert int(readouts["bitrate"].split()[0]) > 0, readouts
    assert float(readouts["fps"].split()[0]) > 5, readouts
    assert readouts["delay"].endswith(")") and "ms" in readouts["delay"], readouts
    # Capture → display, from the camera's capture clock (relayed in the server's sender
    # reports) against the browser's: on loopback, one clock, a plausible figure.
    assert re.fullmatch(r"-?\d+ ms", readouts["latency"]), readouts
    latency = statistics.median(steps["latencySamples"])
    assert 0 < latency < 3000, steps["latencySamples"]
    assert steps["latencyAfterStop"] == "—"
    # The camera's clock BEHIND s behind: the same picture now looks that much older (one
    # clock, so never less than that; on a loaded machine each watch's figure moves by tens of ms).
    shifted = statistics.median(steps["latencyShiftedSamples"])
    samples = (steps["latencySamples"], steps["latencyShiftedSamples"])
    assert BEHIND * 1000 - 100 < shifted < BEHIND * 1000 + 3000, samples
    assert abs(shifted - latency - BEHIND * 1000) < 300, samples
    assert "clocks agree" in steps["latencyExplained"], steps["latencyExplained"]
    assert steps["talkBackDefault"] is False
    # Keyboard: Channel, Talk back, Watch in Tab order; Enter on Watch started it.
    assert steps["liveTabStops"] == ["Talk back (send my microphone)", "Watch"]
    assert "server → screen" in steps["latencyExplained"]
    # Talk-back on while watching: the microphone's track goes out (outbound audio RTP).
    assert steps["talkBackPackets"] > 0, steps["talkBackPackets"]

    # Sessions: the master's session is connected, with a selected candidate pair.
    master = steps["masterRow"]
    assert master["state"] == "ACTIVE (connected)", master
    assert re.fullmatch(r"\S+:\d+ -> \S+:\d+", master["pair"]), master
    assert master["verdict"] == "no problem seen", master
    assert steps["connected"].startswith("Connected: master (connected)"), steps["connected"]
    # While the console watched, its viewer was listed as connected, by its client id.
    assert re.fullmatch(
        r"Connected: master \(connected\), 1 viewer \(console-[0-9a-f]{12}\)\.",
        steps["connectedWhileWatching"],
    ), steps["connectedWhileWatching"]
    # The console's own viewer session (stopped before): a VIEWER with the console's client id.
    assert re.fullmatch(r"Viewer console-[0-9a-f]{12} #\d+", steps["viewerRow"]), steps["viewerRow"]

    # A key whose policy denies DescribeStorageSessions: the service's refusal, on the page.
    denied = steps["sessionsDenied"]
    assert denied.startswith("Access denied. AccessDeniedException: "), denied
    assert "kinesisvideo:DescribeStorageSessions" in denied, denied

    # Settings: a bad TTL shows the service's validation error; a good one is saved.
    assert steps["badTtl"].startswith(("InvalidArgumentException", "ValidationException")), steps[
        "badTtl"
    ]
    kv = server.client("kinesisvideo")
    channel = kv.describe_signaling_channel(ChannelName="porch")["ChannelInfo"]
    assert channel["SingleMasterConfiguration"]["MessageTtlSeconds"] == 90
    assert steps["ttlShown"] == "90 s"
    stream = kv.describe_stream(StreamName="porch-rec")["StreamInfo"]
    assert stream["DataRetentionInHours"] == 72
    # Tags: added, listed, an invalid key refused inline, removed.
    assert steps["channelTagsAfterAdd"] == [["site", "north"]]
    assert steps["badTag"].startswith(("InvalidArgumentException", "ValidationException")), steps[
        "badTag"
    ]
    assert kv.list_tags_for_resource(ResourceARN=channel_arn)["Tags"] == {}
    assert steps["channelTagsAfterRemove"] == []
    assert steps["streamTagsAfterAdd"] == [["owner", "ops"]]
    assert kv.list_tags_for_stream(StreamName="porch-rec")["Tags"] == {"owner": "ops"}
    # Screenshots of each page at both widths; nothing wider than the screen.
    assert len(result["shots"]) == 8 and all(Path(p).stat().st_size > 0 for p in result["shots"])
    overflow = {k: v for k, v in steps.items() if k.startswith("overflow-") and v > 0}
    assert not overflow, overflow
    errors = [e for e in result["consoleErrors"] if "Failed to load resource" not in e]
    assert not errors and not result["pageErrors"], (errors, result["pageErrors"])


@pytest.mark.browser
@pytest.mark.slow
def test_console_live_replay_and_jump_to_live(
    make_server: Any, console_dir: Path, tmp_path: Path
) -> None:
    """Recordings of a stream a producer is recording in real time: a thumbnail plays
    LIVE_REPLAY from its time, "Jump to live" plays LIVE at the newest fragments."""
    server: ServerThread = make_server(console_dir=console_dir)
    create_stream(server, "cam")
    # Twelve seconds already recorded, then one fragment a second as a camera uploads them
    # (encoded first: the timestamps start from when the encoding is done).
    recorded(12 + 90, 0)
    producer = LiveProducer(server, recorded(12 + 90, clock.now_ms() - 12_000))
    producer.preroll(11)
    producer.start()
    shots = tmp_path / "screenshots"
    shots.mkdir()
    config = {
        "url": f"{server.endpoint}/console/",
        "shots": str(shots),
        "keys": list(server.keys),
        "stream": "cam",
    }
    try:
        proc = subprocess.run(
            ["node", str(JS / "console_replay.js"), json.dumps(config)],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=180,
        )
    finally:
        producer.stop()
    assert producer.errors == []
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    steps = result["steps"]
    assert "fatal" not in result, (result["fatal"], result.get("html"), steps)
    assert steps["thumbnails"] >= 4 and steps["modeBefore"] == "Stopped"

    def newest_before(ms: int) -> int:
        """The producer timestamp of the newest fragment stored by ``ms`` (wall clock)."""
        done = [f for f in producer.frags if f.server_ts_ms + f.duration_ms <= ms]
        return done[-1].producer_ts_ms

    # LIVE_REPLAY from the thumbnail's time: it plays from about that time (3 s played).
    replay = steps["replay"]
    assert replay["mode"] == "LIVE_REPLAY" and replay["modeText"].startswith("LIVE_REPLAY from ")
    assert replay["advanced"] > 3 and replay["width"] > 0 and replay["scrubDisabled"]
    start = steps["replayFrom"]
    assert abs(replay["at"] - start - replay["advanced"] * 1000) < 2_500, (replay, start)
    # The newest fragment then was well after: the replay did not jump to the live edge.
    assert newest_before(replay["now"]) - replay["at"] > 3_000, replay
    # A click on the timeline's fourth fragment: LIVE_REPLAY from a time within it.
    fourth = producer.frags[3]
    clicked = steps["timelineFrom"]
    assert (
        fourth.producer_ts_ms - 1_000
        <= clicked
        <= fourth.producer_ts_ms + fourth.duration_ms + 1_000
    )
    timeline = steps["timeline"]
    assert timeline["mode"] == "LIVE_REPLAY" and timeline["advanced"] > 2
    assert abs(timeline["at"] - clicked - timeline["advanced"] * 1000) < 2_500, (timeline, clicked)
    # Jump to live: LIVE plays, near the newest fragment's timestamp when sampled.
    live = steps["live"]
    assert live["mode"] == "LIVE" and live["modeText"].startswith("LIVE ")
    assert live["advanced"] > 3 and live["width"] > 0
    newest = newest_before(live["now"])
    assert newest - 8_000 <= live["at"] <= newest + 2_000, (live, newest)
    assert len(result["shots"]) == 1 and Path(result["shots"][0]).stat().st_size > 0
    errors = [e for e in result["consoleErrors"] if "Failed to load resource" not in e]
    assert not errors and not result["pageErrors"], (errors, result["pageErrors"])
