"""Playback: GetImages vs the FFmpeg CLI on the same frames, HLS media-segment requests/s,
GetClip MB/s.

A 1280x720 30 fps ≈2 Mb/s H.264 + AAC recording (2 s GOP, so 2 s fragments) is made once with
the FFmpeg CLI (cached under bench/out) and ingested with PutMedia (curl --aws-sigv4, as in the
README). Then, in the same run:

- GetImages: JPEG, full size, one image per second over the whole recording (100 images), paged
  25 at a time with NextToken, through boto3 — cold (first request) and again (cached);
- FFmpeg CLI: ``ffmpeg -i recording.mkv -vf fps=1 -q:v 4 out%03d.jpg`` on the same recording, the
  usual way to pull one frame per second;
- the two are timed side by side RUNS times (alternating which goes first; each cold GetImages run
  reads its own copy of the recording, ingested into a stream of its own, so no cache is warm) and
  the medians are compared: a single run is noisy on a shared machine. Each run also records the
  CPU seconds it took (the server's process and the boto3 client for GetImages, the ffmpeg process
  for the CLI): on a loaded machine wall time mostly says how much of the CPU each side got (FFmpeg
  runs more threads), CPU time what each needs;
- HLS: an ON_DEMAND fMP4 session over the recording; wrk replays GETs of its media segments;
- GetClip: the whole recording as one MP4, MB/s of the response body.
"""

from __future__ import annotations

import datetime as dt
import re
import resource
import subprocess
import time
from pathlib import Path
from typing import Any

import requests

from . import api, common
from .common import OUT, log

RECORDING_VERSION = "v2"
RUNS = 5  # side-by-side GetImages / FFmpeg CLI runs; the medians are reported


def recording(seconds: int) -> Path:
    path = OUT / f"recording-{RECORDING_VERSION}-{seconds}s.mkv"
    if path.exists():
        return path
    OUT.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp.mkv")
    log(f"playback: encoding a {seconds} s 720p recording with ffmpeg (cached)")
    subprocess.run(
        [
            "ffmpeg",
            "-nostdin",
            "-v",
            "error",
            "-y",
            "-f",
            "lavfi",
            "-i",
            f"testsrc2=size=1280x720:rate=30:duration={seconds}",
            "-f",
            "lavfi",
            "-i",
            f"sine=frequency=440:sample_rate=48000:duration={seconds}",
            "-c:v",
            "libx264",
            "-preset",
            "ultrafast",
            "-b:v",
            "2M",
            "-maxrate",
            "2.5M",
            "-bufsize",
            "4M",
            "-g",
            "60",
            "-keyint_min",
            "60",
            "-sc_threshold",
            "0",
            "-pix_fmt",
            "yuv420p",
            "-c:a",
            "aac",
            "-ac",
            "2",
            "-b:a",
            "96k",
            "-f",
            "matroska",
            "-cluster_size_limit",
            "8M",
            "-cluster_time_limit",
            "20000",
            str(tmp),
        ],
        check=True,
    )
    tmp.replace(path)
    return path


def put_media(srv: Any, stream: str, path: Path, start_s: int) -> None:
    akid, secret = srv.keys
    url = f"http://127.0.0.1:{srv.http_port}/putMedia"
    with path.open("rb") as src:
        proc = subprocess.run(
            [
                "curl",
                "-sN",
                "--aws-sigv4",
                "aws:amz:us-east-1:kinesisvideo",
                "--user",
                f"{akid}:{secret}",
                "-H",
                f"x-amzn-stream-name: {stream}",
                "-H",
                "x-amz-content-sha256: UNSIGNED-PAYLOAD",
                "-H",
                "x-amzn-fragment-timecode-type: RELATIVE",
                "-H",
                f"x-amzn-producer-start-timestamp: {start_s}",
                "-X",
                "POST",
                "-T",
                "-",
                url,
            ],
            stdin=src,
            capture_output=True,
            text=True,
            timeout=300,
        )
    if '"PERSISTED"' not in proc.stdout:
        raise RuntimeError(f"PutMedia failed: {proc.stdout[-500:]} {proc.stderr[-500:]}")


