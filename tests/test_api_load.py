"""API load never reaches the engine (real broker and Redis).

A burst of unauthenticated ``GET /metrics`` (hundreds at once) is served from one shared
render through the API's own small Redis pool: the counting path keeps its connections and
counts every event; requests beyond the cap get a quick 503 with Retry-After, never a 500.
Over-long consumer ids get a clean 4xx, no traceback in the log. Values set through
environment overrides into a pipeline's env are masked in ``config show`` and ``info``.
"""

from __future__ import annotations

import asyncio
import logging
import sys
from pathlib import Path

import aiohttp
import pytest
import redis.asyncio as aredis
from typer.testing import CliRunner

from kafkaconsole.api import MAX_CONCURRENT_REQUESTS, start_api
from kafkaconsole.cli.app import app
from kafkaconsole.config.loader import load_config
from kafkaconsole.embedded import EmbeddedServices
from kafkaconsole.engine.clients import API_REDIS_CONNECTIONS
from kafkaconsole.engine.fleet import Fleet
from tests.engine_support import make_config, running_engine
from tests.helpers import KafkaHelper, wait_for

BURST = 400


async def _connections(redis_client: aredis.Redis) -> int:
    return len(await redis_client.client_list())


async def test_a_metrics_burst_takes_nothing_from_counting(
    services: EmbeddedServices,
    kafka: KafkaHelper,
    redis_client: aredis.Redis,
    unique: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    await kafka.create_topic(unique, 3)
    cfg = make_config(
        services,
        unique,
        [{"consumer_id": unique, "kafka_topic": unique, "max_event": 100_000}],
        api={"enabled": True, "host": "127.0.0.1", "port": 0},
    )
    caplog.set_level(logging.WARNING)
    async with running_engine(cfg) as engine:
        api = await start_api(engine)
        connector = aiohttp.TCPConnector(limit=0)
        session = aiohttp.ClientSession(connector=connector)
        try:
            await kafka.produce(unique, [{"i": i} for i in range(300)])

            async def warm() -> bool:
                c = (await engine.refresh_snapshot()).consumer(unique)
                return c is not None and c.count == 300

            await wait_for(warm, 20, what="the first events counted")
            before = await _connections(redis_client)

            async def scrape() -> int:
                async with session.get(f"{api.url}/metrics") as resp:
                    await resp.read()
                    if resp.status == 503:
                        assert resp.headers["Retry-After"] == "1"
                    return resp.status

            produce = asyncio.ensure_future(kafka.produce(unique, [{"i": i} for i in range(3000)]))
            statuses = await asyncio.gather(*(scrape() for _ in range(BURST)))
            await produce
            assert set(statuses) <= {200, 503}, statuses
            assert statuses.count(200) >= MAX_CONCURRENT_REQUESTS // 2

            async def all_counted() -> bool:
                c = (await engine.refresh_snapshot()).consumer(unique)
                return c is not None and c.count == 3300

            await wait_for(all_counted, 30, what="every event counted during the burst")
            # the burst opened at most the API's own pool, the counting path saw no error
            assert await _connections(redis_client) - before <= API_REDIS_CONNECTIONS
            snap = engine.snapshot().consumer(unique)
            assert snap is not None and snap.last_error is None
            assert not [r for r in caplog.records if "Too many connections" in r.getMessage()]
            async with session.get(f"{api.url}/ready") as resp:
                assert resp.status == 200
        finally:
            await session.close()
            await api()


async def test_over_long_ids_get_a_clean_4xx(
    services: EmbeddedServices, unique: str, caplog: pytest.LogCaptureFixture
) -> None:
    cfg = make_config(
        services,
        unique,
        [{"consumer_id": unique, "kafka_topic": unique, "max_event": 10}],
        api={"enabled": True, "host": "127.0.0.1", "port": 0, "token": "t" * 32},
    )
    caplog.set_level(logging.DEBUG, logger="aiohttp")
    caplog.set_level(logging.INFO, logger="kafkaconsole")
    async with running_engine(cfg) as engine:
        api = await start_api(engine)
        session = aiohttp.ClientSession()
        try:
            for length in (200, 5_000, 20_000, 100_000):
                cid = "x" * length
                async with session.get(f"{api.url}/consumer/info/{cid}") as resp:
                    assert 400 <= resp.status < 500, (length, resp.status)
                headers = {"Authorization": "Bearer " + "t" * 32}
                async with session.post(f"{api.url}/consumer/{cid}/pause", headers=headers) as resp:
                    assert 400 <= resp.status < 500, (length, resp.status)
            async with session.get(f"{api.url}/consumer/info/{'x' * 200}") as resp:
                assert resp.status == 404
                assert "at most 128 characters" in (await resp.json())["error"]
            assert not [r for r in caplog.records if r.exc_info or "Traceback" in r.getMessage()]
            async with session.get(f"{api.url}/health") as resp:
                assert resp.status == 200
        finally:
            await session.close()
            await api()


async def test_values_from_environment_overrides_are_masked(
    tmp_path: Path, services: EmbeddedServices, redis_client: aredis.Redis, unique: str
) -> None:
    path = tmp_path / "k.toml"
    path.write_text(
        f'[redis]\nurl = "{services.redis_url}"\nkey_prefix = "{unique}"\n'
        f'[pipelines.cmd]\nkind = "command"\ncommand = ["{sys.executable}", "-c", "pass"]\n'
        'env = { REGION = "eu" }\n'
        "[[consumers]]\nconsumer_id = 'c'\nkafka_topic = 't'\npipeline_name = 'cmd'\n"
        "connection_id = 'x'\nmax_event = 10\nmax_time = 60\n"
    )
    env = {
        "KAFKACONSOLE_PIPELINES__CMD__ENV__WAREHOUSE_DSN": "postgres://etl:s3cr3t-dsn@db/x",
        "KAFKACONSOLE_PIPELINES__CMD__ENV__REGION": "us-east-overridden",
    }
    shown = CliRunner().invoke(app, ["config", "show", "--config", str(path)], env=env)
    assert shown.exit_code == 0, shown.output
    assert "s3cr3t-dsn" not in shown.output and "us-east-overridden" not in shown.output
    assert 'region = "******"' in shown.output.lower()
    cfg = load_config(path, env=env)
    info = await Fleet(redis_client, cfg).info("c")
    text = str(info)
    assert "s3cr3t-dsn" not in text and "us-east-overridden" not in text
    assert "******" in text
