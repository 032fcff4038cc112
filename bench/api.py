"""API throughput: SigV4-signed JoinStorageSession, DescribeSignalingChannel and DescribeStream at
64 concurrent connections from wrk (a separate process) replaying pre-signed requests, side by
side with moto's server mode answering DescribeStream in the same run.

Requests are signed once with botocore's SigV4 (valid for the server's ±15 min clock window) and
replayed round-robin over 64 channels/streams (8 streams for moto); every openkvs request is fully verified (signature,
credential scope, policy). JoinStorageSession is measured on a server with storage sessions off
(``webrtc_enabled=false``): the API path (SigV4, model validation, ARN and storage checks, the
join hand-off) without starting a WebRTC peer per call.
"""

from __future__ import annotations

import contextlib
import json
import re
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials
from tests.support import free_port

from . import common
from .common import log

CONNECTIONS = 64
_UNITS = {"us": 1e-3, "ms": 1.0, "s": 1000.0}


def signed(
    url: str, path: str, body: dict[str, Any], akid: str, secret: str
) -> tuple[str, dict[str, str], str]:
    data = json.dumps(body)
    host = url.split("://", 1)[1]
    req = AWSRequest(
        "POST", url + path, data=data.encode(), headers={"Content-Type": "application/json"}
    )
    SigV4Auth(Credentials(akid, secret), "kinesisvideo", "us-east-1").add_auth(req)
    headers = {k: v for k, v in req.headers.items()}
    headers["Host"] = host
    return path, headers, data


def lua_script(requests: list[tuple[str, dict[str, str], str]], out: Path) -> Path:
    def s(x: str) -> str:
        return "[==[" + x + "]==]"

    lines = ["local specs = {"]
    for path, headers, body in requests:
        hs = ", ".join(f"[ {s(k)} ] = {s(v)}" for k, v in headers.items())
        lines.append(f"  {{ {s(path)}, {{ {hs} }}, {s(body)} }},")
    lines += [
        "}",
        "local reqs = {}",
        "local i = 0",
        "init = function(args)",
        "  for k, spec in ipairs(specs) do",
        '    reqs[k] = wrk.format("POST", spec[1], spec[2], spec[3])',
        "  end",
        "  i = math.random(#reqs) - 1",
        "end",
        "request = function()",
        "  i = i % #reqs + 1",
        "  return reqs[i]",
        "end",
    ]
    out.write_text("\n".join(lines) + "\n")
    return out


def run_wrk(wrk: str, url: str, script: Path, seconds: float) -> dict[str, Any]:
    proc = subprocess.run(
        [
            wrk,
            "-t2",
            f"-c{CONNECTIONS}",
            f"-d{max(1, int(seconds))}s",
            "--latency",
            "--timeout",
            "5s",
            "-s",
            str(script),
            url,
        ],
        capture_output=True,
        text=True,
        timeout=seconds + 60,
    )
    text = proc.stdout
    result: dict[str, Any] = {"raw": text.strip().splitlines()[-12:]}
    m = re.search(r"Requests/sec:\s+([\d.]+)", text)
    result["req_per_s"] = round(float(m.group(1)), 1) if m else None
    for q in ("50", "99"):
        m = re.search(rf"^\s+{q}%\s+([\d.]+)(us|ms|s)\s*$", text, re.M)
        result[f"p{q}_ms"] = round(float(m.group(1)) * _UNITS[m.group(2)], 2) if m else None
    m = re.search(r"(\d+) requests in", text)
    result["requests"] = int(m.group(1)) if m else 0
    m = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", text)
    result["non_2xx"] = int(m.group(1)) if m else 0
    m = re.search(r"Socket errors:(.*)", text)
    result["socket_errors"] = m.group(1).strip() if m else ""
    return result


