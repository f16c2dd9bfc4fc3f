"""A processor hook that hangs must never freeze the instance (real broker and Redis).

The hook runs off the event loop: while it hangs, its consumer reports ``stalled`` with the
processor, partition and offset, an alert fires, and every other consumer, the heartbeat and
the HTTP API stay live. After ``processor_timeout`` the event is dead-lettered (stage
``process``, a TimeoutError) and the consumer goes on, through several hung events in a row,
with a bounded number of threads.
"""

from __future__ import annotations

import threading
import time
from typing import Any

import aiohttp
import orjson
import redis.asyncio as aredis
from aiokafka import AIOKafkaConsumer

from kafkaconsole.api import start_api
from kafkaconsole.embedded import EmbeddedServices
from kafkaconsole.engine.processing import MAX_HUNG_CALLS
from tests import pipeline_targets
from tests.engine_support import make_config, running_engine, start_engine
from tests.helpers import KafkaHelper, wait_for

# the processor below blocks while this gate is closed (the engine imports this module)
GATE = threading.Event()
CALLS: list[int] = []


def hangs(event: Any) -> Any:
    """Blocks on the gate for events marked ``hang`` (as a stuck network call would)."""
    if isinstance(event, dict) and event.get("hang"):
        CALLS.append(event["i"])
        GATE.wait(60)
    return event


def processor_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.startswith("processor:")]


async def dlq_records(services: EmbeddedServices, topic: str, n: int) -> list[Any]:
    consumer = AIOKafkaConsumer(
        topic, bootstrap_servers=services.bootstrap_servers, auto_offset_reset="earliest"
    )
    await consumer.start()
    out: list[Any] = []
    try:
        deadline = time.monotonic() + 15
        while len(out) < n and time.monotonic() < deadline:
            batch = await consumer.getmany(timeout_ms=300)
            for records in batch.values():
                out.extend(records)
    finally:
        await consumer.stop()
    return out


