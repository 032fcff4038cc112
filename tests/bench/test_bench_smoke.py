"""Smoke tests of the benchmark suite's pieces (the suite itself runs with ``make bench``)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import requests
from bench.media import camera_media

from bench import __main__ as bench_main
from bench import api, audio, capacity, cluster, common, floor, latency, profile, report

from ..playback.support import browser_missing
from ..support import ServerThread


def test_floor_stores_every_frame_of_the_camera() -> None:
    video, _audio = camera_media()
    out = floor.measure(4.0)
    for case in ("video_only", "video_and_audio"):
        r = out[case]
        assert r["video_frames"] == len(video), r
        assert r["fragments"] >= 2 and r["stored_bytes"] > 0.9 * sum(len(f.data) for f in video)
        assert r["cpu_s"] > 0
    assert out["video_and_audio"]["packets"] > out["video_only"]["packets"]


def test_audio_options_measure_cost_and_quality() -> None:
    out = audio.measure(1.0)
    opts = out["encoder_options"]
    assert set(opts) == {"tone", "speech"} and set(opts["tone"]) == set(audio.VARIANTS)
    for signal in opts.values():
        for row in signal.values():
            assert row["cpu_per_audio_second"] > 0 and 40 < row["kbps"] < 160, row
    # The quality measure tells a good encode from a damaged one.
    assert opts["tone"]["fast"]["snr_db"] > 40 and opts["tone"]["fast"]["lsd_db"] < 1
    src = audio.speech(1.0)
    padded = np.concatenate([np.zeros(1024, dtype=np.float32), src])
    assert audio.quality(src, padded)["lsd_db"] == 0
    noisy = padded + np.random.default_rng(1).normal(0, 0.01, len(padded)).astype(np.float32)
    assert audio.quality(src, noisy)["lsd_db"] > 1 and audio.quality(src, noisy)["snr_db"] < 30
    assert out["opus_mono_decode"]["max_sample_difference"] == 0
    sil = out["silence"]
    assert sil["silent_frames_cpu_per_audio_second"] < sil["encoded_cpu_per_audio_second"]
    md = "\n".join(report._audio(out))
    assert "twoloop" in md and "Digital silence" in md


def test_signed_requests_for_wrk_are_accepted_and_tampering_is_not(server: ServerThread) -> None:
    kv = server.client("kinesisvideo")
    arn = kv.create_signaling_channel(ChannelName="wrk")["ChannelARN"]
    akid, secret = server.keys
    url = server.http_endpoint
    path, headers, body = api.signed(
        url, "/describeSignalingChannel", {"ChannelARN": arn}, akid, secret
    )
    ok = requests.post(url + path, headers=headers, data=body, timeout=10)
    assert ok.status_code == 200 and ok.json()["ChannelInfo"]["ChannelARN"] == arn
    bad = requests.post(url + path, headers=headers, data=body.replace("wrk", "wrx"), timeout=10)
    assert bad.status_code == 403
    script = api.lua_script([(path, headers, body)], Path(server.settings.data_dir) / "x.lua")
    text = script.read_text()
    assert "[ [==[Authorization]==] ]" in text and 'wrk.format("POST"' in text


def test_wrk_output_parsing() -> None:
    sample = """Running 2s test @ http://127.0.0.1:1
  Latency Distribution
     50%    1.50ms
     75%    2.00ms
     90%    3.00ms
     99%  850.00us
  2000 requests in 2.00s, 1.00MB read
  Non-2xx or 3xx responses: 3
