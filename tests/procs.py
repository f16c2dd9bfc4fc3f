"""Run kafkaconsole as real processes for crash tests: config files, start, kill, collect."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import orjson

from kafkaconsole.embedded import EmbeddedServices

REPO = Path(__file__).resolve().parent.parent


def write_config(
    path: Path,
    services: EmbeddedServices,
    prefix: str,
    topic: str,
    consumer_id: str,
    runs_file: Path,
    **consumer: Any,
) -> Path:
    """A config with one consumer whose command pipeline appends each record to ``runs_file``."""
    script = (
        "import sys; data = sys.stdin.read(); "
        f"f = open({str(runs_file)!r}, 'a'); f.write(data.replace(chr(10), ' ') + chr(10)); "
        "f.close()"
    )
    command = orjson.dumps([sys.executable, "-c", script]).decode()
    extra = "\n".join(f"{k} = {orjson.dumps(v).decode()}" for k, v in consumer.items())
    path.write_text(f"""
[kafka]
bootstrap_servers = "{services.bootstrap_servers}"
session_timeout_ms = 6000
heartbeat_interval_ms = 500

[redis]
url = "{services.redis_url}"
key_prefix = "{prefix}"
dispatch_lease_ms = 2000

[api]
enabled = false

[pipelines.sink]
kind = "command"
command = {command}
retry_policy = {{ max_attempts = 3, initial_backoff = 0.05 }}

[[consumers]]
consumer_id = "{consumer_id}"
kafka_topic = "{topic}"
pipeline_name = "sink"
connection_id = "conn-1"
poll_timeout = 0.2
{extra}
""")
    return path


def start(
    config: Path, instance_id: str, log: Path, env: dict[str, str] | None = None
) -> subprocess.Popen[bytes]:
    full_env = {**os.environ, "PYTHONPATH": str(REPO), **(env or {})}
    full_env.pop("KAFKACONSOLE_FAULT", None) if not env or "KAFKACONSOLE_FAULT" not in env else None
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "kafkaconsole",
            "run",
            "--config",
            str(config),
            "--no-ui",
            "--instance-id",
            instance_id,
        ],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=open(log, "ab"),
        env=full_env,
        cwd=str(REPO),
    )


def stop(proc: subprocess.Popen[bytes], sig: int = signal.SIGTERM, timeout: float = 15) -> int:
    if proc.poll() is None:
        proc.send_signal(sig)
    return proc.wait(timeout)


def pipeline_calls(runs_file: Path) -> list[dict[str, Any]]:
    if not runs_file.exists():
        return []
    return [orjson.loads(line) for line in runs_file.read_text().splitlines() if line.strip()]