def children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def ffmpeg_images(path: Path, out: Path, count: int) -> dict[str, Any]:
    out.mkdir(parents=True, exist_ok=True)
    cpu = children_cpu()
    t = time.perf_counter()
    subprocess.run(
        [
            "ffmpeg",
            "-nostdin",
            "-v",
            "error",
            "-i",
            str(path),
            "-vf",
            "fps=1",
            "-frames:v",
            str(count),
            "-q:v",
            "4",
            str(out / "img%03d.jpg"),
        ],
        check=True,
    )
    wall = time.perf_counter() - t
    cpu = children_cpu() - cpu
    n = len(list(out.glob("img*.jpg")))
    return {
        "images": n,
        "wall_s": round(wall, 3),
        "images_per_s": round(n / wall, 1),
        "cpu_s": round(cpu, 2),
    }


def get_images(
    am: Any, stream: str, start: dt.datetime, count: int, server_pid: int | None = None
) -> dict[str, Any]:
    server_cpu = common.cpu_seconds(server_pid) if server_pid else 0.0
    client_cpu = time.process_time()
    t = time.perf_counter()
    kw: dict[str, Any] = {
        "StreamName": stream,
        "ImageSelectorType": "PRODUCER_TIMESTAMP",
        "StartTimestamp": start,
        "EndTimestamp": start + dt.timedelta(seconds=count - 1),
        "SamplingInterval": 1000,
        "Format": "JPEG",
    }
    images = errors = size = 0
    while True:
        resp = am.get_images(**kw)
        for im in resp["Images"]:
            if im.get("ImageContent"):
                images += 1
                size += len(im["ImageContent"])
            else:
                errors += 1
        token = resp.get("NextToken")
        if not token:
            break
        kw["NextToken"] = token
    wall = time.perf_counter() - t
    out = {
        "images": images,
        "missing": errors,
        "wall_s": round(wall, 3),
        "images_per_s": round(images / wall, 1),
        "mean_jpeg_kb": round(size / max(1, images) / 1024, 1),
    }
    if server_pid:
        cpu = common.cpu_seconds(server_pid) - server_cpu + time.process_time() - client_cpu
        out["cpu_s"] = round(cpu, 2)
    return out