async def test_a_hung_processor_stalls_only_its_consumer(
    services: EmbeddedServices, kafka: KafkaHelper, redis_client: aredis.Redis, unique: str
) -> None:
    GATE.clear()
    CALLS.clear()
    slow, other = f"{unique}-slow", f"{unique}-other"
    await kafka.create_topic(slow, 1)
    await kafka.create_topic(other, 1)
    hung = MAX_HUNG_CALLS + 1  # one more than the consumer leaves behind
    cfg = make_config(
        services,
        unique,
        [
            {
                "consumer_id": slow,
                "kafka_topic": slow,
                "max_event": 1000,
                "processor": "tests.test_processor_isolation:hangs",
                "processor_timeout": 3.0,
            },
            {"consumer_id": other, "kafka_topic": other, "max_event": 1000},
        ],
        api={"enabled": True, "host": "127.0.0.1", "port": 0},
        monitoring={
            "sample_interval": 0.2,
            "alerts": [{"verdict": "stalled", "channel": "log", "consumers": [slow]}],
        },
    )
    async with running_engine(cfg) as engine:
        api = await start_api(engine)
        session = aiohttp.ClientSession()
        try:
            values = [{"i": i} for i in range(3)]
            values += [{"i": 3 + i, "hang": True} for i in range(hung)] + [{"i": 100}, {"i": 101}]
            await kafka.produce(slow, values, partitions=1)

            # the first hung event: the consumer is stalled with the reason, an alert fires
            async def stalled_on_the_hook() -> bool:
                c = (await engine.refresh_snapshot()).consumer(slow)
                return c is not None and c.verdict == "stalled" and bool(c.alerts)

            await wait_for(stalled_on_the_hook, 10, what="stalled verdict")
            c = engine.snapshot().consumer(slow)
            assert c is not None and c.verdict_reason is not None
            assert c.verdict_reason.startswith(
                "processor tests.test_processor_isolation:hangs has run for "
            ), c.verdict_reason
            assert "on partition 0 offset 3 (processor_timeout 3s)" in c.verdict_reason
            assert [a.alert for a in c.alerts] == ["stalled"]

            # meanwhile everything else stays live: another consumer counts, the API answers,
            # the heartbeat is fresh
            await kafka.produce(other, [{"i": i} for i in range(50)], partitions=1)

            async def other_counted() -> bool:
                return int(await redis_client.get(f"{unique}:{other}:events") or 0) == 50

            await wait_for(other_counted, 10, what="the other consumer counting")
            t0 = time.monotonic()
            async with session.get(f"{api.url}/consumers") as resp:
                assert resp.status == 200
                body = await resp.json()
            assert time.monotonic() - t0 < 1.0
            assert {c["consumer_id"] for c in body["consumers"]} == {slow, other}
            beat = await redis_client.get(f"{unique}:_fleet:instance:{engine.instance_id}")
            assert (
                beat is not None and orjson.loads(beat)["taken_at_ms"] > time.time() * 1000 - 2000
            )

            # MAX_HUNG_CALLS hung events are dead-lettered one processor_timeout apart; the next
            # one waits for a hung call to return (stalled, the reason says so)
            async def slots_taken() -> bool:
                c = (await engine.refresh_snapshot()).consumer(slow)
                return c is not None and "call(s) hung" in (c.verdict_reason or "")

            await wait_for(slots_taken, MAX_HUNG_CALLS * 3.0 + 10, what="every hung slot taken")
            assert [3 + i for i in range(MAX_HUNG_CALLS)] == CALLS
            assert len(processor_threads()) <= MAX_HUNG_CALLS + 1
            # nothing after the hung events was counted (a poll is counted once all of it is
            # decided, so the events before them may wait too)
            assert int(await redis_client.get(f"{unique}:{slow}:events") or 0) <= 3

            GATE.set()  # the hung calls return: their results are thrown away, counting goes on

            async def all_done() -> bool:
                return int(await redis_client.get(f"{unique}:{slow}:events") or 0) == 3 + 1 + 2

            await wait_for(all_done, 10, what="the rest counted")
            dead = await dlq_records(services, f"{slow}.dlq", MAX_HUNG_CALLS)
            assert [r.offset for r in dead] == list(range(MAX_HUNG_CALLS))
            for r in dead:
                headers = {k: v.decode() for k, v in r.headers}
                assert headers["__connect.errors.stage"] == "process"
                assert headers["__connect.errors.exception.class.name"] == "TimeoutError"
                assert "processor_timeout (3s)" in headers["__connect.errors.exception.message"]
            assert sorted(int(h) for h in [orjson.loads(r.value)["i"] for r in dead]) == [
                3 + i for i in range(MAX_HUNG_CALLS)
            ]
            stats = await redis_client.hgetall(f"{unique}:{slow}:stats")
            assert int(stats[b"errors"]) == MAX_HUNG_CALLS

            async def threads_gone() -> bool:
                return not processor_threads()

            await wait_for(threads_gone, 5, what="hung threads to end")

            async def ok_again() -> bool:
                c = (await engine.refresh_snapshot()).consumer(slow)
                return c is not None and c.verdict != "stalled"

            await wait_for(ok_again, 10, what="the stall to resolve")
        finally:
            GATE.set()
            await session.close()
            await api()