@contextlib.contextmanager
def moto_server() -> Iterator[tuple[str, list[tuple[str, dict[str, str], str]], str]]:
    """moto's server mode (from the tools venv) with 8 streams; yields (url, requests, version)."""
    exe = common.ensure_tool("moto[server]", "moto_server")
    if exe is None:
        raise RuntimeError("moto could not be installed")
    port = free_port()
    proc = subprocess.Popen(
        [str(exe), "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        import boto3

        deadline = time.monotonic() + 60
        kv = boto3.client(
            "kinesisvideo",
            endpoint_url=url,
            region_name="us-east-1",
            aws_access_key_id="AKIDMOTO",
            aws_secret_access_key="moto-secret",
        )
        while True:
            try:
                kv.list_streams()
                break
            except Exception:  # noqa: BLE001 - not up yet
                if time.monotonic() > deadline or proc.poll() is not None:
                    raise RuntimeError("moto_server did not start") from None
                time.sleep(0.2)
        names = [f"moto-{i}" for i in range(8)]
        for n in names:
            kv.create_stream(StreamName=n, DataRetentionInHours=1)
        reqs = [
            signed(url, "/describeStream", {"StreamName": n}, "AKIDMOTO", "moto-secret")
            for n in names
        ]
        yield url, reqs, _moto_version(exe)
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()


def _moto_version(exe: Path) -> str:
    py = exe.parent / "python"
    r = subprocess.run(
        [str(py), "-c", "import moto; print(moto.__version__)"], capture_output=True, text=True
    )
    return r.stdout.strip()


def run(quick: bool) -> dict[str, Any]:
    seconds = 2.0 if quick else 8.0
    rounds = 1 if quick else 2
    wrk = common.which_wrk()
    if wrk is None:
        return {"error": "wrk is not installed (apt-get install wrk)"}
    results: dict[str, Any] = {
        "connections": CONNECTIONS,
        "seconds": seconds,
        "rounds": rounds,
        "client": "wrk -t2",
    }
    with (
        common.tmpdir("api-") as tmp,
        common.server(tmp / "data", webrtc_enabled="false") as srv,
        moto_server() as (moto_url, moto_reqs, moto_version),
    ):
        arns = common.provision(srv, CONNECTIONS, prefix="api")
        names = common.stream_names(arns)
        akid, secret = srv.keys
        http = f"http://127.0.0.1:{srv.http_port}"
        https = srv.endpoint
        bodies = {
            "JoinStorageSession": ("/joinStorageSession", [{"channelArn": a} for a in arns]),
            "DescribeSignalingChannel": (
                "/describeSignalingChannel",
                [{"ChannelARN": a} for a in arns],
            ),
            "DescribeStream": ("/describeStream", [{"StreamName": n} for n in names]),
        }
        cases: dict[str, tuple[str, Path]] = {}
        for op, (path, bs) in bodies.items():
            reqs = [signed(http, path, b, akid, secret) for b in bs]
            cases[f"openkvs {op}"] = (http, lua_script(reqs, tmp / f"{op}.lua"))
        if not quick:
            reqs = [
                signed(https, "/describeSignalingChannel", {"ChannelARN": a}, akid, secret)
                for a in arns
            ]
            cases["openkvs DescribeSignalingChannel (HTTPS)"] = (
                https,
                lua_script(reqs, tmp / "https.lua"),
            )
        cases["moto DescribeStream"] = (moto_url, lua_script(moto_reqs, tmp / "moto.lua"))
        runs: dict[str, list[dict[str, Any]]] = {k: [] for k in cases}
        for r in range(rounds):
            # Rounds interleave openkvs and moto, so a burst of outside load hits both alike.
            for key, (url, script) in cases.items():
                log(f"api: round {r + 1}/{rounds} {key}, {seconds:g} s")
                if r == 0:
                    run_wrk(wrk, url, script, 1.0)  # warm-up (connections, TLS, caches)
                runs[key].append(run_wrk(wrk, url, script, seconds))
        for key, rs in runs.items():
            best = dict(max(rs, key=lambda x: x.get("req_per_s") or 0))
            best["all_req_per_s"] = [x.get("req_per_s") for x in rs]
            best.pop("raw", None)
            results[key] = best
        results["moto DescribeStream"]["server"] = "moto " + moto_version
    moto_rps = results["moto DescribeStream"].get("req_per_s")
    if moto_rps:
        for key, r in results.items():
            if key.startswith("openkvs") and r.get("req_per_s"):
                r["x_moto"] = round(r["req_per_s"] / moto_rps, 1)
    return results
