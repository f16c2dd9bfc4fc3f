"""Scripting: ``status --watch`` (NDJSON), ``trigger --wait`` and ``history --format``, on the
real broker and Redis; the watch runs as a real process so pipes and signals are real."""

from __future__ import annotations

import asyncio
import csv
import io
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import redis.asyncio as aredis

from kafkaconsole.cli.scripting import HISTORY_CSV_COLUMNS
from kafkaconsole.config.loader import load_config
from kafkaconsole.embedded import EmbeddedServices, start_redis
from kafkaconsole.engine.counting import WindowCounter
from kafkaconsole.engine.keys import ConsumerKeys
from kafkaconsole.engine.records import TriggerReason
from tests.engine_support import running_engine
from tests.helpers import KafkaHelper, cli

REPO = Path(__file__).resolve().parent.parent


def write_config(
    path: Path, services: EmbeddedServices, prefix: str, topic: str, redis_url: str | None = None
) -> Path:
    ok = json.dumps([sys.executable, "-c", "import sys; sys.stdin.read()"])
    bad = json.dumps(
        [sys.executable, "-c", "import sys; sys.stdin.read(); sys.exit('warehouse, said \"no\"')"]
    )
    path.write_text(f"""
[kafka]
bootstrap_servers = "{services.bootstrap_servers}"
session_timeout_ms = 6000
heartbeat_interval_ms = 500

[redis]
url = "{redis_url or services.redis_url}"
key_prefix = "{prefix}"

[api]
enabled = false

[pipelines.ok]
kind = "command"
command = {ok}

[pipelines.bad]
kind = "command"
command = {bad}
retry_policy = {{ max_attempts = 2, initial_backoff = 0.01, max_backoff = 0.01 }}

[[consumers]]
consumer_id = "good"
kafka_topic = "{topic}"
pipeline_name = "ok"
connection_id = "c"
max_event = 1000
max_time = 3600
poll_timeout = 0.2

[[consumers]]
consumer_id = "broken"
kafka_topic = "{topic}"
pipeline_name = "bad"
connection_id = "c"
max_event = 1000
max_time = 3600
poll_timeout = 0.2
""")
    return path


def watch(config: Path, *extra: str, shell_tail: str = "") -> subprocess.Popen[bytes]:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    argv = [sys.executable, "-m", "kafkaconsole", "status", "--watch", "--config", str(config)]
    argv += [*extra]
    if shell_tail:
        command = f"set -o pipefail; {subprocess.list2cmdline(argv)} {shell_tail}"
        return subprocess.Popen(
            ["bash", "-c", command],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=env,
            cwd=REPO,
        )
    return subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env, cwd=REPO)


async def read_line(proc: subprocess.Popen[bytes]) -> dict:
    assert proc.stdout is not None
    line = await asyncio.wait_for(asyncio.to_thread(proc.stdout.readline), 30)
    assert line, proc.stderr.read() if proc.stderr else ""
    return json.loads(line)


# ---- status --watch ---------------------------------------------------------------------------


async def test_watch_prints_each_consumer_then_each_change_and_ends_on_ctrl_c(
    services: EmbeddedServices, unique: str, tmp_path: Path
) -> None:
    config = write_config(tmp_path / "kc.toml", services, unique, f"{unique}-t")
    proc = watch(config, "--interval", "0.2")
    try:
        first = [await read_line(proc), await read_line(proc)]
        assert sorted(c["consumer_id"] for c in first) == ["broken", "good"]
        status = json.loads((await cli("status", "--json", "--config", str(config))).stdout)
        for line in first:
            assert line["observed_at"].endswith("Z")
            same = next(c for c in status["consumers"] if c["consumer_id"] == line["consumer_id"])
            assert set(line) == {"observed_at", *same}  # the object of status --json
        paused = await cli("pause", "good", "--config", str(config))
        assert paused.exit_code == 0, paused.output
        change = await read_line(proc)
        assert (change["consumer_id"], change["state"]) == ("good", "paused")
        proc.send_signal(signal.SIGINT)
        rc = await asyncio.to_thread(proc.wait, 30)
        assert proc.stderr is not None
        err = proc.stderr.read().decode()
        assert rc == 0 and "Traceback" not in err and "Aborted" not in err, err
        assert proc.stdout is not None
        assert proc.stdout.read() == b""  # nothing changed but the pause
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)


async def test_watch_piped_to_head_exits_0_without_a_traceback(
    services: EmbeddedServices, unique: str, tmp_path: Path
) -> None:
    config = write_config(tmp_path / "kc.toml", services, unique, f"{unique}-t")
    # one line then the reader goes: the second line (at once) or the next poll ends it
    proc = watch(config, "--interval", "0.2", shell_tail="| head -1")
    out, err = await asyncio.to_thread(proc.communicate, None, 60)
    assert proc.returncode == 0, err
    assert err == b""
    assert json.loads(out)["consumer_id"] in ("good", "broken")


