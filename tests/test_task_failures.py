"""No background task dies silently (real broker and Redis).

A value in Redis that the engine cannot read (here a count that is not a number, as a bad
manual edit would leave) makes a status step fail: the failure is logged with its traceback,
shown in the snapshot and on ``/ready``, the heartbeat goes on, and once the value is fixed
everything is as before.
"""

from __future__ import annotations

import logging
import time

import aiohttp
import orjson
import pytest
import redis.asyncio as aredis

from kafkaconsole.api import start_api
from kafkaconsole.embedded import EmbeddedServices
from tests.engine_support import make_config, running_engine
from tests.helpers import KafkaHelper, wait_for


async def test_a_failing_status_step_is_logged_surfaced_and_survived(
    services: EmbeddedServices,
    kafka: KafkaHelper,
    redis_client: aredis.Redis,
    unique: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    await kafka.create_topic(unique, 1)
    cfg = make_config(
        services,
        unique,
        [{"consumer_id": unique, "kafka_topic": unique, "max_event": 100}],
        api={"enabled": True, "host": "127.0.0.1", "port": 0},
    )
    caplog.set_level(logging.ERROR, logger="kafkaconsole")
    async with running_engine(cfg) as engine:
        api = await start_api(engine)
        session = aiohttp.ClientSession()
        heartbeat = f"{unique}:_fleet:instance:{engine.instance_id}"
        try:
            await redis_client.set(f"{unique}:{unique}:events", b"not-a-number")

            async def surfaced() -> bool:
                return bool(engine.snapshot().task_failures)

            await wait_for(surfaced, 10, what="the failure in the snapshot")
            [failure] = engine.snapshot().task_failures
            assert failure.startswith("status loop failed reading the shared state: ValueError")
            logged = [r for r in caplog.records if "status loop failed" in r.getMessage()]
            assert len(logged) == 1 and logged[0].exc_info is not None  # once, with a traceback
            async with session.get(f"{api.url}/ready") as resp:
                assert resp.status == 503
                reasons = (await resp.json())["reasons"]
            assert any(r.startswith("status loop failed reading the shared state") for r in reasons)
            # the heartbeat goes on: the instance stays in the fleet
            t0 = time.time() * 1000
            await wait_for(
                lambda: _fresh(redis_client, heartbeat, t0), 5, what="a fresh heartbeat meanwhile"
            )
            beat = orjson.loads(await redis_client.get(heartbeat))
            assert beat["task_failures"] == [failure]

            await redis_client.delete(f"{unique}:{unique}:events")  # fixed: back to normal
            await kafka.produce(unique, [{"i": i} for i in range(3)], partitions=1)

            async def counted() -> bool:
                c = (await engine.refresh_snapshot()).consumer(unique)
                return c is not None and c.count == 3

            await wait_for(counted, 15, what="counting after the fix")
        finally:
            await session.close()
            await api()


async def _fresh(redis_client: aredis.Redis, key: str, after_ms: float) -> bool:
    raw = await redis_client.get(key)
    return raw is not None and orjson.loads(raw)["taken_at_ms"] > after_ms
