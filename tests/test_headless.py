"""``kafkaconsole run --no-ui`` as a real process: imports, logs, API, signals, exit codes."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import aiohttp
import redis.asyncio as aredis

from kafkaconsole.embedded import EmbeddedServices, free_port
from kafkaconsole.engine.engine import log_fields
from kafkaconsole.logs import FIELDS, JsonFormatter
from tests.helpers import KafkaHelper, wait_for
from tests.test_cli_control import write_config

REPO = Path(__file__).resolve().parent.parent


def _env() -> dict[str, str]:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    env.pop("KAFKACONSOLE_FAULT", None)
    return env


def _start(config: Path, log: Path, *extra: str) -> subprocess.Popen[bytes]:
    with log.open("wb") as err:
        return subprocess.Popen(
            [
                sys.executable,
                "-m",
                "kafkaconsole",
                "run",
                "--config",
                str(config),
                "--no-ui",
                *extra,
            ],
            stdout=subprocess.DEVNULL,
            stderr=err,
            cwd=REPO,
            env=_env(),
        )


def _json_lines(log: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in log.read_text().splitlines() if line.strip()]


def _with_api(config: Path, port: int, token: str | None = None) -> None:
    api = f"[api]\nport = {port}\n" + (f'token = "{token}"\n' if token else "")
    config.write_text(config.read_text().replace("[api]\nenabled = false\n", api))


def test_core_modules_import_no_textual_or_rich() -> None:
    code = (
        "import kafkaconsole.headless, kafkaconsole.engine.engine, kafkaconsole.api, sys; "
        "assert not any(m.startswith(('textual','rich')) for m in sys.modules), "
        "sorted(m for m in sys.modules if m.startswith(('textual','rich')))"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=REPO, env=_env())


def test_run_no_ui_never_imports_textual(tmp_path: Path, services: EmbeddedServices) -> None:
    config = write_config(
        tmp_path / "k.toml",
        bootstrap=services.bootstrap_servers,
        redis_url=f"redis://127.0.0.1:{free_port()}/0",
        prefix="noui",
        topic="t",
        cid="c",
        out_file=tmp_path / "runs.jsonl",
    )
    code = (
        "import sys\n"
        "from typer.testing import CliRunner\n"
        "from kafkaconsole.cli.app import app\n"
        f"args = ['run', '--config', {str(config)!r}, '--no-ui', '--wait-timeout', '0']\n"
        "r = CliRunner().invoke(app, args)\n"
        "assert r.exit_code == 1, (r.exit_code, r.output)\n"
        "assert not any(m.startswith('textual') for m in sys.modules)\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=REPO, env=_env(), timeout=60)


async def test_json_logs_api_and_sigterm(
    tmp_path: Path, services: EmbeddedServices, kafka: KafkaHelper, unique: str
) -> None:
    await kafka.create_topic(unique, 1)
    config = write_config(
        tmp_path / "k.toml",
        bootstrap=services.bootstrap_servers,
        redis_url=services.redis_url,
        prefix=unique,
        topic=unique,
        cid="c1",
        out_file=tmp_path / "runs.jsonl",
        max_event=3,
    )
    _with_api(config, 0, token="t0ken")
    log = tmp_path / "a.log"
    proc = _start(config, log, "--log-format", "json", "--instance-id", "solo")
    try:
        url = ""

        async def listening() -> bool:
            nonlocal url
            for line in _json_lines(log):
                if line["message"].startswith("HTTP API listening on "):
                    url = line["message"].rsplit(" ", 1)[1]
                    return True
            return False

        await wait_for(listening, 20, what="the API's bound address in the log")
        async with aiohttp.ClientSession() as session:

            async def ready() -> bool:
                async with session.get(f"{url}/ready") as resp:
                    return resp.status == 200

            await wait_for(ready, 20, what="/ready")
            async with session.get(f"{url}/health") as resp:
                assert (await resp.json())["instance_id"] == "solo"
        await kafka.produce(unique, ({"i": i} for i in range(3)), partitions=1)

        async def triggered() -> bool:  # the window closed, then its pipeline ran
            lines = _json_lines(log)
            return any("window 1 closed" in x["message"] for x in lines) and any(
                x.get("event") == "pipeline_run" for x in lines
            )

        await wait_for(triggered, 15, what="a trigger and its pipeline run logged")
        proc.send_signal(signal.SIGTERM)
        t0 = time.monotonic()
        assert await asyncio.to_thread(proc.wait, 15) == 0
        assert time.monotonic() - t0 < 8
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
    lines = _json_lines(log)  # every stderr line is one JSON object
    assert all({"ts", "level", "logger", "message"} <= set(x) for x in lines)
    events = {x.get("event") for x in lines}
    assert {"state_change", "trigger", "pipeline_run", "rebalance"} <= events, events
    assert "t0ken" not in log.read_text()
    # structured fields, set where each event is logged
    assert all(x["instance_id"] == "solo" for x in lines), [
        x for x in lines if "instance_id" not in x
    ]
    (trigger,) = [x for x in lines if x.get("event") == "trigger"]
    assert (trigger["consumer_id"], trigger["window_id"], trigger["pipeline"]) == (
        "c1",
        1,
        "append",
    )
    (run,) = [x for x in lines if x.get("event") == "pipeline_run"]
    assert (run["consumer_id"], run["window_id"], run["pipeline"]) == ("c1", 1, "append")
    for x in lines:
        if x.get("event") in ("rebalance", "state_change"):
            assert x["consumer_id"] == "c1", x
    assert "window_id" not in [k for x in lines if x.get("event") == "rebalance" for k in x]


def test_json_fields_come_from_the_record_not_its_text() -> None:
    """A line that reads like a trigger but was logged without fields gets none."""
    formatter = JsonFormatter()
    bare = logging.LogRecord(
        "kafkaconsole.trigger", logging.INFO, __file__, 1, "c1: window 7 closed (count)", None, None
    )
    assert set(json.loads(formatter.format(bare))) == {"ts", "level", "logger", "message"}
    tagged = logging.LogRecord(
        "kafkaconsole.trigger", logging.INFO, __file__, 1, "anything", None, None
    )
    tagged.__dict__.update(log_fields("trigger", "c1", 7, "p"))
    body = json.loads(formatter.format(tagged))
    assert {k: body[k] for k in FIELDS if k in body} == {
        "event": "trigger",
        "consumer_id": "c1",
        "window_id": 7,
        "pipeline": "p",
    }


async def test_second_sigint_forces_exit(
    tmp_path: Path,
    services: EmbeddedServices,
    kafka: KafkaHelper,
    redis_client: aredis.Redis,
    unique: str,
) -> None:
    await kafka.create_topic(unique, 1)
    config = write_config(
        tmp_path / "k.toml",
        bootstrap=services.bootstrap_servers,
        redis_url=services.redis_url,
        prefix=unique,
        topic=unique,
        cid="slow",
        out_file=tmp_path / "runs.jsonl",
        max_event=1,
    )
    # a pipeline that takes a while: the graceful stop waits for it
    config.write_text(
        config.read_text().replace(
            "import sys; open(sys.argv[1], 'a').write(sys.stdin.read() + chr(10))",
            "import time; time.sleep(6)",
        )
    )
    log = tmp_path / "slow.log"
    proc = _start(config, log)
    try:
        await kafka.produce(unique, [{"i": 1}], partitions=1)

        async def running() -> bool:
            run = await redis_client.hget(f"{unique}:slow:runs", "1")
            return run is not None and json.loads(run)["status"] == "running"

        await wait_for(running, 20, what="the slow pipeline running")
        proc.send_signal(signal.SIGINT)
        await asyncio.sleep(0.7)
        assert proc.poll() is None, "the graceful stop waits for the running pipeline"
        proc.send_signal(signal.SIGINT)
        t0 = time.monotonic()
        assert await asyncio.to_thread(proc.wait, 5) == 1
        assert time.monotonic() - t0 < 2
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
    assert "second interrupt, exiting now" in log.read_text()


def test_cannot_start_exits_1(tmp_path: Path, services: EmbeddedServices) -> None:
    config = write_config(
        tmp_path / "k.toml",
        bootstrap=services.bootstrap_servers,
        redis_url=f"redis://127.0.0.1:{free_port()}/0",
        prefix="down",
        topic="t",
        cid="c",
        out_file=tmp_path / "runs.jsonl",
    )
    log = tmp_path / "down.log"
    proc = _start(config, log, "--wait-timeout", "0")
    assert proc.wait(30) == 1
    text = log.read_text()
    assert "cannot start" in text and "Traceback" not in text


def test_api_port_in_use_exits_1(tmp_path: Path, services: EmbeddedServices, unique: str) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        config = write_config(
            tmp_path / "k.toml",
            bootstrap=services.bootstrap_servers,
            redis_url=services.redis_url,
            prefix=unique,
            topic=unique,
            cid="c",
            out_file=tmp_path / "runs.jsonl",
        )
        _with_api(config, busy.getsockname()[1])
        log = tmp_path / "busy.log"
        proc = _start(config, log)
        assert proc.wait(30) == 1
    text = log.read_text()
    assert "cannot start" in text and "Traceback" not in text


def test_bad_config_exits_2(tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text("[kafka]\nbootstrap = 'x'\n")
    proc = subprocess.run(
        [sys.executable, "-m", "kafkaconsole", "run", "--config", str(bad), "--no-ui"],
        capture_output=True,
        text=True,
        cwd=REPO,
        env=_env(),
        timeout=60,
    )
    assert proc.returncode == 2
    assert "kafka.bootstrap" in proc.stderr and "Traceback" not in proc.stderr
