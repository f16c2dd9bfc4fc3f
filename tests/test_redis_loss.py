"""Redis losing counting state: detected, never silent.

A Redis that crashes under ``appendfsync everysec`` (or fails over to a lagging replica) comes
back without its last writes; one without persistence comes back empty. Both are reproduced
here on the real server: the consumer's keys are saved with DUMP at one moment and RESTOREd
later (exactly the state a crash right after that moment leaves), or deleted.
"""

from __future__ import annotations

import asyncio
from typing import Any

import aiohttp
import redis.asyncio as aredis
from prometheus_client.parser import text_string_to_metric_families

from kafkaconsole.api import start_api
from kafkaconsole.embedded import EmbeddedServices
from kafkaconsole.engine.engine import Engine
from tests import pipeline_targets
from tests.engine_support import make_config, start_engine
from tests.helpers import KafkaHelper, wait_for


async def _counted(r: aredis.Redis, prefix: str, cid: str) -> tuple[int, list[int], list[int]]:
    entries = await r.xrange(f"{prefix}:{cid}:history")
    wids = [int(f[b"window_id"]) for _, f in entries]
    counts = [int(f[b"count"]) for _, f in entries]
    return sum(counts) + int(await r.get(f"{prefix}:{cid}:events") or 0), wids, counts


async def _wait_counted(r: aredis.Redis, prefix: str, cid: str, n: int) -> None:
    async def done() -> bool:
        return (await _counted(r, prefix, cid))[0] >= n

    await wait_for(done, 30, interval=0.1, what=f"{n} events counted")


async def _dump(r: aredis.Redis, pattern: str) -> dict[bytes, tuple[bytes, int]]:
    keys = [k async for k in r.scan_iter(match=pattern)]
    pipe = r.pipeline(transaction=True)
    for k in keys:
        pipe.dump(k)
        pipe.pttl(k)
    out = await pipe.execute()
    return {k: (out[2 * i], out[2 * i + 1]) for i, k in enumerate(keys)}


async def _crash_back_to(r: aredis.Redis, pattern: str, saved: dict[bytes, Any]) -> None:
    """Redis restarts with exactly the state it had when ``saved`` was taken."""
    now = [k async for k in r.scan_iter(match=pattern)]
    pipe = r.pipeline(transaction=True)
    if now:
        pipe.delete(*now)
    for k, (blob, ttl) in saved.items():
        pipe.restore(k, max(ttl, 0), blob, replace=True)
    await pipe.execute()


async def _engine(services: EmbeddedServices, unique: str, cid: str) -> Engine:
    cfg = make_config(
        services,
        unique,
        [{"consumer_id": cid, "kafka_topic": unique, "max_event": 100, "batch_size": 50}],
        api={"enabled": True, "port": 0},
    )
    return await start_engine(cfg)


def _keys_called(cid: str) -> list[int]:
    return [c["window_id"] for c in pipeline_targets.calls_for(cid)]


async def test_lost_last_writes_are_counted_again(
    services: EmbeddedServices, kafka: KafkaHelper, redis_client: aredis.Redis, unique: str
) -> None:
    cid = f"{unique}-c"
    pattern = f"{unique}:{cid}:*"
    await kafka.create_topic(unique, 3)
    engine = await _engine(services, unique, cid)
    try:
        await kafka.produce(unique, ({"i": i} for i in range(1000)))
        await _wait_counted(redis_client, unique, cid, 1000)

        async def dispatched(n: int) -> bool:
            return len(set(_keys_called(cid))) >= n

        await wait_for(lambda: dispatched(10), 30, what="10 windows dispatched")
        saved = await _dump(redis_client, pattern)
        await kafka.produce(unique, ({"i": i} for i in range(1000, 1550)))
        await _wait_counted(redis_client, unique, cid, 1550)
        await wait_for(lambda: dispatched(15), 30, what="15 windows dispatched")
        # Redis crashes and comes back without everything written since `saved`
        await _crash_back_to(redis_client, pattern, saved)
        assert (await _counted(redis_client, unique, cid))[0] == 1000
        await kafka.produce(unique, ({"i": i} for i in range(1550, 1800)))
        await _wait_counted(redis_client, unique, cid, 1800)
        await wait_for(lambda: dispatched(18), 30, what="18 windows dispatched")
        await asyncio.sleep(0.5)
        total, wids, counts = await _counted(redis_client, unique, cid)
        assert total == 1800  # the lost 550 were read again from Kafka, nothing twice
        assert wids == list(range(1, 19)) and counts == [100] * 18
        # the windows closed again carry the ids they had: their pipeline sees the same keys
        assert set(_keys_called(cid)) == set(range(1, 19))
        c = (await engine.refresh_snapshot()).consumers[0]  # not the last periodic one
        assert c.redis_state_losses >= 1
        assert c.last_error is not None and "Redis lost counting state" in c.last_error
    finally:
        await engine.stop()


async def test_empty_redis_is_reported_and_window_ids_go_on(
    services: EmbeddedServices, kafka: KafkaHelper, redis_client: aredis.Redis, unique: str
) -> None:
    cid = f"{unique}-c"
    await kafka.create_topic(unique, 3)
    engine = await _engine(services, unique, cid)
    try:
        await kafka.produce(unique, ({"i": i} for i in range(1050)))
        await _wait_counted(redis_client, unique, cid, 1050)
        await wait_for(
            lambda: _true(len(_keys_called(cid)) >= 10), 30, what="10 windows dispatched"
        )
        # Redis restarts without persistence: this consumer's state is gone
        await redis_client.delete(*[k async for k in redis_client.scan_iter(f"{unique}:{cid}:*")])
        await kafka.produce(unique, ({"i": i} for i in range(1050, 1300)))
        await _wait_counted(redis_client, unique, cid, 250)
        await wait_for(
            lambda: _true(len(_keys_called(cid)) >= 12), 30, what="12 windows dispatched"
        )
        total, wids, counts = await _counted(redis_client, unique, cid)
        # counting went on from where it was; the 50 events of the lost open window are gone
        assert total == 250 and wids == [11, 12] and counts == [100, 100]
        calls = pipeline_targets.calls_for(cid)
        # no idempotency key was used twice for different windows
        assert [c["window_id"] for c in calls] == list(range(1, 13))
        c = (await engine.refresh_snapshot()).consumers[0]  # not the last periodic one
        assert c.redis_state_losses >= 1
        assert c.last_error is not None and "Redis lost counting state" in c.last_error
        stored = await redis_client.hgetall(f"{unique}:{cid}:offsets")
        assert sum(int(v) for v in stored.values()) == 1300
        # and the metrics say so
        api = await start_api(engine)
        try:
            async with aiohttp.ClientSession() as session, session.get(f"{api.url}/metrics") as r:
                fams = {f.name: f for f in text_string_to_metric_families(await r.text())}
            [sample] = [
                s
                for s in fams["kafkaconsole_redis_state_losses"].samples
                if s.name.endswith("_total") and s.labels["consumer_id"] == cid
            ]
            assert sample.value >= 1
        finally:
            await api.close()
    finally:
        await engine.stop()


async def _true(value: bool) -> bool:
    return value
