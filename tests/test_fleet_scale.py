"""Hundreds of consumers in one process: bounded Redis connections, every consumer counts and
triggers, no pool error in the log.

Marked ``fleet``: the default suite leaves it out (it takes minutes on two shared cores);
``.ci/run`` runs it as a tier of its own (``pytest -m fleet``).
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import time
from pathlib import Path

import orjson
import pytest
import redis.asyncio as aredis
from aiokafka import AIOKafkaProducer

from kafkaconsole.config.models import RedisConfig
from kafkaconsole.embedded import EmbeddedServices
from kafkaconsole.engine.clients import API_REDIS_CONNECTIONS, DEDICATED_REDIS_CONNECTIONS
from tests.helpers import KafkaHelper

pytestmark = [pytest.mark.fleet, pytest.mark.timeout(900)]

REPO = Path(__file__).resolve().parent.parent
CONSUMERS = 500
PER_TOPIC = 10  # consumers per topic, each in a group of its own
EVENTS = 3  # per topic; max_event of every consumer: one count trigger each
MAX_CONNECTIONS = RedisConfig().max_connections  # the default
POOL_ERRORS = ("Too many connections", "No connection available", "connections exhausted")


def write_config(path: Path, services: EmbeddedServices, prefix: str) -> None:
    lines = [
        "[kafka]",
        f'bootstrap_servers = "{services.bootstrap_servers}"',
        "[redis]",
        f'url = "{services.redis_url}"',
        f'key_prefix = "{prefix}"',
        "[api]",
        "enabled = false",
        "[pipelines.noop]",
        'kind = "python"',
        'target = "benchmarks.noop:noop"',
    ]
    for i in range(CONSUMERS):
        lines += [
            "[[consumers]]",
            f'consumer_id = "c{i:03d}"',
            f'kafka_topic = "{prefix}-t{i // PER_TOPIC:02d}"',
            'pipeline_name = "noop"',
            'connection_id = "scale"',
            f"max_event = {EVENTS}",
            "max_time = 3600",
        ]
    path.write_text("\n".join(lines) + "\n")


async def connected_clients(redis: aredis.Redis) -> int:
    info = await redis.info("clients")
    return int(info["connected_clients"])


async def test_500_consumers_in_one_process_count_and_trigger(
    services: EmbeddedServices, tmp_path: Path, unique: str
) -> None:
    topics = [f"{unique}-t{t:02d}" for t in range(CONSUMERS // PER_TOPIC)]
    kafka = KafkaHelper(services.bootstrap_servers)
    await kafka.start()
    try:
        for topic in topics:
            await kafka.create_topic(topic, 1)
    finally:
        await kafka.stop()
    producer = AIOKafkaProducer(bootstrap_servers=services.bootstrap_servers)
    await producer.start()
    try:
        sent = [
            await producer.send(topic, orjson.dumps({"n": n}))
            for topic in topics
            for n in range(EVENTS)
        ]
        await asyncio.gather(*sent)
    finally:
        await producer.stop()

    config = tmp_path / "fleet.toml"
    write_config(config, services, unique)
    log_path = tmp_path / "fleet.log"
    redis = aredis.from_url(services.redis_url)
    before = await connected_clients(redis)
    with log_path.open("wb") as log_file:
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "kafkaconsole",
            "run",
            "--no-ui",
            "--config",
            str(config),
            stdout=log_file,
            stderr=asyncio.subprocess.STDOUT,
            cwd=REPO,
            env={**os.environ, "PYTHONPATH": str(REPO)},
        )
    peak = 0
    try:
        deadline = time.monotonic() + 420
        done: set[str] = set()
        while len(done) < CONSUMERS:
            assert proc.returncode is None, log_path.read_text()[-3000:]
            assert time.monotonic() < deadline, f"{len(done)}/{CONSUMERS} triggered"
            peak = max(peak, await connected_clients(redis) - before)
            pipe = redis.pipeline(transaction=False)
            ids = [f"c{i:03d}" for i in range(CONSUMERS) if f"c{i:03d}" not in done]
            for cid in ids:
                pipe.hget(f"{unique}:{cid}:runs", "1")
            for cid, raw in zip(ids, await pipe.execute(), strict=True):
                if raw and orjson.loads(raw)["status"] == "succeeded":
                    done.add(cid)
            await asyncio.sleep(0.5)  # polling the outcome, not synchronising with it
        # every consumer counted exactly its topic's events into one closed window
        pipe = redis.pipeline(transaction=False)
        for i in range(CONSUMERS):
            pipe.get(f"{unique}:c{i:03d}:events")
            pipe.hget(f"{unique}:c{i:03d}:stats", "total")
            pipe.xrevrange(f"{unique}:c{i:03d}:history", count=2)
        res = await pipe.execute()
        for i in range(CONSUMERS):
            open_count, total, history = res[3 * i : 3 * i + 3]
            assert int(open_count or 0) == 0, f"c{i:03d}"
            assert int(total or 0) == EVENTS, f"c{i:03d}"
            assert len(history) == 1, f"c{i:03d}"
            assert int(history[0][1][b"count"]) == EVENTS
            assert history[0][1][b"reason"] == b"count"
        peak = max(peak, await connected_clients(redis) - before)
    finally:
        if proc.returncode is None:
            proc.send_signal(signal.SIGTERM)
            await asyncio.wait_for(proc.wait(), 60)
        await redis.aclose()
    text = log_path.read_text(errors="replace")
    pool_lines = [line for line in text.splitlines() if any(p in line for p in POOL_ERRORS)]
    assert pool_lines == [], pool_lines[:5]
    assert "Traceback" not in text, text[-3000:]
    # the pool and the dedicated connections (no HTTP API here), never one per consumer
    assert peak <= MAX_CONNECTIONS + DEDICATED_REDIS_CONNECTIONS - API_REDIS_CONNECTIONS, peak