async def test_watch_with_redis_gone_prints_one_line_and_exits_1(
    services: EmbeddedServices, unique: str, tmp_path: Path
) -> None:
    redis = start_redis(workdir=tmp_path)
    try:
        url = f"redis://127.0.0.1:{redis.port}/0"
        config = write_config(tmp_path / "kc.toml", services, unique, f"{unique}-t", url)
        proc = watch(config, "--interval", "0.2")
        await read_line(proc)
        redis.stop()
        rc = await asyncio.to_thread(proc.wait, 60)
        assert proc.stderr is not None
        lines = proc.stderr.read().decode().splitlines()
        assert rc == 1
        assert len(lines) == 1 and lines[0].startswith("error: cannot reach Redis at"), lines
    finally:
        redis.stop()


# ---- trigger --wait ---------------------------------------------------------------------------


async def test_trigger_wait_exits_by_the_runs_result(
    services: EmbeddedServices, kafka: KafkaHelper, unique: str, tmp_path: Path
) -> None:
    topic = f"{unique}-t"
    await kafka.create_topic(topic, partitions=1)
    config = write_config(tmp_path / "kc.toml", services, unique, topic)
    await kafka.produce(topic, [{"n": i} for i in range(3)], partitions=1)
    async with running_engine(load_config(config, env={})):
        ok = await cli("trigger", "good", "--wait", "--json", "--config", str(config))
        assert ok.exit_code == 0, ok.output
        body = json.loads(ok.stdout)
        assert body["run"]["status"] == "succeeded" and body["timed_out"] is False

        bad = await cli("trigger", "broken", "--wait", "--config", str(config))
        assert bad.exit_code == 1, bad.output
        assert "pipeline run of window 1: failed" in bad.stdout
        (line,) = bad.stderr.splitlines()
        assert line.startswith("error: broken: window 1's pipeline run failed after 2 attempt(s)")
        assert 'warehouse, said "no"' in line


async def test_trigger_wait_times_out_with_exit_3(
    services: EmbeddedServices, unique: str, tmp_path: Path
) -> None:
    # no instance runs the consumer: the run stays pending
    config = write_config(tmp_path / "kc.toml", services, unique, f"{unique}-t")
    res = await cli("trigger", "good", "--wait", "--timeout", "0.5", "--config", str(config))
    assert res.exit_code == 3, res.output
    lines = res.stderr.splitlines()
    assert lines[0].startswith("warning: no live instance runs good")
    assert lines[1].startswith("error: good: window 1's pipeline run did not end within 0.5s")
    assert "status pending" in lines[1]


# ---- history --format -------------------------------------------------------------------------


async def test_history_csv_is_rfc4180_with_a_stable_header(
    services: EmbeddedServices, redis_client: aredis.Redis, unique: str, tmp_path: Path
) -> None:
    config = write_config(tmp_path / "kc.toml", services, unique, "orders")
    keys = ConsumerKeys(unique, "good")
    counter = WindowCounter(redis_client, keys, max_event=1000)
    await counter.close(TriggerReason.MANUAL)
    await counter.close(TriggerReason.MANUAL)
    error = 'bad gateway, "upstream"\nsecond line'
    await redis_client.hset(
        keys.runs, "2", json.dumps({"status": "failed", "attempts": 3, "error": error})
    )

    res = await cli("history", "good", "--format", "csv", "--config", str(config))
    assert res.exit_code == 0, res.output
    raw = res.stdout_bytes.decode()  # (Result.stdout turns CRLF into LF)
    assert raw.startswith(",".join(HISTORY_CSV_COLUMNS) + "\r\n")
    assert raw.endswith("\r\n") and raw.count("\r\n") == 3  # the error's LF stays quoted
    rows = list(csv.reader(io.StringIO(raw, newline="")))
    assert tuple(rows[0]) == HISTORY_CSV_COLUMNS
    record = dict(zip(rows[0], rows[1], strict=True))  # newest first
    assert record["window_id"] == "2" and record["status"] == "failed"
    assert record["error"] == error and record["attempts"] == "3"
    assert dict(zip(rows[0], rows[2], strict=True))["status"] == "pending"

    as_json = await cli("history", "good", "--format", "json", "--config", str(config))
    assert [r["window_id"] for r in json.loads(as_json.stdout)] == [2, 1]
    table = await cli("history", "good", "--format", "table", "--config", str(config))
    assert table.stdout.splitlines()[0].split()[:3] == ["WINDOW", "REASON", "COUNT"]
    clash = await cli("history", "good", "--json", "--format", "csv", "--config", str(config))
    assert clash.exit_code == 2


async def test_watch_ends_on_ctrl_c_at_any_moment_of_its_loop(
    services: EmbeddedServices, unique: str, tmp_path: Path
) -> None:
    """Ctrl-C while a read is in flight or while it waits: exit 0 every time. (A cancelled
    Redis command can complete anyway, which once left the watch running: Ctrl-C now sets a
    flag the loop ends on.)"""
    config = write_config(tmp_path / "kc.toml", services, unique, f"{unique}-t")
    for delay in (0.0, 0.03, 0.07, 0.11, 0.16, 0.23, 0.37):
        proc = watch(config, "--interval", "0.2")
        try:
            await read_line(proc)
            await asyncio.sleep(delay)
            proc.send_signal(signal.SIGINT)
            rc = await asyncio.to_thread(proc.wait, 15)
            assert rc == 0, proc.stderr.read() if proc.stderr else ""
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
