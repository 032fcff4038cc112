"""The `openkvs` command: serve on embedded defaults, credentials for a shell, clean shutdown."""

from __future__ import annotations

import os
import shlex
import signal
import ssl
import stat
import subprocess
import sys
import threading
from pathlib import Path

import boto3
import pytest
from cryptography import x509

from .support import free_port, free_port_pair, need_tool


def env_from(exports: str) -> dict[str, str]:
    env = {}
    for line in exports.splitlines():
        assert line.startswith("export "), line
        key, _, value = line[len("export ") :].partition("=")
        env[key] = shlex.split(value)[0] if value else ""
    return env


@pytest.fixture
def served(tmp_path: Path):  # type: ignore[no-untyped-def]
    port, http_port = free_port(), free_port()
    data = tmp_path / "data"
    args = [
        sys.executable,
        "-m",
        "openkvs",
        "serve",
        "--port",
        str(port),
        "--http-port",
        str(http_port),
        "--data-dir",
        str(data),
    ]
    # The embedded coturn runs for real, on a free port.
    env = {**os.environ, "OPENKVS_TURN_PORT": str(free_port_pair())}
    proc = subprocess.Popen(args, stderr=subprocess.PIPE, text=True, env=env)
    lines: list[str] = []
    ready = threading.Event()
    assert proc.stderr is not None
    stderr = proc.stderr

    def read() -> None:
        for line in iter(stderr.readline, ""):
            lines.append(line)
            if "shell setup:" in line:
                ready.set()
                return

    threading.Thread(target=read, daemon=True).start()
    assert ready.wait(60), "".join(lines)
    yield proc, port, http_port, data, lines
    if proc.poll() is None:
        proc.kill()
        proc.wait()
    stderr.close()


def test_serve_credentials_and_shutdown(served) -> None:  # type: ignore[no-untyped-def]
    proc, port, http_port, data, lines = served
    log = "".join(lines)
    assert f"https://127.0.0.1:{port}" in log and f"http://127.0.0.1:{http_port}" in log
    assert str(data.resolve()) in log and "ca.pem" in log
    assert f"web console: https://127.0.0.1:{port}/console/" in log, log
    assert f"web console (plain HTTP): http://127.0.0.1:{http_port}/console/" in log, log
    # The printed shell setup names this server's ports, so its endpoints come out right.
    assert f"--port {port} --http-port {http_port}" in log, log

    coturn = need_tool("turnserver")
    keys = ["credentials.json", "tls/ca-key.pem", "tls/server-key.pem"]
    if coturn is not None:
        keys += ["turn-secret.key", "turn/turnserver.conf"]
        assert "coturn started (pid" in log, log
    for name in keys:
        mode = stat.S_IMODE((data / name).stat().st_mode)
        assert mode == 0o600, (name, oct(mode))
    cert = x509.load_pem_x509_certificate((data / "tls/server.pem").read_bytes())
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert "localhost" in san.get_values_for_type(x509.DNSName)
    assert any(str(ip) == "127.0.0.1" for ip in san.get_values_for_type(x509.IPAddress))

    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "openkvs",
            "credentials",
            "--data-dir",
            str(data),
            "--port",
            str(port),
            "--http-port",
            str(http_port),
        ],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    env = env_from(out)
    assert env["OPENKVS_ENDPOINT"] == f"https://127.0.0.1:{port}"
    # The two variables the KVS Producer SDK (kvssink) reads.
    assert env["CONTROL_PLANE_URI"] == f"https://127.0.0.1:{port}"
    assert env["KVSSINK_CA_CERT_PATH"] == env["AWS_CA_BUNDLE"]
    # The shell eval path works for real, and that shell can still run openkvs (the OPENKVS_*
    # client variables it now holds are not server settings).
    creds = shlex.join([sys.executable, "-m", "openkvs", "credentials", "--data-dir", str(data)])
    shell = subprocess.run(
        ["bash", "-c", f'eval "$({creds})" && {creds} >/dev/null && echo $AWS_ACCESS_KEY_ID'],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    assert shell == env["AWS_ACCESS_KEY_ID"]

    ctx = ssl.create_default_context(cafile=env["AWS_CA_BUNDLE"])
    assert ctx  # the CA file is a valid trust anchor
    client = boto3.client(
        "kinesisvideo",
        endpoint_url=env["OPENKVS_ENDPOINT"],
        region_name=env["AWS_DEFAULT_REGION"],
        aws_access_key_id=env["AWS_ACCESS_KEY_ID"],
        aws_secret_access_key=env["AWS_SECRET_ACCESS_KEY"],
        verify=env["AWS_CA_BUNDLE"],
    )
    ch = client.create_signaling_channel(ChannelName="cli")["ChannelARN"]
    st = client.create_stream(StreamName="cli-s", DataRetentionInHours=1)["StreamARN"]
    client.update_media_storage_configuration(
        ChannelARN=ch, MediaStorageConfiguration={"StreamARN": st, "Status": "ENABLED"}
    )
    storage = boto3.client(
        "kinesis-video-webrtc-storage",
        endpoint_url=env["OPENKVS_ENDPOINT"],
        region_name=env["AWS_DEFAULT_REGION"],
        aws_access_key_id=env["AWS_ACCESS_KEY_ID"],
        aws_secret_access_key=env["AWS_SECRET_ACCESS_KEY"],
        verify=env["AWS_CA_BUNDLE"],
    )
    assert storage.join_storage_session(channelArn=ch)["ResponseMetadata"]["HTTPStatusCode"] == 200
    client.close()
    storage.close()

    # The AWS CLI, configured only through the printed environment.
    aws = Path(sys.executable).with_name("aws")
    if aws.exists():
        cli_env = {**os.environ, **env}
        res = subprocess.run(
            [str(aws), "kinesisvideo", "describe-stream", "--stream-name", "cli-s"],
            capture_output=True,
            text=True,
            env=cli_env,
            timeout=60,
        )
        assert res.returncode == 0, res.stderr
        assert '"StreamName": "cli-s"' in res.stdout
        res = subprocess.run(
            [
                str(aws),
                "kinesisvideo",
                "list-signaling-channels",
                "--endpoint-url",
                env["OPENKVS_ENDPOINT"],
                "--ca-bundle",
                env["AWS_CA_BUNDLE"],
            ],
            capture_output=True,
            text=True,
            env=cli_env,
            timeout=60,
        )
        assert res.returncode == 0 and '"ChannelName": "cli"' in res.stdout, res.stderr

    turn_pid = int((data / "turn/turnserver.pid").read_text()) if coturn else None
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=20) == 0
    rest = proc.stderr.read()
    assert "stopped" in rest and "Traceback" not in rest
    if turn_pid is not None:  # coturn went with the server
        assert not Path(f"/proc/{turn_pid}").exists()


def test_bad_config_is_a_clear_error(tmp_path: Path) -> None:
    cfg = tmp_path / "bad.toml"
    cfg.write_text("prot = 1\n")
    res = subprocess.run(
        [sys.executable, "-m", "openkvs", "serve", "--config", str(cfg)],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert res.returncode == 2 and "unknown setting" in res.stderr
    res = subprocess.run(
        [sys.executable, "-m", "openkvs", "serve"],
        capture_output=True,
        text=True,
        timeout=30,
        env={**os.environ, "OPENKVS_NO_AUTH": "maybe"},
    )
    assert res.returncode == 2 and "no_auth" in res.stderr