Requests/sec:   1000.50
"""

    class Done:
        stdout = sample

    def fake_run(*_a: Any, **_k: Any) -> Done:
        return Done()

    mp = pytest.MonkeyPatch()
    mp.setattr(api.subprocess, "run", fake_run)
    try:
        r = api.run_wrk("wrk", "http://x", Path("s.lua"), 2)
    finally:
        mp.undo()
    assert r["req_per_s"] == 1000.5 and r["p50_ms"] == 1.5 and r["p99_ms"] == 0.85
    assert r["requests"] == 2000 and r["non_2xx"] == 3


def test_profile_summary(tmp_path: Path) -> None:
    raw = tmp_path / "raw.txt"
    raw.write_text(
        "thread (1): MainThread;run (asyncio/runners.py:1);Session.__process (pylibsrtp/__init__.py:9) 30\n"
        "thread (1): MainThread;run (asyncio/runners.py:1);FrameAssembler.add (openkvs/webrtc/reassembly.py:5) 10\n"
        "thread (2): openkvs-media_0;_worker (concurrent/futures/thread.py:1);AacEncoder.encode (openkvs/media/aac.py:3) 10\n"
        "thread (3): openkvs-fs_1;_worker (concurrent/futures/thread.py:1) 50\n"
    )
    s = profile.summarise(raw)
    assert s["samples"] == 50 and s["idle_samples_dropped"] == 50
    assert {t["name"]: t["pct"] for t in s["threads"]} == {
        "MainThread (event loop)": 80.0,
        "openkvs-media": 20.0,
    }
    areas = {a["name"]: a["pct"] for a in s["areas"]}
    assert areas["SRTP (pylibsrtp)"] == 60.0 and areas["openkvs reassembly + tap"] == 20.0
    assert s["self"][0] == {"name": "Session.__process (pylibsrtp/__init__.py)", "pct": 60.0}


def test_percentiles_and_capacity_rule() -> None:
    xs = [float(i) for i in range(1, 101)]
    assert common.pct(xs, 50) == 50.0 and common.pct(xs, 99) == 99.0 and common.pct(xs, 100) == 100
    ok = {"frames_equal": True, "durable_within_limit": True}
    assert capacity.passes(ok)
    assert not capacity.passes({**ok, "frames_equal": False})
    assert not capacity.passes({**ok, "durable_within_limit": False})


def test_report_marks_each_target(tmp_path: Path) -> None:
    results = {
        "mode": "quick",
        "sections": {
            "ingest": {"ratio_to_baseline": 0.05, "ratio_to_floor": 3.5},
            "capacity": {"max_sessions": 7, "search_complete": True, "trials": []},
            "latency": {
                "join_to_offer": {"p99_ms": 12.0},
                "capture_to_hls_playlist_per_frame": {"p50_ms": 2500.0},
            },
            "api": {
                "moto DescribeStream": {"req_per_s": 100.0},
                "openkvs JoinStorageSession": {"req_per_s": 1500.0, "p99_ms": 20.0, "non_2xx": 0},
                "openkvs DescribeSignalingChannel": {
                    "req_per_s": 1500.0,
                    "p99_ms": 80.0,
                    "non_2xx": 0,
                },
            },
        },
    }
    got = {w: ok for w, _t, _v, ok in report.targets(results["sections"])}
    assert got["Ingest CPU vs aiortc MediaRecorder"] is True
    assert got["Ingest CPU vs floor (same work, no network)"] is False
    assert got["Capacity (0 lost frames, durable ≤ 2 s)"] is False
    assert got["JoinStorageSession → SDP_OFFER p99"] is True
    assert got["Capture → LIVE HLS playlist p50 (1 s fragments)"] is False
    assert got["JoinStorageSession at 64 clients vs moto DescribeStream"] is True
    assert got["DescribeSignalingChannel at 64 clients vs moto DescribeStream"] is False  # p99
    assert got["GetImages vs FFmpeg CLI"] is None
    assert got["Capture → playable in Chromium (hls.js LL) p50"] is None
    md = report.render(results)
    assert "## Targets" in md and "## Closing note" in md and "**not met**" in md


def test_cli_refuses_unknown_sections(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        bench_main.main(["--only", "nope"])
    assert exc.value.code == 2
    assert "unknown section" in capsys.readouterr().err
    assert json.loads(json.dumps(bench_main.machine()))["cpus"] >= 1


def test_tree_cpu_and_rss_include_live_child_processes() -> None:
    """The capacity figures count the server's storage worker processes too."""
    import os
    import subprocess
    import sys
    import time

    child = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import time\nt = time.process_time()\n"
            "while time.process_time() - t < 0.4: pass\ntime.sleep(30)",
        ]
    )
    try:
        me = os.getpid()
        assert child.pid in common.descendants(me)
        deadline = time.monotonic() + 20
        while common.tree_cpu_seconds(me) - common.cpu_seconds(me) < 0.3:
            assert time.monotonic() < deadline, "the child's CPU was not counted"
            time.sleep(0.05)
        assert common.tree_rss_mb(me) > common.rss_mb(me)
    finally:
        child.kill()
        child.wait()


def test_cluster_sizing_follows_the_measured_counts() -> None:
    per_fragment = {
        "pg_transactions": 2.5,
        "pg_rows_inserted": 1.0,
        "pg_rows_updated": 0.5,
        "pg_rows_deleted": 0.0,
        "pg_statements": 2.5,
        "pg_transaction_control": 0.0,
        "s3_objects": 1.0,
        "s3_bytes": 500_000,
        "redis_commands": 4.0,
        "redis_publish": 1.0,
    }
    results: dict[str, Any] = {
        "fragment_seconds": 2.0,
        "S3 + PostgreSQL + Redis": {"per_fragment": per_fragment, "stored_over_sent": 1.0},
    }
    z = cluster.sizing(results)
    assert z["per_camera_hour"]["fragments"] == 1800
    assert z["per_camera_hour"]["pg_transactions"] == 4500
    assert z["per_camera_hour"]["pg_rows_written"] == 2700
    assert z["per_camera_hour"]["s3_puts"] == 1800
    assert z["1000"]["s3_puts_per_s"] == 500.0 and z["10000"]["s3_puts_per_s"] == 5000.0
    assert z["1000"]["redis_commands_per_s_putmedia"] == 2000.0
    # 2 Mb/s for a day: 21.6 GB per camera.
    assert z["1000"]["s3_tb_per_day"] == 21.6
    results["sizing"] = z
    md = "\n".join(report._cluster(results))
    assert "| S3 PUTs | 1,800 | 500.0 | 5,000.0 |" in md and "21.6 TB/day" in md


