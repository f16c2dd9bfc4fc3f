"""Containers start in any order: an instance waits for Redis and the brokers (real ones).

By default ``run --no-ui`` waits with backoff, says why in the log and on ``/ready`` (503 with
the reason), and starts counting as soon as both answer; ``--wait-timeout`` bounds the wait
(exit 1 with one line), 0 failing at once.
"""

from __future__ import annotations

import asyncio
import json
import signal
import time
from collections.abc import Callable
from pathlib import Path

import aiohttp
import redis.asyncio as aredis

from kafkaconsole.embedded import EmbeddedServices, ManagedProcess, free_port, start_redis
from tests.helpers import KafkaHelper, wait_for
from tests.test_cli_control import write_config
from tests.test_headless import _start

REPO = Path(__file__).resolve().parent.parent


def _with_api(config: Path, port: int) -> None:
    config.write_text(
        config.read_text().replace("[api]\nenabled = false\n", f"[api]\nport = {port}\n")
    )


async def _ready(session: aiohttp.ClientSession, port: int) -> tuple[int, dict[str, object]]:
    async with session.get(f"http://127.0.0.1:{port}/ready") as resp:
        return resp.status, await resp.json()


async def test_redis_started_late_is_waited_for(
    tmp_path: Path, services: EmbeddedServices, kafka: KafkaHelper, unique: str
) -> None:
    redis_port, api_port = free_port(), free_port()
    await kafka.create_topic(unique, 1)
    config = write_config(
        tmp_path / "k.toml",
        bootstrap=services.bootstrap_servers,
        redis_url=f"redis://127.0.0.1:{redis_port}/0",
        prefix=unique,
        topic=unique,
        cid="c",
        out_file=tmp_path / "runs.jsonl",
    )
    _with_api(config, api_port)
    log = tmp_path / "late.log"
    proc = _start(config, log)
    redis_server = None
    session = aiohttp.ClientSession()
    try:

        async def answering() -> bool:
            try:
                status, body = await _ready(session, api_port)
            except aiohttp.ClientError:
                return False
            return status == 503 and body["status"] == "waiting"

        await wait_for(answering, 20, what="/ready answering 503 waiting")
        _status, body = await _ready(session, api_port)
        reasons = body["reasons"]
        assert isinstance(reasons, list)
        assert reasons[0].startswith(f"waiting for Redis at redis://127.0.0.1:{redis_port}/0: ")
        assert "waiting for Redis at" in log.read_text()
        assert proc.poll() is None  # still there, waiting
        await kafka.produce(unique, [{"i": i} for i in range(7)], partitions=1)

        redis_server = start_redis(redis_port)  # Redis comes up: counting starts by itself
        client = aredis.from_url(f"redis://127.0.0.1:{redis_port}/0")
        try:

            async def counted() -> bool:
                return int(await client.get(f"{unique}:c:events") or 0) == 7

            await wait_for(counted, 30, what="counting after Redis came up")
        finally:
            await client.aclose()

        async def ready() -> bool:
            return (await _ready(session, api_port))[0] == 200

        await wait_for(ready, 15, what="/ready 200")
        text = log.read_text()
        assert "Redis and Kafka answer: starting" in text and "Traceback" not in text
        proc.send_signal(signal.SIGTERM)
        assert await asyncio.to_thread(proc.wait, 20) == 0
    finally:
        await session.close()
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
        if redis_server is not None:
            redis_server.stop()


async def test_brokers_started_late_are_waited_for(
    tmp_path: Path,
    services: EmbeddedServices,
    unique: str,
    own_broker: Callable[..., ManagedProcess],
) -> None:
    broker_port = free_port()
    config = write_config(
        tmp_path / "k.toml",
        bootstrap=f"127.0.0.1:{broker_port}",
        redis_url=services.redis_url,
        prefix=unique,
        topic=unique,
        cid="c",
        out_file=tmp_path / "runs.jsonl",
    )
    log = tmp_path / "late.log"
    proc = _start(config, log)
    broker = None
    try:

        async def waiting() -> bool:
            return "waiting for Kafka at" in log.read_text()

        await wait_for(waiting, 20, what="the wait for Kafka in the log")
        assert proc.poll() is None
        broker = own_broker(broker_port)  # of the session's kind
        kafka = KafkaHelper(f"127.0.0.1:{broker_port}")
        await kafka.start()
        try:
            await kafka.create_topic(unique, 1)
            await kafka.produce(unique, [{"i": i} for i in range(5)], partitions=1)
        finally:
            await kafka.stop()
        client = aredis.from_url(services.redis_url)
        try:

            async def counted() -> bool:
                return int(await client.get(f"{unique}:c:events") or 0) == 5

            await wait_for(counted, 40, what="counting after the broker came up")
        finally:
            await client.aclose()
        proc.send_signal(signal.SIGTERM)
        assert await asyncio.to_thread(proc.wait, 20) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
        if broker is not None:
            broker.stop()


def test_wait_timeout_bounds_the_wait_with_one_line(
    tmp_path: Path, services: EmbeddedServices
) -> None:
    for what, bootstrap, redis_url, seconds in (
        ("Redis", services.bootstrap_servers, f"redis://127.0.0.1:{free_port()}/0", "0"),
        ("Kafka", f"127.0.0.1:{free_port()}", services.redis_url, "2"),
    ):
        config = write_config(
            tmp_path / f"{what}.toml",
            bootstrap=bootstrap,
            redis_url=redis_url,
            prefix="down",
            topic="t",
            cid="c",
            out_file=tmp_path / "runs.jsonl",
        )
        log = tmp_path / f"{what}.log"
        t0 = time.monotonic()
        proc = _start(config, log, "--wait-timeout", seconds, "--log-format", "json")
        assert proc.wait(30) == 1
        took = time.monotonic() - t0
        assert float(seconds) <= took < float(seconds) + 10
        lines = [json.loads(line) for line in log.read_text().splitlines() if line.strip()]
        errors = [line for line in lines if line["level"] in ("error", "critical")]
        assert len(errors) == 1, errors
        if seconds == "0":  # fail at once: that one line and nothing else to read
            assert [line for line in lines if line["level"] != "info"] == errors
        assert errors[0]["message"].startswith(f"cannot start: {what} at "), errors
        assert errors[0]["message"].endswith(" does not answer")
        assert not any("Traceback" in json.dumps(line) for line in lines)
