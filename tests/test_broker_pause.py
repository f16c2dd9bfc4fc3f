"""A broker that hangs (SIGSTOP) raises nothing in a client: polls just come back empty. The
engine must notice the silence (``/ready`` degraded, ``kafka_up`` 0) and resume by itself,
without a restart, when the broker answers again."""

from __future__ import annotations

import signal
from collections.abc import Awaitable, Callable

import aiohttp
import redis.asyncio as aredis

from kafkaconsole.api import start_api
from kafkaconsole.embedded import EmbeddedServices, ManagedProcess
from tests.engine_support import make_config, start_engine
from tests.helpers import KafkaHelper, wait_for


async def test_frozen_broker_reports_degraded_and_resumes(
    services: EmbeddedServices,
    redis_client: aredis.Redis,
    unique: str,
    own_broker: Callable[[], ManagedProcess],
) -> None:
    broker = own_broker()
    kafka = KafkaHelper(f"127.0.0.1:{broker.port}")
    await kafka.start()
    await kafka.create_topic(unique, 2)
    cid = f"{unique}-c"
    cfg = make_config(
        services,
        unique,
        [{"consumer_id": cid, "kafka_topic": unique, "max_event": 1000}],
        kafka={"bootstrap_servers": f"127.0.0.1:{broker.port}"},
        api={"enabled": True, "port": 0},
    )
    engine = await start_engine(cfg)
    api = await start_api(engine)
    session = aiohttp.ClientSession()

    async def ready() -> tuple[int, dict[str, object]]:
        async with session.get(f"{api.url}/ready") as resp:
            return resp.status, await resp.json()

    async def counted() -> int:
        return int(await redis_client.get(f"{unique}:{cid}:events") or 0)

    try:
        await kafka.produce(unique, ({"i": i} for i in range(100)), partitions=2)
        await wait_for(lambda: _eq(counted(), 100), 30, what="100 counted")
        await wait_for(lambda: _status_is(ready(), 200), 10, what="/ready 200")
        broker.signal(signal.SIGSTOP)
        await wait_for(lambda: _status_is(ready(), 503), 15, what="/ready 503")
        _, body = await ready()
        assert body["status"] == "degraded" and body["kafka"] is False
        assert "Kafka unreachable" in str(body["reasons"])
        async with session.get(f"{api.url}/metrics") as resp:
            assert "kafkaconsole_kafka_up 0.0" in await resp.text()
        broker.signal(signal.SIGCONT)
        # the same process goes on: new events are counted, /ready recovers
        await kafka.produce(unique, ({"i": i} for i in range(100, 150)), partitions=2)
        await wait_for(lambda: _eq(counted(), 150), 60, what="counting after the broker woke")
        await wait_for(lambda: _status_is(ready(), 200), 15, what="/ready 200 again")
    finally:
        broker.signal(signal.SIGCONT)
        await session.close()
        await api.close()
        await engine.stop()
        await kafka.stop()
        broker.stop()


async def _eq(value: Awaitable[int], want: int) -> bool:
    return await value == want


async def _status_is(call: Awaitable[tuple[int, dict[str, object]]], want: int) -> bool:
    return (await call)[0] == want
