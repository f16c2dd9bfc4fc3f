"""Hundreds of consumers in one process: an idle consumer's poll may wait long and the
instance reads every consumer's pause flags seldom, and nothing waits for either: records end
a poll, a count's Kafka commit is not held back, a seek is followed at once, a pause or resume
announced by another process applies at once, and a stop is prompt."""

from __future__ import annotations

import asyncio
import gc
import time
from typing import Any

import pytest
import redis.asyncio as aredis

from kafkaconsole.config.models import AppConfig
from kafkaconsole.embedded import EmbeddedServices
from kafkaconsole.engine import consumer as consumer_module
from kafkaconsole.engine.control import FleetControl
from kafkaconsole.engine.keys import ConsumerKeys
from tests.engine_support import fleet_config, make_config, start_engine
from tests.helpers import KafkaHelper, wait_for

IDLE_S = 60.0  # an idle poll this long: any wait on it would fail the deadlines below


async def total(redis: aredis.Redis, prefix: str) -> int:
    return int(await redis.hget(ConsumerKeys(prefix, "orders").stats, "total") or 0)


def test_idle_poll_scales_with_the_fleet_config() -> None:
    assert fleet_config(1).idle_poll_s() == 1.0
    assert fleet_config(100).idle_poll_s() == 1.0
    assert fleet_config(500).idle_poll_s() == 5.0
    assert fleet_config(1000).idle_poll_s() == 10.0
    assert fleet_config(100).control_poll_s() == 1.0
    assert fleet_config(500).control_poll_s() == 5.0
    # the Kafka side: fetch waits, the fetch routine's idle wake-up and the end-offset probe
    assert fleet_config(1).fetch_wait_ms() == 50
    assert fleet_config(500).fetch_wait_ms() == 5_000
    assert fleet_config(1).fetcher_wake_ms() == 200
    assert fleet_config(500).fetcher_wake_ms() == 2_000
    assert fleet_config(5_000).fetcher_wake_ms() == 5_000
    assert fleet_config(500).probe_interval_s() == 5.0
    # the heartbeat: every second, 2 s with 500, never longer (it lives 5 s)
    assert fleet_config(100).heartbeat_s() == 1.0
    assert fleet_config(500).heartbeat_s() == 2.0
    assert fleet_config(5_000).heartbeat_s() == 2.0


def test_the_heap_left_by_start_up_is_frozen_once_after_the_collector_is_tuned(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(consumer_module, "_heap_settled", False)
    monkeypatch.setattr(consumer_module, "_gc_tuned", False)
    assert not consumer_module.freeze_settled_heap()  # an untuned collector is left alone
    monkeypatch.setattr(consumer_module, "_gc_tuned", True)
    before = gc.get_freeze_count()
    start_up = [[n] for n in range(1000)]
    assert consumer_module.freeze_settled_heap()
    assert gc.get_freeze_count() >= before + len(start_up)
    assert not consumer_module.freeze_settled_heap()  # once per process


async def test_a_long_idle_poll_delays_nothing(
    services: EmbeddedServices,
    kafka: KafkaHelper,
    redis_client: aredis.Redis,
    unique: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(AppConfig, "idle_poll_s", lambda self: IDLE_S)
    monkeypatch.setattr(AppConfig, "control_poll_s", lambda self: IDLE_S)
    topic = f"{unique}-orders"
    await kafka.create_topic(topic, partitions=1)
    cfg = make_config(
        services, unique, [{"consumer_id": "orders", "kafka_topic": topic, "max_event": 100}]
    )
    engine = await start_engine(cfg)
    try:
        run: Any = engine._consumers["orders"].runner

        async def assigned() -> bool:
            return bool(run.assigned)

        await wait_for(assigned, 30, what="the partition assigned")
        # the client's background fetch routine wakes on the fleet's budget
        assert run._consumer._consumer_timeout == cfg.fetcher_wake_ms() / 1000

        async def settled() -> bool:
            return engine._heap_settled

        # every consumer started: what start-up allocated is out of the collector's sight
        await wait_for(settled, 10, what="the heap settled after start-up")

        # records end an idle poll at once
        await kafka.produce(topic, [{"n": i} for i in range(5)], partitions=1)

        async def counted(n: int) -> bool:
            return await total(redis_client, unique) == n

        await wait_for(lambda: counted(5), 10, what="5 events counted")

        # the count's Kafka commit follows within about a second, not after an idle poll
        async def committed() -> bool:
            return any(st.committed == 5 for st in run.parts.values())

        await wait_for(committed, 10, interval=0.1, what="offset 5 committed to Kafka")

        # idle now: the loop polls rarely (with poll_timeout = 0.2 s it would poll ~15 times)
        polls = 0
        getmany = run._consumer.getmany

        async def counting(*args: Any, **kwargs: Any) -> Any:
            nonlocal polls
            polls += 1
            return await getmany(*args, **kwargs)

        monkeypatch.setattr(run._consumer, "getmany", counting)
        await asyncio.sleep(3)
        assert polls <= 1

        # a seek is followed at once: the idle poll is ended, the events counted again
        res = await engine.seek("orders", "earliest", window="close", via="test")
        assert res.reread == 5
        await wait_for(lambda: counted(10), 10, what="the 5 events counted again")

        # a pause and a resume from another process apply at once (announced), not at the
        # next read of every consumer's flags
        control = FleetControl(redis_client, unique)
        for paused in (True, False):
            await control.set_paused("orders", paused, by="test")

            async def applied(paused: bool = paused) -> bool:
                return bool(run.paused == paused)

            await wait_for(applied, 5, what=f"paused = {paused} applied")
    finally:
        began = time.monotonic()
        await engine.stop()
        assert time.monotonic() - began < 10, "a stop waited for an idle poll"