async def test_a_hung_processor_does_not_hold_a_stop(
    services: EmbeddedServices, kafka: KafkaHelper, redis_client: aredis.Redis, unique: str
) -> None:
    """Stopping while the hook hangs: the engine stops at once, the event is read again."""
    GATE.clear()
    await kafka.create_topic(unique, 1)
    cfg = make_config(
        services,
        unique,
        [
            {
                "consumer_id": unique,
                "kafka_topic": unique,
                "max_event": 1000,
                "processor": "tests.test_processor_isolation:hangs",
                "processor_timeout": 30,
            }
        ],
    )
    engine = await start_engine(cfg)
    stopped = False
    try:
        await kafka.produce(unique, [{"i": 0}, {"i": 1, "hang": True}, {"i": 2}], partitions=1)

        async def in_the_hook() -> bool:
            return bool(CALLS) and CALLS[-1] == 1

        CALLS.clear()
        await wait_for(in_the_hook, 10, what="the hook to hang")
        t0 = time.monotonic()
        await engine.stop()
        stopped = True
        assert time.monotonic() - t0 < 5
        # nothing from the hung event on was counted (the event after it neither): it is
        # read again on the next start
        assert int(await redis_client.get(f"{unique}:{unique}:events") or 0) <= 1
    finally:
        GATE.set()
        if not stopped:
            await engine.stop()


async def test_a_batch_pipeline_rereads_events_through_the_same_guard(
    services: EmbeddedServices, kafka: KafkaHelper, unique: str
) -> None:
    """job_type = "batch" applies the processor again to the window's events: off the loop,
    under processor_timeout (the hung event is left out, as it was from the count)."""
    GATE.clear()
    await kafka.create_topic(unique, 1)
    values = [{"i": 0}, {"i": 1}, {"i": 2, "hang": True}, {"i": 3}, {"i": 4}]
    await kafka.produce(unique, values, partitions=1)
    cfg = make_config(
        services,
        unique,
        [
            {
                "consumer_id": unique,
                "kafka_topic": unique,
                "max_event": 4,
                "job_type": "batch",
                "processor": "tests.test_processor_isolation:hangs",
                "processor_timeout": 1.0,
            }
        ],
    )
    async with running_engine(cfg):
        try:

            async def one_call() -> bool:
                return len(pipeline_targets.calls_for(unique)) >= 1

            await wait_for(one_call, 20, what="the batch pipeline call")
            call = pipeline_targets.calls_for(unique)[0]
            assert call["count"] == 4
            assert [e["i"] for e in call["events"]] == [0, 1, 3, 4]
        finally:
            GATE.set()


async def test_a_timed_out_event_follows_error_handling(
    services: EmbeddedServices, kafka: KafkaHelper, redis_client: aredis.Redis, unique: str
) -> None:
    """skip: the timed-out event is an error, nothing goes to the DLQ, counting goes on;
    stop: the consumer stops at it, in state error, saying why."""
    GATE.clear()
    skip, stop = f"{unique}-skip", f"{unique}-stop"
    for topic in (skip, stop):
        await kafka.create_topic(topic, 1)
        await kafka.produce(topic, [{"i": 0}, {"i": 1, "hang": True}, {"i": 2}], partitions=1)
    cfg = make_config(
        services,
        unique,
        [
            {
                "consumer_id": cid,
                "kafka_topic": cid,
                "max_event": 1000,
                "processor": "tests.test_processor_isolation:hangs",
                "processor_timeout": 1.0,
                "error_handling": {"on_error": on_error},
            }
            for cid, on_error in ((skip, "skip"), (stop, "stop"))
        ],
    )
    async with running_engine(cfg) as engine:
        try:

            async def skipped() -> bool:
                stats = await redis_client.hgetall(f"{unique}:{skip}:stats")
                return stats.get(b"total") == b"2" and stats.get(b"errors") == b"1"

            await wait_for(skipped, 20, what="the skip consumer past the hung event")

            async def stopped() -> bool:
                c = (await engine.refresh_snapshot()).consumer(stop)
                return c is not None and c.state == "error"

            await wait_for(stopped, 20, what="the stop consumer stopped")
            c = engine.snapshot().consumer(stop)
            assert c is not None and c.last_error is not None
            assert c.last_error.startswith(f"stopped at bad event {stop}[0]@1: process failed: ")
            assert "TimeoutError" in c.last_error
            assert int(await redis_client.get(f"{unique}:{stop}:events") or 0) <= 1
            s = engine.snapshot().consumer(skip)
            assert s is not None and s.dlq == 0
        finally:
            GATE.set()
