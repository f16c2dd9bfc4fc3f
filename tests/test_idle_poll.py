"""Hundreds of consumers in one process: an idle consumer's poll may wait long and the
instance reads every consumer's pause flags seldom, and nothing waits for either: records end
a poll, a count's Kafka commit is not held back, a seek is followed at once, a pause or resume
announced by another process applies at once, and a stop is prompt."""

from __future__ import annotations

import asyncio
import gc
import time
from collections import Counter
from typing import Any

import pytest
import redis.asyncio as aredis
from aiokafka import AIOKafkaConsumer

from kafkaconsole.config.models import AppConfig
from kafkaconsole.embedded import EmbeddedServices
from kafkaconsole.engine import consumer as consumer_module
from kafkaconsole.engine.control import FleetControl
from kafkaconsole.engine.counting import WindowCounter
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


def test_consumers_started_together_spread_their_requests_over_the_interval() -> None:
    """500 consumers started at once: their probes fall at their own points of the 5 s
    interval and their fetch waits differ, so fetches that all ended together (events on
    every topic at once) do not keep reaching the broker in one burst."""
    cfg = fleet_config(500)
    phases = [consumer_module.consumer_phase(f"c{i:04d}") for i in range(500)]
    assert all(0.0 <= p < 1.0 for p in phases)
    slots = Counter(int(p * 100) for p in phases)  # 50 ms slots of the 5 s probe interval
    assert len(slots) == 100 and max(slots.values()) <= 12
    waits = [cfg.fetch_wait_ms(p) for p in phases]
    assert min(waits) >= 4_000 and max(waits) <= 6_000 and len(set(waits)) > 400
    # four waits after a common start (a window of 20 s opened then closes now): the
    # fetches' ends cover the whole wait, a dozen at most in any 50 ms
    ends = Counter(int(4 * w % 5_000 / 50) for w in waits)
    assert len(ends) >= 90 and max(ends.values()) <= 15
    wakes = [cfg.fetcher_wake_ms(p) for p in phases]
    assert min(wakes) >= 1_600 and max(wakes) <= 2_400 and len(set(wakes)) > 300
    # group heartbeats: at most as long as asked, spread down to 80 % of it
    beats = [cfg.group_heartbeat_ms(p) for p in phases]
    assert min(beats) >= 2_400 and max(beats) <= 3_000 and len(set(beats)) > 300
    # a wait the user set is theirs, whatever the phase
    fixed = fleet_config(500).model_copy(
        update={"kafka": cfg.kafka.model_copy(update={"fetch_max_wait_ms": 300})}
    )
    assert {fixed.fetch_wait_ms(p) for p in (0.0, 0.5, 0.99)} == {300}


def test_a_probe_waits_for_the_next_point_of_its_own_grid() -> None:
    nxt = consumer_module.next_probe_in
    assert nxt(100.0, 5.0, 0.3) == pytest.approx(1.5)  # the grid: 1.5, 6.5, ... 101.5
    assert nxt(101.5, 5.0, 0.3) == pytest.approx(5.0)  # on a point: the next one
    assert nxt(108.0, 5.0, 0.3) == pytest.approx(3.5)  # a probe that overran: no catch-up
    assert nxt(0.2, 1.0, 0.0) == pytest.approx(0.8)
    # the same phase, whenever the consumer started: the point is fixed by the id
    assert {round((t + nxt(t, 5.0, 0.42)) % 5.0, 6) for t in (3.0, 77.7, 1234.5)} == {2.1}


async def test_the_probe_loop_probes_at_once_then_on_its_own_grid() -> None:
    """Started half-way between two points of its grid, a consumer probes at once, then at
    the grid's points (a wait of a whole interval after each probe would land half an
    interval off them)."""
    cfg = fleet_config(1)
    interval = cfg.probe_interval_s()
    # nothing here talks to Redis or Kafka: the probes are the test's own
    counter = WindowCounter(aredis.Redis(), ConsumerKeys("probe", "c0"), max_event=10)
    no_dlq: Any = None
    runner: Any = consumer_module.ConsumerRunner(
        cfg.consumers[0], cfg, counter, no_dlq, on_applied=lambda res: None
    )
    phase = consumer_module.consumer_phase(cfg.consumers[0].consumer_id)
    probes: list[float] = []
    stop = asyncio.Event()

    async def probed() -> None:
        probes.append(time.monotonic())
        if len(probes) == 3:
            stop.set()

    async def nothing() -> None:
        return None

    runner.refresh_positions, runner._check_ends, runner._resume_accepted = (
        probed,
        nothing,
        nothing,
    )
    # half an interval away from this consumer's grid
    await asyncio.sleep(consumer_module.next_probe_in(time.monotonic(), interval, phase))
    await asyncio.sleep(interval / 2)
    began = time.monotonic()
    await asyncio.wait_for(runner._probe_loop(stop), 10)

    def off_grid(t: float) -> float:
        d = (t - phase * interval) % interval
        return min(d, interval - d)

    assert probes[0] - began < 0.1  # at once
    assert off_grid(probes[1]) < 0.1 and off_grid(probes[2]) < 0.1
    assert probes[2] - probes[1] == pytest.approx(interval, abs=0.1)


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
        # the client's background fetch routine wakes on the fleet's budget, at this
        # consumer's own spread of it, and its fetches wait on the same terms
        phase = consumer_module.consumer_phase("orders")
        assert run._consumer._consumer_timeout == cfg.fetcher_wake_ms(phase) / 1000
        assert run._consumer._fetcher._fetch_max_wait_ms == cfg.fetch_wait_ms(phase)
        assert run._consumer._coordinator._heartbeat_interval_ms == cfg.group_heartbeat_ms(phase)

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


async def test_a_stop_ends_a_long_idle_poll_at_once(
    services: EmbeddedServices, kafka: KafkaHelper, unique: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An idle consumer waits in one poll of IDLE_S (60 s); stopping the engine ends that poll
    at once (not after the engine's 10 s grace, by cancelling the consumer)."""
    monkeypatch.setattr(AppConfig, "idle_poll_s", lambda self: IDLE_S)
    # every poll's timeout per client, from the first (recorded from before the consumer
    # starts, so the poll it waits in now is the last one recorded for its client)
    polls: dict[int, list[int]] = {}
    getmany = AIOKafkaConsumer.getmany

    async def recording(self: AIOKafkaConsumer, *args: Any, **kwargs: Any) -> Any:
        polls.setdefault(id(self), []).append(kwargs.get("timeout_ms", 0))
        return await getmany(self, *args, **kwargs)

    monkeypatch.setattr(AIOKafkaConsumer, "getmany", recording)
    topic = f"{unique}-quiet"
    await kafka.create_topic(topic, partitions=1)
    cfg = make_config(
        services, unique, [{"consumer_id": "quiet", "kafka_topic": topic, "max_event": 100}]
    )
    engine = await start_engine(cfg)
    stopped = False
    try:
        run: Any = engine._consumers["quiet"].runner

        async def idle() -> bool:  # assigned, nothing to do: waiting in a long poll
            mine = polls.get(id(run._consumer))
            return bool(run.assigned) and bool(mine) and mine[-1] >= IDLE_S * 1000

        await wait_for(idle, 30, what="the consumer waiting in a long idle poll")
        await asyncio.sleep(0.5)
        began = time.monotonic()
        await engine.stop()
        stopped = True
        took = time.monotonic() - began
        assert took < 5, f"the stop waited {took:.1f} s for the idle poll"
        assert run.state.value == "stopped"
    finally:
        if not stopped:
            await engine.stop()
