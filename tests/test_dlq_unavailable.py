"""When the DLQ does not accept a bad event, the consumer stops at it and never counts past it.

The dead-letter producer here talks to a second, real broker that is frozen with SIGSTOP, while
the consumer reads from the session broker: the runner must keep the batch, alert, and leave
Redis's stored offsets at the bad event until the DLQ accepts it.
"""

from __future__ import annotations

import asyncio
import logging
import signal
from collections.abc import Callable

import pytest
import redis.asyncio as aredis
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

from kafkaconsole.embedded import EmbeddedServices, ManagedProcess
from kafkaconsole.engine.consumer import ConsumerRunner
from kafkaconsole.engine.counting import WindowCounter
from kafkaconsole.engine.dlq import DeadLetterError, DeadLetterSink
from kafkaconsole.engine.events import BadEvent
from kafkaconsole.engine.keys import ConsumerKeys
from tests.engine_support import make_config
from tests.helpers import KafkaHelper, wait_for


async def test_unavailable_dlq_holds_the_partition_at_the_bad_event(
    services: EmbeddedServices,
    kafka: KafkaHelper,
    redis_client: aredis.Redis,
    unique: str,
    caplog: pytest.LogCaptureFixture,
    own_broker: Callable[[], ManagedProcess],
) -> None:
    await kafka.create_topic(unique, 1)
    values: list[object] = [{"i": i} for i in range(5)] + [b"{bad"] + [{"i": i} for i in range(4)]
    await kafka.produce(unique, values, partitions=1)
    cfg = make_config(
        services, unique, [{"consumer_id": "c", "kafka_topic": unique, "max_event": 100}]
    )
    dlq_broker = own_broker()
    producer = AIOKafkaProducer(
        bootstrap_servers=f"127.0.0.1:{dlq_broker.port}",
        request_timeout_ms=1000,
        metadata_max_age_ms=500,
    )
    await producer.start()
    dlq_broker.signal(signal.SIGSTOP)
    counter = WindowCounter(redis_client, ConsumerKeys(unique, "c"), max_event=100)
    runner = ConsumerRunner(
        cfg.consumers[0], cfg, counter, DeadLetterSink(producer), on_applied=lambda res: None
    )
    stop = asyncio.Event()
    task = asyncio.create_task(runner.run(stop))
    caplog.set_level(logging.ERROR, logger="kafkaconsole")
    try:

        async def alerted() -> bool:
            return runner.last_error is not None and "did not accept" in runner.last_error

        await wait_for(alerted, 40, what="DLQ alert")
        await asyncio.sleep(1.0)
        assert int(await redis_client.get(f"{unique}:c:events") or 0) == 0
        assert await redis_client.hget(f"{unique}:c:offsets", f"{unique}|0") is None
        assert any("did not accept" in r.getMessage() for r in caplog.records)
        # the DLQ comes back: the bad event is recorded and counting goes on past it
        dlq_broker.signal(signal.SIGCONT)

        async def counted_all() -> bool:
            return int(await redis_client.get(f"{unique}:c:events") or 0) == 9

        await wait_for(counted_all, 60, what="counting after the DLQ recovered")
        assert await redis_client.hget(f"{unique}:c:stats", "errors") == b"1"
    finally:
        stop.set()
        dlq_broker.signal(signal.SIGCONT)
        await asyncio.wait_for(task, 30)
        await producer.stop()
        dlq_broker.stop()


async def test_a_dlq_producer_that_stops_answering_is_replaced(
    kafka: KafkaHelper,
    unique: str,
    caplog: pytest.LogCaptureFixture,
    own_broker: Callable[[], ManagedProcess],
) -> None:
    """A producer that no longer delivers (here: its broker frozen; aiokafka's producer can
    also keep a batch for a dead broker for good) is replaced after one publish timed out,
    once however many publishes found it so; the next attempt goes through the new one, and
    the old one is stopped in the background once it can be."""
    dlq_topic = f"{unique}.dlq"
    await kafka.create_topic(dlq_topic, 1)
    frozen = own_broker()
    stuck = AIOKafkaProducer(bootstrap_servers=f"127.0.0.1:{frozen.port}", acks="all")
    await stuck.start()
    made: list[AIOKafkaProducer] = []

    async def renew() -> AIOKafkaProducer:
        # a new client reaches the cluster (here the session's broker, where the DLQ is)
        producer = AIOKafkaProducer(bootstrap_servers=kafka.bootstrap, acks="all")
        await producer.start()
        made.append(producer)
        return producer

    sink = DeadLetterSink(stuck, task_id="test", renew=renew)
    bad = [
        BadEvent(unique, 0, i, None, b"{bad", (), "decode", "ValueError", f"bad {i}")
        for i in range(3)
    ]
    caplog.set_level(logging.WARNING, logger="kafkaconsole.dlq")
    frozen.signal(signal.SIGSTOP)
    try:
        # three publishes find it stuck at once: one replacement
        results = await asyncio.gather(
            *(sink.publish(dlq_topic, "c", [b], timeout=2.0) for b in bad),
            return_exceptions=True,
        )
        assert all(isinstance(r, DeadLetterError) for r in results), results
        assert all("no answer within 2 s" in str(r) for r in results)
        assert sink.renewals == 1 and len(made) == 1 and sink.producer is made[0]
        assert sum("replaced by a new one" in r.getMessage() for r in caplog.records) == 1
        # the next attempt goes through the new producer
        assert await sink.publish(dlq_topic, "c", bad, timeout=10.0) == []
    finally:
        frozen.signal(signal.SIGCONT)
    consumer = AIOKafkaConsumer(
        dlq_topic, bootstrap_servers=kafka.bootstrap, auto_offset_reset="earliest"
    )
    await consumer.start()
    try:
        got = await consumer.getmany(timeout_ms=5000)
        offsets = sorted(
            int(dict(r.headers)["__connect.errors.offset"]) for rs in got.values() for r in rs
        )
        assert offsets == [0, 1, 2]
    finally:
        await consumer.stop()
    # the replaced producer stops once its broker answers again; close waits for it
    await asyncio.wait_for(sink.close(), 40)
    assert not sink._retiring
    assert stuck._closed and made[0]._closed