def median(values: list[float]) -> float:
    return sorted(values)[len(values) // 2]


def median_run(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """The run with the median images/s (runs are an odd number)."""
    return sorted(runs, key=lambda r: r["images_per_s"])[len(runs) // 2]


def run(quick: bool) -> dict[str, Any]:
    seconds = 20 if quick else 100
    rec = recording(seconds)
    wrk = common.which_wrk()
    result: dict[str, Any] = {"recording_s": seconds, "recording_bytes": rec.stat().st_size}
    with common.tmpdir("playback-") as tmp, common.server(tmp / "data") as srv:
        kv = srv.client("kinesisvideo")
        runs = 3 if quick else RUNS
        names = ["rec"] + [f"rec{k}" for k in range(1, runs)]
        start_s = int(time.time()) - seconds - 60
        for name in names:
            kv.create_stream(StreamName=name, DataRetentionInHours=24)
            t = time.perf_counter()
            put_media(srv, name, rec, start_s)
            result.setdefault("putmedia_s", round(time.perf_counter() - t, 2))
        rows = common.fragment_rows(srv.data_dir, ["rec"])["rec"]
        result["fragments"] = len(rows)
        first_ms = rows[0]["producer_ts"]
        start = dt.datetime.fromtimestamp(first_ms / 1000, tz=dt.UTC)
        am = srv.client("kinesis-video-archived-media")
        pid = srv.proc.pid if srv.proc is not None else None
        log(f"playback: GetImages {seconds} JPEGs at 1 s vs the FFmpeg CLI, {runs} runs")
        cold: list[dict[str, Any]] = []
        cli: list[dict[str, Any]] = []
        for k, name in enumerate(names):
            if k % 2:
                cli.append(ffmpeg_images(rec, tmp / f"ff{k}", seconds))
                cold.append(get_images(am, name, start, seconds, pid))
            else:
                cold.append(get_images(am, name, start, seconds, pid))
                cli.append(ffmpeg_images(rec, tmp / f"ff{k}", seconds))
        result["get_images_cold"] = median_run(cold)
        result["ffmpeg_cli"] = median_run(cli)
        result["images_runs"] = {
            "get_images_per_s": [r["images_per_s"] for r in cold],
            "ffmpeg_cli_per_s": [r["images_per_s"] for r in cli],
            "get_images_cpu_s": [r.get("cpu_s") for r in cold],
            "ffmpeg_cli_cpu_s": [r["cpu_s"] for r in cli],
        }
        if all("cpu_s" in r for r in cold):
            # Median CPU seconds for the same images: how much less CPU GetImages needs.
            result["images_cpu_x_ffmpeg"] = round(
                median([r["cpu_s"] for r in cli]) / max(0.01, median([r["cpu_s"] for r in cold])),
                2,
            )
        result["get_images_cached"] = get_images(am, "rec", start, seconds)
        result["images_x_ffmpeg"] = round(
            result["get_images_cold"]["images_per_s"] / result["ffmpeg_cli"]["images_per_s"], 2
        )

        log("playback: GetClip")
        end = start + dt.timedelta(seconds=seconds + 5)
        clips = []
        for _ in range(2 if quick else 3):
            t = time.perf_counter()
            body = am.get_clip(
                StreamName="rec",
                ClipFragmentSelector={
                    "FragmentSelectorType": "PRODUCER_TIMESTAMP",
                    "TimestampRange": {"StartTimestamp": start, "EndTimestamp": end},
                },
            )["Payload"].read()
            wall = time.perf_counter() - t
            clips.append(
                {
                    "bytes": len(body),
                    "wall_s": round(wall, 3),
                    "mb_per_s": round(len(body) / wall / 1e6, 1),
                }
            )
        result["get_clip"] = {
            "first": clips[0],
            "repeat_best": max(clips[1:], key=lambda c: c["mb_per_s"]),
        }

        log("playback: HLS media segments")
        url = am.get_hls_streaming_session_url(
            StreamName="rec",
            PlaybackMode="ON_DEMAND",
            HLSFragmentSelector={
                "FragmentSelectorType": "PRODUCER_TIMESTAMP",
                "TimestampRange": {"StartTimestamp": start, "EndTimestamp": end},
            },
            Expires=3600,
        )["HLSStreamingSessionURL"]
        http_base = f"http://127.0.0.1:{srv.http_port}"
        url = re.sub(r"^https://[^/]+", http_base, url)
        master = requests.get(url, timeout=30).text
        media_uri = next(u for u in master.splitlines() if u and not u.startswith("#"))
        base = url.rsplit("/", 1)[0] + "/"
        media = requests.get(base + media_uri, timeout=30).text
        segs = [u for u in media.splitlines() if u and not u.startswith("#")]
        paths = ["/hls/v1/" + s for s in segs]
        # First pass: every segment remuxed once (cold), timed sequentially.
        t = time.perf_counter()
        seg_bytes = sum(len(requests.get(http_base + p, timeout=30).content) for p in paths)
        cold = time.perf_counter() - t
        result["hls"] = {
            "segments": len(paths),
            "cold_sequential_req_per_s": round(len(paths) / cold, 1),
            "mean_segment_kb": round(seg_bytes / len(paths) / 1024, 1),
        }
        if wrk is not None:
            script = tmp / "hls.lua"
            lua = (
                ["local paths = {"]
                + [f"  [==[{p}]==]," for p in paths]
                + [
                    "}",
                    "local i = 0",
                    "init = function(args) i = math.random(#paths) - 1 end",
                    "request = function()",
                    "  i = i % #paths + 1",
                    '  return wrk.format("GET", paths[i])',
                    "end",
                ]
            )
            script.write_text("\n".join(lua) + "\n")
            r = api.run_wrk(wrk, http_base, script, 3.0 if quick else 6.0)
            r.pop("raw", None)
            r["mb_per_s"] = (
                round(r["req_per_s"] * seg_bytes / len(paths) / 1e6, 1) if r["req_per_s"] else None
            )
            result["hls"]["wrk_64_connections"] = r
    return result