def test_cluster_counters_net_of_the_idle_rate() -> None:
    d = cluster.delta({"_t": 1.0, "a": 5, "b": 1}, {"_t": 11.0, "a": 25, "b": 1, "c": 3})
    assert d == {"_t": 10.0, "a": 20, "c": 3}
    assert cluster.net(d, {"a": 1.0}) == {"a": 10.0, "c": 3.0}
    assert cluster._total({"publish": 2.0, "info": -3.0, "hello": -1.0, "get": 1.0}) == 3.0
    m = cluster._STATEMENT.search(
        "2026-12-03 14:27:56.038 UTC [1] postgres@db LOG:  execute __asyncpg_stmt_21__: "
        "INSERT INTO openkvs_fragments (stream_id) VALUES ($1)"
    )
    assert m is not None and m.group(1).startswith("INSERT INTO openkvs_fragments")
    m = cluster._STATEMENT.search("x postgres@db LOG:  statement: BEGIN;")
    assert m is not None and m.group(1) == "BEGIN;"


def test_ingest_trial_with_opus_storage() -> None:
    from bench import ingest

    r = ingest.trial(1, window=2.0, warmup=1.0, linger=1.0, storage_audio="opus")
    assert r["storage_audio"] == "opus" and r["frames_equal"] and r["frames_lost"] == 0
    # Video and the Opus packets are stored as received: the stored payload is what was sent
    # (less the few packets before the first keyframe); with AAC it is ~3 % less (977744 of
    # 1005583 bytes in one run).
    assert (
        0.99 * r["received_media_bytes"] <= r["stored_payload_bytes"] <= r["received_media_bytes"]
    )


def test_glass_to_glass_in_chromium() -> None:
    """hls.js in headless Chromium plays a WebRTC recording's LIVE HLS, with and without its
    low-latency mode; each page's playhead is dated through the program date time."""
    reason = browser_missing()  # under CI=true a missing browser is an error, not a skip
    if reason is not None:
        pytest.skip(reason)
    r = latency.glass_latency(True, warmup_s=1.0, measure_s=3.0)
    # The media clock is anchored at the first frame's arrival, on loopback within moments of
    # its send (a lost first keyframe would put it a GOP, 1 s, later).
    assert 0 <= r["anchor_offset_ms"] < 500, r
    for name in latency.GLASS_PLAYERS:
        p = r[name]
        assert "error" not in p, (name, p)
        assert p["window_s"] >= 2.5 and p["samples_without_date"] == 0, (name, p)
        lat = p["capture_to_playhead"]
        assert lat["n"] >= 15 and 0 < lat["p50_ms"] < 15_000, (name, p)
        # hls.js's own estimate (live edge − playhead) tells the same story within the edge's
        # own delay: a wrong anchoring would part them by seconds.
        own = p["hls_js_latency"]["p50_ms"]
        assert own is not None and abs(lat["p50_ms"] - own) < 2000, (name, p)
    results = {"mode": "quick", "sections": {"latency": {"glass_to_glass": r}}}
    got = {w: ok for w, _t, _v, ok in report.targets(results["sections"])}
    assert got["Capture → playable in Chromium (hls.js LL) p50"] is (
        r["ll"]["capture_to_playhead"]["p50_ms"] < 1000
    )
    md = "\n".join(report._latency({**_latency_stub(), "glass_to_glass": r}))
    for label in report.GLASS_LABELS.values():
        assert f"capture → playhead in Chromium, {label}" in md
    assert "hls.latency p50 ms" in md
    r["plain"] = {"error": "never played", "errors": []}
    md = "\n".join(report._latency({**_latency_stub(), "glass_to_glass": r}))
    assert "| capture → playhead in Chromium, hls.js without lowLatencyMode | — |" in md
    assert "never played |" in md


def _latency_stub() -> dict[str, Any]:
    row = {"n": 1, "p50_ms": 1.0, "p99_ms": 1.0, "max_ms": 1.0}
    return {
        k: row
        for k in (
            "join_to_offer",
            "fragment_end_to_listed",
            "capture_to_hls_playlist_per_frame",
            "capture_to_hls_newest_frame",
            "capture_to_hls_oldest_frame",
        )
    }
